"""Fitting the detector -> annotated box calibration (:data:`tcdcn_ext.inference.detector.CALIBRATION_5PT` /
``CALIBRATION_68PT``) on a staged training split: detect every face, refit the box maps on the detections, and choose
the map by the held-out landmark error. ``python -m tcdcn_ext calibrate --fit TRAIN_DIR`` runs it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..inference.boxes import box_iou
from ..inference.detector import Detections, YuNetDetector, calibrate_boxes, linear_box_features
from ..util.progress import progress_bar

__all__ = ["fit_box_calibration", "match_detections"]


class _PointsAndBoxes:
    """The two FaceSet attributes :func:`tcdcn_ext.inference.boxes.fit_box_model` reads (detector points, annotated
    boxes)."""

    def __init__(self, landmarks: np.ndarray, boxes: np.ndarray) -> None:
        self.landmarks, self.boxes = landmarks, boxes
        self.num_points = landmarks.shape[1]

    def __len__(self) -> int:
        return len(self.boxes)


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
        with progress_bar(n, "detecting", progress, unit="img") as bar:
            for img in images:
                per.append(detector(img, 0.0))
                bar.update(1)
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
        iou = box_iou(boxes[i:i + 1], all_boxes[keep])[0]
        j = int(np.argmax(iou))
        if iou[j] >= min_iou:
            found[i] = True
            scores[i], dboxes[i], dpoints[i] = all_scores[keep[j]], all_boxes[keep[j]], all_points[keep[j]]
    return found, scores, dboxes, dpoints


def _landmark_error(model, images, boxes, gt) -> np.ndarray:
    from ..inference.predict import predict_faces
    from . import evaluate

    pts, _ = predict_faces(model, images, boxes)
    return evaluate.landmark_errors(pts, gt, "inter_ocular" if gt.shape[1] == 5 else "outer_corners")


def fit_box_calibration(train_dir: str | os.PathLike, model: Any = "5pt", holdout: np.ndarray | None = None,
                        cache: str | os.PathLike | None = None, progress: bool = True,
                        boxes: str = "given") -> dict[str, Any]:
    """Fit the YuNet -> annotated box calibration on a staged training split (see the module docstring).

    ``boxes``: the convention the model was trained on: ``"given"`` (the split's boxes) or ``"landmarks"`` (boxes
    made from each face's true 5 landmarks by the MTFL box model, ``tcdcn-train --boxes landmarks``).

    Args:
        train_dir: e.g. ``shared/data/mtfl/train`` (5 points) or ``shared/data/300w/train`` (68 points).
        model: the landmark model used to choose between the maps (a name/path for ``load_model`` or a TCDCN);
            its number of points must match the split's.
        holdout: indices of the faces that choose the method (never used for fitting); default: the training
            run's validation faces (``tcdcn_ext.training.train``: ``default_rng(seed + 1_000_003)``, seed 0, 5 % of a
            5-point split, 10 % of a 68-point one, as the shipped models were trained).
        cache: ``.npz`` of the raw detections (computed once; 10,000 crops take several minutes).

    Returns:
        A dict in the format of :data:`CALIBRATION_5PT` plus ``"report"``: box edge RMS and held-out landmark
        error/failure for ``none``, ``linear`` and ``points``.
    """
    from ..models import TCDCN, load_model
    from ..training import evaluate
    from ..training.datasets import load_staged
    from .boxes import fit_box_model

    fs = load_staged(train_dir, progress=progress)
    n = len(fs)
    if holdout is None:
        perm = np.random.default_rng(0 + 1_000_003).permutation(n)
        frac = 0.05 if fs.num_points == 5 else 0.1
        holdout = np.sort(perm[: max(1, int(round(frac * n)))])
    holdout = np.asarray(holdout)
    is_hold = np.zeros(n, bool)
    is_hold[holdout] = True
    found, _, dboxes, dpoints = match_detections(fs.images, fs.boxes, YuNetDetector(), min_score=0.5,
                                                 progress=progress, cache=cache)
    fit = found & ~is_hold
    if boxes == "landmarks":  # the model was trained on boxes made from the true landmarks (tcdcn-train --boxes)
        from .train import landmark_boxes

        ann = landmark_boxes(fs).astype(np.float64)
    elif boxes == "given":
        ann = fs.boxes.astype(np.float64)
    else:
        raise ValueError(f"boxes must be 'given' or 'landmarks', got {boxes!r}")
    # (a) linear, weighted so that every face counts the same whatever its size: rows divided by sqrt(w h).
    feats = linear_box_features(dboxes[fit])
    w = 1.0 / np.sqrt(feats[:, 0] * feats[:, 1])
    target = np.stack([(ann[fit, 0] + ann[fit, 2]) / 2 - (dboxes[fit, 0] + dboxes[fit, 2]) / 2,
                       (ann[fit, 1] + ann[fit, 3]) / 2 - (dboxes[fit, 1] + dboxes[fit, 3]) / 2,
                       ann[fit, 2] - ann[fit, 0], ann[fit, 3] - ann[fit, 1]], 1)
    linear, *_ = np.linalg.lstsq(feats * w[:, None], target * w[:, None], rcond=None)
    # (b) the 5-point box model refitted on the detector's points.
    points, _ = fit_box_model(_PointsAndBoxes(dpoints[fit].astype(np.float64), ann[fit]))
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
