"""Result files of an evaluation: the CED plot (drawn with OpenCV), the summary JSON, the per-face predictions CSV
and the summary table; each written atomically (:func:`tcdcn_ext.util.files.atomic_write`)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from ..util.files import atomic_write
from .evaluate import as_points, auc_at, ced_curve

__all__ = ["format_table", "plot_ced", "write_file", "write_json", "write_png", "write_predictions_csv"]


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

    write_png(path, img)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """A BGR uint8 image as a PNG file, atomically (:func:`write_file`); ``OSError`` naming the file if it cannot be
    encoded."""
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    write_file(path, buf.tobytes())


def write_file(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a result file atomically (:func:`tcdcn_ext.util.files.atomic_write`: readers never see a partial
    file), making its folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data.encode("utf-8") if isinstance(data, str) else data))


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
    write_file(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")
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
    pts = as_points(points_px, "points_px")
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
    write_file(path, buf.getvalue())
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
