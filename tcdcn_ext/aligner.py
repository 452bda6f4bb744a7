"""High-level face alignment: detect faces, place the landmarks, read the auxiliary attributes.

::

    from tcdcn_ext.aligner import Aligner
    aligner = Aligner()                            # shipped 5-point model, CPU, the bundled YuNet face detector
    faces = aligner("photo.jpg")                   # list[Face]
    faces = aligner(bgr_array, color="bgr")        # OpenCV images: say so, the colour order is never guessed
    faces = aligner.align(rgb_array, boxes=[(x0, y0, x1, y1)])      # your own boxes, no detection
    per_image = aligner.align_batch([img1, img2])  # all faces of all images in one forward pass

Coordinates are image pixels, 0-based, pixel centres (the centre of the top-left pixel is ``(0, 0)``), the
convention of :mod:`tcdcn_ext.data` and of OpenCV. Boxes are ``(x0, y0, x1, y1)`` in the same coordinates.

Inputs (``image``):

* a path (``str`` / ``os.PathLike``) to an image file OpenCV can decode, 8 bits per channel. The EXIF orientation
  is applied (as ``cv2.imread`` and image viewers do), so coordinates refer to the image as it is displayed;
* a numpy ``uint8`` array ``[H, W]`` (grey), ``[H, W, 1]``, ``[H, W, 3]`` (``color="rgb"`` or ``"bgr"``) or
  ``[H, W, 4]`` (``color="rgba"`` or ``"bgra"``; alpha is ignored);
* a PIL image (duck-typed, PIL is not required): its mode says what it holds, ``color`` is not used;
* a torch tensor, **channels first** (torchvision's convention): ``[C, H, W]`` with ``C`` in 1, 3, 4 or ``[H, W]``,
  ``uint8`` (0-255) or floating point in ``[0, 1]``; ``color`` gives the channel order as for arrays. A tensor
  whose first and last dimensions could both be the channels (e.g. ``[3, H, 3]``) is rejected as ambiguous, one
  that looks channels-last is rejected with a hint, NaN/inf or out-of-range floats are rejected.

Anything else, an unreadable or truncated file, a directory, an empty or 16-bit image, or a ``color`` that does not
fit the array raises :class:`ImageError` (a ``ValueError``) naming the input. An image without faces gives ``[]``.

Thread safety: an :class:`Aligner` may be shared by threads. Calls keep all their state in local variables; the
model is only read (eval mode, ``torch.inference_mode``); the built-in detector serialises its own calls with a lock.
Results from several threads equal the sequential ones bit for bit as long as every thread runs torch with the same
thread count: ``torch.set_num_threads`` is per-thread OpenMP state, and a BLAS call (the fully connected layer)
sums in a different order with a different number of threads (differences of ~1e-5 px).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch

from . import data, ops
from .averaging import default_shifts, standardise_by_centre
from .detect import (CALIBRATION_5PT, CALIBRATION_68PT, DEFAULT_MAX_SIDE, Detections, DetectorError, YuNetDetector,
                     calibrate_boxes, resolve_detector, rotation_about)
from .model import TCDCN, WeightsError, load_model

__all__ = ["ATTRIBUTE_LABELS", "Aligner", "Attribute", "Face", "ImageError", "load_image"]

Color = Literal["rgb", "bgr", "rgba", "bgra"]
ImageLike = Union[str, os.PathLike, np.ndarray, torch.Tensor, Any]

_COLORS = ("rgb", "bgr", "rgba", "bgra")

#: Class names of the auxiliary tasks, in the model's class order (the staged data's 0-based codes).
ATTRIBUTE_LABELS: dict[str, tuple[str, ...]] = {
    "pose": tuple(data.POSE_NAMES),
    "gender": ("male", "female"),
    "glasses": ("no_glasses", "glasses"),
    "smile": ("not_smiling", "smiling"),
}


#: Smallest accepted image side: a face needs more pixels than this.
MIN_SIDE = 8


class ImageError(ValueError):
    """An input image cannot be used; the message names the input and the problem."""


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Attribute:
    """One auxiliary task's answer: the most likely ``label``, its ``probability`` and every class's probability."""

    label: str
    probability: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability, "probabilities": dict(self.probabilities)}


@dataclass(frozen=True, eq=False)
class Face:
    """A face: ``box`` ``(x0, y0, x1, y1)`` (the detector's box, or the box you gave), detector ``score`` in
    ``[0, 1]`` (1.0 for given boxes), ``landmarks`` float32 ``[P, 2]`` image pixels (read-only; 5-point order:
    :data:`tcdcn_ext.data.LANDMARK_NAMES_5`) and ``attributes`` (pose, gender, glasses, smile; ``{}`` when the model
    has no auxiliary heads; for an Aligner's faces built on first read, so that a batch whose attributes are not
    looked at does not pay for them). Equality compares all fields (landmarks exactly)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    attributes: dict[str, Attribute] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Face):
            return NotImplemented
        return (self.box == other.box and self.score == other.score and self.attributes == other.attributes
                and np.array_equal(self.landmarks, other.landmarks))

    __hash__ = None  # type: ignore[assignment]  (holds an array)

    def __getattr__(self, name: str) -> Any:
        # Reached only for names missing from the instance: ``attributes`` of a Face made by an Aligner call is
        # built on first read, from the call's probability arrays (see _AttributeTable).
        if name == "attributes":
            source = self.__dict__.get("_attribute_source")
            if source is not None:
                table, index = source
                value = self.__dict__.setdefault("attributes", table.attributes(index))
                self.__dict__.pop("_attribute_source", None)
                return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        # pickle / copy see the four fields, never the lazy source (which holds the whole call's probabilities)
        return {"box": self.box, "score": self.score, "landmarks": self.landmarks, "attributes": self.attributes}

    @classmethod
    def _from_call(cls, box: tuple[float, float, float, float], score: float, landmarks: np.ndarray,
                   table: "_AttributeTable", index: int) -> "Face":
        """The Aligner's constructor: fields set directly (the frozen dataclass ``__init__`` costs ~1.5 us a face)
        and ``attributes`` left to be built from ``table`` row ``index`` when first read."""
        face = object.__new__(cls)
        face.__dict__.update(box=box, score=score, landmarks=landmarks, _attribute_source=(table, index))
        return face

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: plain floats and lists."""
        return {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "landmarks": [[float(x), float(y)] for x, y in self.landmarks.tolist()],
            "attributes": {k: a.to_dict() for k, a in self.attributes.items()},
        }


def _mtfl_box_or(points5: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    try:
        return data.predict_boxes_5pt(np.asarray(points5, np.float64)[None])[0]
    except ValueError:
        return np.asarray(fallback, np.float64)


class _AttributeTable:
    """The class probabilities ``{task: [F, C]}`` of one Aligner call, turned into :class:`Attribute` objects only
    for the faces whose ``attributes`` are read: building all of them (four frozen dataclasses and dicts per face)
    took ~6 us a face, a third of the batched forward pass."""

    __slots__ = ("_tasks", "_compute")

    def __init__(self, probs: dict[str, np.ndarray] | None = None,
                 compute: Callable[[], dict[str, np.ndarray]] | None = None) -> None:
        """``probs``, or ``compute``: a function giving them, called once, when the first face's attributes are
        read (the attribute network's pass over the call's faces runs only for calls whose attributes are used)."""
        self._tasks = None if probs is None else self._table(probs)
        self._compute = compute

    @staticmethod
    def _table(probs: dict[str, np.ndarray]) -> tuple:
        tasks = []
        for t, p in probs.items():
            names = ATTRIBUTE_LABELS.get(t)
            if names is None or len(names) != p.shape[1]:
                names = tuple(str(i) for i in range(p.shape[1]))
            tasks.append((t, names, p))
        return tuple(tasks)

    @property
    def tasks(self) -> tuple:
        if self._tasks is None:
            self._tasks = self._table(self._compute() if self._compute is not None else {})
            self._compute = None
        return self._tasks

    def attributes(self, index: int) -> dict[str, Attribute]:
        out = {}
        for t, names, p in self.tasks:
            row = p[index].astype(np.float64).tolist()  # plain Python floats
            j = int(p[index].argmax())
            out[t] = Attribute(label=names[j], probability=row[j], probabilities=dict(zip(names, row)))
        return out


# ----------------------------------------------------------------------------------------------------------------
# Images


class _Pixels:
    """A validated 8-bit image without copies: ``array`` uint8 ``[H, W]`` or ``[H, W, C>=3]`` (alpha ignored) and
    its channel ``order``: ``"grey"``, ``"rgb"`` or ``"bgr"``."""

    __slots__ = ("array", "order")

    def __init__(self, array: np.ndarray, order: str) -> None:
        self.array, self.order = array, order

    @property
    def height(self) -> int:
        return self.array.shape[0]

    @property
    def width(self) -> int:
        return self.array.shape[1]

    def rgb(self) -> np.ndarray:
        """The full image as contiguous uint8 RGB ``[H, W, 3]``."""
        import cv2

        a = self.array
        if self.order == "grey":
            return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_GRAY2RGB)
        a = np.ascontiguousarray(a[:, :, :3])
        return cv2.cvtColor(a, cv2.COLOR_BGR2RGB) if self.order == "bgr" else a

    def grey_region(self, x0: int, y0: int, x1: int, y1: int, scale: float = 1.0) -> np.ndarray:
        """float32 grey ``[h, w]`` of rows ``y0:y1``, columns ``x0:x1`` (inside the image), shrunk by ``scale``
        (``INTER_AREA``, on the 8-bit pixels) when ``scale < 1``; ITU-R 601 weights as :func:`tcdcn_ext.data.grey`.

        The grey conversion is done on 8-bit pixels (OpenCV's fixed point, rounded to integer levels) rather than
        in float: it is several times faster, and the rounding (<= 0.5 grey level) is far below JPEG noise.
        """
        import cv2

        a = self.array[y0:y1, x0:x1]
        if self.order != "grey":
            a = a[:, :, :3]
        if a.strides[-1] != a.itemsize or (a.ndim == 3 and a.strides[1] != a.shape[2] * a.itemsize):
            a = np.ascontiguousarray(a)  # OpenCV takes row-strided views, but not strided pixels/channels
        if scale < 1.0:
            w, h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            a = cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)
        if self.order != "grey":
            a = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY if self.order == "bgr" else cv2.COLOR_RGB2GRAY)
        return a.astype(np.float32)


def _describe(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    if isinstance(image, np.ndarray):
        return f"numpy array {image.dtype}{list(image.shape)}"
    if isinstance(image, torch.Tensor):
        return f"tensor {str(image.dtype).replace('torch.', '')}{list(image.shape)}"
    return f"{type(image).__name__} object"


class _Label:
    """The name of an input in error messages, built only when a message is (``str(dtype)`` and friends cost
    ~10 us per image, as much as sampling the face)."""

    __slots__ = ("image", "index")

    def __init__(self, image: Any, index: int | None = None) -> None:
        self.image, self.index = image, index

    def __str__(self) -> str:
        d = _describe(self.image)
        return d if self.index is None else f"images[{self.index}] ({d})"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _check_color(color: str) -> None:
    if color not in _COLORS:
        raise ImageError(f"color must be one of {_COLORS}, got {color!r}")


def _from_array(a: np.ndarray, color: str, name: "str | _Label") -> _Pixels:
    if a.dtype != np.uint8:
        if a.dtype in (np.uint16, np.int16):
            raise ImageError(f"{name}: 16-bit images are not supported; convert to 8 bits per channel (uint8)")
        raise ImageError(f"{name}: expected a uint8 image, got dtype {a.dtype} (floats: (x * 255).round()"
                         ".astype(np.uint8) for values in [0, 1])")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        pix = _Pixels(a, "grey")
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        c = a.shape[2]
        if c == 3 and color not in ("rgb", "bgr"):
            raise ImageError(f"{name}: a 3-channel image needs color='rgb' or 'bgr', got color={color!r}")
        if c == 4 and color not in ("rgba", "bgra"):
            raise ImageError(f"{name}: a 4-channel image needs color='rgba' or 'bgra' (alpha is ignored), "
                             f"got color={color!r}")
        pix = _Pixels(a, color[:3])
    else:
        raise ImageError(f"{name}: expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape "
                         f"{list(a.shape)}")
    if min(a.shape[0], a.shape[1]) < MIN_SIDE:
        what = "empty" if a.size == 0 else "too small"
        raise ImageError(f"{name}: image is {what} ({a.shape[1]}x{a.shape[0]} pixels; at least "
                         f"{MIN_SIDE}x{MIN_SIDE} needed)")
    return pix


def _from_tensor(t: torch.Tensor, color: str, name: "str | _Label") -> _Pixels:
    t = t.detach()
    if t.dim() == 3:
        first, last = t.shape[0], t.shape[2]
        if first in (1, 3, 4) and last in (1, 3, 4):
            raise ImageError(f"{name}: ambiguous tensor shape {list(t.shape)}: the channels could be first or last; "
                             "tensors must be [C, H, W]")
        if first not in (1, 3, 4):
            hint = " (it looks channels-last: pass t.permute(2, 0, 1))" if last in (1, 3, 4) else ""
            raise ImageError(f"{name}: tensors must be [C, H, W] with C in 1, 3, 4 or [H, W], got shape "
                             f"{list(t.shape)}{hint}")
    elif t.dim() != 2:
        raise ImageError(f"{name}: tensors must be [C, H, W] or [H, W], got shape {list(t.shape)}")
    if t.dtype == torch.uint8:
        a = t.cpu().numpy()
    elif t.is_floating_point():
        f = t.float().cpu()
        if not bool(torch.isfinite(f).all()):
            raise ImageError(f"{name}: tensor holds NaN or infinite values")
        lo, hi = (float(f.min()), float(f.max())) if f.numel() else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise ImageError(f"{name}: float tensors must hold values in [0, 1], got [{lo:.4g}, {hi:.4g}] "
                             "(uint8 tensors hold 0-255)")
        a = (f * 255.0).round_().to(torch.uint8).numpy()
    else:
        raise ImageError(f"{name}: tensor dtype must be uint8 or floating point in [0, 1], got {t.dtype}")
    if a.ndim == 3:
        a = a.transpose(1, 2, 0)  # a view: [H, W, C]
    return _from_array(a, color, name)


def _from_pil(img: Any, name: "str | _Label") -> _Pixels:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise ImageError(f"{name}: PIL mode {mode!r} (16/32-bit) is not supported; convert to 8 bits ('L' or 'RGB')")
    if mode not in ("L", "RGB", "RGBA"):
        img, mode = img.convert("RGB"), "RGB"
    a = np.asarray(img)
    return _from_array(a, {"L": "rgb", "RGB": "rgb", "RGBA": "rgba"}[mode], name)


def _from_file(path: Path, name: "str | _Label") -> _Pixels:
    import cv2

    if path.is_dir():
        raise ImageError(f"{name}: is a directory, not an image file")
    if not path.exists():
        raise ImageError(f"{name}: no such file")
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{name}: cannot be read ({exc})") from exc
    if buf.size == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    # IMREAD_COLOR applies the EXIF orientation; ANYDEPTH keeps 16-bit files 16-bit so they can be refused rather
    # than silently truncated.
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as exc:  # e.g. a header claiming more pixels than OpenCV's limit (a decompression bomb)
        raise ImageError(f"{name}: cannot be decoded ({str(exc).strip().splitlines()[-1]})") from exc
    if img is None:
        raise ImageError(f"{name}: not a decodable image, or the file is truncated/corrupt")
    if img.dtype != np.uint8:
        raise ImageError(f"{name}: {img.dtype.itemsize * 8}-bit images are not supported; "
                         "convert to 8 bits per channel")
    return _from_array(img, "bgr", name)


def _to_pixels(image: ImageLike, color: str, name: "str | _Label | None" = None) -> _Pixels:
    _check_color(color)
    label = name or _Label(image)
    if isinstance(image, (str, os.PathLike)):
        return _from_file(Path(image), label)
    if isinstance(image, np.ndarray):
        return _from_array(image, color, label)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, color, label)
    if hasattr(image, "mode") and hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image, duck-typed
        return _from_pil(image, label)
    raise ImageError(f"{label}: unsupported image type; pass a path, a numpy uint8 array, a PIL image or a "
                     "torch tensor")


def load_image(image: ImageLike, color: Color = "rgb") -> np.ndarray:
    """Any accepted input (see the module docstring) -> uint8 RGB ``[H, W, 3]``; :class:`ImageError` if unusable."""
    return _to_pixels(image, color).rgb()


# ----------------------------------------------------------------------------------------------------------------
# Model inputs


#: Face boxes larger than this many input sides are shrunk (``INTER_AREA``) to ``2 S`` before resampling.
_SHRINK_ABOVE = 3.0


def _needs_area_shrink(box: np.ndarray, size: int) -> bool:
    return max(float(box[2] - box[0]), float(box[3] - box[1])) > _SHRINK_ABOVE * size


def _batch_inputs(pairs: list[tuple["_Pixels", np.ndarray]], size: int) -> torch.Tensor:
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


def _image_tensor(pix: "_Pixels") -> torch.Tensor:
    """The pixels as the uint8 tensor face_patches reads (a view; a copy only for negative strides)."""
    a = pix.array if pix.order == "grey" else pix.array[:, :, :3]
    if any(st < 0 for st in a.strides):
        a = np.ascontiguousarray(a)
    return torch.from_numpy(a)


def _face_inputs(pix: _Pixels, box: np.ndarray, out: np.ndarray) -> None:
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
    # data.box_to_input_matrix).
    sx, sy = size / (bw * fx), size / (bh * fy)
    ox, oy = (x0 - rx0 + 0.5) * fx - 0.5, (y0 - ry0 + 0.5) * fy - 0.5
    m = np.array([[sx, 0.0, -ox * sx - 0.5], [0.0, sy, -oy * sy - 0.5]])
    cv2.warpAffine(region, m, (size, size), dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                   borderValue=0.0)


def _standardise(x: np.ndarray, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch ``(p - mean) / (std + eps)`` of float32 ``[N, S, S]``, in place, returned as a tensor (as
    :func:`tcdcn_ext.data.normalise`, which accumulates in float64; float32 here differs by ~1e-6; the sum of squares
    by ``einsum`` is 6x faster than ``torch.std`` on one thread)."""
    flat = x.reshape(len(x), -1)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= (np.sqrt(np.einsum("ij,ij->i", flat, flat) / flat.shape[1]) + eps)[:, None]
    return torch.from_numpy(x)


def _valid_boxes(boxes: Any, name: "str | _Label") -> np.ndarray:
    try:
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: boxes must be [N, 4] (x0, y0, x1, y1), got {boxes!r}") from exc
    if not (np.isfinite(b).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()):
        bad = ~np.all(np.isfinite(b), axis=1) | ~(b[:, 2] > b[:, 0]) | ~(b[:, 3] > b[:, 1])
        raise ValueError(f"{name}: invalid boxes (need finite x0 < x1, y0 < y1): {b[bad][:3].tolist()}")
    return b


def _all_valid_boxes(boxes: Sequence[Any]) -> list[np.ndarray] | None:
    """Every image's boxes as :func:`_valid_boxes` gives them, checked in one vectorised pass over the batch; None
    when any list does not convert or holds an invalid box (the caller then checks image by image, which raises
    the error that names it)."""
    try:
        out = [np.asarray(b, np.float64).reshape(-1, 4) for b in boxes]
    except Exception:  # whatever it is, the per-image check raises it (or its ValueError) in the right order
        return None
    if out:
        b = out[0] if len(out) == 1 else np.concatenate(out)
        if not (np.isfinite(b).all() and (b[:, 2:] > b[:, :2]).all()):  # x1 > x0 and y1 > y0
            return None
    return out


@dataclass
class _Job:
    """One image's work inside a call (local to the call: nothing here is shared between threads)."""

    pixels: _Pixels
    model_boxes: np.ndarray  # [F, 4] the boxes the model sees
    report_boxes: np.ndarray  # [F, 4] the boxes reported in Face.box
    scores: np.ndarray  # [F]
    refine: bool = False  # re-box from the landmarks (detected faces)
    image: int | None = None  # the call's image this job's faces belong to (None: a group of its own)
    slots: list[int] | None = None  # the faces' positions in that image's list (None: in order, from 0)
    back: np.ndarray | None = None  # [2, 3] affine from this job's pixels to the image's (de-rotated faces)


def _group_by_image(jobs: list[_Job], faces: list[Face]) -> list[list[Face]]:
    """The faces of consecutive jobs (in job order) regrouped into one list per image, in each image's order."""
    out: list[list[Face]] = []
    where: dict[Any, int] = {}
    f = 0
    for j, job in enumerate(jobs):
        key = ("job", j) if job.image is None else job.image
        if key not in where:
            where[key] = len(out)
            out.append([])
        mine = faces[f:f + len(job.model_boxes)]
        f += len(job.model_boxes)
        dst = out[where[key]]
        slots = job.slots if job.slots is not None else range(len(mine))
        for slot, face in zip(slots, mine):
            while len(dst) <= slot:
                dst.append(None)
            dst[slot] = face
    return out


#: Detections scoring below this are searched for a better orientation (:meth:`Aligner._detected_jobs`). YuNet's
#: score falls as a face turns in-plane (the bundled portrait: 0.94 upright, 0.89 at 30 degrees, 0.71 at 45,
#: 0.5-0.75 from 60 to 120 degrees), but on the scenes photos faces turned by 60-90 degrees still scored 0.85-0.89:
#: 0.9 is also OpenCV's default threshold for the same network, where it calls a detection confident.
SEARCH_BELOW = 0.9
#: The rotations tried (degrees, counter-clockwise), all in one detector batch of 96-pixel copies per image; faces
#: left within ~25 degrees of upright are then levelled from their landmarks (:meth:`Aligner._level_tilted`).
SEARCH_ANGLES = (-90.0, -45.0, 45.0, 90.0, 180.0)
#: How much higher a rotated copy must score to be used.
SEARCH_MARGIN = 0.1


#: Detected faces whose landmarks tilt by more than this (degrees) are read again, turned level
#: (:meth:`Aligner._level_tilted`): the landmark networks were trained with up to 15 degrees of rotation.
LEVEL_ABOVE = 15.0


def _roll_from_landmarks(pts: np.ndarray) -> np.ndarray:
    """The eye line's angle (degrees, positive = clockwise as seen) of landmarks ``[F, P, 2]`` (5 or 68 points)."""
    if pts.shape[1] == 68:
        d = pts[:, 42:48].mean(1) - pts[:, 36:42].mean(1)
    else:
        d = pts[:, 1] - pts[:, 0]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0]))


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The model's box for a face from its landmarks ``[P, 2]`` -> ``[4]``: the MTFL box model for 5 points
    (:func:`tcdcn_ext.data.predict_boxes_5pt`), the landmark extent for 68 points (the 300-W staged convention)."""
    p = np.asarray(landmarks, np.float64)
    if len(p) == 5:
        return data.predict_boxes_5pt(p[None])[0]
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])


def _face_square(box: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and side of the square around a detected face that the orientation search and the upright copy
    read: 2.5 times the box's larger side, so that a face turned by any angle stays inside."""
    b = np.asarray(box, np.float64)
    return (b[:2] + b[2:]) / 2, 2.5 * max(float(b[2] - b[0]), float(b[3] - b[1]), 8.0)


