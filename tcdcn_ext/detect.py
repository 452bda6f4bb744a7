"""Face detection for :class:`tcdcn_ext.Aligner`, and the calibration of detector boxes to the model's box convention.

The detector is `yuface <https://pypi.org/project/yuface/>`_ (libfacedetection's CNN compiled into a small wheel,
weights inside, no download) when it is importable. It returns a box and 5 points per face.

Box calibration
---------------
The 5-point TCDCN was trained on the MTFL crops' annotated boxes (the CUHK boxes: square, about the eyebrows to
the chin). yuface's boxes are taller and placed differently, and feeding them unchanged shifts and scales every
face in the network's input. :func:`fit_box_calibration` learns, on the MTFL *training* crops, two maps from a
yuface detection to the annotated box:

* ``"linear"``: a translation- and scale-equivariant linear map of the detector box,
  ``[cx' - cx, cy' - cy, w', h'] = [w, h] @ LINEAR`` (``LINEAR`` is 2x4);
* ``"points"``: the box predicted from the detector's 5 points with :func:`tcdcn_ext.data.predict_boxes_5pt`
  and a coefficient matrix refitted on yuface's points (``POINTS``, 2x3, as :func:`tcdcn_ext.data.fit_box_model`).

and keeps the one whose boxes give the lower landmark error on a held-out part of the training set (the training
run's own validation faces). The constants below are the output of::

    python -m tcdcn_ext.detect --fit ../shared/data/mtfl/train --model /work/runs/5pt_l1/best.pt

(see :data:`CALIBRATION_5PT` for the numbers it printed; the fit is cheap: yuface on 10,000 crops takes ~20 s).
Calibration applies to the built-in yuface detector; boxes from a user detector (a callable) or given to
:meth:`Aligner.align` are used as they are. The 68-point model has its own box convention (the staged 300-W boxes
are the tight extent of the 68 points) and its own fit, :data:`CALIBRATION_68PT`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

__all__ = [
    "CALIBRATION_5PT",
    "CALIBRATION_68PT",
    "DetectorError",
    "Detections",
    "YuFaceDetector",
    "calibrate_boxes",
    "fit_box_calibration",
    "resolve_detector",
    "yuface_available",
]

#: The longest image side the detector sees; larger images are detected on a downscaled copy (yuface warns above
#: 960 px and its anchors are tuned for that range).
MAX_DETECT_SIDE = 960

#: yuface -> annotated-box calibration of the 5-point model, fitted on the 9,500 MTFL training crops outside the
#: training run's validation split by ``python -m tcdcn_ext.detect --fit ../shared/data/mtfl/train --model
#: /work/runs/5pt_l1/best.pt``. The fitted numbers do not depend on the model; the model only chooses ``method``,
#: by the landmark error on the 500 validation faces (yuface found all 10,000 faces). With the run's final
#: checkpoint (epoch 79, sha256 bedc9c99...; 3.56 % error / 2.0 % failures on those faces with the annotated
#: boxes; the epoch-50 checkpoint chose the same method):
#:
#: ==========  ===================  ===========  =========
#: map         box edge RMS (px)    mean error   failures
#: ==========  ===================  ===========  =========
#: none        12.75                7.59 %       18.2 %
#: linear       4.90                4.17 %        4.6 %
#: points       5.37                3.63 %        2.8 %
#: ==========  ===================  ===========  =========
#:
#: Both maps are kept so that detections without points can use ``"linear"``.
CALIBRATION_5PT: dict[str, Any] = {
    "method": "points",
    "linear": [[-0.05824709, -0.06194710, 0.22907337, 0.22915193],
               [0.04272413, 0.09408877, 0.55104428, 0.55103037]],
    "points": [[-0.01933351, -0.03133364, 3.25915734], [-0.85993208, -0.04074527, 0.00931776]],
}

#: yuface -> annotated-box calibration of the 68-point model (the staged 300-W boxes: the tight extent of the 68
#: points), fitted on the 1,086 300w/train crops outside the shipped model's validation split by ``python -m
#: tcdcn_ext.detect --fit ../shared/data/300w/train --model 68pt`` (yuface found all 1,207 faces). On the 121
#: validation faces, outer-corner error of the shipped 68-point model (annotated boxes: 4.22 %):
#:
#: ==========  ===================  ===========  =========
#: map         box edge RMS (px)    mean error   failures
#: ==========  ===================  ===========  =========
#: none        11.26                7.07 %        8.3 %
#: linear       3.29                4.47 %        0.0 %
#: points       3.67                4.46 %        0.0 %
#: ==========  ===================  ===========  =========
CALIBRATION_68PT: dict[str, Any] = {
    "method": "points",
    "linear": [[0.00460517, -0.07722575, 0.81724451, 0.22152389],
               [-0.00044607, 0.17732359, 0.17409021, 0.61748373]],
    "points": [[-0.02114595, 0.27594714, 3.66914673], [-1.98940519, -0.05812177, -0.16162254]],
}

DetectorName = Literal["auto", "yuface", "none"]


class DetectorError(RuntimeError):
    """No detector is available for a call that needs one, or a user detector returned something unusable."""


@dataclass(frozen=True)
class Detections:
    """Faces found in one image: ``scores`` float32 [N] in [0, 1], ``boxes`` float32 [N, 4] ``(x0, y0, x1, y1)``
    in image pixels, ``points`` float32 [N, 5, 2] (the detector's own 5 points) or None."""

    scores: np.ndarray
    boxes: np.ndarray
    points: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros(0, np.float32), np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32))


