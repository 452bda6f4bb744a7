"""The paper's ablation figures, redrawn from our runs (``benchmarks/ablation_seeds.py``), with OpenCV:

* Fig. 4: mean error per landmark and failure rate per variant (bars: mean over seeds, whiskers: min-max);
* Fig. 6: mean error per head pose, FLD vs FLD+pose (and FLD+all).

    python benchmarks/plot_ablation.py --runs /path/to/runs/today --out docs/ablation_today
    (writes docs/ablation_today_fig4.png and docs/ablation_today_fig6.png)

The training curves with the epochs where each task stopped (Fig. 7b) are ``benchmarks/plot_training.py`` on one
FLD+all run.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import cv2
import numpy as np

from tcdcn_ext.training.reports import write_png

VARIANTS = ["FLD", "FLD+pose", "FLD+gender", "FLD+glasses", "FLD+smile", "FLD+all", "FLD+all, no early stopping"]
COLOURS = [(120, 120, 120), (180, 119, 31), (44, 160, 44), (14, 127, 255), (189, 103, 148), (40, 39, 214),
           (75, 86, 140)]
POINTS = ["left eye", "right eye", "nose", "mouth left", "mouth right"]
POSES = ["left profile", "left", "frontal", "right", "right profile"]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def load(runs: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for v in VARIANTS:
        # (exactly "<variant>_s<seed>": "FLD_s*" would also match FLD+smile's "FLD_smile_s0")
        for f in sorted(f for f in runs.glob(f"{slug(v)}_s*/test_errors.npz")
                        if re.fullmatch(rf"{re.escape(slug(v))}_s\d+", f.parent.name)):
            z = np.load(f)
            out.setdefault(v, []).append({"errors": z["errors"], "point_errors": z["point_errors"], "pose": z["pose"]})
    return out


def bars(groups: list[str], series: dict[str, np.ndarray], title: str, ylabel: str, path: Path,
         size=(1100, 520)) -> None:
    """Grouped bars: series name -> [seeds, groups] values; bar = mean over seeds, whisker = min..max."""
    w, h = size
    left, right, top, bottom = 70, 250, 45, 60
    img = np.full((h, w, 3), 255, np.uint8)
    hi = max(float(v.max()) for v in series.values()) * 1.1
    x0, x1, y0, y1 = left, w - right, top, h - bottom
    for i in range(6):
        y = int(y1 - i * (y1 - y0) / 5)
        cv2.line(img, (x0, y), (x1, y), (230, 230, 230), 1)
        cv2.putText(img, f"{100 * hi * i / 5:.1f}", (8, y + 4), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    gw = (x1 - x0) / len(groups)
    bw = gw * 0.8 / len(series)
    for g, name in enumerate(groups):
        gx = x0 + g * gw + gw * 0.1
        cv2.putText(img, name, (int(x0 + g * gw + 4), y1 + 20), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for k, (label, v) in enumerate(series.items()):
            col = COLOURS[VARIANTS.index(label) % len(COLOURS)] if label in VARIANTS else COLOURS[k]
            m, lo, up = v[:, g].mean(), v[:, g].min(), v[:, g].max()
            bx = int(gx + k * bw)
            cv2.rectangle(img, (bx, int(y1 - m / hi * (y1 - y0))), (int(bx + bw - 2), y1), col, -1)
            cx = int(bx + bw / 2 - 1)
            cv2.line(img, (cx, int(y1 - lo / hi * (y1 - y0))), (cx, int(y1 - up / hi * (y1 - y0))), (0, 0, 0), 1)
    for k, label in enumerate(series):
        col = COLOURS[VARIANTS.index(label) % len(COLOURS)] if label in VARIANTS else COLOURS[k]
        y = y0 + 10 + 22 * k
        cv2.rectangle(img, (x1 + 12, y - 8), (x1 + 28, y + 6), col, -1)
        n = len(series[label])
        cv2.putText(img, f"{label} ({n} seeds)", (x1 + 34, y + 4), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title, (x0, 28), FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (x0, h - 12), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    write_png(path, img)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="one recipe's folder of ablation_seeds.py runs")
    p.add_argument("--out", required=True, help="path prefix of the PNGs")
    args = p.parse_args()
    runs = load(Path(args.runs))
    if not runs:
        raise SystemExit(f"no finished runs in {args.runs}")
    fig4 = {}
    for v, rs in runs.items():
        per_point = np.stack([r["point_errors"].mean(0) for r in rs])  # [seeds, 5]
        fail = np.array([[(r["errors"] > 0.1).mean()] for r in rs])  # [seeds, 1]
        fig4[v] = np.concatenate([per_point, fail], 1)
    bars(POINTS + ["failure rate"], fig4, "Fig. 4: mean error per landmark and failure rate (mtfl/test)",
         "inter-ocular error / failure rate, % (bars: mean over seeds, whiskers: min-max)",
         Path(f"{args.out}_fig4.png"))
    fig6 = {}
    for v in ("FLD", "FLD+pose", "FLD+all"):
        if v in runs:
            fig6[v] = np.stack([[r["errors"][r["pose"] == k].mean() for k in range(5)] for r in runs[v]])
    if fig6:
        bars(POSES, fig6, "Fig. 6: mean error per head pose (mtfl/test)",
             "inter-ocular error, % (bars: mean over seeds, whiskers: min-max)", Path(f"{args.out}_fig6.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