def _invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine map."""
    a = np.asarray(m, np.float64)
    inv = np.linalg.inv(a[:, :2])
    return np.c_[inv, -inv @ a[:, 2]]


def _upright_copy(pix: _Pixels, centre: np.ndarray, side: float, angle: float) -> tuple[_Pixels, np.ndarray]:
    """The ``side``-pixel square around ``centre`` rotated by ``angle`` degrees (counter-clockwise as seen) about it,
    at the image's pixel scale (bilinear, black outside the image), and the 2x3 map from image to copy pixels."""
    import cv2

    n = int(np.ceil(side))
    m = rotation_about(centre, angle, 1.0, n)  # the face centre lands in the middle of the copy
    a = pix.array if pix.order == "grey" else pix.array[:, :, :3]
    warped = cv2.warpAffine(np.ascontiguousarray(a), m, (n, n), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _Pixels(warped, pix.order), m


# ----------------------------------------------------------------------------------------------------------------
# Aligner


class Aligner:
    """Face detector + TCDCN landmarks and attributes (see the module docstring for inputs and coordinates).

    Args:
        points: 5 (the MTFL model) or 68 (only when a 68-point model is shipped).
        device: torch device of the model; ``"cpu"`` by default.
        averaged: TCDCN-Averaged: average the landmarks and attribute probabilities over the network run on shifted
            input windows (``shifts``), in one :func:`tcdcn_ext.ops.shift_average` call per batch.
        detector: ``"auto"`` or ``"yunet"`` (the bundled YuNet detector, :class:`tcdcn_ext.detect.YuNetDetector`),
            ``"none"``, or a callable ``f(rgb uint8 [H, W, 3]) -> boxes [N, 4]`` | ``(boxes, scores)`` |
            ``(boxes, scores, points [N, 5, 2])``. (``"yuface"``, the earlier releases' detector, names YuNet.)
        min_score: detector confidence threshold in ``[0, 1]``.
        calibrate: map YuNet's boxes to the model's box convention (:mod:`tcdcn_ext.detect`); ignored for other
            detectors and for boxes you pass.
        max_side: YuNet sees a copy of the image downscaled to at most this many pixels on its longest side (None:
            full resolution); the landmarks are read on the full-resolution pixels. See
            :class:`~tcdcn_ext.detect.YuNetDetector` for the trade-off and the default.
        min_face_size: the smallest face (pixels of the full image) to find: raises YuNet's working resolution
            where needed and drops smaller detections. 0: no limit beyond what ``max_side`` allows.
        derotate: detected faces whose landmarks tilt by more than :data:`LEVEL_ABOVE` degrees are read again from
            a copy of their surroundings turned level (up to twice), their landmarks rotated back: holds faces
            turned by up to ~30-45 degrees; costs one more landmark pass for tilted faces only.
        search_rotations: also look for faces turned further (YuNet's own points do not follow a face's roll): a
            detection scoring below :data:`SEARCH_BELOW` is searched in copies of its surroundings rotated in
            45-degree steps (one detector batch of small copies per image) and read upright where a copy scores
            clearly higher. Off by default: it costs about a detection per low-scoring face (ten small faces in a
            640x480 frame: ~8x the whole call) and on the scenes photos it rescued too few faces turned by 45-90
            degrees to pay (`benchmarks/README.md`, *In-plane rotation*).
        model: a shipped name (``"5pt"``), a ``.pt`` path or a :class:`~tcdcn_ext.model.TCDCN` (copied: the
            caller's module is left as it is); default ``f"{points}pt"``.
        shifts: ``[K, 2]`` whole-pixel ``(dx, dy)`` translations of the network's input window for ``averaged``
            (default :func:`tcdcn_ext.averaging.default_shifts`: 20 shifts chosen by validation for the model).
        refine: for *detected* faces (5-point model), re-box the face from its landmarks with the MTFL box model (the
            framing the 5-point model was trained on) and align again, ``refine`` times. On the 500 validation
            faces of mtfl/train through YuNet: 3.251 % error / 2.4 % failures with one pass, 3.200 % / 1.8 % with
            two (default), 3.197 % / 1.6 % with three (``benchmarks/README.md``). 0: one landmark pass in the
            calibrated detector box.
        attributes: where ``Face.attributes`` come from. ``"auto"`` (default) and ``"network"``: the shipped
            attribute network (:mod:`tcdcn_ext.attributes`, trained for them: balanced accuracy and calibration in
            ``weights/ATTRIBUTES.md``), for both models ("auto" falls back to the model's heads if it is not
            installed); ``"heads"``: the TCDCN model's own auxiliary heads (the 5-point model's are near chance for
            gender and glasses, see its model card; the 68-point model has none: ``{}``); an
            :class:`~tcdcn_ext.attributes.AttributeNet` or a path to its weights. The network reads each face from
            the MTFL box of its final landmarks (the 68-point model's eye centres, nose tip and mouth corners),
            once per call, when the first face's ``attributes`` are read.
        batch_size: faces per forward pass in :meth:`align_batch` (bounds memory for huge batches).
        progress: progress lines on stderr for long batches (None: only when stderr is a terminal).

    Boxes given to :meth:`align` must follow the model's training convention: the MTFL/CUHK face box, a square from
    about the eyebrows to the chin (see ``shared/data/README.md``); other detectors' boxes work less well.
    """

    def __init__(self, points: Literal[5, 68] = 5, device: str | torch.device = "cpu", averaged: bool = False,
                 detector: Literal["auto", "yunet", "none"] | Callable[..., Any] | None = "auto",
                 min_score: float = 0.5, calibrate: bool = True, model: str | os.PathLike | TCDCN | None = None,
                 shifts: np.ndarray | Sequence[Sequence[int]] | None = None, refine: int = 2,
                 batch_size: int = 512, progress: bool | None = None,
                 max_side: int | None = DEFAULT_MAX_SIDE, min_face_size: float = 0.0,
                 derotate: bool = True, search_rotations: bool = False,
                 attributes: str | os.PathLike | Any = "auto") -> None:
        if points not in (5, 68):
            raise ValueError(f"points must be 5 or 68, got {points!r}")
        if not 0.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.device = torch.device(device)
        if isinstance(model, TCDCN):
            net = copy.deepcopy(model)  # eval mode and the device move below must not change the caller's module
        else:
            name = model if model is not None else f"{points}pt"
            try:
                net = load_model(name, device="cpu")
            except WeightsError as exc:
                if model is None and points == 68:
                    raise WeightsError(f"no 68-point model is shipped with this installation of tcdcn_ext ({exc}); "
                                       "use points=5, or pass model= a 68-point weights file") from exc
                raise
        if net.num_points != points:
            raise ValueError(f"points={points} but the model predicts {net.num_points} points")
        self.model = net.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)  # a private copy or a freshly loaded model: nothing outside sees this
        self.points = points
        self.averaged = bool(averaged)
        sh = np.asarray(default_shifts(self.model) if shifts is None else shifts)
        try:  # a flat [dx0, dy0, dx1, dy1, ...] is read as pairs
            self.shifts = ops.as_shift_array(sh.reshape(-1, 2) if sh.ndim == 1 and sh.size % 2 == 0 else sh)
        except ValueError as exc:
            raise ValueError(f"shifts must be a non-empty [K, 2] array of whole-pixel (dx, dy) window shifts ({exc})"
                             ) from exc
        self.min_score = float(min_score)
        if int(refine) < 0:
            raise ValueError(f"refine must be >= 0, got {refine!r}")
        self.refine = int(refine)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.derotate = bool(derotate)
        self.search_rotations = bool(search_rotations)
        self.detector_name = detector if isinstance(detector, str) or detector is None else "callable"
        self._detect = resolve_detector(detector, max_side=max_side, min_face_size=min_face_size)
        # Calibrations are fitted for YuNet: MTFL boxes (5 points), tight 68-point extents (68 points).
        self.calibration = ({5: CALIBRATION_5PT, 68: CALIBRATION_68PT}[points]
                            if calibrate and isinstance(self._detect, YuNetDetector) else None)
        self.attribute_tasks = [t for t in self.model.config.aux_tasks]
        self.attribute_net = self._attribute_net(attributes)

    def _attribute_net(self, choice: Any):
        from . import attributes as attr

        if isinstance(choice, attr.AttributeNet):
            net = copy.deepcopy(choice)
        elif isinstance(choice, str) and choice in ("auto", "network", "heads"):
            if choice == "heads" or (choice == "auto" and not attr.shipped_attribute_net_available()):
                return None
            net = attr.load_attribute_net()
        elif isinstance(choice, (str, os.PathLike)):
            net = attr.load_attribute_net(choice)
        else:
            raise ValueError(f"attributes must be 'auto', 'network', 'heads', an AttributeNet or a weights path, "
                             f"got {choice!r}")
        return net.to(self.device).eval()

    def _attribute_probs(self, pairs: list[tuple["_Pixels", np.ndarray]]) -> dict[str, np.ndarray]:
        """The attribute network's class probabilities for faces ``(pixels, MTFL box)``, in ``batch_size``
        chunks."""
        from .attributes import attribute_probabilities

        net = self.attribute_net
        size, context = net.config.input_size, net.config.context
        outs: list[dict[str, np.ndarray]] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = [(pix, data.scale_boxes(np.asarray(b, np.float64).reshape(1, 4), context)[0])
                     for pix, b in pairs[i:i + self.batch_size]]
            x = _batch_inputs(chunk, size).to(self.device)
            outs.append(attribute_probabilities(net, x))
        return {t: np.concatenate([o[t] for o in outs]) for t in net.config.tasks}

    def __repr__(self) -> str:
        return (f"Aligner(points={self.points}, device={str(self.device)!r}, averaged={self.averaged}, "
                f"detector={self.detector_name!r}, calibrated={self.calibration is not None})")

    # -- public calls ---------------------------------------------------------------------------------------------

    def __call__(self, image: ImageLike, color: Color = "rgb") -> list[Face]:
        """Detect the faces in ``image`` and align them; ``[]`` when there is none."""
        return self.align_batch([image], None, color)[0]

    def align(self, image: ImageLike, boxes: Any, color: Color = "rgb") -> list[Face]:
        """Align the faces in the given ``boxes`` ``[N, 4]`` (no detection); one :class:`Face` per box, in order."""
        return self.align_batch([image], [boxes], color)[0]

    def detect(self, image: ImageLike, color: Color = "rgb") -> Detections:
        """The detector's raw output on ``image`` (boxes before calibration)."""
        return self._detect_pixels(_to_pixels(image, color), _describe(image))

    def align_batch(self, images: Iterable[ImageLike], boxes: Sequence[Any] | None = None,
                    color: Color = "rgb") -> list[list[Face]]:
        """Align all faces of all ``images`` in one batched forward pass (chunks of ``batch_size`` faces).

        ``boxes``: None (detect in every image) or one ``[N_i, 4]`` array per image (None entries: detect). Returns
        one list of :class:`Face` per image, in order.
        """
        images = list(images)
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"align_batch: {len(images)} images but {len(boxes)} box lists")
        _check_color(color)
        pixels, names = [], []
        for i, image in enumerate(images):
            names.append(_Label(image, None if len(images) == 1 else i))
            pixels.append(_to_pixels(image, color, names[-1]))
        jobs = self._jobs_for(pixels, boxes, names)
        return self._run(jobs)

    # -- internals ------------------------------------------------------------------------------------------------

    def _jobs_for(self, pixels: list[_Pixels], boxes: Sequence[Any] | None,
                  names: "list[str | _Label] | None" = None) -> list[_Job]:
        """Detect (where no boxes are given) and collect the boxes the model will see, image by image."""
        if boxes is not None and len(boxes) == len(pixels) and all(b is not None for b in boxes):
            given = _all_valid_boxes(boxes)
            if given is not None:
                return [_Job(pix, b, b, np.ones(len(b)), image=i) for i, (pix, b) in enumerate(zip(pixels, given))]
        jobs = []  # detection, or a bad box list: image by image, so that an error names the first bad image
        for i, pix in enumerate(pixels):
            name = names[i] if names else f"images[{i}]"
            given = None if boxes is None else boxes[i]
            if given is None:
                jobs += self._detected_jobs(pix, self._detect_pixels(pix, name), i)
            else:
                b = _valid_boxes(given, name)
                jobs.append(_Job(pix, b, b, np.ones(len(b)), image=i))
        return jobs

    def _detected_jobs(self, pix: _Pixels, det: Detections, image: int) -> list[_Job]:
        """The jobs of one image's detections: faces read where they are, except with ``search_rotations``: a face
        that YuNet scores below :data:`SEARCH_BELOW` is also looked for in copies of its surroundings rotated by
        :data:`SEARCH_ANGLES`; where a rotated copy scores clearly higher, the face is read from an upright copy,
        and its landmarks are rotated back."""
        scores = det.scores.astype(np.float64)
        turn: dict[int, tuple[float, Detections]] = {}
        if self.search_rotations and isinstance(self._detect, YuNetDetector) and len(det):
            low = np.flatnonzero(det.scores < SEARCH_BELOW)
            if len(low):
                squares = [_face_square(det.boxes[i]) for i in low]
                found = self._detect.best_rotations(pix.rgb(), squares, SEARCH_ANGLES)
                for i, (angle, score, rdet) in zip(low, found):
                    if rdet is not None and score > det.scores[i] + SEARCH_MARGIN:
                        turn[int(i)] = (angle, rdet)
        keep = np.array([i for i in range(len(det)) if i not in turn], np.int64)
        sub = Detections(det.scores[keep], det.boxes[keep], None if det.points is None else det.points[keep])
        model_boxes = (calibrate_boxes(sub, self.calibration) if self.calibration is not None
                       else sub.boxes).astype(np.float64)
        jobs = [_Job(pix, model_boxes, sub.boxes.astype(np.float64), scores[keep], refine=True, image=image,
                     slots=keep.tolist())]
        for i, (angle, rdet) in turn.items():
            centre, side = _face_square(det.boxes[i])
            upright, fwd = _upright_copy(pix, centre, side, angle)
            # the search's detection, from the rotated square (centre at side / 2) to the upright copy (centre at
            # its middle; same scale and rotation)
            shift = upright.width / 2.0 - side / 2.0
            one = Detections(rdet.scores, rdet.boxes + shift, rdet.points + shift)
            box = (calibrate_boxes(one, self.calibration) if self.calibration is not None
                   else one.boxes).astype(np.float64)
            jobs.append(_Job(upright, box, det.boxes[i:i + 1].astype(np.float64), scores[i:i + 1], refine=True,
                             image=image, slots=[i], back=_invert_affine(fwd)))
        return jobs

    def _detect_pixels(self, pix: _Pixels, name: "str | _Label") -> Detections:
        if self._detect is None:
            raise DetectorError(
                f"{name}: no face detector is in use (detector={self.detector_name!r}); pass the face boxes with "
                "aligner.align(image, boxes=[(x0, y0, x1, y1), ...]), or use detector='auto' (the bundled YuNet)")
        return self._detect(pix.rgb(), self.min_score)

    def _predict(self, pairs: list[tuple[_Pixels, np.ndarray]], averaged: bool = False
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Landmarks ``[F, P, 2]`` (image pixels) and class probabilities of the faces ``(pixels, box)``: batched
        forward passes of up to ``batch_size`` faces. ``averaged``: each face's crop carries a margin of
        ``max |shift|`` input pixels and one :meth:`TCDCN.predict_shift_average` call per batch runs the network on
        every shifted window (:mod:`tcdcn_ext.averaging`)."""
        # The network sees each box enlarged by its config.box_scale (the 68-point model's framing), and the
        # averaged mode's crop adds `margin` input pixels on every side of that, on the same pixel grid.
        size = self.model.input_size
        margin = int(np.abs(self.shifts).max()) if averaged else 0
        side = size + 2 * margin
        grow = float(self.model.config.box_scale) * side / size
        given = np.array([b for _, b in pairs], np.float64).reshape(-1, 4)
        seen = given
        if grow != 1.0:
            seen = data.scale_boxes(given, grow)
            pairs = [(pix, seen[i]) for i, (pix, _) in enumerate(pairs)]
        per = self.batch_size
        chunks = [pairs[i:i + per] for i in range(0, len(pairs), per)]

        show = len(chunks) > 4 and bool(self.progress if self.progress is not None else sys.stderr.isatty())
        outs = []
        for c, chunk in enumerate(chunks):
            x = _batch_inputs(chunk, side)  # [F, 1, side, side]
            outs.append(self._forward_averaged(x) if averaged else self._forward(x))
            if show:
                done = min(len(pairs), (c + 1) * per)
                end = "\n" if c + 1 == len(chunks) else ""
                print(f"\raligning: {done}/{len(pairs)} faces", end=end, file=sys.stderr, flush=True)
        if len(outs) == 1:
            uv, probs = outs[0]
        else:
            uv = np.concatenate([o[0] for o in outs])
            probs = {t: np.concatenate([o[1][t] for o in outs]) for t in self.attribute_tasks}
        # Plain passes come back in the frame of the box the network saw; averaged ones in the given box's frame.
        return data.from_box_frame(uv, given if averaged else seen), probs

    def _forward_averaged(self, crop: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """TCDCN-Averaged on standardised crops with a margin: landmarks ``[N, P, 2]`` in the given box's frame and
        the shift-averaged probabilities per task."""
        crop = standardise_by_centre(crop, self.model.input_size)  # the centred window is the plain input
        o = self.model.predict_shift_average(crop.to(self.device), self.shifts)
        return (o["landmarks"].float().cpu().numpy(),
                {t: o[t].float().cpu().numpy() for t in self.attribute_tasks})

    def _run(self, jobs: list[_Job]) -> list[list[Face]]:
        pairs = [(job.pixels, b) for job in jobs for b in job.model_boxes]
        if not pairs:
            return _group_by_image(jobs, [])
        passes = self.refine if self.points == 5 and any(job.refine for job in jobs) else 0
        again = np.concatenate([np.full(len(job.model_boxes), job.refine, bool) for job in jobs]) if passes else None
        for _ in range(passes):
            # Re-box the detected faces from their landmarks with the MTFL box model (the way the test crops'
            # boxes were made) and align again: detector boxes, even calibrated, frame faces less consistently.
            pts, _ = self._predict(pairs)
            for i in np.flatnonzero(again):
                try:
                    pairs[i] = (pairs[i][0], data.predict_boxes_5pt(pts[i:i + 1].astype(np.float64))[0])
                except ValueError:  # degenerate landmarks: keep the detector's box
                    pass
        pts, probs = self._predict(pairs, self.averaged)
        if self.derotate:
            self._level_tilted(jobs, pairs, pts, probs)
        n = len(pairs)
        if self.attribute_net is not None:
            # The MTFL box of each face's final landmarks (in the pixels it was read from), as the network's
            # training crops were framed; the pass itself waits for the first read of an attributes field.
            from .evaluate import five_from_68

            five = np.asarray(pts if self.points == 5 else five_from_68(pts), np.float64)
            try:
                mtfl = data.predict_boxes_5pt(five)
            except ValueError:  # some face's landmarks are degenerate: that face keeps the box it was read with
                mtfl = np.array([_mtfl_box_or(five[i], pairs[i][1]) for i in range(n)])
            attr_pairs = [(pairs[i][0], mtfl[i]) for i in range(n)]
            table = _AttributeTable(compute=lambda: self._attribute_probs(attr_pairs))
        else:
            table = _AttributeTable(probs)
        pts = np.ascontiguousarray(pts)  # (its own array: the faces' landmarks are read-only rows of it)
        f = 0
        for job in jobs:  # de-rotated faces: landmarks from the upright copy back into the image
            if job.back is not None:
                pts[f] = pts[f] @ job.back[:, :2].T + job.back[:, 2]
            f += len(job.model_boxes)
        pts.setflags(write=False)
        landmarks = list(pts)
        boxes = [tuple(b) for job in jobs for b in job.report_boxes.tolist()]
        scores = [s for job in jobs for s in job.scores.tolist()]
        faces = list(map(Face._from_call, boxes, scores, landmarks, itertools.repeat(table, n),
                         range(n)))
        return _group_by_image(jobs, faces)

    def _level_tilted(self, jobs: list[_Job], pairs: list, pts: np.ndarray, probs: dict[str, np.ndarray]) -> None:
        """Detected faces whose landmarks' eye line tilts by more than :data:`LEVEL_ABOVE` degrees (more than the
        landmark networks were trained on) are read again from a copy of their surroundings turned level by that
        tilt, up to twice; their landmarks (mapped back) and class probabilities replace the tilted reading's, in
        place. A face read from an upright copy (the orientation search) is levelled within that copy (its
        landmarks are still in the copy's pixels here; the job's map takes them to the image afterwards)."""
        eligible = np.concatenate([np.full(len(job.model_boxes), job.refine, bool)
                                   for job in jobs]) if jobs else np.zeros(0, bool)
        for _ in range(2):  # each reading cuts a copy from the pixels the face's landmarks are in (pairs[i][0])
            roll = _roll_from_landmarks(pts)
            todo = np.flatnonzero(eligible & (np.abs(roll) > LEVEL_ABOVE))
            if len(todo) == 0:
                return
            level, inverse = [], []
            for i in todo:
                centre = pts[i].mean(0)
                side = 2.5 * max(float(np.ptp(pts[i][:, 0])), float(np.ptp(pts[i][:, 1])), 8.0)
                upright, fwd = _upright_copy(pairs[i][0], centre, side, float(roll[i]))
                level.append((upright, box_from_landmarks(pts[i] @ fwd[:, :2].T + fwd[:, 2])))
                inverse.append(_invert_affine(fwd))
            new_pts, new_probs = self._predict(level, self.averaged)
            for k, i in enumerate(todo):
                pts[i] = new_pts[k] @ inverse[k][:, :2].T + inverse[k][:, 2]
                for t in probs:
                    probs[t][i] = new_probs[t][k]

    def _forward(self, x: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward pass: box-frame landmarks ``[N, P, 2]`` and softmax probabilities per task."""
        with torch.inference_mode():
            y = self.model._forward_probabilities(x.to(self.device))  # [N, D]: one transfer
        if y.dtype != torch.float32 or y.device.type != "cpu":
            y = y.float().cpu()
        y = y.numpy()
        # Columns: the landmarks' 2P values, then each task's probabilities in attribute_tasks (= aux_tasks) order;
        # the tasks' arrays are views of y (a numpy call costs ~5 us right after a forward has evicted the caches).
        p2 = 2 * self.model.num_points
        uv = y[:, :p2].reshape(len(y), -1, 2)
        sizes = [self.model.config.aux_tasks[t] for t in self.attribute_tasks]
        starts = itertools.accumulate([p2] + sizes[:-1])
        return uv, {t: y[:, c:c + n] for t, c, n in zip(self.attribute_tasks, starts, sizes)}
