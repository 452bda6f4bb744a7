"""Landmark metrics and the cumulative error distribution (CED); the result files are :mod:`.reports`.

Errors follow the usual face-alignment convention: the per-face error is the mean Euclidean point error divided by a
normalising distance of the ground truth, reported as a fraction (0.05 = 5 %):

* 5 points (left eye, right eye, nose, mouth left, mouth right): ``"inter_ocular"``, distance between the eye
  centres (points 0 and 1).
* 68 points (iBUG markup, 0-based): ``"outer_corners"``, distance between the outer eye corners 36 and 45;
  ``"inter_pupil"`` (alias ``"inter_ocular"``), distance between the eye centres, mean of 36-41 and of 42-47.

A face *fails* when its error is strictly above the threshold (0.10 by default). ``AUC@T`` is the area under the CED
curve ``F(e) = fraction of faces with error <= e`` on ``[0, T]``, divided by ``T`` (so in ``[0, 1]``); it is computed
exactly as ``mean(clip(1 - err / T, 0, 1))`` rather than by a trapezoid rule.

Only numpy and the standard library are used.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..models.landmarks import LANDMARK_NAMES_5, POSE_NAMES
from ..models.landmarks import five_from_68 as _five_from_68

__all__ = [
    "LANDMARK_NAMES_5",
    "POSE_NAMES",
    "REGIONS_68",
    "normaliser",
    "point_errors",
    "landmark_errors",
    "failure_rate",
    "balanced_accuracy",
    "expected_calibration_error",
    "reliability_table",
    "ced_curve",
    "auc_at",
    "five_from_68",
    "summarise_5pt",
    "summarise_68pt",
    "evaluate_predictions",
    "as_points",
]

#: iBUG 68-point regions, 0-based inclusive ranges as index arrays.
REGIONS_68: dict[str, np.ndarray] = {
    "jaw": np.arange(0, 17),
    "brows": np.arange(17, 27),
    "nose": np.arange(27, 36),
    "eyes": np.arange(36, 48),
    "mouth": np.arange(48, 68),
}


def as_points(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` as float64 ``[N, P, 2]`` points; ``ValueError`` naming ``name`` for another shape."""
    a = np.asarray(a, np.float64)
    if a.ndim != 3 or a.shape[2] != 2:
        raise ValueError(f"{name} must be [N, P, 2], got shape {a.shape}")
    return a


def normaliser(gt: np.ndarray, norm: str) -> np.ndarray:
    """Per-face normalising distance ``[N]`` of ground truth ``gt [N, P, 2]`` (see the module doc for ``norm``)."""
    gt = as_points(gt, "gt")
    p = gt.shape[1]
    if p == 5 and norm in ("inter_ocular", "inter_pupil"):
        d = gt[:, 0] - gt[:, 1]
    elif p == 68 and norm == "outer_corners":
        d = gt[:, 36] - gt[:, 45]
    elif p == 68 and norm in ("inter_pupil", "inter_ocular"):
        d = gt[:, 36:42].mean(axis=1) - gt[:, 42:48].mean(axis=1)
    else:
        raise ValueError(
            f"normaliser {norm!r} is not defined for {p} points "
            "(5 points: 'inter_ocular'; 68 points: 'outer_corners', 'inter_pupil')"
        )
    return np.sqrt((d**2).sum(axis=1))


