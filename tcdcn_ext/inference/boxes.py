"""Face box geometry: the box-normalised frame, the box -> network input map, and the MTFL box model (a square face
box from 5 landmarks, for data that ships no boxes and for the detector's calibration).

Coordinate conventions (the same as ``shared/data/README.md``):

* Image points are **0-based pixel-centre** coordinates: the centre of the top-left pixel is ``(0, 0)``; a point on
  pixel column ``c`` has ``x = c``. This is also OpenCV's convention for ``warpAffine`` matrices, so a 2x3 matrix
  built here can be handed to OpenCV unchanged.
* Boxes are ``(x0, y0, x1, y1)`` in the same coordinates.
* The model works in the **box-normalised frame** ``(u, v) in [0, 1]^2``: ``x = x0 + u * (x1 - x0)``,
  ``y = y0 + v * (y1 - y0)``. The network input is the box resampled to ``S x S`` grey pixels, input pixel ``i``
  having its centre at ``u = (i + 0.5) / S``; hence input pixel coordinate ``i = u * S - 0.5``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..training.datasets import FaceSet

__all__ = ["MTFL_BOX_MODEL", "box_iou", "box_matrices", "box_to_input_matrix", "fit_box_model", "from_box_frame",
           "predict_boxes_5pt", "scale_boxes", "to_box_frame"]

#: Least-squares model predicting a square face box from 5 landmarks (rows: bias, nose-offset feature; columns:
#: box-centre offset along the face's x axis, along its y axis, box side), all in units of the landmarks' RMS
#: spread. See :func:`predict_boxes_5pt` for the frame and :func:`fit_box_model` for the fit. Fitted by
#: ``fit_box_model(load_staged("shared/data/mtfl/train"))`` on the 10,000 staged MTFL training faces (CUHK
#: boxes); fit error there: 4.47 px RMS per box edge for boxes of about 80 px (crop pixels), i.e. about 5.6 % of
#: the side (a constant-only model gives 5.15 px, the full 10-coordinate linear model 4.32 px).
MTFL_BOX_MODEL: np.ndarray = np.array(
    [
        [-0.02585404, -0.05087500, 3.26735251],
        [-0.70238707, 0.01415575, 0.01253957],
    ],
    dtype=np.float64,
)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] with b [M, 4] -> [N, M]."""
    a = np.asarray(a, np.float64)[:, None]
    b = np.asarray(b, np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def box_to_input_matrix(box: Sequence[float] | np.ndarray, size: int) -> np.ndarray:
    """2x3 affine (float64) mapping image pixel coordinates to input pixel coordinates for ``box`` -> ``size^2``.

    Input pixel ``i`` has its centre at box fraction ``u = (i + 0.5) / size``, so ``i = (x - x0) * size / w - 0.5``.
    Both sides use the pixel-centre convention, as ``cv2.warpAffine`` expects (pass it without
    ``WARP_INVERSE_MAP``).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if not (w > 0 and h > 0):
        raise ValueError(f"box_to_input_matrix: empty box {[x0, y0, x1, y1]}")
    sx, sy = size / w, size / h
    return np.array([[sx, 0.0, -x0 * sx - 0.5], [0.0, sy, -y0 * sy - 0.5]], np.float64)


def box_matrices(boxes: np.ndarray, size: int) -> np.ndarray:
    """Vectorised :func:`box_to_input_matrix`: ``[N, 4] -> [N, 2, 3]`` float64."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if np.any(~(w > 0)) or np.any(~(h > 0)):
        bad = np.flatnonzero(~((w > 0) & (h > 0)))[:5].tolist()
        raise ValueError(f"empty boxes (need x1 > x0 and y1 > y0) at indices {bad}")
    m = np.zeros((len(b), 2, 3))
    m[:, 0, 0] = size / w
    m[:, 1, 1] = size / h
    m[:, 0, 2] = -b[:, 0] * m[:, 0, 0] - 0.5
    m[:, 1, 2] = -b[:, 1] * m[:, 1, 1] - 0.5
    return m


def to_box_frame(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Image points -> box-normalised ``(u, v)``: ``u = (x - x0) / (x1 - x0)``, ``v = (y - y0) / (y1 - y0)``.

    Shapes: ``points [..., P, 2]``, ``boxes [..., 4]`` (e.g. ``[N, P, 2]`` and ``[N, 4]``); returns float32
    ``[..., P, 2]``.
    """
    p = np.asarray(points, np.float64)
    b = np.asarray(boxes, np.float64)[..., None, :]
    origin, size = b[..., 0:2], b[..., 2:4] - b[..., 0:2]
    return ((p - origin) / size).astype(np.float32)


def scale_boxes(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Boxes ``[N, 4]`` ``(x0, y0, x1, y1)`` scaled by ``factor`` about their centres, float64 ``[N, 4]``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c, half = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) / 2 * factor
    return np.concatenate([c - half, c + half], axis=1)


def from_box_frame(uv: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Box-normalised ``(u, v)`` -> image points (inverse of :func:`to_box_frame`); shapes as there, float32."""
    if isinstance(uv, np.ndarray) and uv.ndim == 3 and len(uv) <= 4 and np.ndim(boxes) == 2:
        # A few faces (the Aligner at batch 1): Python floats, float64 as below, beat the numpy calls, each of which
        # costs microseconds on the caches a forward pass has just evicted.
        pts = [[[x0 + u * (x1 - x0), y0 + v * (y1 - y0)] for u, v in face]
               for face, (x0, y0, x1, y1) in zip(uv.tolist(), np.asarray(boxes, np.float64).tolist())]
        return np.array(pts, np.float32).reshape(uv.shape)
    b = np.asarray(boxes, np.float64)[..., None, :]
    origin = b[..., :2]
    return (origin + np.asarray(uv, np.float64) * (b[..., 2:] - origin)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Box model for MTFL (which ships no face boxes)
# ----------------------------------------------------------------------------------------------------------------


def _face_frame(landmarks5: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Similarity frame of 5-point faces.

    Returns ``(centroid [N, 2], spread [N], rot [N, 2, 2], q [N, 5, 2])``: ``spread`` is the RMS distance of the
    points from their centroid, ``rot`` the rotation that turns the eye-centre -> mouth-centre vector to +y (so
    the face is upright whatever its in-plane angle, upside-down faces included), ``q = rot @ (p - c) / spread``.
    """
    p = np.asarray(landmarks5, np.float64)
    if p.ndim != 3 or p.shape[1:] != (5, 2):
        raise ValueError(f"expected 5-point landmarks [N, 5, 2], got shape {p.shape}")
    c = p.mean(axis=1)
    d = p - c[:, None, :]
    spread = np.sqrt((d**2).sum(axis=2).mean(axis=1))
    if np.any(spread <= 1e-9):
        bad = np.flatnonzero(spread <= 1e-9)[:5].tolist()
        raise ValueError(f"degenerate landmarks (all 5 points coincide) for faces {bad}")
    v = (p[:, 3] + p[:, 4]) / 2 - (p[:, 0] + p[:, 1]) / 2
    theta = np.arctan2(v[:, 0], v[:, 1])
    ct, st = np.cos(theta), np.sin(theta)
    rot = np.stack([np.stack([ct, -st], -1), np.stack([st, ct], -1)], 1)
    q = np.einsum("nij,npj->npi", rot, d) / spread[:, None, None]
    return c, spread, rot, q


def _box_features(q: np.ndarray) -> np.ndarray:
    # [1, nose x in the upright frame]: the nose's sideways offset measures yaw, which shifts the box sideways.
    return np.stack([np.ones(len(q)), q[:, 2, 0]], axis=1)


def predict_boxes_5pt(landmarks5: np.ndarray, model: np.ndarray | None = None) -> np.ndarray:
    """Square face boxes from 5 landmarks with the least-squares box model.

    In the face's upright frame (see :func:`fit_box_model`) the model gives ``[ox, oy, side] = [1, q_nose_x] @
    model``; the box centre is ``c + spread * rot^T @ (ox, oy)`` and its side ``spread * side``.

    Args:
        landmarks5: ``[N, 5, 2]`` points (any pixel convention; the result uses the same one).
        model: ``[2, 3]`` coefficients; default :data:`MTFL_BOX_MODEL`.

    Returns:
        ``float64 [N, 4]`` boxes ``(x0, y0, x1, y1)``.
    """
    model = MTFL_BOX_MODEL if model is None else np.asarray(model, np.float64)
    if model.shape != (2, 3):
        raise ValueError(f"box model must be [2, 3], got {model.shape}")
    c, spread, rot, q = _face_frame(landmarks5)
    pred = _box_features(q) @ model
    centre = c + np.einsum("nji,nj->ni", rot, pred[:, :2]) * spread[:, None]  # rot^T @ offset
    half = pred[:, 2] * spread / 2
    return np.stack([centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half], axis=1)


def fit_box_model(faceset: "FaceSet") -> tuple[np.ndarray, float]:
    """Fit the 5-point -> face box model by linear least squares.

    Each face is put in its similarity frame (centroid ``c``, RMS spread ``s``, rotation ``R`` making eye centre ->
    mouth centre point down, see ``_face_frame``); the targets are the box centre offset ``R (b - c) / s`` and the
    box side ``(w + h) / 2 / s``; the features are ``[1, q_nose_x]``. The frame makes the model invariant to
    translation, scale and in-plane rotation, so fitting on the 128x128 staged crops is the same as fitting on the
    originals.

    Returns:
        ``(model [2, 3], rms)`` where ``rms`` is the root-mean-square error over all four box edges of the refitted
        boxes, in the faceset's pixels.
    """
    if faceset.num_points != 5:
        raise ValueError(f"fit_box_model needs 5-point faces, got {faceset.num_points} points")
    if len(faceset) < 2:
        raise ValueError("fit_box_model needs at least 2 faces")
    b = faceset.boxes.astype(np.float64)
    c, spread, rot, q = _face_frame(faceset.landmarks)
    centre = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    side = ((b[:, 2] - b[:, 0]) + (b[:, 3] - b[:, 1])) / 2
    target = np.concatenate(
        [np.einsum("nij,nj->ni", rot, centre - c) / spread[:, None], (side / spread)[:, None]], axis=1
    )
    model, *_ = np.linalg.lstsq(_box_features(q), target, rcond=None)
    err = predict_boxes_5pt(faceset.landmarks, model) - b
    return model, float(np.sqrt(np.mean(err**2)))
