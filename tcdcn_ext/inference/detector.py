"""Face detection for :class:`tcdcn_ext.Aligner`, and the calibration of detector boxes to the model's box convention.

The detector is YuNet (:mod:`tcdcn_ext.models.yunet`; MIT licence, weights inside the package) running on this library's
own kernels (:func:`tcdcn_ext.ops.dw_separable`), so detection needs nothing beyond torch, numpy and OpenCV's image
functions, on every platform torch supports. :class:`YuNetDetector` returns a box and 5 points per face.

Box calibration
---------------
The 5-point TCDCN was trained on the MTFL crops' annotated boxes (the CUHK boxes: square, about the eyebrows to
the chin). YuNet's boxes are taller and placed differently, and feeding them unchanged shifts and scales every
face in the network's input. :func:`tcdcn_ext.training.calibration.fit_box_calibration` learns, on the MTFL
*training* crops, two maps from a YuNet detection to the annotated box:

* ``"linear"``: a translation- and scale-equivariant linear map of the detector box,
  ``[cx' - cx, cy' - cy, w', h'] = [w, h] @ LINEAR`` (``LINEAR`` is 2x4);
* ``"points"``: the box predicted from the detector's 5 points with
  :func:`tcdcn_ext.inference.boxes.predict_boxes_5pt` and a coefficient matrix refitted on YuNet's points
  (``POINTS``, 2x3, as :func:`tcdcn_ext.inference.boxes.fit_box_model`).

and keeps the one whose boxes give the lower landmark error on a held-out part of the training set (the training
run's own validation faces). The constants below are the output of ``python -m tcdcn_ext calibrate --fit ...``
(formerly ``python -m tcdcn_ext.detect --fit``; see each constant for its command and the numbers it printed).
Calibration applies to the built-in detector; boxes from a user detector (a callable) or given to
:meth:`Aligner.align` are used as they are. The 68-point model has its own
box convention (the staged 300-W boxes are the tight extent of the 68 points) and its own fit,
:data:`CALIBRATION_68PT`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch


__all__ = [
    "CALIBRATION_5PT",
    "CALIBRATION_68PT",
    "DetectorError",
    "Detections",
    "YuNetDetector",
    "calibrate_boxes",
    "linear_box_features",
    "resolve_detector",
]


#: YuNet -> box calibration of the 5-point model, whose training boxes are made from the true 5 landmarks by the
#: MTFL box model (``tcdcn-train --boxes landmarks``): fitted on the 9,500 MTFL training crops outside the training
#: run's validation split by ``OMP_NUM_THREADS=1 python -m tcdcn_ext calibrate --fit ../shared/data/mtfl/train
#: --model 5pt --boxes landmarks``. The fitted numbers do not depend on the model; the model (the shipped 5-point
#: one) only chooses ``method``, by the landmark error of one pass on the 500 validation faces (YuNet found all
#: 10,000 faces; the Aligner then re-boxes each face from its landmarks, ``refine``):
#:
#: ==========  ===================  ===========  =========
#: map         box edge RMS (px)    mean error   failures
#: ==========  ===================  ===========  =========
#: none        12.41                10.46 %      34.2 %
#: linear       4.49                 5.43 %       9.8 %
#: points       3.60                 3.71 %       3.6 %
#: ==========  ===================  ===========  =========
#:
#: Both maps are kept so that detections without points can use ``"linear"``.
CALIBRATION_5PT: dict[str, Any] = {
    "method": "points",
    "linear": [[-0.03358448, -0.11246245, 0.45067822, 0.45067822],
               [0.01630167, 0.12656061, 0.37235711, 0.37235710]],
    "points": [[-0.03803481, -0.05396936, 3.25566292], [-0.78670444, -0.03880837, 0.02207329]],
}

#: YuNet -> annotated-box calibration of the 68-point model (the staged 300-W boxes: the tight extent of the 68
#: points), fitted on the 1,811 300w/train crops outside the held-out 10 % by ``OMP_NUM_THREADS=1 python -m
#: tcdcn_ext.detect --fit ../shared/data/300w/train --model 68pt`` (YuNet found all 2,012 faces). On the 201
#: held-out faces, outer-corner error of the 68-point model:
#:
#: ==========  ===================  ===========  =========
#: map         box edge RMS (px)    mean error   failures
#: ==========  ===================  ===========  =========
#: none        11.37                8.23 %       18.4 %
#: linear       3.51                4.48 %        1.0 %
#: points       3.88                4.55 %        1.5 %
#: ==========  ===================  ===========  =========
CALIBRATION_68PT: dict[str, Any] = {
    "method": "linear",
    "linear": [[0.01202937, -0.07968531, 0.78174231, 0.25320074],
               [-0.01525186, 0.17489174, 0.18991632, 0.58619500]],
    "points": [[-0.05086059, 0.27228285, 3.66039944], [-2.00268465, -0.06525608, -0.14297326]],
}

DetectorName = Literal["auto", "yunet", "none"]

#: Default longest side of the copy of an image that YuNet sees (see :class:`YuNetDetector`): chosen from recall and
#: time on ``shared/data/scenes`` (``benchmarks/detector_resolution.py``, ``benchmarks/README.md``).
DEFAULT_MAX_SIDE = 320
#: The smallest face YuNet finds reliably, in pixels of the image it sees (its stride-8 anchors).
YUNET_MIN_FACE = 12


class DetectorError(RuntimeError):
    """No detector is available for a call that needs one, or a user detector returned something unusable."""


@dataclass(frozen=True)
class Detections:
    """Faces found in one image: ``scores`` float32 [N] in [0, 1], ``boxes`` float32 [N, 4] ``(x0, y0, x1, y1)``
    in image pixels, ``points`` float32 [N, 5, 2] (the detector's own 5 points) or None."""

    scores: np.ndarray
    boxes: np.ndarray
    points: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros(0, np.float32), np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32))


