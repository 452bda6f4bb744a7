"""TCDCN-Averaged, the reference (oracle) implementation in plain PyTorch/NumPy.

The paper's 68-point report averages the predictions of the network over small translations of the face box.
This module fixes the exact semantics, so that a fused ``shift_average`` operator can be checked against it.

Definitions, for a face with the given box ``b = (x0, y0, x1, y1)`` (image pixels, pixel-centre convention),
``w = x1 - x0``, ``h = y1 - y0``, and shifts ``s_k = (sx_k, sy_k)``, ``k = 0 .. K-1``:

1. **Shifted boxes** (units: fractions of the given box's width / height, not pixels)::

       b_k = (x0 + sx_k w,  y0 + sy_k h,  x1 + sx_k w,  y1 + sy_k h)

   A positive ``sx`` moves the box to the right (image +x), a positive ``sy`` moves it down (image +y). The
   shift is applied to the *given* box; a model with ``config.box_scale != 1`` then enlarges each ``b_k`` about
   its centre as usual (:meth:`TCDCN.input_boxes`), which is the same as shifting the enlarged box by the same
   number of pixels.
2. **One plain prediction per shifted box**: ``uv_k = model.predict(model.preprocess(image, b_k))["landmarks"]``,
   points ``[P, 2]`` in the frame of ``b_k`` (``u = (x - x0_k) / w``); eval mode, no mirror averaging.
3. **Un-shift** into image pixels through the shifted box: ``p_k = (x0_k + u_k w, y0_k + v_k h)``
   (:func:`tcdcn_ext.data.from_box_frame` with ``b_k``).
4. **Average**: the unweighted arithmetic mean over the K shifts, per point and coordinate, accumulated in float64
   and returned as float32: ``p = (1 / K) sum_k p_k``. Equivalently, since every ``b_k`` has the size of ``b``:
   ``p = (x0, y0) + (w, h) * (mean_k uv_k + mean_k s_k)`` (:func:`average_shifted`).

Batch layout (what a fused op sees): the ``N * K`` network inputs are face-major, input ``n * K + k`` is face
``n`` with shift ``k``.

:data:`DEFAULT_SHIFTS_20` is the pattern chosen by validation on a held-out part of ``300w/train`` (never the test
set); see ``docs/RESULTS_68pt.md``. :func:`make_shifts` builds the other patterns that were compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["DEFAULT_SHIFTS_20", "average_shifted", "make_shifts", "predict_averaged", "shift_boxes"]


def make_shifts(pattern: str = "grid", radius: float = 0.04, n: int = 20) -> np.ndarray:
    """A shift pattern ``[K, 2]`` (float64, fractions of the box width / height), symmetric about zero.

    * ``"grid"``: a 5 x 4 grid (``n`` must be 20): ``sx`` in ``linspace(-radius, radius, 5)``, ``sy`` in
      ``linspace(-radius, radius, 4)``, row-major over ``sy`` then ``sx`` (k = 5 * row + column).
    * ``"ring"``: ``n`` points on a circle of radius ``radius``, ``s_k = radius (cos a_k, sin a_k)``,
      ``a_k = 2 pi k / n``.
    * ``"rings"``: 8 points on a circle of ``radius / 2`` and ``n - 8`` on a circle of ``radius`` (rotated by
      ``pi / (n - 8)``) — the Aligner's 20-shift layout when ``radius = 0.06``.
    """
    if radius < 0 or not np.isfinite(radius):
        raise ValueError(f"radius must be finite and >= 0, got {radius}")
    if pattern == "grid":
        if n != 20:
            raise ValueError(f"the 'grid' pattern is 5 x 4 = 20 shifts, got n={n}")
        sx, sy = np.linspace(-radius, radius, 5), np.linspace(-radius, radius, 4)
        gy, gx = np.meshgrid(sy, sx, indexing="ij")
        return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float64)
    if pattern == "ring":
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        a = 2 * np.pi * np.arange(n) / n
        return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)
    if pattern == "rings":
        if n <= 8:
            raise ValueError(f"the 'rings' pattern needs n > 8, got {n}")
        a1 = 2 * np.pi * np.arange(8) / 8
        m = n - 8
        a2 = np.pi / m + 2 * np.pi * np.arange(m) / m
        inner = 0.5 * radius * np.stack([np.cos(a1), np.sin(a1)], axis=1)
        outer = radius * np.stack([np.cos(a2), np.sin(a2)], axis=1)
        return np.concatenate([inner, outer])
    raise ValueError(f"unknown shift pattern {pattern!r}; expected 'grid', 'ring' or 'rings'")


#: The default 20 shifts of TCDCN-Averaged, ``make_shifts("rings", 0.08)``: 8 shifts on a circle of radius 0.04
#: (angles 0, 45, ..., 315 degrees) and 12 on a circle of radius 0.08 (angles 15, 45, ..., 345 degrees), in fractions
#: of the box width / height; zero mean. Chosen on the held-out 10 % of 300w/train (121 faces), never the test set:
#: it was best or within 0.02 points of the best of 3 patterns x 10 radii for all three 68-point models compared.
DEFAULT_SHIFTS_20: np.ndarray = make_shifts("rings", 0.08)
DEFAULT_SHIFTS_20.setflags(write=False)


def _as_shifts(shifts: np.ndarray | Sequence) -> np.ndarray:
    s = np.asarray(shifts, np.float64)
    if s.ndim == 1 and s.size == 2:
        s = s[None]
    if s.ndim != 2 or s.shape[1] != 2 or len(s) == 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"shifts must be a non-empty finite [K, 2] array, got shape {s.shape}")
    return s


def _as_boxes(boxes: np.ndarray | Sequence) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if np.any(~(b[:, 2] > b[:, 0])) or np.any(~(b[:, 3] > b[:, 1])):
        raise ValueError("boxes must have x1 > x0 and y1 > y0")
    return b


def shift_boxes(boxes: np.ndarray | Sequence, shifts: np.ndarray | Sequence = DEFAULT_SHIFTS_20) -> np.ndarray:
    """Shifted boxes ``[N, K, 4]`` float64 (definition 1 of the module docstring)."""
    b, s = _as_boxes(boxes), _as_shifts(shifts)
    wh = b[:, 2:] - b[:, :2]  # [N, 2]
    d = s[None, :, :] * wh[:, None, :]  # [N, K, 2] pixels
    return b[:, None, :] + np.concatenate([d, d], axis=2)


def average_shifted(uv: np.ndarray | torch.Tensor, boxes: np.ndarray | Sequence,
                    shifts: np.ndarray | Sequence = DEFAULT_SHIFTS_20) -> np.ndarray:
    """Un-shift and average: per-shift box-frame predictions ``uv [N * K, P, 2]`` (face-major) or ``[N, K, P, 2]``
    -> image points ``[N, P, 2]`` float32 (definitions 3-4 of the module docstring)."""
    b, s = _as_boxes(boxes), _as_shifts(shifts)
    n, k = len(b), len(s)
    q = (uv.detach().cpu().numpy() if isinstance(uv, torch.Tensor) else np.asarray(uv)).astype(np.float64)
    if q.ndim == 3:
        if q.shape[0] != n * k:
            raise ValueError(f"uv has {q.shape[0]} rows, expected N * K = {n} * {k}")
        q = q.reshape(n, k, q.shape[1], 2)
    if q.ndim != 4 or q.shape[:2] != (n, k) or q.shape[3] != 2:
        raise ValueError(f"uv must be [N*K, P, 2] or [N, K, P, 2] with N={n}, K={k}; got {q.shape}")
    sb = shift_boxes(b, s)  # [N, K, 4]
    origin, size = sb[:, :, None, 0:2], sb[:, :, None, 2:4] - sb[:, :, None, 0:2]
    pts = origin + q * size  # [N, K, P, 2], image pixels
    return pts.mean(axis=1).astype(np.float32)


def predict_averaged(model, images: Sequence[np.ndarray] | np.ndarray, boxes: np.ndarray | Sequence,
                     shifts: np.ndarray | Sequence = DEFAULT_SHIFTS_20, batch_size: int = 1024,
                     return_all: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """TCDCN-Averaged: landmarks ``[N, P, 2]`` (float32, image pixels) of each face, averaged over ``shifts``.

    Args:
        model: a :class:`tcdcn_ext.model.TCDCN` (any ``box_scale``; its ``preprocess``/``predict`` are used).
        images: ``N`` uint8 RGB ``[H, W, 3]`` (or grey ``[H, W]``) images, or one image.
        boxes: ``[N, 4]`` face boxes ``(x0, y0, x1, y1)`` in each image's pixels.
        shifts: ``[K, 2]`` box translations in fractions of the box width / height (default
            :data:`DEFAULT_SHIFTS_20`); ``[[0, 0]]`` gives exactly the plain single-pass prediction.
        batch_size: network inputs per forward pass.
        return_all: also return the per-shift image points ``[N, K, P, 2]`` (float32).

    See the module docstring for the exact definition.
    """
    if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8:
        images = [images]
    images = list(images)
    b, s = _as_boxes(boxes), _as_shifts(shifts)
    if len(images) != len(b):
        raise ValueError(f"predict_averaged: {len(images)} images but {len(b)} boxes")
    n, k, p = len(b), len(s), model.num_points
    sb = shift_boxes(b, s).reshape(n * k, 4)
    faces_per = max(1, batch_size // k)
    uv = np.empty((n * k, p, 2), np.float32)
    for i in range(0, n, faces_per):
        j = min(n, i + faces_per)
        imgs = [images[f] for f in range(i, j) for _ in range(k)]
        x = model.preprocess(imgs, sb[i * k:j * k])
        uv[i * k:j * k] = model.predict(x, batch_size=batch_size)["landmarks"].numpy()
    pts = average_shifted(uv, b, s)
    if return_all:
        origin, size = sb[:, None, 0:2], sb[:, None, 2:4] - sb[:, None, 0:2]
        every = (origin + uv.astype(np.float64) * size).astype(np.float32).reshape(n, k, p, 2)
        return pts, every
    return pts
