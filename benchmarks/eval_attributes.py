"""Attribute predictions on the MTFL test faces: the attribute network against the TCDCN heads.

Per task: balanced accuracy (mean per-class recall), plain accuracy, the majority-class rate, the expected
calibration error (top label, 15 bins) and a reliability table; a reliability plot (PNG, one panel per task).
The annotated boxes frame the faces for both (the network reads its wider crop of them).

    python benchmarks/eval_attributes.py --network tcdcn_ext/weights/attributes_5pt.pt \\
        --json benchmarks/results/attributes_5pt.json --plot docs/reliability_attributes.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from tcdcn_ext.models import attributes as attr
from tcdcn_ext.models import load_model
from tcdcn_ext.training import evaluate as ev
from tcdcn_ext.training.datasets import load_staged
from tcdcn_ext.training.reports import write_json, write_png
from tcdcn_ext.training.train import default_data_root


def scores(labels: np.ndarray, probs: np.ndarray) -> dict:
    pred = probs.argmax(1)
    counts = np.bincount(labels, minlength=probs.shape[1])
    return {"balanced_accuracy": ev.balanced_accuracy(labels, pred, probs.shape[1]),
            "accuracy": float(np.mean(pred == labels)), "majority_rate": float(counts.max() / counts.sum()),
            "ece": ev.expected_calibration_error(labels, probs),
            "reliability": ev.reliability_table(labels, probs, bins=10)}


def plot(results: dict, path: Path) -> None:
    """One reliability panel per task: accuracy against confidence per bin (dots sized by count), the diagonal."""
    tasks = list(results)
    panel, pad = 260, 50
    img = np.full((panel + 2 * pad, len(tasks) * (panel + pad) + pad, 3), 255, np.uint8)
    for k, t in enumerate(tasks):
        x0, y0 = pad + k * (panel + pad), pad
        cv2.rectangle(img, (x0, y0), (x0 + panel, y0 + panel), (0, 0, 0), 1)
        cv2.line(img, (x0, y0 + panel), (x0 + panel, y0), (180, 180, 180), 1, cv2.LINE_AA)
        for i in range(1, 10):
            g = round(i * panel / 10)
            cv2.line(img, (x0 + g, y0), (x0 + g, y0 + panel), (235, 235, 235), 1)
            cv2.line(img, (x0, y0 + g), (x0 + panel, y0 + g), (235, 235, 235), 1)
        for series, colour in (("network", (200, 80, 0)), ("heads", (0, 0, 200))):
            rows = results[t].get(series, {}).get("reliability", [])
            n = sum(r["count"] for r in rows) or 1
            pts = []
            for r in rows:
                px = x0 + r["confidence"] * panel
                py = y0 + (1 - r["accuracy"]) * panel
                pts.append((int(px), int(py)))
                cv2.circle(img, pts[-1], max(2, int(12 * np.sqrt(r["count"] / n))), colour, -1, cv2.LINE_AA)
            if len(pts) > 1:
                cv2.polylines(img, [np.array(pts, np.int32).reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA)
        net = results[t].get("network", {})
        title = f"{t}: ECE {100 * net.get('ece', float('nan')):.1f} %"
        cv2.putText(img, title, (x0, y0 - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, "confidence", (x0 + panel // 2 - 40, y0 + panel + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "accuracy vs confidence per bin (blue: attribute network, red: TCDCN heads)",
                (pad, panel + 2 * pad - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    write_png(path, img)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default=None, help="attribute network weights (default: the shipped one)")
    p.add_argument("--model", default="5pt", help="TCDCN model whose heads are compared")
    p.add_argument("--data", default=None, help="split (default: mtfl/test)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    split = Path(args.data) if args.data else default_data_root() / "mtfl" / "test"
    fs = load_staged(split, progress=False)
    net = attr.load_attribute_net(args.network)
    x = attr.attribute_inputs(fs.images, fs.boxes, net.config)
    p_net = attr.attribute_probabilities(net, x)
    model = load_model(args.model)
    p_heads = {t: v.numpy() for t, v in model.predict(model.preprocess(fs.images, fs.boxes)).items()
               if t != "landmarks"}
    results = {}
    for t in net.config.tasks:
        labels = fs.attributes[t]
        results[t] = {"network": scores(labels, p_net[t])}
        if t in p_heads:
            results[t]["heads"] = scores(labels, p_heads[t])
        row = results[t]
        print(f"{t:8s} network: balanced {100 * row['network']['balanced_accuracy']:.1f} % "
              f"(accuracy {100 * row['network']['accuracy']:.1f}, majority {100 * row['network']['majority_rate']:.1f})"
              f" ECE {100 * row['network']['ece']:.1f} %" +
              (f" | heads: balanced {100 * row['heads']['balanced_accuracy']:.1f} % ECE "
               f"{100 * row['heads']['ece']:.1f} %" if "heads" in row else ""))
    if args.json:
        write_json(args.json, {"data": str(split), "faces": len(fs), "network": args.network or "shipped",
                                  "model": args.model, "tasks": results})
    if args.plot:
        plot(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
