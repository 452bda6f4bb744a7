"""Images as the Aligner takes them: paths, numpy arrays, torch tensors and PIL images checked and turned into
:class:`Pixels` (a validated 8-bit view, no copies), or refused with an :class:`ImageError` naming the input.

Inputs (``image``):

* a path (``str`` / ``os.PathLike``) to an image file OpenCV can decode, 8 bits per channel. The EXIF orientation
  is applied (as ``cv2.imread`` and image viewers do), so coordinates refer to the image as it is displayed;
* a numpy ``uint8`` array ``[H, W]`` (grey), ``[H, W, 1]``, ``[H, W, 3]`` (``color="rgb"`` or ``"bgr"``) or
  ``[H, W, 4]`` (``color="rgba"`` or ``"bgra"``; alpha is ignored);
* a PIL image (duck-typed, PIL is not required): its mode says what it holds, ``color`` is not used;
* a torch tensor, **channels first** (torchvision's convention): ``[C, H, W]`` with ``C`` in 1, 3, 4 or ``[H, W]``,
  ``uint8`` (0-255) or floating point in ``[0, 1]``; ``color`` gives the channel order as for arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch

__all__ = ["Color", "ImageError", "ImageLike", "ImageName", "MIN_SIDE", "Pixels", "check_color", "describe_image",
           "from_array", "load_image", "to_pixels"]

Color = Literal["rgb", "bgr", "rgba", "bgra"]
ImageLike = Union[str, os.PathLike, np.ndarray, torch.Tensor, Any]

_COLORS = ("rgb", "bgr", "rgba", "bgra")

#: Smallest accepted image side: a face needs more pixels than this.
MIN_SIDE = 8


class ImageError(ValueError):
    """An input image cannot be used; the message names the input and the problem."""


class Pixels:
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
        (``INTER_AREA``, on the 8-bit pixels) when ``scale < 1``; ITU-R 601 weights as
        :func:`tcdcn_ext.inference.preprocess.grey`.

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


def describe_image(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    if isinstance(image, np.ndarray):
        return f"numpy array {image.dtype}{list(image.shape)}"
    if isinstance(image, torch.Tensor):
        return f"tensor {str(image.dtype).replace('torch.', '')}{list(image.shape)}"
    return f"{type(image).__name__} object"


class ImageName:
    """The name of an input in error messages, built only when a message is (``str(dtype)`` and friends cost
    ~10 us per image, as much as sampling the face)."""

    __slots__ = ("image", "index")

    def __init__(self, image: Any, index: int | None = None) -> None:
        self.image, self.index = image, index

    def __str__(self) -> str:
        d = describe_image(self.image)
        return d if self.index is None else f"images[{self.index}] ({d})"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def check_color(color: str) -> None:
    if color not in _COLORS:
        raise ImageError(f"color must be one of {_COLORS}, got {color!r}")


def from_array(a: np.ndarray, color: str, name: "str | ImageName") -> Pixels:
    if a.dtype != np.uint8:
        if a.dtype in (np.uint16, np.int16):
            raise ImageError(f"{name}: 16-bit images are not supported; convert to 8 bits per channel (uint8)")
        raise ImageError(f"{name}: expected a uint8 image, got dtype {a.dtype} (floats: (x * 255).round()"
                         ".astype(np.uint8) for values in [0, 1])")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        pix = Pixels(a, "grey")
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        c = a.shape[2]
        if c == 3 and color not in ("rgb", "bgr"):
            raise ImageError(f"{name}: a 3-channel image needs color='rgb' or 'bgr', got color={color!r}")
        if c == 4 and color not in ("rgba", "bgra"):
            raise ImageError(f"{name}: a 4-channel image needs color='rgba' or 'bgra' (alpha is ignored), "
                             f"got color={color!r}")
        pix = Pixels(a, color[:3])
    else:
        raise ImageError(f"{name}: expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape "
                         f"{list(a.shape)}")
    if min(a.shape[0], a.shape[1]) < MIN_SIDE:
        what = "empty" if a.size == 0 else "too small"
        raise ImageError(f"{name}: image is {what} ({a.shape[1]}x{a.shape[0]} pixels; at least "
                         f"{MIN_SIDE}x{MIN_SIDE} needed)")
    return pix


def _from_tensor(t: torch.Tensor, color: str, name: "str | ImageName") -> Pixels:
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
    return from_array(a, color, name)


def _from_pil(img: Any, name: "str | ImageName") -> Pixels:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise ImageError(f"{name}: PIL mode {mode!r} (16/32-bit) is not supported; convert to 8 bits ('L' or 'RGB')")
    if mode not in ("L", "RGB", "RGBA"):
        img, mode = img.convert("RGB"), "RGB"
    a = np.asarray(img)
    return from_array(a, {"L": "rgb", "RGB": "rgb", "RGBA": "rgba"}[mode], name)


def _from_file(path: Path, name: "str | ImageName") -> Pixels:
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
    return from_array(img, "bgr", name)


def to_pixels(image: ImageLike, color: str, name: "str | ImageName | None" = None) -> Pixels:
    check_color(color)
    label = name or ImageName(image)
    if isinstance(image, (str, os.PathLike)):
        return _from_file(Path(image), label)
    if isinstance(image, np.ndarray):
        return from_array(image, color, label)
    if isinstance(image, torch.Tensor):
        return _from_tensor(image, color, label)
    if hasattr(image, "mode") and hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image, duck-typed
        return _from_pil(image, label)
    raise ImageError(f"{label}: unsupported image type; pass a path, a numpy uint8 array, a PIL image or a "
                     "torch tensor")


def load_image(image: ImageLike, color: Color = "rgb") -> np.ndarray:
    """Any accepted input (see the module docstring) -> uint8 RGB ``[H, W, 3]``; :class:`ImageError` if unusable."""
    return to_pixels(image, color).rgb()
