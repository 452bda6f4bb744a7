"""High-level face alignment: detect faces, place the landmarks, read the auxiliary attributes.

::

    from tcdcn_ext import Aligner
    aligner = Aligner()                            # shipped 5-point model, CPU, the bundled YuNet face detector
    faces = aligner("photo.jpg")                   # list[Face]
    faces = aligner(bgr_array, color="bgr")        # OpenCV images: say so, the colour order is never guessed
    faces = aligner.align(rgb_array, boxes=[(x0, y0, x1, y1)])      # your own boxes, no detection
    per_image = aligner.align_batch([img1, img2])  # all faces of all images in one forward pass

Coordinates are image pixels, 0-based, pixel centres (the centre of the top-left pixel is ``(0, 0)``), the
convention of :mod:`tcdcn_ext.inference.boxes` and of OpenCV. Boxes are ``(x0, y0, x1, y1)`` in the same coordinates.

Inputs (``image``): paths, numpy arrays, torch tensors (channels first) and PIL images, as
:mod:`tcdcn_ext.inference.images` describes.

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
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .. import ops
from ..models import TCDCN, WeightsError, load_model
from ..models.landmarks import five_from_68
from .averaging import default_shifts, standardise_by_centre
from .boxes import from_box_frame, predict_boxes_5pt, scale_boxes
from .detector import (CALIBRATION_5PT, CALIBRATION_68PT, DEFAULT_MAX_SIDE, Detections, DetectorError, YuNetDetector,
                       calibrate_boxes, resolve_detector, rotation_about)
from .images import (Color, ImageError, ImageLike, ImageName, Pixels, check_color, describe_image, load_image,
                     to_pixels)
from .preprocess import face_inputs
from .results import ATTRIBUTE_LABELS, Attribute, AttributeTable, Face
from ..util.progress import progress_bar

# (ImageError, load_image, Attribute and ATTRIBUTE_LABELS: the Aligner's errors, loader and results, importable here)
__all__ = ["ATTRIBUTE_LABELS", "Aligner", "Attribute", "Face", "ImageError", "box_from_landmarks", "load_image"]


def _valid_boxes(boxes: Any, name: "str | ImageName") -> np.ndarray:
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

    pixels: Pixels
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


def _mtfl_box_or(points5: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The MTFL box of one face's 5 points, or ``fallback`` when they are degenerate."""
    try:
        return predict_boxes_5pt(np.asarray(points5, np.float64)[None])[0]
    except ValueError:
        return np.asarray(fallback, np.float64)


