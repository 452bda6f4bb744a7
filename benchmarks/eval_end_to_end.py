"""End-to-end evaluation of the Aligner (detector + box calibration + landmarks) on the MTFL test crops, and the
landmark jitter of video tracking on a synthetic static-face video.

    python benchmarks/eval_end_to_end.py [--model 5pt|68pt|PATH] [--limit N] [--cache DETS.npz] [--skip-jitter]

A 68-point model is evaluated the same way on the 300w/test_common crops (error over the outer eye corners 36/45,
its own box calibration :data:`tcdcn_ext.detect.CALIBRATION_68PT`, no re-boxing pass); it writes
``benchmarks/results/end_to_end_68pt.json``.

End to end: every 128x128 test crop is given as a whole image; the bundled YuNet detects the faces (threshold 0.5), the
detection that overlaps the annotated box most (IoU >= 0.3) is the face's detection (none: a miss). Rows
``detector_*_1pass``: one landmark pass in the uncalibrated / calibrated detector box (:mod:`tcdcn_ext.detect`);
``pipeline_*``: the whole ``Aligner(image)`` call (detection, calibration, re-boxing from the landmarks, averaging);
``annotated_box*``: the landmark step alone in the annotated box, for reference. Error: mean point error over the
inter-ocular distance; failure: error > 10 %; ``failure_with_misses`` counts undetected faces as failures. Writes ``benchmarks/results/end_to_end_5pt.json``.

Jitter: the bundled astronaut photo repeated 60 times with random sub-pixel shifts (+-0.25 px) and pixel noise
(sigma 2 grey levels); frame-to-frame landmark motion with detection on every frame, with tracking, and with
tracking + one-euro smoothing (:func:`tcdcn_ext.tracking.measure_jitter`). Writes ``benchmarks/results/jitter.json``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcdcn_ext import data, evaluate  # noqa: E402
from tcdcn_ext.aligner import Aligner  # noqa: E402
from tcdcn_ext.inference.boxes import box_iou as _iou  # noqa: E402
from tcdcn_ext.inference.detector import (CALIBRATION_5PT, CALIBRATION_68PT, Detections, YuNetDetector,  # noqa: E402
                                          calibrate_boxes)
from tcdcn_ext.training.calibration import match_detections  # noqa: E402
from tcdcn_ext.tracking import measure_jitter, synthetic_static_video  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def data_root() -> Path:
    env = os.environ.get("TCDCN_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def matched_faces(results: list, boxes: np.ndarray, min_iou: float = 0.3) -> tuple[list[int], np.ndarray]:
    """Per image of ``results`` (an ``align_batch`` output), the face whose box overlaps the annotated box most, if
    its IoU is >= ``min_iou``: the images it was found in and those faces' landmarks ``[K, P, 2]``."""
    keep, pred = [], []
    for i, faces in enumerate(results):
        if not faces:
            continue
        iou = _iou(boxes[i:i + 1], np.array([f.box for f in faces]))[0]
        j = int(np.argmax(iou))
        if iou[j] >= min_iou:
            keep.append(i)
            pred.append(faces[j].landmarks)
    return keep, np.stack(pred)


def _summary(err: np.ndarray, n_total: int) -> dict[str, float]:
    return {"faces": int(len(err)), "mean_error": float(err.mean()), "median_error": float(np.median(err)),
            "failure_rate": evaluate.failure_rate(err),
            "failure_with_misses": float(((err > 0.10).sum() + (n_total - len(err))) / n_total),
            "auc_0.10": evaluate.auc_at(err)}


