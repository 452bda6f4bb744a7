"""The network's input: a face box resampled to ``S x S`` grey pixels and standardised (zero mean, unit standard
deviation per face).

Two samplers: :func:`make_inputs` (OpenCV's ``warpAffine`` on float grey: training, the augmenter at identity,
evaluation, :meth:`TCDCN.preprocess`, the averaged crops; the same bits for all of them) and :func:`face_inputs` (the
``face_patches`` op on 8-bit pixels, an area shrink first for faces over ``3 S``: the Aligner), which agree with it
to ~1e-3 (``tests/test_ops.py::test_face_patches_matches_the_training_warp``).

Coordinates: the box-normalised frame and pixel-centre conventions of :mod:`tcdcn_ext.inference.boxes`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch

from .. import ops
from .boxes import box_matrices

if TYPE_CHECKING:
    from .images import Pixels

__all__ = ["face_inputs", "grey", "make_inputs", "normalise", "warp_grey"]


def grey(image_rgb: np.ndarray) -> np.ndarray:
    """RGB ``[H, W, 3]`` (uint8 or float) -> float32 grey ``[H, W]`` with ITU-R 601 weights (0.299, 0.587, 0.114),
    in the input's value range. A 2-D array is taken as grey already (returned as float32)."""
    a = np.asarray(image_rgb)
    if a.ndim == 2:
        return a.astype(np.float32, copy=False)
    if a.ndim == 3 and a.shape[2] == 1:
        return a[:, :, 0].astype(np.float32)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"grey: expected [H, W, 3] RGB, got shape {a.shape}")
    return cv2.cvtColor(np.ascontiguousarray(a[:, :, :3]).astype(np.float32, copy=False), cv2.COLOR_RGB2GRAY)