def _roll_from_landmarks(pts: np.ndarray) -> np.ndarray:
    """The eye line's angle (degrees, positive = clockwise as seen) of landmarks ``[F, P, 2]`` (5 or 68 points)."""
    if pts.shape[1] == 68:
        d = pts[:, 42:48].mean(1) - pts[:, 36:42].mean(1)
    else:
        d = pts[:, 1] - pts[:, 0]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0]))


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The model's box for a face from its landmarks ``[P, 2]`` -> ``[4]``: the MTFL box model for 5 points
    (:func:`tcdcn_ext.inference.boxes.predict_boxes_5pt`), the landmark extent for 68 points (the 300-W staged
    convention)."""
    p = np.asarray(landmarks, np.float64)
    if len(p) == 5:
        return predict_boxes_5pt(p[None])[0]
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


def _upright_copy(pix: Pixels, centre: np.ndarray, side: float, angle: float) -> tuple[Pixels, np.ndarray]:
    """The ``side``-pixel square around ``centre`` rotated by ``angle`` degrees (counter-clockwise as seen) about it,
    at the image's pixel scale (bilinear, black outside the image), and the 2x3 map from image to copy pixels."""
    import cv2

    n = int(np.ceil(side))
    m = rotation_about(centre, angle, 1.0, n)  # the face centre lands in the middle of the copy
    a = pix.array if pix.order == "grey" else pix.array[:, :, :3]
    warped = cv2.warpAffine(np.ascontiguousarray(a), m, (n, n), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return Pixels(warped, pix.order), m


# ----------------------------------------------------------------------------------------------------------------
# Aligner


class Aligner:
    """Face detector + TCDCN landmarks and attributes (see the module docstring for inputs and coordinates).

    Args:
        points: 5 (the MTFL model) or 68 (only when a 68-point model is shipped).
        device: torch device of the model; ``"cpu"`` by default.
        averaged: TCDCN-Averaged: average the landmarks and attribute probabilities over the network run on shifted
            input windows (``shifts``), in one :func:`tcdcn_ext.ops.shift_average` call per batch.
        detector: ``"auto"`` or ``"yunet"`` (the bundled YuNet detector,
            :class:`tcdcn_ext.inference.detector.YuNetDetector`), ``"none"``, or a callable
            ``f(rgb uint8 [H, W, 3]) -> boxes [N, 4]`` | ``(boxes, scores)`` | ``(boxes, scores, points [N, 5, 2])``. (``"yuface"``, the earlier releases' detector, names YuNet.)
        min_score: detector confidence threshold in ``[0, 1]``.
        calibrate: map YuNet's boxes to the model's box convention (:mod:`tcdcn_ext.inference.detector`); ignored
            for other detectors and for boxes you pass.
        max_side: YuNet sees a copy of the image downscaled to at most this many pixels on its longest side (None:
            full resolution); the landmarks are read on the full-resolution pixels. See
            :class:`~tcdcn_ext.inference.detector.YuNetDetector` for the trade-off and the default.
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
        model: a shipped name (``"5pt"``), a ``.pt`` path or a :class:`~tcdcn_ext.models.TCDCN` (copied: the
            caller's module is left as it is); default ``f"{points}pt"``.
        shifts: ``[K, 2]`` whole-pixel ``(dx, dy)`` translations of the network's input window for ``averaged``
            (default :func:`tcdcn_ext.inference.averaging.default_shifts`: 20 shifts chosen by validation for
            the model).
        refine: for *detected* faces (5-point model), re-box the face from its landmarks with the MTFL box model (the
            framing the 5-point model was trained on) and align again, ``refine`` times. On the 500 validation
            faces of mtfl/train through YuNet (``benchmarks/eval_val_pipeline.py``): 3.251 % error / 2.4 % failures
            with one pass, 3.200 % / 1.8 % with two (default), 3.197 % / 1.6 % with three. 0: one landmark pass in
            the calibrated detector box.
        attributes: where ``Face.attributes`` come from. ``"auto"`` (default) and ``"network"``: the shipped
            attribute network (:mod:`tcdcn_ext.models.attributes`, trained for them: balanced accuracy and
            calibration in ``weights/ATTRIBUTES.md``), for both models ("auto" falls back to the model's heads if it
            is not installed); ``"heads"``: the TCDCN model's own auxiliary heads (the 5-point model's are near
            chance for gender and glasses, see its model card; the 68-point model has none: ``{}``); an
            :class:`~tcdcn_ext.models.attributes.AttributeNet` or a path to its weights. The network reads each face
            from the MTFL box of its final landmarks (the 68-point model's eye centres, nose tip and mouth corners),
            once per call, when the first face's ``attributes`` are read.
        batch_size: faces per forward pass in :meth:`align_batch` (bounds memory for huge batches).
        progress: progress lines on stderr for long batches (None: only when stderr is a terminal).

    Boxes given to :meth:`align` must follow the model's training convention: the MTFL face box, a square from
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
        from ..models import attributes as attr

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

    def _attribute_probs(self, pairs: list[tuple[Pixels, np.ndarray]]) -> dict[str, np.ndarray]:
        """The attribute network's class probabilities for faces ``(pixels, MTFL box)``, in ``batch_size``
        chunks."""
        from ..models.attributes import attribute_probabilities

        net = self.attribute_net
        size, context = net.config.input_size, net.config.context
        wide = scale_boxes(np.array([b for _, b in pairs], np.float64).reshape(-1, 4), context)
        outs: list[dict[str, np.ndarray]] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = [(pix, wide[i + k]) for k, (pix, _) in enumerate(pairs[i:i + self.batch_size])]
            x = face_inputs(chunk, size).to(self.device)
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
        return self._detect_pixels(to_pixels(image, color), describe_image(image))

    def align_batch(self, images: Iterable[ImageLike], boxes: Sequence[Any] | None = None,
                    color: Color = "rgb") -> list[list[Face]]:
        """Align all faces of all ``images`` in one batched forward pass (chunks of ``batch_size`` faces).

        ``boxes``: None (detect in every image) or one ``[N_i, 4]`` array per image (None entries: detect). Returns
        one list of :class:`Face` per image, in order.
        """
        images = list(images)
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"align_batch: {len(images)} images but {len(boxes)} box lists")
        check_color(color)
        pixels, names = [], []
        for i, image in enumerate(images):
            names.append(ImageName(image, None if len(images) == 1 else i))
            pixels.append(to_pixels(image, color, names[-1]))
        return self.align_pixels(pixels, boxes, names)

    @property
    def detects(self) -> bool:
        """Whether this Aligner has a face detector (``detector="none"``: only given boxes are aligned)."""
        return self._detect is not None

    def align_pixels(self, pixels: Sequence[Pixels], boxes: Sequence[Any] | None = None,
                     names: "Sequence[str | ImageName] | None" = None) -> list[list[Face]]:
        """:meth:`align_batch` on images already checked (:func:`tcdcn_ext.inference.images.to_pixels`): what the
        CLI and the tracker call. ``names``: how errors name each image (default ``images[i]``)."""
        return self._run(self._jobs_for(list(pixels), boxes, names))

    # -- internals ------------------------------------------------------------------------------------------------

    def _jobs_for(self, pixels: list[Pixels], boxes: Sequence[Any] | None,
                  names: "list[str | ImageName] | None" = None) -> list[_Job]:
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

    def _detected_jobs(self, pix: Pixels, det: Detections, image: int) -> list[_Job]:
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

    def _detect_pixels(self, pix: Pixels, name: "str | ImageName") -> Detections:
        if self._detect is None:
            raise DetectorError(
                f"{name}: no face detector is in use (detector={self.detector_name!r}); pass the face boxes with "
                "aligner.align(image, boxes=[(x0, y0, x1, y1), ...]), or use detector='auto' (the bundled YuNet)")
        return self._detect(pix.rgb(), self.min_score)

    def _predict(self, pairs: list[tuple[Pixels, np.ndarray]], averaged: bool = False
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Landmarks ``[F, P, 2]`` (image pixels) and class probabilities of the faces ``(pixels, box)``: batched
        forward passes of up to ``batch_size`` faces. ``averaged``: each face's crop carries a margin of
        ``max |shift|`` input pixels and one :meth:`TCDCN.predict_shift_average` call per batch runs the network on
        every shifted window (:mod:`tcdcn_ext.inference.averaging`)."""
        # The network sees each box enlarged by its config.box_scale (the 68-point model's framing), and the
        # averaged mode's crop adds `margin` input pixels on every side of that, on the same pixel grid.
        size = self.model.input_size
        margin = int(np.abs(self.shifts).max()) if averaged else 0
        side = size + 2 * margin
        grow = float(self.model.config.box_scale) * side / size
        given = np.array([b for _, b in pairs], np.float64).reshape(-1, 4)
        seen = given
        if grow != 1.0:
            seen = scale_boxes(given, grow)
            pairs = [(pix, seen[i]) for i, (pix, _) in enumerate(pairs)]
        per = self.batch_size
        chunks = [pairs[i:i + per] for i in range(0, len(pairs), per)]

        show = len(chunks) > 4 and bool(self.progress if self.progress is not None else sys.stderr.isatty())
        outs = []
        bar = progress_bar(len(pairs), "aligning", unit="face") if show else None  # (none at all on the batch-1 path)
        for chunk in chunks:
            x = face_inputs(chunk, side)  # [F, 1, side, side]
            outs.append(self._forward_averaged(x) if averaged else self._forward(x))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        if len(outs) == 1:
            uv, probs = outs[0]
        else:
            uv = np.concatenate([o[0] for o in outs])
            probs = {t: np.concatenate([o[1][t] for o in outs]) for t in self.attribute_tasks}
        # Plain passes come back in the frame of the box the network saw; averaged ones in the given box's frame.
        return from_box_frame(uv, given if averaged else seen), probs

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
                    pairs[i] = (pairs[i][0], predict_boxes_5pt(pts[i:i + 1].astype(np.float64))[0])
                except ValueError:  # degenerate landmarks: keep the detector's box
                    pass
        pts, probs = self._predict(pairs, self.averaged)
        if self.derotate:
            self._level_tilted(jobs, pairs, pts, probs)
        n = len(pairs)
        if self.attribute_net is not None:
            # The MTFL box of each face's final landmarks (in the pixels it was read from), as the network's
            # training crops were framed; the pass itself waits for the first read of an attributes field.
            five = np.asarray(pts if self.points == 5 else five_from_68(pts), np.float64)
            try:
                mtfl = predict_boxes_5pt(five)
            except ValueError:  # some face's landmarks are degenerate: that face keeps the box it was read with
                mtfl = np.array([_mtfl_box_or(five[i], pairs[i][1]) for i in range(n)])
            attr_pairs = [(pairs[i][0], mtfl[i]) for i in range(n)]
            table = AttributeTable(compute=lambda: self._attribute_probs(attr_pairs))
        else:
            table = AttributeTable(probs)
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
        faces = list(map(Face.with_lazy_attributes, boxes, scores, landmarks, itertools.repeat(table, n), range(n)))
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
            y = self.model.forward_probabilities(x.to(self.device))  # [N, D]: one transfer
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
