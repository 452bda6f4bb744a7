"""Landmark metrics, cumulative error distribution (CED) plots and result files.

Errors follow the usual face-alignment convention: the per-face error is the mean Euclidean point error divided by a
normalising distance of the ground truth, reported as a fraction (0.05 = 5 %):

* 5 points (left eye, right eye, nose, mouth left, mouth right): ``"inter_ocular"``, distance between the eye
  centres (points 0 and 1).
* 68 points (iBUG markup, 0-based): ``"outer_corners"``, distance between the outer eye corners 36 and 45;
  ``"inter_pupil"`` (alias ``"inter_ocular"``), distance between the eye centres, mean of 36-41 and of 42-47.

A face *fails* when its error is strictly above the threshold (0.10 by default). ``AUC@T`` is the area under the CED
curve ``F(e) = fraction of faces with error <= e`` on ``[0, T]``, divided by ``T`` (so in ``[0, 1]``); it is computed
exactly as ``mean(clip(1 - err / T, 0, 1))`` rather than by a trapezoid rule.

Only numpy, OpenCV and the standard library are used (the plot is drawn with OpenCV).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

__all__ = [
    "LANDMARK_NAMES_5",
    "POSE_NAMES",
    "REGIONS_68",
    "normaliser",
    "point_errors",
    "landmark_errors",
    "failure_rate",
    "ced_curve",
    "auc_at",
    "five_from_68",
    "summarise_5pt",
    "summarise_68pt",
    "evaluate_predictions",
    "plot_ced",
    "write_json",
    "write_predictions_csv",
    "format_table",
]

LANDMARK_NAMES_5: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
POSE_NAMES: tuple[str, ...] = ("left_profile", "left", "frontal", "right", "right_profile")
#: iBUG 68-point regions, 0-based inclusive ranges as index arrays.
REGIONS_68: dict[str, np.ndarray] = {
    "jaw": np.arange(0, 17),
    "brows": np.arange(17, 27),
    "nose": np.arange(27, 36),
    "eyes": np.arange(36, 48),
    "mouth": np.arange(48, 68),
}


def _points(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim != 3 or a.shape[2] != 2:
        raise ValueError(f"{name} must be [N, P, 2], got shape {a.shape}")
    return a


def normaliser(gt: np.ndarray, norm: str) -> np.ndarray:
    """Per-face normalising distance ``[N]`` of ground truth ``gt [N, P, 2]`` (see the module doc for ``norm``)."""
    gt = _points(gt, "gt")
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
    pred, gt = _points(pred, "pred"), _points(gt, "gt")
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
    """68-point markup -> 5 points ``[N, 5, 2]``: eye centres (mean of 36-41, 42-47), nose tip 30, mouth 48 / 54."""
    p = _points(points, "points")
    if p.shape[1] != 68:
        raise ValueError(f"five_from_68 needs 68 points, got {p.shape[1]}")
    return np.stack([p[:, 36:42].mean(1), p[:, 42:48].mean(1), p[:, 30], p[:, 48], p[:, 54]], axis=1)


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
    p = _points(gt, "gt").shape[1]
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
        write_json(out / "summary.json", summary)
        _atomic_write_text(out / "summary.md", format_table(summary) + "\n")
        norm = "inter-ocular" if p == 5 else "outer-corner"
        plot_ced({label: err}, out / "ced.png", max_err=max(threshold, 1e-6), title=f"CED ({p} points, {norm})")
        if names is not None:
            write_predictions_csv(out / "predictions.csv", names, pred, pred_attributes)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Plot (OpenCV only)
# ----------------------------------------------------------------------------------------------------------------

_COLOURS_BGR = [
    (180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
    (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23),
]
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _ascii(text: str) -> str:
    # Hershey fonts only draw ASCII.
    return text.encode("ascii", "replace").decode("ascii")


def _put(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5, colour=(0, 0, 0), thick: int = 1,
         align: str = "left") -> None:
    text = _ascii(text)
    (w, h), _ = cv2.getTextSize(text, _FONT, scale, thick)
    x, y = org
    if align == "center":
        x -= w // 2
    elif align == "right":
        x -= w
    cv2.putText(img, text, (int(x), int(y)), _FONT, scale, colour, thick, cv2.LINE_AA)


def plot_ced(
    curves: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    max_err: float = 0.10,
    title: str = "Cumulative error distribution",
    size: tuple[int, int] = (800, 600),
) -> Path:
    """Draw CED curves to a PNG with OpenCV: axes, ticks, grid, legend with each curve's AUC@max_err.

    Args:
        curves: label -> per-face errors ``[N]`` (fractions).
        path: output file (``.png``); written atomically.
        max_err: right end of the x axis (also the AUC threshold).
        title: plot title (ASCII; other characters become ``?``).
        size: ``(width, height)`` in pixels.

    Returns:
        The path written.
    """
    if not curves:
        raise ValueError("plot_ced: no curves given")
    if max_err <= 0:
        raise ValueError(f"plot_ced: max_err must be > 0, got {max_err}")
    path = Path(path)
    width, height = size
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 80, 30, 50, 60
    pw, ph = width - left - right, height - top - bottom
    if pw < 100 or ph < 100:
        raise ValueError(f"plot_ced: size {size} is too small")

    def to_px(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        px = left + np.asarray(x) / max_err * pw
        py = top + (1.0 - np.asarray(y)) * ph
        return np.stack([px, py], axis=-1)

    # Grid and ticks: 10 divisions on y (0..1), 5 or 10 on x.
    nx = 10 if max_err * 100 % 1 == 0 and round(max_err * 100) <= 10 else 5
    for i in range(nx + 1):
        x = left + round(i * pw / nx)
        cv2.line(img, (x, top), (x, top + ph), (225, 225, 225), 1)
        cv2.line(img, (x, top + ph), (x, top + ph + 5), (0, 0, 0), 1)
        _put(img, f"{100 * max_err * i / nx:g}", (x, top + ph + 22), 0.45, align="center")
    for i in range(11):
        y = top + round(ph - i * ph / 10)
        cv2.line(img, (left, y), (left + pw, y), (225, 225, 225), 1)
        cv2.line(img, (left - 5, y), (left, y), (0, 0, 0), 1)
        _put(img, f"{i / 10:.1f}", (left - 8, y + 5), 0.45, align="right")
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)

    # Axis labels and title.
    _put(img, "normalised point-to-point error (%)", (left + pw // 2, height - 15), 0.55, align="center")
    ylab = "fraction of faces"
    (tw, th), _ = cv2.getTextSize(ylab, _FONT, 0.55, 1)
    strip = np.full((th + 10, tw + 4, 3), 255, np.uint8)
    _put(strip, ylab, (2, th + 3), 0.55)
    strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0 = top + (ph - strip.shape[0]) // 2
    if y0 >= 0 and y0 + strip.shape[0] <= height:
        img[y0 : y0 + strip.shape[0], 12 : 12 + strip.shape[1]] = strip
    _put(img, title, (left + pw // 2, 32), 0.65, align="center", thick=1)

    # Curves (exact step functions, drawn at 1000 samples) and legend.
    entries = []
    for k, (label, err) in enumerate(curves.items()):
        colour = _COLOURS_BGR[k % len(_COLOURS_BGR)]
        err = np.asarray(err, np.float64).reshape(-1)
        xs, ys = ced_curve(err, max_err, 1000)
        pts = np.round(to_px(xs, ys) * 16).astype(np.int32)  # 4 fractional bits for sub-pixel antialiasing
        cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA, shift=4)
        entries.append((f"{label} (AUC@{100 * max_err:g}% {auc_at(err, max_err):.3f}, n={err.size})", colour))
    line_h = 22
    widths = [cv2.getTextSize(_ascii(t), _FONT, 0.5, 1)[0][0] for t, _ in entries]
    box_w, box_h = max(widths) + 50, line_h * len(entries) + 10
    bx1, by1 = left + pw - 10, top + ph - 10
    bx0, by0 = bx1 - box_w, by1 - box_h
    cv2.rectangle(img, (bx0, by0), (bx1, by1), (255, 255, 255), -1)
    cv2.rectangle(img, (bx0, by0), (bx1, by1), (120, 120, 120), 1)
    for k, (text, colour) in enumerate(entries):
        y = by0 + 5 + line_h * k + line_h // 2
        cv2.line(img, (bx0 + 8, y), (bx0 + 36, y), colour, 2, cv2.LINE_AA)
        _put(img, text, (bx0 + 42, y + 5), 0.5)

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"plot_ced: PNG encoding failed for {path}")
    _atomic_write_bytes(path, buf.tobytes())
    return path


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path`` (readers never see a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, paths, tuples -> JSON types; non-finite floats -> None (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"write_json: cannot serialise {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file + rename); numpy types converted, NaN/inf -> null."""
    path = Path(path)
    _atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")
    return path