def point_errors(pred: np.ndarray, gt: np.ndarray, norm: str | np.ndarray) -> np.ndarray:
    """Per-point normalised errors ``[N, P]``: ``||pred - gt|| / normaliser``.

    Args:
        pred, gt: ``[N, P, 2]`` points in the same pixel coordinates.
        norm: a normaliser name (see :func:`normaliser`) or an explicit ``[N]`` array of distances.
    """
    pred, gt = as_points(pred, "pred"), as_points(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    d = normaliser(gt, norm) if isinstance(norm, str) else np.asarray(norm, np.float64).reshape(-1)
    if d.shape != (len(gt),):
        raise ValueError(f"normaliser must have shape ({len(gt)},), got {d.shape}")
    bad = np.flatnonzero(~(d > 0))
    if bad.size:
        raise ValueError(f"normalising distance is zero or invalid for faces {bad[:10].tolist()}")
    return np.sqrt(((pred - gt) ** 2).sum(axis=2)) / d[:, None]


def landmark_errors(pred: np.ndarray, gt: np.ndarray, norm: str | np.ndarray) -> np.ndarray:
    """Per-face mean normalised point error ``[N]`` (see :func:`point_errors`)."""
    return point_errors(pred, gt, norm).mean(axis=1)


def failure_rate(err: np.ndarray, threshold: float = 0.10) -> float:
    """Fraction of faces with error strictly above ``threshold`` (NaN for no faces)."""
    err = np.asarray(err, np.float64).reshape(-1)
    return float(np.mean(err > threshold)) if err.size else math.nan


def ced_curve(err: np.ndarray, max_err: float = 0.10, steps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: ``(thresholds [steps], fraction of faces with err <= threshold [steps])``;
    thresholds evenly spaced on ``[0, max_err]``."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    err = np.sort(np.asarray(err, np.float64).reshape(-1))
    x = np.linspace(0.0, max_err, steps)
    if err.size == 0:
        return x, np.zeros_like(x)
    return x, np.searchsorted(err, x, side="right") / err.size


def auc_at(err: np.ndarray, threshold: float = 0.10) -> float:
    """Area under the CED on ``[0, threshold]`` over ``threshold`` (exact; in ``[0, 1]``; NaN for no faces)."""
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    err = np.asarray(err, np.float64).reshape(-1)
    if err.size == 0:
        return math.nan
    # int_0^T F(e) de = mean_i max(0, T - err_i), since each face contributes 1/N from err_i to T.
    return float(np.mean(np.clip(1.0 - err / threshold, 0.0, 1.0)))


def five_from_68(points: np.ndarray) -> np.ndarray:
    """68-point markup -> 5 points ``[N, 5, 2]`` (:func:`tcdcn_ext.models.landmarks.five_from_68`), after the
    checks of :func:`as_points`."""
    return _five_from_68(as_points(points, "points"))


def _aux_accuracy(labels: np.ndarray, probs: np.ndarray, task: str) -> float:
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, np.float64)
    if probs.ndim == 1:
        pred = (probs > 0.5).astype(np.int64)  # probability of class 1
    elif probs.ndim == 2:
        pred = probs.argmax(axis=1)
    else:
        raise ValueError(f"aux_probs[{task!r}] must be [N] or [N, C], got shape {probs.shape}")
    if len(pred) != len(labels):
        raise ValueError(f"aux_probs[{task!r}] has {len(pred)} rows for {len(labels)} labels")
    return float(np.mean(pred == labels)) if len(labels) else math.nan


def balanced_accuracy(labels: np.ndarray, pred: np.ndarray, classes: int | None = None) -> float:
    """Mean over the classes present in ``labels`` of the per-class recall (chance: 1 / classes; immune to class
    imbalance: always answering the majority class scores 1 / classes, not its share)."""
    labels, pred = np.asarray(labels).reshape(-1), np.asarray(pred).reshape(-1)
    if len(labels) != len(pred):
        raise ValueError(f"balanced_accuracy: {len(pred)} predictions for {len(labels)} labels")
    present = np.unique(labels) if classes is None else [k for k in range(classes) if np.any(labels == k)]
    recalls = [float(np.mean(pred[labels == k] == k)) for k in present]
    return float(np.mean(recalls)) if recalls else math.nan


def _confidence_bins(labels: np.ndarray, probs: np.ndarray, bins: int):
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2:
        raise ValueError(f"calibration needs probabilities [N, C], got shape {probs.shape}")
    conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels).reshape(-1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            yield lo, hi, m, conf[m].mean(), correct[m].mean()


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Top-label expected calibration error: ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over ``bins``
    equal-width confidence bins (0: the confidences are the accuracies)."""
    n = len(np.asarray(labels).reshape(-1))
    return float(sum(m.sum() / n * abs(acc - conf) for _, _, m, conf, acc in _confidence_bins(labels, probs, bins)))


def reliability_table(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per non-empty confidence bin: its range, mean confidence, accuracy and face count (a reliability plot)."""
    return [{"lo": float(lo), "hi": float(hi), "confidence": float(conf), "accuracy": float(acc),
             "count": int(m.sum())} for lo, hi, m, conf, acc in _confidence_bins(labels, probs, bins)]


def summarise_5pt(
    pred: np.ndarray,
    gt: np.ndarray,
    attributes: Mapping[str, np.ndarray] | None = None,
    aux_probs: Mapping[str, np.ndarray] | None = None,
    threshold: float = 0.10,
) -> dict[str, Any]:
    """Summary of 5-point results (errors normalised by the inter-ocular distance, fractions not percent).

    Args:
        pred, gt: ``[N, 5, 2]``.
        attributes: ground-truth codes (``pose`` gives the per-pose breakdown; all give aux accuracies).
        aux_probs: task -> predicted probabilities ``[N, C]`` (or ``[N]`` = probability of class 1).

    Returns:
        ``{"num_faces", "mean_error", "failure_rate", "auc", "threshold", "per_landmark": {name: mean error},
        "per_pose": {pose name: {"count", "mean_error", "failure_rate"}}?, "aux_accuracy": {task: acc}?,
        "aux_balanced_accuracy": {task: mean per-class recall}?, "aux_calibration_error": {task: top-label ECE}?}``
        (the last two for ``[N, C]`` probabilities).
    """
    pe = point_errors(pred, gt, "inter_ocular")
    if pe.shape[1] != 5:
        raise ValueError(f"summarise_5pt needs 5 points, got {pe.shape[1]}")
    err = pe.mean(axis=1)
    out: dict[str, Any] = {
        "num_faces": int(len(err)),
        "mean_error": float(err.mean()) if len(err) else math.nan,
        "failure_rate": failure_rate(err, threshold),
        "auc": auc_at(err, threshold),
        "threshold": float(threshold),
        "per_landmark": {n: float(pe[:, k].mean()) if len(err) else math.nan for k, n in enumerate(LANDMARK_NAMES_5)},
    }
    if attributes is not None and "pose" in attributes:
        pose = np.asarray(attributes["pose"]).reshape(-1)
        if len(pose) != len(err):
            raise ValueError(f"attributes['pose'] has {len(pose)} entries for {len(err)} faces")
        out["per_pose"] = {}
        for code, name in enumerate(POSE_NAMES):
            sel = err[pose == code]
            out["per_pose"][name] = {
                "count": int(sel.size),
                "mean_error": float(sel.mean()) if sel.size else math.nan,
                "failure_rate": failure_rate(sel, threshold),
            }
    if aux_probs:
        if attributes is None:
            raise ValueError("aux_probs given without attributes (the ground-truth labels)")
        missing = [t for t in aux_probs if t not in attributes]
        if missing:
            raise ValueError(f"aux_probs for tasks without ground truth: {missing}")
        out["aux_accuracy"] = {t: _aux_accuracy(attributes[t], p, t) for t, p in aux_probs.items()}
        full = {t: np.asarray(p) for t, p in aux_probs.items() if np.asarray(p).ndim == 2}
        out["aux_balanced_accuracy"] = {t: balanced_accuracy(attributes[t], p.argmax(1), p.shape[1])
                                        for t, p in full.items()}
        out["aux_calibration_error"] = {t: expected_calibration_error(attributes[t], p) for t, p in full.items()}
    return out


def summarise_68pt(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.10) -> dict[str, Any]:
    """Summary of 68-point results.

    Returns:
        ``{"num_faces", "mean_error" (outer corners), "mean_error_inter_pupil", "failure_rate", "auc"
        (both on the outer-corner error), "threshold", "per_region": {jaw, brows, nose, eyes, mouth: mean error over
        the outer-corner distance}}``.
    """
    pe = point_errors(pred, gt, "outer_corners")
    if pe.shape[1] != 68:
        raise ValueError(f"summarise_68pt needs 68 points, got {pe.shape[1]}")
    err = pe.mean(axis=1)
    err_ip = landmark_errors(pred, gt, "inter_pupil")
    n = len(err)
    return {
        "num_faces": int(n),
        "mean_error": float(err.mean()) if n else math.nan,
        "mean_error_inter_pupil": float(err_ip.mean()) if n else math.nan,
        "failure_rate": failure_rate(err, threshold),
        "auc": auc_at(err, threshold),
        "threshold": float(threshold),
        "per_region": {r: float(pe[:, idx].mean()) if n else math.nan for r, idx in REGIONS_68.items()},
    }


def evaluate_predictions(
    pred: np.ndarray,
    gt: np.ndarray,
    attributes: Mapping[str, np.ndarray] | None = None,
    aux_probs: Mapping[str, np.ndarray] | None = None,
    out_dir: str | os.PathLike | None = None,
    label: str = "model",
    names: Sequence[str] | None = None,
    pred_attributes: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    threshold: float = 0.10,
) -> dict[str, Any]:
    """Score predictions and optionally write the report files.

    Picks :func:`summarise_5pt` or :func:`summarise_68pt` from the number of points. With ``out_dir`` it writes
    ``summary.json``, ``summary.md`` (:func:`format_table`), ``ced.png`` (:func:`plot_ced`) and, when ``names`` are
    given, ``predictions.csv`` (:func:`write_predictions_csv`, points as given, i.e. in the coordinates of ``pred``).

    Args:
        pred, gt: ``[N, P, 2]`` with ``P`` 5 or 68, same pixel coordinates.
        attributes, aux_probs: see :func:`summarise_5pt` (5 points only).
        out_dir: folder for the report files (created), or None.
        label: curve label in the plot.
        names: image ids for the predictions csv.
        pred_attributes: attribute name -> (predicted labels ``[N]``, probabilities) for the csv.

    Returns:
        The summary dict of :func:`summarise_5pt` / :func:`summarise_68pt` (per-face errors are not included, to
        keep it small; recompute them with :func:`landmark_errors`).
    """
    p = as_points(gt, "gt").shape[1]
    if p == 5:
        summary = summarise_5pt(pred, gt, attributes, aux_probs, threshold)
        err = landmark_errors(pred, gt, "inter_ocular")
    elif p == 68:
        summary = summarise_68pt(pred, gt, threshold)
        err = landmark_errors(pred, gt, "outer_corners")
    else:
        raise ValueError(f"evaluate_predictions supports 5 or 68 points, got {p}")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from .reports import format_table, plot_ced, write_file, write_json, write_predictions_csv

        write_json(out / "summary.json", summary)
        write_file(out / "summary.md", format_table(summary) + "\n")
        norm = "inter-ocular" if p == 5 else "outer-corner"
        plot_ced({label: err}, out / "ced.png", max_err=max(threshold, 1e-6), title=f"CED ({p} points, {norm})")
        if names is not None:
            write_predictions_csv(out / "predictions.csv", names, pred, pred_attributes)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Model evaluation on a FaceSet (the CLI's core)
# ----------------------------------------------------------------------------------------------------------------


def predict_faceset(model, faceset, batch_size: int = 512, progress: bool = True,
                    mirror_average: bool = False) -> tuple[np.ndarray, dict]:
    """Run ``model`` (a :class:`tcdcn_ext.models.TCDCN`) on every face of ``faceset`` with its annotated box.

    Returns ``(points [N, P, 2] in each image's pixel coordinates, {task: probabilities [N, C]})``.
    """
    from ..inference.predict import predict_faces

    return predict_faces(model, faceset.images, faceset.boxes, batch_size, mirror_average=mirror_average,
                         progress=progress, desc="evaluating")