def yuface_available() -> bool:
    try:
        import yuface  # noqa: F401
    except ImportError:
        return False
    return True


class YuFaceDetector:
    """yuface on an RGB uint8 image ``[H, W, 3]``; images larger than :data:`MAX_DETECT_SIDE` are detected on a
    downscaled copy (``INTER_AREA``) and the results mapped back to full-resolution pixels.

    The compiled detector is not documented as re-entrant, so calls are serialised by a per-instance lock (the
    rest of :class:`~tcdcn_ext.Aligner` runs in parallel).

    ``threads``: OpenMP threads for yuface, set (and restored) around every call; default 1. yuface parallelises
    each image over OpenMP threads that spin while they wait; with torch imported it runs on torch's OpenMP runtime.
    On a machine whose cores are busy that is far slower than one thread: one 512x512 detection took 42 ms with 1
    thread and 430 ms with the default 2 on this project's loaded 2-core machine. None leaves the runtime's default
    (``OMP_NUM_THREADS`` or all cores).
    """

    def __init__(self, max_side: int = MAX_DETECT_SIDE, threads: int | None = 1) -> None:
        import yuface  # ImportError here is turned into a DetectorError by resolve_detector

        self._detect = yuface.c_detect
        self.max_side = int(max_side)
        self.threads = None if threads is None else max(1, int(threads))
        self._omp = _omp_runtimes() if self.threads is not None else []
        self._lock = threading.Lock()

    def __call__(self, rgb: np.ndarray, min_score: float = 0.5) -> Detections:
        import cv2

        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = rgb
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            sx, sy = size[0] / w, size[1] / h
        else:
            sx = sy = 1.0
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        with self._lock:
            # OpenMP's thread count is a per-thread setting: set it for this call in this thread, then restore it
            # (torch in this thread reads the same setting).
            previous = [get() for get, _ in self._omp]
            try:
                for _, put in self._omp:
                    put(self.threads)
                raw = np.asarray(self._detect(bgr), np.float32).reshape(-1, 16)
            finally:
                for (_, put), n in zip(self._omp, previous):
                    put(n)
        # Columns: confidence (percent), x, y, w, h, 5 x (x, y) points, and an unused trailing field.
        raw = raw[raw[:, 0] >= 100.0 * min_score]
        if len(raw) == 0:
            return Detections.empty()
        raw = raw[np.argsort(-raw[:, 0], kind="stable")]
        boxes = np.stack([raw[:, 1], raw[:, 2], raw[:, 1] + raw[:, 3], raw[:, 2] + raw[:, 4]], 1)
        points = raw[:, 5:15].reshape(-1, 5, 2)
        if scale < 1.0:  # pixel-centre mapping back to the full image: x = (x' + 0.5) / s - 0.5
            s = np.array([sx, sy], np.float32)
            boxes = ((boxes.reshape(-1, 2, 2) + 0.5) / s - 0.5).reshape(-1, 4)
            points = (points + 0.5) / s - 0.5
        return Detections(raw[:, 0] / 100.0, boxes.astype(np.float32), points.astype(np.float32))