def normalise(patch: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-image standardisation over the last two axes: ``(p - mean) / (std + eps)``; float32, same shape.

    A constant patch becomes all zeros.
    """
    p = np.asarray(patch, np.float32)
    if p.ndim < 2:
        raise ValueError(f"normalise: expected [..., H, W], got shape {p.shape}")
    mean = p.mean(axis=(-2, -1), keepdims=True, dtype=np.float64)
    std = p.std(axis=(-2, -1), keepdims=True, dtype=np.float64)
    return ((p - mean) / (std + eps)).astype(np.float32)


def warp_grey(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The ``size x size`` grey input (float32, not standardised) that the 2x3 image -> input ``matrix``
    (:func:`~tcdcn_ext.inference.boxes.box_to_input_matrix`) takes from ``image`` (RGB or grey)."""
    # Grey first (float32, no rounding), then a single warp straight to size x size. Outside the image is 0
    # (black), like the zero fill of the staged crops, so padding looks the same in training and at test time.
    return cv2.warpAffine(
        grey(image), matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )


def make_inputs(images: Sequence[np.ndarray], boxes: np.ndarray, size: int = 40, standardise: bool = True
                ) -> np.ndarray:
    """Model inputs: each face's box resampled to ``size x size`` grey, standardised per image.

    Args:
        images: ``N`` uint8 RGB ``[H, W, 3]`` (or grey ``[H, W]``) arrays.
        boxes: ``[N, 4]`` boxes in each image's pixel coordinates.
        size: input side ``S``.
        standardise: apply :func:`normalise` (False: the resampled grey values as they are).

    Returns:
        float32 ``[N, 1, S, S]``. Bilinear sampling (``INTER_LINEAR``), zero (black) outside the image, then
        :func:`normalise`. Input pixel ``i`` samples box fraction ``(i + 0.5) / S``.
    """
    mats = box_matrices(boxes, size)
    if len(images) != len(mats):
        raise ValueError(f"make_inputs: {len(images)} images but {len(mats)} boxes")
    out = np.empty((len(images), 1, size, size), np.float32)
    for i, img in enumerate(images):
        out[i, 0] = warp_grey(img, mats[i], size)
    return normalise(out) if standardise else out


# ----------------------------------------------------------------------------------------------------------------
# The Aligner's inputs: many faces of 8-bit images at once


#: Face boxes larger than this many input sides are shrunk (``INTER_AREA``) to ``2 S`` before resampling.
_SHRINK_ABOVE = 3.0


def _needs_area_shrink(box: np.ndarray, size: int) -> bool:
    return max(float(box[2] - box[0]), float(box[3] - box[1])) > _SHRINK_ABOVE * size


def face_inputs(pairs: list[tuple["Pixels", np.ndarray]], size: int) -> torch.Tensor:
    """Standardised inputs ``[F, 1, S, S]`` of every (pixels, box) pair.

    Faces up to ``3 S`` pixels go through the C++ op :func:`tcdcn_ext.ops.face_patches` in one call per channel
    order (bilinear straight from the uint8 image, as :func:`_face_inputs`); larger ones take :func:`_face_inputs`,
    which first shrinks them with ``INTER_AREA``. Per face only the image slot is looked up in Python; the box
    arithmetic is vectorised (this runs for every face of a batch).
    """
    if len(pairs) == 1:  # one face (the batch-1 latency path): no grouping, the op called directly
        pix, b = pairs[0]
        used = np.asarray(b, np.float64).reshape(1, 4)
        if not _needs_area_shrink(used[0], size):
            return _FACE_PATCHES([_image_tensor(pix)], _ZERO_INDEX, torch.from_numpy(used), size,
                                 1 if pix.order == "bgr" else 0, True)
    used = np.array([b for _, b in pairs], np.float64).reshape(-1, 4)
    wh = used[:, 2:] - used[:, :2]
    shrink = (wh.max(axis=1) > _SHRINK_ABOVE * size).tolist()
    groups: dict[int, tuple[list, dict, list, list]] = {}  # channel order -> (images, id -> slot, slots, faces)
    prev, slot_of_face, faces, slot = None, [], [], 0
    for i, (pix, _) in enumerate(pairs):
        if shrink[i]:
            continue
        if pix is not prev:  # the faces of one image are consecutive: one lookup per image
            prev = pix
            images, slots, slot_of_face, faces = groups.setdefault(1 if pix.order == "bgr" else 0, ([], {}, [], []))
            slot = slots.get(id(pix))
            if slot is None:
                slot = slots[id(pix)] = len(images)
                images.append(_image_tensor(pix))
        slot_of_face.append(slot)
        faces.append(i)
    x = None
    for order, (images, _, slot_of_face, faces) in groups.items():
        index = torch.from_numpy(np.asarray(slot_of_face, np.int64))
        if len(faces) == len(pairs):  # every face, in order: the op's output is the batch
            return ops.face_patches(images, index, torch.from_numpy(used), size, "bgr" if order else "rgb")
        if x is None:
            x = torch.empty(len(pairs), 1, size, size)
        faces_a = np.asarray(faces)
        x[torch.from_numpy(faces_a)] = ops.face_patches(images, index, torch.from_numpy(used[faces_a]), size,
                                                        "bgr" if order else "rgb")
    if x is None:
        x = torch.empty(len(pairs), 1, size, size)
    for i, (pix, b) in enumerate(pairs):
        if shrink[i]:
            patches = np.zeros((1, size, size), np.float32)
            _face_inputs(pix, b, patches[0])
            x[i:i + 1, 0] = _standardise(patches)
    return x


_FACE_PATCHES = torch.ops.tcdcn_ext.face_patches.default  # (the one-face path needs none of ops.face_patches' checks)
_ZERO_INDEX = torch.zeros(1, dtype=torch.int64)


def _image_tensor(pix: "Pixels") -> torch.Tensor:
    """The pixels as the uint8 tensor face_patches reads (a view; a copy only for negative strides)."""
    a = pix.array if pix.order == "grey" else pix.array[:, :, :3]
    if any(st < 0 for st in a.strides):
        a = np.ascontiguousarray(a)
    return torch.from_numpy(a)


def _face_inputs(pix: Pixels, box: np.ndarray, out: np.ndarray) -> None:
    """Write the input of one face into ``out`` (float32 ``[S, S]``, zeros, C-contiguous; not yet standardised).

    Only the region around the face is read. A face box larger than ``3 S`` pixels is first shrunk with
    ``INTER_AREA`` to ``2 S``: the training crops had boxes of about ``2 S`` (80 px for ``S = 40``, area-resized from
    the originals), so this reproduces their sampling instead of aliasing a large face through a bilinear
    ``S x S`` grid; up to ``3 S`` the bilinear grid alone is used (a bilinear step of <= 3 pixels).
    """
    import cv2

    size = out.shape[-1]
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    lo_x, lo_y, hi_x, hi_y = x0, y0, x1, y1
    side = max(bw, bh)
    f = 2.0 * size / side if side > _SHRINK_ABOVE * size else 1.0
    pad = 2.0 / f + 1.0  # room for the bilinear / area kernels at the region's edge
    rx0, ry0 = max(0, math.floor(lo_x - pad)), max(0, math.floor(lo_y - pad))
    rx1, ry1 = min(pix.width, math.ceil(hi_x + pad) + 1), min(pix.height, math.ceil(hi_y + pad) + 1)
    if rx1 <= rx0 or ry1 <= ry0:  # the face lies outside the image: an all-black input
        return
    region = pix.grey_region(rx0, ry0, rx1, ry1, f)
    fx, fy = region.shape[1] / (rx1 - rx0), region.shape[0] / (ry1 - ry0)
    # Image pixel x -> region pixel (x - rx0 + 0.5) fx - 0.5 -> input pixel (pixel centres on every side; see
    # boxes.box_to_input_matrix).
    sx, sy = size / (bw * fx), size / (bh * fy)
    ox, oy = (x0 - rx0 + 0.5) * fx - 0.5, (y0 - ry0 + 0.5) * fy - 0.5
    m = np.array([[sx, 0.0, -ox * sx - 0.5], [0.0, sy, -oy * sy - 0.5]])
    cv2.warpAffine(region, m, (size, size), dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                   borderValue=0.0)


def _standardise(x: np.ndarray, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch ``(p - mean) / (std + eps)`` of float32 ``[N, S, S]``, in place, returned as a tensor (as
    :func:`tcdcn_ext.inference.preprocess.normalise`, which accumulates in float64; float32 here differs by ~1e-6; the
    sum of squares by ``einsum`` is 6x faster than ``torch.std`` on one thread)."""
    flat = x.reshape(len(x), -1)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= (np.sqrt(np.einsum("ij,ij->i", flat, flat) / flat.shape[1]) + eps)[:, None]
    return torch.from_numpy(x)