def rotation_about(centre: np.ndarray, angle: float, scale: float, side: float) -> np.ndarray:
    """The 2x3 map that rotates an image by ``angle`` degrees (counter-clockwise as seen) and scales it by ``scale``
    about ``centre``, then moves ``centre`` to the middle of a ``side``-pixel square (the copies that the orientation
    search and the Aligner's levelling read)."""
    import cv2

    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), float(scale))
    m[:, 2] += side / 2.0 - np.asarray(centre, np.float64)
    return m


class YuNetDetector:
    """The bundled face detector: YuNet (:mod:`tcdcn_ext.models.yunet`) on the library's own kernels, with its weights
    inside the package. Call it on an RGB uint8 image ``[H, W, 3]``: ``detector(rgb, min_score) -> Detections``.

    Working resolution: the network sees a copy of the image whose longest side is at most ``max_side`` pixels
    (``INTER_AREA`` downscaling; None: the full image), and the boxes and points are mapped back to full-resolution
    pixels, where the landmark network then reads the face. YuNet finds faces of about 12 to 300 pixels in the
    image it sees, so ``max_side`` trades the smallest findable face (about ``12 * longest_side / max_side``
    pixels) for time (the network's cost grows with the pixel count). ``min_face_size`` (pixels of the full image)
    raises the working resolution where needed so that faces of that size stay findable, and drops smaller
    detections.

    ``nms_threshold`` and ``top_k``: the non-maximum suppression (as OpenCV's ``FaceDetectorYN``: 0.3, 5000).

    ``threads``: torch threads for the detector's own work, set for the calling thread during each call and
    restored after it (other threads are not affected); default 1. The network's layers take tens of microseconds
    each, and on a machine whose cores are busy a parallel region costs milliseconds (OpenMP workers spin and
    preempt each other): a 640x480 detection took 4.5 ms on one thread and 156 ms on two on this project's loaded
    2-core machine. None: torch's setting. The detector holds no per-call state: one instance may be shared between
    threads.
    """

    def __init__(self, max_side: int | None = DEFAULT_MAX_SIDE, min_face_size: float = 0.0,
                 nms_threshold: float = 0.3, top_k: int = 5000, threads: int | None = 1) -> None:
        from ..models.yunet import load_yunet

        if max_side is not None and (not isinstance(max_side, (int, np.integer)) or max_side < 32):
            raise ValueError(f"max_side must be an int >= 32 or None, got {max_side!r}")
        if not (np.isfinite(min_face_size) and min_face_size >= 0):
            raise ValueError(f"min_face_size must be a finite number >= 0, got {min_face_size!r}")
        if not 0.0 < nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1], got {nms_threshold!r}")
        self.max_side = None if max_side is None else int(max_side)
        self.min_face_size = float(min_face_size)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads!r}")
        self.threads = None if threads is None else int(threads)
        self.net = load_yunet()

    def __repr__(self) -> str:
        return (f"YuNetDetector(max_side={self.max_side}, min_face_size={self.min_face_size:g}, "
                f"nms_threshold={self.nms_threshold:g})")

    def _decode(self, heads: list[torch.Tensor], min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from ..models.yunet import decode, nms

        scores, boxes, points = decode(heads, float(min_score))
        keep = nms(scores, boxes, self.nms_threshold, self.top_k)
        return scores[keep], boxes[keep], points[keep]

    def best_rotations(self, rgb: np.ndarray, squares: Sequence[tuple[np.ndarray, float]], angles: Sequence[float],
                       size: int = 96) -> list[tuple[float, float, Detections | None]]:
        """In-plane orientation search for faces: the ``side``-pixel square around each ``centre`` of ``squares``
        is rotated by each of ``angles`` (degrees, counter-clockwise as seen) and scaled to ``size`` pixels; YuNet
        runs on all of these copies in one batch. For each square, returns ``(angle, score, detection)`` of the
        copy whose detection nearest its centre scores highest, the detection (box and points) in the coordinates
        of that rotated square at the image's scale, centre at ``(side / 2, side / 2)``; ``(nan, 0, None)`` when no
        copy has one. YuNet was trained on upright faces (its 5 points do not follow a face's roll), so its score
        is what tells the upright copy."""
        with self._team():
            return self._best_rotations(rgb, squares, angles, size)

    def _best_rotations(self, rgb: np.ndarray, squares: Sequence[tuple[np.ndarray, float]],
                        angles: Sequence[float], size: int) -> list[tuple[float, float, Detections | None]]:
        import cv2

        from ..models.yunet import DIVISOR

        pad = -(-size // DIVISOR) * DIVISOR
        x = np.zeros((len(squares) * len(angles), pad, pad, 3), np.float32)
        for f, (centre, side) in enumerate(squares):
            for k, a in enumerate(angles):
                m = rotation_about(centre, a, size / side, size)
                crop = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA if size < side else cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                x[f * len(angles) + k, :size, :size] = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        heads = self._run_net(torch.from_numpy(x).permute(0, 3, 1, 2))
        out = []
        for f, (_, side) in enumerate(squares):
            best: tuple[float, float, Detections | None] = (float("nan"), 0.0, None)
            for k, a in enumerate(angles):
                n = f * len(angles) + k
                sc, bx, pt = self._decode([h[n:n + 1] for h in heads], 0.05)
                if len(sc) == 0:
                    continue
                c = (bx[:, :2] + bx[:, 2:]) / 2 - size / 2.0  # the detection nearest the copy's centre
                j = int(np.argmin((c ** 2).sum(1)))
                if np.abs(c[j]).max() < size / 4 and sc[j] > best[1]:
                    s = side / size  # copy pixels -> the rotated square at the image's scale
                    det = Detections(sc[j:j + 1].astype(np.float32), (bx[j:j + 1] * s).astype(np.float32),
                                     (pt[j:j + 1] * s).astype(np.float32))
                    best = (float(a), float(sc[j]), det)
            out.append(best)
        return out

    def working_scale(self, height: int, width: int) -> float:
        """The factor (<= 1) by which an image of this size is downscaled before the network sees it."""
        longest = max(height, width)
        scale = 1.0 if self.max_side is None else min(1.0, self.max_side / longest)
        if self.min_face_size > 0:
            scale = max(scale, min(1.0, YUNET_MIN_FACE / self.min_face_size))
        return scale

    def network_input(self, rgb: np.ndarray) -> tuple[torch.Tensor, float, float]:
        """The network's input for an RGB uint8 image: the working-resolution copy as BGR float ``[1, 3, H', W']``
        zero-padded to multiples of 32, with the x and y factors from image to input pixels."""
        import cv2

        from ..models.yunet import DIVISOR

        h, w = rgb.shape[:2]
        scale = self.working_scale(h, w)
        small = rgb
        sx = sy = 1.0
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            sx, sy = size[0] / w, size[1] / h
        hs, ws = small.shape[:2]
        hp, wp = -(-hs // DIVISOR) * DIVISOR, -(-ws // DIVISOR) * DIVISOR
        # OpenCV for the channel swap, padding and conversion (~8x faster than numpy's strided copy), not torch: torch
        # splits a copy this size between its threads, and a parallel region costs milliseconds when the machine's
        # cores are busy (see dw_separable_cpu.cpp).
        bgr = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2BGR)
        if hp != hs or wp != ws:
            bgr = cv2.copyMakeBorder(bgr, 0, hp - hs, 0, wp - ws, cv2.BORDER_CONSTANT, value=0)
        x = bgr.astype(np.float32)[None]
        return torch.from_numpy(x).permute(0, 3, 1, 2), sx, sy

    @contextlib.contextmanager
    def _team(self) -> Iterator[None]:
        """The calling thread's torch threads set to ``threads`` for the block (other threads keep theirs)."""
        from .. import _C

        previous = _C.thread_team_size(self.threads) if self.threads is not None else None
        try:
            yield
        finally:
            if previous is not None:
                _C.thread_team_size(previous)

    def _run_net(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            return self.net(x)

    def __call__(self, rgb: np.ndarray, min_score: float = 0.5) -> Detections:
        with self._team():
            x, sx, sy = self.network_input(rgb)
            heads = self._run_net(x)
            scores, boxes, points = self._decode(heads, min_score)
        if sx != 1.0 or sy != 1.0:  # pixel-centre mapping back to the full image: x = (x' + 0.5) / s - 0.5
            s = np.array([sx, sy])
            boxes = ((boxes.reshape(-1, 2, 2) + 0.5) / s - 0.5).reshape(-1, 4)
            points = (points + 0.5) / s - 0.5
        if self.min_face_size > 0 and len(boxes):
            big = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_face_size
            scores, boxes, points = scores[big], boxes[big], points[big]
        if len(scores) == 0:
            return Detections.empty()
        return Detections(scores.astype(np.float32), boxes.astype(np.float32), points.astype(np.float32))


class _UserDetector:
    """Adapts a callable ``f(rgb uint8 [H, W, 3]) -> boxes [N, 4] | (boxes, scores) | (boxes, scores, points)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, rgb: np.ndarray, min_score: float = 0.5) -> Detections:
        out = self.fn(rgb)
        if isinstance(out, Detections):
            det = out
        else:
            parts = list(out) if isinstance(out, (tuple, list)) and len(out) in (2, 3) and not np.isscalar(out[0]) \
                and np.asarray(out[0]).ndim == 2 else [out]
            boxes = np.asarray(parts[0], np.float32).reshape(-1, 4)
            scores = np.asarray(parts[1], np.float32).reshape(-1) if len(parts) > 1 else np.ones(len(boxes), np.float32)
            points = np.asarray(parts[2], np.float32).reshape(-1, 5, 2) if len(parts) > 2 and parts[2] is not None \
                else None
            if len(scores) != len(boxes) or (points is not None and len(points) != len(boxes)):
                raise DetectorError(f"detector {self.fn!r} returned {len(boxes)} boxes but {len(scores)} scores"
                                    + ("" if points is None else f" and {len(points)} point sets"))
            det = Detections(scores, boxes, points)
        if not np.all(np.isfinite(det.boxes)):
            raise DetectorError(f"detector {self.fn!r} returned non-finite boxes")
        keep = det.scores >= min_score
        return Detections(det.scores[keep], det.boxes[keep], None if det.points is None else det.points[keep])


def resolve_detector(detector: str | Callable[..., Any] | None,
                     **options: Any) -> Callable[[np.ndarray, float], Detections] | None:
    """``"auto"`` or ``"yunet"`` (the bundled :class:`YuNetDetector`), ``"none"``/None (None), or a callable (see
    :class:`_UserDetector`). ``"yuface"``, the detector of earlier releases (the same network family, in a wheel
    that exists for CPython <= 3.11 only), is accepted as a name for the bundled one. Returns ``f(rgb, min_score)
    -> Detections`` or None. ``options`` go to :class:`YuNetDetector` (``max_side``, ``min_face_size``, ...)."""
    if callable(detector):
        return _UserDetector(detector)
    if detector is None or detector == "none":
        return None
    if detector in ("auto", "yunet", "yuface"):
        return YuNetDetector(**options)
    raise ValueError(f"detector must be 'auto', 'yunet', 'none' or a callable, got {detector!r}")


# ----------------------------------------------------------------------------------------------------------------
# Calibration


def linear_box_features(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def _apply_linear(boxes: np.ndarray, coef: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    d = linear_box_features(b) @ np.asarray(coef, np.float64)  # [N, 4]: dcx, dcy, w', h'
    cx = (b[:, 0] + b[:, 2]) / 2 + d[:, 0]
    cy = (b[:, 1] + b[:, 3]) / 2 + d[:, 1]
    return np.stack([cx - d[:, 2] / 2, cy - d[:, 3] / 2, cx + d[:, 2] / 2, cy + d[:, 3] / 2], 1)


def calibrate_boxes(det: Detections, calibration: dict[str, Any] | None = None,
                    method: str | None = None) -> np.ndarray:
    """Detector boxes -> boxes in the model's training convention, float32 [N, 4].

    ``method``: ``"points"`` (needs ``det.points``), ``"linear"``, ``"none"``; default: the calibration's chosen
    method, falling back to ``"linear"`` when the detections carry no points.
    """
    from .boxes import predict_boxes_5pt

    cal = CALIBRATION_5PT if calibration is None else calibration
    method = method or cal["method"]
    if len(det) == 0:
        return np.zeros((0, 4), np.float32)
    if method == "points" and det.points is None:
        method = "linear"
    if method == "none":
        out = np.asarray(det.boxes, np.float64)
    elif method == "linear":
        out = _apply_linear(det.boxes, np.asarray(cal["linear"]))
    elif method == "points":
        try:
            out = predict_boxes_5pt(det.points, np.asarray(cal["points"]))
        except ValueError:  # degenerate points (all equal): fall back to the box map, face by face
            out = np.empty((len(det), 4))
            for i in range(len(det)):
                try:
                    out[i] = predict_boxes_5pt(det.points[i:i + 1], np.asarray(cal["points"]))[0]
                except ValueError:
                    out[i] = _apply_linear(det.boxes[i:i + 1], np.asarray(cal["linear"]))[0]
    else:
        raise ValueError(f"calibration method must be 'points', 'linear' or 'none', got {method!r}")
    return out.astype(np.float32)
