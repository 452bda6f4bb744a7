"""TCDCN-Averaged: landmarks averaged over small translations of the network's input window.

The paper's 68-point report predicts from 20 translated copies of the input and averages, noting that the
convolutions are shared between the translations. Here the translations are whole pixels of the network's input
grid, so that sharing is exact (:func:`tcdcn_ext.ops.shift_average`).

Definitions, for a face with the given box ``b`` and a model of input side ``S`` (and ``config.box_scale``):

1. **Crop with a margin** (:func:`shift_crops`): the box the network sees (``model.input_boxes(b)``) is resampled to
   ``(S + 2m) x (S + 2m)`` grey pixels on the same pixel grid as the plain ``S x S`` input, extended by ``m``
   pixels on each side (bilinear, black outside the image). The crop is standardised with the mean and standard
   deviation of its centred ``S x S`` window, so that window is exactly the plain input (:meth:`TCDCN.preprocess`),
   and every shifted window is the same pixels, translated.
2. **Shifts** ``(dx_k, dy_k)``, whole input pixels, ``|dx|, |dy| <= m``: window ``k`` is the ``S x S`` square at
   ``(m + dy_k, m + dx_k)`` of the crop (a positive ``dx`` looks further right in the image).
3. **Predict, un-shift, average**: each window's landmarks, in its own frame, are moved back by
   ``(dx_k, dy_k) / S`` into the centred window's frame and averaged with equal weights; auxiliary-task
   probabilities (softmax per window) are averaged too. The result is in the frame of the given box and goes to
   image pixels as a plain prediction does.

:func:`predict_windows_reference` computes the same thing with one ordinary forward pass per window: the oracle
that the fused op is tested against.

:func:`default_shifts` gives the pattern chosen by validation on held-out training faces (never the test set) for
each kind of network; see ``docs/RESULTS_68pt.md`` and ``docs/RESULTS.md``. :func:`make_shifts` builds the patterns that
were compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..ops import as_shift_array

__all__ = ["DEFAULT_SHIFTS_20", "DEFAULT_SHIFTS_LOCAL", "default_shifts", "make_shifts", "predict_averaged", "predict_windows_reference", "shift_crops",
           "standardise_by_centre"]


def make_shifts(pattern: str = "rings", radius: float = 3.0, n: int = 20) -> np.ndarray:
    """A pattern of ``n`` whole-pixel shifts ``[n, 2]`` (int64, ``(dx, dy)``), rounded from real positions.

    * ``"rings"``: 8 shifts on a circle of ``radius / 2`` (angles 0, 45, ... degrees) and ``n - 8`` on a circle of
      ``radius`` (rotated by half their spacing);
    * ``"ring"``: ``n`` shifts on one circle of ``radius``;
    * ``"grid"``: the ``n`` grid points ``(dx, dy)`` with spacing ``radius`` nearest to the origin, origin excluded
      (ties broken by angle), e.g. ``radius = 2``: even shifts only, so the first pooling keeps its phase.

    Rounding can repeat a shift (small radii); a repeated shift simply weighs more in the average.
    """
    if not (np.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius must be finite and >= 0, got {radius}")
    if pattern == "rings":
        if n <= 8:
            raise ValueError(f"the 'rings' pattern needs n > 8, got {n}")
        a1 = 2 * np.pi * np.arange(8) / 8
        m = n - 8
        a2 = np.pi / m + 2 * np.pi * np.arange(m) / m
        pts = np.concatenate([0.5 * radius * np.stack([np.cos(a1), np.sin(a1)], 1),
                              radius * np.stack([np.cos(a2), np.sin(a2)], 1)])
    elif pattern == "ring":
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        a = 2 * np.pi * np.arange(n) / n
        pts = radius * np.stack([np.cos(a), np.sin(a)], 1)
    elif pattern == "grid":
        step = int(round(radius))
        if step < 1:
            raise ValueError(f"the 'grid' pattern needs a spacing >= 1 pixel, got {radius}")
        r = int(np.ceil(np.sqrt(n))) + 1
        g = np.array([(x, y) for y in range(-r, r + 1) for x in range(-r, r + 1) if (x, y) != (0, 0)], np.float64)
        order = np.lexsort((np.arctan2(g[:, 1], g[:, 0]), np.hypot(g[:, 0], g[:, 1])))
        pts = g[order[:n]] * step
    else:
        raise ValueError(f"unknown shift pattern {pattern!r}; expected 'rings', 'ring' or 'grid'")
    return np.rint(pts).astype(np.int64)


#: The default 20 shifts for spatially shared convolutions (the 68-point model), ``make_shifts("rings", 4)``:
#: 8 shifts on a circle of 2 px and 12 on a circle of 4 px of the 60 x 60 input (about 3 % and 7 % of the given
#: box). Best of 3 patterns x 6 radii on the 121 held-out 300w/train faces (docs/RESULTS_68pt.md). Its odd shifts
#: split the shared convolutions by pooling phase (four regions for the 48-channel layer after the first pooling),
#: so it costs about twice what an even-only pattern does; ``make_shifts("grid", 2)`` is that faster choice, at
#: +0.04 points of validation error (docs/RESULTS_68pt.md, "Cost of the pattern").
DEFAULT_SHIFTS_20: np.ndarray = make_shifts("rings", 4.0)
DEFAULT_SHIFTS_20.setflags(write=False)

#: The default for locally connected layers (the 5-point model), ``make_shifts("ring", 1)`` (20 shifts rounded to
#: the 8 one-pixel neighbours). Unshared filters belong to positions, so that network tolerates only small shifts:
#: on the 500 held-out mtfl/train faces 1 px gains a little and >= 3 px loses (docs/RESULTS.md).
DEFAULT_SHIFTS_LOCAL: np.ndarray = make_shifts("ring", 1.0)
DEFAULT_SHIFTS_LOCAL.setflags(write=False)


def default_shifts(model) -> np.ndarray:
    """The validated default shifts for ``model``: :data:`DEFAULT_SHIFTS_20` for shared convolutions,
    :data:`DEFAULT_SHIFTS_LOCAL` for locally connected ones. For a model of your own, choose with
    ``benchmarks/averaging_select.py`` on held-out training faces."""
    return DEFAULT_SHIFTS_20 if model.config.shared_conv else DEFAULT_SHIFTS_LOCAL


def standardise_by_centre(crop: Tensor, size: int, eps: float = 1e-6) -> Tensor:
    """``(crop - mean) / (std + eps)`` per face, with the statistics of the centred ``size x size`` window of
    ``crop [N, 1, H, W]`` (computed in float64, as :func:`tcdcn_ext.inference.preprocess.normalise` does for a plain
    input)."""
    m = (crop.shape[-2] - size) // 2, (crop.shape[-1] - size) // 2
    centre = crop[..., m[0]:m[0] + size, m[1]:m[1] + size].double()
    mean = centre.mean(dim=(-2, -1), keepdim=True)
    std = centre.std(dim=(-2, -1), keepdim=True, correction=0)
    return ((crop.double() - mean) / (std + eps)).to(crop.dtype)


def shift_crops(model, images: Sequence[np.ndarray] | np.ndarray, boxes, margin: int) -> Tensor:
    """Definition 1: crops ``[N, 1, S + 2 margin, S + 2 margin]`` float32 of the faces ``(images[i], boxes[i])``."""
    from .boxes import scale_boxes
    from .preprocess import make_inputs

    if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8:
        images = [images]
    images = list(images)
    margin = int(margin)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    s = model.config.input_size
    b = model.input_boxes(boxes)
    if len(images) != len(b):
        raise ValueError(f"shift_crops: {len(images)} images but {len(b)} boxes")
    big = scale_boxes(b, (s + 2 * margin) / s)
    raw = make_inputs(images, big, s + 2 * margin, standardise=False)
    return standardise_by_centre(torch.from_numpy(raw), s)


def predict_windows_reference(model, crop: Tensor, shifts) -> dict[str, Tensor]:
    """The oracle of :meth:`TCDCN.predict_shift_average`: one plain ``model.predict`` per shifted window."""
    s, sh = model.config.input_size, as_shift_array(shifts)
    m = (crop.shape[-1] - s) // 2
    outs = []
    for dx, dy in sh.tolist():
        o = model.predict(crop[..., m + dy:m + dy + s, m + dx:m + dx + s])
        shift = torch.tensor([dx, dy], dtype=o["landmarks"].dtype) / s * model.config.box_scale
        o["landmarks"] = o["landmarks"] + shift
        outs.append(o)
    return {k: torch.stack([o[k] for o in outs]).mean(0) for k in outs[0]}


def predict_averaged(model, images: Sequence[np.ndarray] | np.ndarray, boxes,
                     shifts=None, batch_size: int = 256, return_probs: bool = False,
                     progress: bool = False):
    """TCDCN-Averaged landmarks ``[N, P, 2]`` (float32, image pixels) of the faces ``(images[i], boxes[i])``.

    Args:
        model: a :class:`tcdcn_ext.models.TCDCN` (any ``box_scale``).
        images: ``N`` uint8 RGB ``[H, W, 3]`` (or grey ``[H, W]``) images, or one image.
        boxes: ``[N, 4]`` face boxes ``(x0, y0, x1, y1)`` in each image's pixels.
        shifts: ``[K, 2]`` whole-pixel ``(dx, dy)`` of the network input (default :func:`default_shifts`);
            ``[[0, 0]]`` is the plain single-pass prediction.
        batch_size: faces per :func:`tcdcn_ext.ops.shift_average` call.
        return_probs: also return the averaged auxiliary-task probabilities ``{task: [N, C]}``.
        progress: print the number of faces done to stderr.
    """
    from .predict import predict_faces

    shifts = default_shifts(model) if shifts is None else shifts
    pts, probs = predict_faces(model, images, boxes, batch_size, shifts=shifts, progress=progress, desc="averaged")
    if return_probs:
        return pts, probs
    return pts
