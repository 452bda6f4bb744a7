"""Recall and time of the bundled YuNet detector against its working resolution, on the whole photos of
``shared/data/scenes`` (the evidence for :data:`tcdcn_ext.detect.DEFAULT_MAX_SIDE`).

    python benchmarks/detector_resolution.py [--sides 0,640,480,400,320,256,192] [--limit N]

A face counts as found when one detection (score >= 0.5), its box mapped by the 68-point calibration
(:data:`tcdcn_ext.detect.CALIBRATION_68PT`, the landmark-extent convention of the annotations), has IoU >= 0.5 with
the annotated landmark-extent box. ``scenes/test`` holds one annotated face per photo (HELEN and LFPW test
photos); ``scenes/afw`` 337 faces in 185 crowded photos, small faces included. Time: median of the whole detector
call (resize, network, decoding, NMS) per photo, one thread. Writes ``benchmarks/results/detector_resolution.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcdcn_ext.inference.boxes import box_iou as _iou  # noqa: E402
from tcdcn_ext.inference.detector import CALIBRATION_68PT, YuNetDetector, calibrate_boxes  # noqa: E402


def load_scenes(folder: Path, limit: int | None) -> list[tuple[Path, np.ndarray]]:
    """(photo, annotated boxes [K, 4]) per photo."""
    boxes: dict[str, list] = {}
    with open(folder / "annotations.csv", newline="") as f:
        for row in csv.DictReader(f):
            boxes.setdefault(row["image"], []).append([float(row[k]) for k in ("box_x0", "box_y0", "box_x1",
                                                                                "box_y1")])
    items = [(folder / "images" / name, np.array(b)) for name, b in sorted(boxes.items())]
    return items[:limit] if limit else items


def measure(items, side: int | None) -> dict:
    det = YuNetDetector(max_side=side)
    found = total = 0
    extra = 0
    times, faces_px = [], []
    for path, gt in items:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        d = det(rgb, 0.5)
        times.append(time.perf_counter() - t0)
        total += len(gt)
        if len(d):
            cal = calibrate_boxes(d, CALIBRATION_68PT)
            iou = _iou(gt, cal)
            hit = iou.max(axis=1) >= 0.5
            found += int(hit.sum())
            extra += int((iou.max(axis=0) < 0.5).sum())
        else:
            hit = np.zeros(len(gt), bool)
        faces_px += [(float(max(b[2] - b[0], b[3] - b[1])), bool(h)) for b, h in zip(gt, hit)]
    missed = sorted(s for s, h in faces_px if not h)
    return {"max_side": side, "faces": total, "found": found, "recall": found / max(total, 1),
            "unmatched_detections": extra, "median_ms": 1e3 * float(np.median(times)),
            "missed_face_sizes_px": [round(s) for s in missed]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scenes")
    p.add_argument("--sides", default="0,640,480,400,320,256,192")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "detector_resolution.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rows = []
    for folder in ("test", "afw"):
        items = load_scenes(args.data / folder, args.limit)
        for s in (int(v) for v in args.sides.split(",")):
            r = measure(items, s or None)
            r["folder"] = f"scenes/{folder}"
            rows.append(r)
            print(f"scenes/{folder:5s} max_side {str(s or 'full'):>5s}: recall {100 * r['recall']:6.2f} % "
                  f"({r['found']}/{r['faces']}), unmatched detections {r['unmatched_detections']:3d}, "
                  f"{r['median_ms']:6.2f} ms/photo; missed face sizes {r['missed_face_sizes_px'][:12]}", flush=True)
    args.out.write_text(json.dumps({"command": "python benchmarks/detector_resolution.py " + " ".join(argv or
                                    sys.argv[1:]), "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