def end_to_end(model: str, limit: int | None, cache: str | None) -> dict:
    from tcdcn_ext.model import load_model

    net = load_model(model)  # loaded once; every Aligner below takes its own copy
    points = net.num_points
    split, norm = ("mtfl/test", "inter_ocular") if points == 5 else ("300w/test_common", "outer_corners")
    calibration = CALIBRATION_5PT if points == 5 else CALIBRATION_68PT
    fs = data.load_staged(data_root() / split, limit=limit)
    n = len(fs)
    t0 = time.perf_counter()
    found, scores, dboxes, dpoints = match_detections(fs.images, fs.boxes, YuNetDetector(), min_score=0.5,
                                                      cache=cache)
    t_det = time.perf_counter() - t0
    idx = np.flatnonzero(found)
    det = Detections(scores[idx], dboxes[idx], dpoints[idx])
    images = [fs.images[i] for i in idx]
    gt = fs.landmarks[idx]
    rows: dict[str, dict] = {}
    plain = Aligner(points=points, model=net, detector="none")
    averaged = Aligner(points=points, model=net, detector="none", averaged=True)

    def run(name: str, aligner: Aligner, boxes: np.ndarray, imgs: list, truth: np.ndarray, total: int) -> None:
        t = time.perf_counter()
        faces = aligner.align_batch(imgs, [b[None] for b in boxes])
        pred = np.stack([f[0].landmarks for f in faces])
        err = evaluate.landmark_errors(pred, truth, norm)
        rows[name] = _summary(err, total)
        rows[name]["seconds"] = round(time.perf_counter() - t, 2)
        print(f"{name:28s} " + "  ".join(f"{k}={v:.4f}" for k, v in rows[name].items() if k != "faces"),
              file=sys.stderr)

    for method in ("none", "linear", "points"):
        run(f"detector_{method}_1pass", plain, calibrate_boxes(det, calibration, method), images, gt, n)
    run("annotated_box", plain, fs.boxes.astype(np.float64), fs.images, fs.landmarks, n)
    run("annotated_box_averaged", averaged, fs.boxes.astype(np.float64), fs.images, fs.landmarks, n)

    # The whole production pipeline: Aligner(image) with YuNet on every crop; the face whose box overlaps the
    # annotated box most (IoU >= 0.3) is scored, a crop without one is a miss.
    pipelines = {
        "pipeline_uncalibrated (calibrate=False, refine=0)": dict(calibrate=False, refine=0),
        "pipeline_calibrated (calibrate=True, refine=0)": dict(refine=0),
        "pipeline_default (calibrate=True, refine=2)": dict(),
        "pipeline_averaged (default + averaged=True)": dict(averaged=True),
    }
    if points == 68:  # refine (re-boxing from the 5 MTFL points) is a 5-point step
        pipelines = {k.replace(", refine=2", ""): v for k, v in pipelines.items() if "refine=0" not in k or
                     "uncalibrated" in k}
    for name, kw in pipelines.items():
        t = time.perf_counter()
        aligner = Aligner(points=points, model=net, detector="yunet", **kw)
        keep, pred = matched_faces(aligner.align_batch(fs.images), fs.boxes)
        err = evaluate.landmark_errors(pred, fs.landmarks[keep], norm)
        rows[name] = _summary(err, n)
        rows[name]["detection_rate"] = len(keep) / n
        rows[name]["seconds"] = round(time.perf_counter() - t, 2)
        print(f"{name:28s} " + "  ".join(f"{k}={v:.4f}" for k, v in rows[name].items() if k != "faces"),
              file=sys.stderr)
    return {
        "split": split, "norm": norm, "faces": n, "detected": int(found.sum()), "detection_rate": float(found.mean()),
        "detector": "YuNet (min_score 0.5, best-IoU match with the annotated box, IoU >= 0.3)",
        "calibration_method": calibration["method"],
        "calibration": {k: v for k, v in calibration.items() if k != "report"},
        "detection_seconds": round(t_det, 1), "rows": rows,
        "peers": ({"full pipeline (issue 5)": {"MTCNN": 0.0739, "MediaPipe": 0.0652}} if points == 5 else
                  {"annotated boxes (FACTS.md)": {"dlib 68-point": 0.0555, "authors' released TCDCN": 0.0594}}),
    }


def jitter(model: str) -> dict:
    from importlib.resources import files

    blob = (files("tcdcn_ext") / "assets" / "astronaut.jpg").read_bytes()
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    frames, shifts = synthetic_static_video(rgb, frames=60, max_shift=0.25, noise=2.0, seed=0)
    aligner = Aligner(model=model)
    out = {"video": "astronaut.jpg x 60 frames, uniform +-0.25 px shifts, Gaussian noise sigma 2, 30 fps",
           "smoothing": "one-euro, min_cutoff 1 Hz, beta 10 (box sides/s), d_cutoff 1 Hz, in box-side units"}
    for mode in ("detect", "track", "smooth"):
        out[mode] = measure_jitter(aligner, frames, shifts, mode)
        print(mode, json.dumps({k: round(v, 3) for k, v in out[mode].items()}), file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="5pt")
    p.add_argument("--limit", type=int, default=None, help="first N test faces only")
    p.add_argument("--cache", default=None, help="npz cache of the raw test-set detections")
    p.add_argument("--skip-jitter", action="store_true")
    p.add_argument("--skip-end-to-end", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    meta = {"model": args.model, "model_sha256_16": _sha(Path(args.model)) if Path(args.model).is_file() else None,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "platform": platform.platform(), "threads": torch.get_num_threads(),
            "note": "measured on a 2-core machine shared with training runs"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.skip_end_to_end:
        res = {"meta": meta, **end_to_end(args.model, args.limit, args.cache)}
        name = "end_to_end_68pt.json" if res["norm"] == "outer_corners" else "end_to_end_5pt.json"
        (RESULTS / name).write_text(json.dumps(res, indent=2) + "\n")
    if not args.skip_jitter:
        res = {"meta": meta, **jitter(args.model)}
        (RESULTS / "jitter.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