def write_predictions_csv(
    path: str | os.PathLike,
    names: Sequence[str],
    points_px: np.ndarray,
    attributes: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """One row per face: ``image, x0, y0, ..., x{P-1}, y{P-1}`` then, per attribute, ``<name>, <name>_prob``.

    Args:
        names: ``N`` image ids.
        points_px: ``[N, P, 2]`` predicted points in each image's pixel coordinates (written with 2 decimals).
        attributes: name -> ``(labels [N] int, probs)`` where ``probs`` is ``[N, C]`` (the predicted label's
            probability is written) or ``[N]`` (probability of class 1; the predicted label's is written).
    """
    pts = _points(points_px, "points_px")
    n, p = pts.shape[:2]
    if len(names) != n:
        raise ValueError(f"write_predictions_csv: {len(names)} names for {n} faces")
    header = ["image"] + [f"{a}{k}" for k in range(p) for a in ("x", "y")]
    cols: list[tuple[np.ndarray, np.ndarray]] = []
    for name, (labels, probs) in (attributes or {}).items():
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        probs = np.asarray(probs, np.float64)
        if len(labels) != n or len(probs) != n:
            raise ValueError(f"write_predictions_csv: attribute {name!r} has {len(labels)}/{len(probs)} rows for {n}")
        if probs.ndim == 2:
            chosen = probs[np.arange(n), labels]
        elif probs.ndim == 1:
            chosen = np.where(labels == 1, probs, 1.0 - probs)
        else:
            raise ValueError(f"write_predictions_csv: attribute {name!r} probs must be [N] or [N, C]")
        header += [name, f"{name}_prob"]
        cols.append((labels, chosen))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    flat = pts.reshape(n, -1)
    for i in range(n):
        row = [names[i]] + [f"{v:.2f}" for v in flat[i]]
        for labels, chosen in cols:
            row += [str(int(labels[i])), f"{chosen[i]:.4f}"]
        w.writerow(row)
    path = Path(path)
    _atomic_write_text(path, buf.getvalue())
    return path


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        k = key.lower()
        if "auc" in k:
            return f"{float(value):.4f}"
        if "threshold" in k:
            return f"{100 * float(value):g} %"
        return f"{100 * float(value):.2f} %"  # errors, failure rates, accuracies are fractions
    return str(value)


def format_table(summary: Mapping[str, Any]) -> str:
    """Markdown rendering of a summary dict: scalar entries as a ``metric | value`` table, each nested dict as its
    own table (a dict of dicts, like ``per_pose``, becomes one row per key). Errors, failure rates and accuracies
    are shown in percent, AUC as a fraction."""
    lines = ["| metric | value |", "| --- | ---: |"]
    for k, v in summary.items():
        if not isinstance(v, Mapping):
            lines.append(f"| {k} | {_fmt(k, v)} |")
    for section, sub in summary.items():
        if not isinstance(sub, Mapping):
            continue
        lines += ["", f"**{section}**", ""]
        if sub and all(isinstance(v, Mapping) for v in sub.values()):
            cols = list(dict.fromkeys(c for v in sub.values() for c in v))
            lines.append("| " + " | ".join([section.removeprefix("per_"), *cols]) + " |")
            lines.append("| --- |" + " ---: |" * len(cols))
            for name, row in sub.items():
                lines.append("| " + " | ".join([str(name), *(_fmt(c, row.get(c)) for c in cols)]) + " |")
        else:
            value_name = "accuracy" if "accuracy" in section else "error"
            row_name = "task" if "accuracy" in section else section.removeprefix("per_")
            lines.append(f"| {row_name} | {value_name} |")
            lines.append("| --- | ---: |")
            for name, v in sub.items():
                lines.append(f"| {name} | {_fmt(value_name, v)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Model evaluation on a FaceSet (the CLI's core)
# ----------------------------------------------------------------------------------------------------------------


def predict_faceset(model, faceset, batch_size: int = 512, progress: bool = True,
                    mirror_average: bool = False) -> tuple[np.ndarray, dict]:
    """Run ``model`` (a :class:`tcdcn_ext.model.TCDCN`) on every face of ``faceset`` with its annotated box.

    Returns ``(points [N, P, 2] in each image's pixel coordinates, {task: probabilities [N, C]})``.
    """
    import sys

    import torch

    from . import data as data_mod

    n = len(faceset)
    pts = np.empty((n, model.num_points, 2), np.float32)
    probs: dict[str, list[np.ndarray]] = {}
    for i in range(0, n, batch_size):
        sl = slice(i, min(i + batch_size, n))
        x = model.preprocess(faceset.images[sl], faceset.boxes[sl])
        out = model.predict(x, mirror_average=mirror_average)
        pts[sl] = data_mod.from_box_frame(out["landmarks"].numpy(), faceset.boxes[sl])
        for k, v in out.items():
            if k != "landmarks":
                probs.setdefault(k, []).append(v.numpy())
        if progress:
            sys.stderr.write(f"\revaluating {min(i + batch_size, n)}/{n} faces")
            sys.stderr.flush()
    if progress and n:
        sys.stderr.write("\n")
    del torch
    return pts, {k: np.concatenate(v) for k, v in probs.items()}