def _omp_runtimes() -> list[tuple[Callable[[], int], Callable[[int], None]]]:
    """``(omp_get_max_threads, omp_set_num_threads)`` of the OpenMP runtimes yuface may run on: the one in the
    process's global symbol scope (torch loads its libgomp there, and yuface's OpenMP calls then resolve to it) and
    the one bundled with the yuface wheel (``yuface.libs/libgomp*``), without duplicates."""
    import ctypes
    import glob

    import yuface

    root = Path(yuface.__file__).resolve().parent.parent
    handles: list[Any] = []
    try:
        handles.append(ctypes.CDLL(None))
    except OSError:
        pass
    for lib in sorted(glob.glob(str(root / "yuface.libs" / "libgomp*.so*"))):
        try:
            handles.append(ctypes.CDLL(lib))
        except OSError:
            pass
    out, seen = [], set()
    for h in handles:
        try:
            get, put = h.omp_get_max_threads, h.omp_set_num_threads
        except AttributeError:
            continue
        key = ctypes.cast(put, ctypes.c_void_p).value
        if key in seen:
            continue
        seen.add(key)
        get.argtypes, get.restype = [], ctypes.c_int
        put.argtypes, put.restype = [ctypes.c_int], None
        out.append((get, put))
    return out


class _UserDetector:
    """Adapts a callable ``f(rgb uint8 [H, W, 3]) -> boxes [N, 4] | (boxes, scores) | (boxes, scores, points)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, rgb: np.ndarray, min_score: float = 0.5) -> Detections:
        out = self.fn(rgb)
        if isinstance(out, Detections):
            det = out
        else:
            parts = list(out) if isinstance(out, (tuple, list)) and len(out) in (2, 3) and not np.isscalar(out[0]) \
                and np.asarray(out[0]).ndim == 2 else [out]
            boxes = np.asarray(parts[0], np.float32).reshape(-1, 4)
            scores = np.asarray(parts[1], np.float32).reshape(-1) if len(parts) > 1 else np.ones(len(boxes), np.float32)
            points = np.asarray(parts[2], np.float32).reshape(-1, 5, 2) if len(parts) > 2 and parts[2] is not None \
                else None
            if len(scores) != len(boxes) or (points is not None and len(points) != len(boxes)):
                raise DetectorError(f"detector {self.fn!r} returned {len(boxes)} boxes but {len(scores)} scores"
                                    + ("" if points is None else f" and {len(points)} point sets"))
            det = Detections(scores, boxes, points)
        if not np.all(np.isfinite(det.boxes)):
            raise DetectorError(f"detector {self.fn!r} returned non-finite boxes")
        keep = det.scores >= min_score
        return Detections(det.scores[keep], det.boxes[keep], None if det.points is None else det.points[keep])


def resolve_detector(detector: str | Callable[..., Any] | None) -> Callable[[np.ndarray, float], Detections] | None:
    """``"auto"`` (yuface when importable, else None), ``"yuface"`` (DetectorError if missing), ``"none"``/None
    (None), or a callable (see :class:`_UserDetector`). Returns ``f(rgb, min_score) -> Detections`` or None."""
    if callable(detector):
        return _UserDetector(detector)
    if detector is None or detector == "none":
        return None
    if detector == "auto":
        return YuFaceDetector() if yuface_available() else None
    if detector == "yuface":
        if not yuface_available():
            raise DetectorError("detector='yuface' but the yuface package is not installed "
                                "(`pip install yuface`; wheels exist for CPython <= 3.11 on x86-64 Linux)")
        return YuFaceDetector()
    raise ValueError(f"detector must be 'auto', 'yuface', 'none' or a callable, got {detector!r}")


# ----------------------------------------------------------------------------------------------------------------
# Calibration


def _linear_features(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def _apply_linear(boxes: np.ndarray, coef: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    d = _linear_features(b) @ np.asarray(coef, np.float64)  # [N, 4]: dcx, dcy, w', h'
    cx = (b[:, 0] + b[:, 2]) / 2 + d[:, 0]
    cy = (b[:, 1] + b[:, 3]) / 2 + d[:, 1]
    return np.stack([cx - d[:, 2] / 2, cy - d[:, 3] / 2, cx + d[:, 2] / 2, cy + d[:, 3] / 2], 1)


def calibrate_boxes(det: Detections, calibration: dict[str, Any] | None = None,
                    method: str | None = None) -> np.ndarray:
    """Detector boxes -> boxes in the model's training convention, float32 [N, 4].

    ``method``: ``"points"`` (needs ``det.points``), ``"linear"``, ``"none"``; default: the calibration's chosen
    method, falling back to ``"linear"`` when the detections carry no points.
    """
    from . import data

    cal = CALIBRATION_5PT if calibration is None else calibration
    method = method or cal["method"]
    if len(det) == 0:
        return np.zeros((0, 4), np.float32)
    if method == "points" and det.points is None:
        method = "linear"
    if method == "none":
        out = np.asarray(det.boxes, np.float64)
    elif method == "linear":
        out = _apply_linear(det.boxes, np.asarray(cal["linear"]))
    elif method == "points":
        try:
            out = data.predict_boxes_5pt(det.points, np.asarray(cal["points"]))
        except ValueError:  # degenerate points (all equal): fall back to the box map, face by face
            out = np.empty((len(det), 4))
            for i in range(len(det)):
                try:
                    out[i] = data.predict_boxes_5pt(det.points[i:i + 1], np.asarray(cal["points"]))[0]
                except ValueError:
                    out[i] = _apply_linear(det.boxes[i:i + 1], np.asarray(cal["linear"]))[0]
    else:
        raise ValueError(f"calibration method must be 'points', 'linear' or 'none', got {method!r}")
    return out.astype(np.float32)


class _PointsAndBoxes:
    """The two FaceSet attributes :func:`tcdcn_ext.data.fit_box_model` reads (detector points, annotated boxes)."""

    def __init__(self, landmarks: np.ndarray, boxes: np.ndarray) -> None:
        self.landmarks, self.boxes = landmarks, boxes
        self.num_points = landmarks.shape[1]

    def __len__(self) -> int:
        return len(self.boxes)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] with b [M, 4] -> [N, M]."""
    a = np.asarray(a, np.float64)[:, None]
    b = np.asarray(b, np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def match_detections(images: list[np.ndarray], boxes: np.ndarray, detector: Callable[[np.ndarray, float], Detections],
                     min_score: float = 0.5, min_iou: float = 0.3, progress: bool = True,
                     cache: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run ``detector`` on every image and keep, per image, the detection with the highest IoU with the annotated
    box (if >= ``min_iou``). Returns ``(found bool [N], scores [N], det boxes [N, 4], det points [N, 5, 2])``
    (NaN where not found). ``cache``: an ``.npz`` file of the raw results (written if absent, read if present)."""
    n = len(images)
    if cache is not None and Path(cache).is_file():
        z = np.load(cache)
        if len(z["counts"]) == n:
            all_scores, all_boxes, all_points, counts = z["scores"], z["boxes"], z["points"], z["counts"]
        else:
            cache = None
            all_scores = None
    else:
        all_scores = None
    if all_scores is None:
        per = []
        for i, img in enumerate(images):
            per.append(detector(img, 0.0))
            if progress and (i + 1) % 250 == 0:
                print(f"\rdetecting: {i + 1}/{n}", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        counts = np.array([len(d) for d in per], np.int64)
        all_scores = np.concatenate([d.scores for d in per]) if n else np.zeros(0, np.float32)
        all_boxes = np.concatenate([d.boxes for d in per]) if n else np.zeros((0, 4), np.float32)
        all_points = np.concatenate([d.points for d in per]) if n else np.zeros((0, 5, 2), np.float32)
        if cache is not None:
            np.savez(cache, scores=all_scores, boxes=all_boxes, points=all_points, counts=counts)
    found = np.zeros(n, bool)
    scores = np.full(n, np.nan, np.float32)
    dboxes = np.full((n, 4), np.nan, np.float32)
    dpoints = np.full((n, 5, 2), np.nan, np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for i in range(n):
        s, e = starts[i], starts[i + 1]
        keep = np.flatnonzero(all_scores[s:e] >= min_score) + s
        if len(keep) == 0:
            continue
        iou = _iou(boxes[i:i + 1], all_boxes[keep])[0]
        j = int(np.argmax(iou))
        if iou[j] >= min_iou:
            found[i] = True
            scores[i], dboxes[i], dpoints[i] = all_scores[keep[j]], all_boxes[keep[j]], all_points[keep[j]]
    return found, scores, dboxes, dpoints


def _landmark_error(model, images, boxes, gt) -> np.ndarray:
    import torch

    from . import data, evaluate

    with torch.inference_mode():
        uv = model.predict(model.preprocess(images, boxes))["landmarks"].numpy()
    norm = "inter_ocular" if gt.shape[1] == 5 else "outer_corners"
    return evaluate.landmark_errors(data.from_box_frame(uv, boxes), gt, norm)


def fit_box_calibration(train_dir: str | os.PathLike, model: Any = "5pt", holdout: np.ndarray | None = None,
                        cache: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit the yuface -> annotated box calibration on a staged training split (see the module docstring).

    Args:
        train_dir: e.g. ``shared/data/mtfl/train`` (5 points) or ``shared/data/300w/train`` (68 points).
        model: the landmark model used to choose between the maps (a name/path for ``load_model`` or a TCDCN);
            its number of points must match the split's.
        holdout: indices of the faces that choose the method (never used for fitting); default: the training
            run's validation faces (``tcdcn_ext.train``: ``default_rng(seed + 1_000_003)``, seed 0, 5 % of a
            5-point split, 10 % of a 68-point one, as the shipped models were trained).
        cache: ``.npz`` of the raw detections (computed once; 10,000 crops take several minutes).

    Returns:
        A dict in the format of :data:`CALIBRATION_5PT` plus ``"report"``: box edge RMS and held-out landmark
        error/failure for ``none``, ``linear`` and ``points``.
    """
    from . import data, evaluate
    from .model import TCDCN, load_model

    fs = data.load_staged(train_dir, progress=progress)
    n = len(fs)
    if holdout is None:
        perm = np.random.default_rng(0 + 1_000_003).permutation(n)
        frac = 0.05 if fs.num_points == 5 else 0.1
        holdout = np.sort(perm[: max(1, int(round(frac * n)))])
    holdout = np.asarray(holdout)
    is_hold = np.zeros(n, bool)
    is_hold[holdout] = True
    found, _, dboxes, dpoints = match_detections(fs.images, fs.boxes, YuFaceDetector(), min_score=0.5,
                                                 progress=progress, cache=cache)
    fit = found & ~is_hold
    ann = fs.boxes.astype(np.float64)
    # (a) linear, weighted so that every face counts the same whatever its size: rows divided by sqrt(w h).
    feats = _linear_features(dboxes[fit])
    w = 1.0 / np.sqrt(feats[:, 0] * feats[:, 1])
    target = np.stack([(ann[fit, 0] + ann[fit, 2]) / 2 - (dboxes[fit, 0] + dboxes[fit, 2]) / 2,
                       (ann[fit, 1] + ann[fit, 3]) / 2 - (dboxes[fit, 1] + dboxes[fit, 3]) / 2,
                       ann[fit, 2] - ann[fit, 0], ann[fit, 3] - ann[fit, 1]], 1)
    linear, *_ = np.linalg.lstsq(feats * w[:, None], target * w[:, None], rcond=None)
    # (b) the 5-point box model refitted on the detector's points.
    points, _ = data.fit_box_model(_PointsAndBoxes(dpoints[fit].astype(np.float64), ann[fit]))
    cal = {"method": "points", "linear": linear.tolist(), "points": points.tolist()}

    net = model if isinstance(model, TCDCN) else load_model(model)
    if net.num_points != fs.num_points:
        raise ValueError(f"fit_box_calibration: {train_dir} has {fs.num_points}-point annotations but the model "
                         f"predicts {net.num_points}")
    hold = np.flatnonzero(found & is_hold)
    det = Detections(np.ones(len(hold), np.float32), dboxes[hold], dpoints[hold])
    imgs = [fs.images[i] for i in hold]
    report: dict[str, Any] = {"faces": n, "detected": int(found.sum()), "fit_faces": int(fit.sum()),
                              "holdout_faces": int(len(holdout)), "holdout_detected": int(len(hold))}
    best, best_err = None, np.inf
    for method in ("none", "linear", "points"):
        b = calibrate_boxes(det, cal, method)
        err = _landmark_error(net, imgs, b, fs.landmarks[hold])
        edge = float(np.sqrt(np.mean((b - ann[hold]) ** 2)))
        report[method] = {"box_edge_rms_px": edge, "mean_error": float(err.mean()),
                          "failure_rate": evaluate.failure_rate(err)}
        if method != "none" and err.mean() < best_err:
            best, best_err = method, float(err.mean())
    cal["method"] = best
    cal["report"] = report
    return cal


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcdcn_ext.detect", description=__doc__.split("\n")[0])
    p.add_argument("--fit", metavar="TRAIN_DIR", required=True,
                   help="staged training split, e.g. mtfl/train (5 points) or 300w/train (68 points)")
    p.add_argument("--model", default="5pt", help="landmark model choosing the method (name or .pt path)")
    p.add_argument("--cache", default=None, help="npz cache of the raw detections")
    args = p.parse_args(argv)
    cal = fit_box_calibration(args.fit, args.model, cache=args.cache)
    print(json.dumps(cal, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
