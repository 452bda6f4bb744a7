"""Training curves of a run with the epochs where task-wise early stopping switched each auxiliary task off (the
paper's Fig. 7), drawn with OpenCV from the run's ``log.jsonl``.

    python benchmarks/plot_training.py runs/5pt_l1 docs/training_5pt.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

COLOURS = {"landmarks": (40, 39, 214), "pose": (180, 119, 31), "gender": (44, 160, 44), "glasses": (14, 127, 255),
           "smile": (189, 103, 148)}


def plot(run: Path, out: Path, size=(900, 560)) -> None:
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    epochs = np.array([r["epoch"] for r in log])
    tasks = [t for t in COLOURS if f"val_{t}" in log[0]]
    w, h = size
    left, right, top, bottom = 70, 170, 40, 50
    img = np.full((h, w, 3), 255, np.uint8)
    x0, x1, y0, y1 = left, w - right, top, h - bottom

    def px(e, v):  # v: loss relative to its first-epoch value, drawn on a 0..1.2 scale
        x = x0 + (e - 1) / max(epochs[-1] - 1, 1) * (x1 - x0)
        y = y1 - min(max(v, 0.0), 1.2) / 1.2 * (y1 - y0)
        return int(round(x)), int(round(y))

    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    for v in (0.2, 0.4, 0.6, 0.8, 1.0, 1.2):
        y = px(1, v)[1]
        cv2.line(img, (x0, y), (x1, y), (225, 225, 225), 1)
        cv2.putText(img, f"{v:.1f}", (x0 - 40, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for e in range(0, int(epochs[-1]) + 1, max(1, int(epochs[-1]) // 8)):
        if e >= 1:
            x = px(e, 0)[0]
            cv2.putText(img, str(e), (x - 8, y1 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for i, t in enumerate(tasks):
        c = COLOURS[t]
        for key, thick in ((f"val_{t}", 2), (f"train_{t}", 1)):
            vals = np.array([r[key] for r in log], float)
            pts = np.array([px(e, v / vals[0]) for e, v in zip(epochs, vals)], np.int32)
            cv2.polylines(img, [pts], False, c, thick, cv2.LINE_AA)
        stopped = [r["epoch"] for r in log if t in r.get("stopped_now", [])]
        label = t + (f" (off @ {stopped[0]})" if stopped else "")
        for e in stopped:
            x = px(e, 0)[0]
            cv2.line(img, (x, y0), (x, y1), c, 1, cv2.LINE_AA)
        cv2.line(img, (x1 + 12, y0 + 20 + 22 * i), (x1 + 32, y0 + 20 + 22 * i), c, 2)
        cv2.putText(img, label, (x1 + 36, y0 + 24 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(img, f"{run.name}: loss / first-epoch loss (thick: validation, thin: training); vertical: task off",
                (x0, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "epoch", ((x0 + x1) // 2 - 20, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise OSError(f"could not write {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    a = p.parse_args()
    plot(a.run, a.out)
    print(a.out)
