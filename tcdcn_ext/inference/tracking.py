"""Landmark tracking over video frames: detector-free box prediction from the previous landmarks, re-detection
when the track is lost (or every ``redetect_every`` frames), and one-euro temporal smoothing per coordinate.

The one-euro filter (Casiez, Roussel, Vogel, CHI 2012) is a low-pass filter whose cut-off rises with the signal's
speed: still faces are smoothed hard (no jitter), moving ones lightly (little lag). Coordinates are filtered in
units of the face box side, so the parameters do not depend on the face's size in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .aligner import Aligner, box_from_landmarks
from .boxes import box_iou
from .images import Color, ImageLike, describe_image, to_pixels
from .results import Face

__all__ = ["FaceTracker", "OneEuroFilter", "box_from_landmarks", "measure_tracking", "synthetic_moving_video"]


class OneEuroFilter:
    """Vectorised one-euro filter over an array of values (e.g. landmarks ``[P, 2]``).

    ``min_cutoff`` (Hz): cut-off at rest, lower = smoother; ``beta``: how fast the cut-off grows with speed (in value
    units per second), higher = less lag; ``d_cutoff`` (Hz): cut-off of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 10.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t: float | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None or self.t is None or t <= self.t:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self.t
        dx = (x - self.x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self.dx = a_d * dx + (1 - a_d) * self.dx
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self.dx), dt)
        self.x = a * x + (1 - a) * self.x
        self.t = t
        return self.x.copy()


#: One-euro parameters of :class:`FaceTracker` (box-side units), chosen for the lowest error against the truth on a
#: clip with known motion (``python benchmarks/eval_tracking.py``, ``benchmarks/results/tracking_68pt.json``):
#: error 0.39 px and jitter 0.34 px there, against 1.29 px (lag 1.23 px) with the earlier 1.0 / 10, which smoothed
#: still faces well but trailed moving ones.
TUNED_MIN_CUTOFF = 30.0
TUNED_BETA = 1000.0


@dataclass
class _Track:
    ident: int
    raw: np.ndarray  # last unsmoothed landmarks [P, 2]
    box: np.ndarray  # box used for the last prediction
    score: float
    scale: float  # filter unit: the box side at the track's start
    filter: OneEuroFilter
    face: Face | None = None
    history: list[Any] = field(default_factory=list)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # last frame-to-frame motion (px / frame)


class FaceTracker:
    """Track the faces of a video with an :class:`~tcdcn_ext.inference.aligner.Aligner`.

    Each frame, every track's box is predicted from its previous (unsmoothed) landmarks and the landmarks are
    placed again in it, with no detector. The detector runs on the first frame, every ``redetect_every`` frames (to
    pick up new faces), and whenever a track is lost: its new landmarks imply a box that overlaps the box it was
    given by less than ``min_iou`` (the face moved too fast or is gone), or the box left the frame.
    ``smooth=False`` returns the raw per-frame landmarks. Not thread safe: one tracker per video stream.
    """

    def __init__(self, aligner: Aligner, redetect_every: int = 30, min_iou: float = 0.6, smooth: bool = True,
                 min_cutoff: float = TUNED_MIN_CUTOFF, beta: float = TUNED_BETA, d_cutoff: float = 1.0) -> None:
        self.aligner = aligner
        self.redetect_every = max(1, int(redetect_every))
        self.min_iou = float(min_iou)
        self.smooth = smooth
        self.filter_args = (min_cutoff, beta, d_cutoff)
        self.tracks: list[_Track] = []
        self.frame_index = -1
        self.last_detection = -(10**9)
        self.detections = 0
        self._next_id = 0

    def reset(self) -> None:
        self.tracks, self.frame_index, self.last_detection = [], -1, -(10**9)

    def _new_track(self, face: Face, box: np.ndarray) -> _Track:
        side = float(max(box[2] - box[0], box[3] - box[1], 1.0))
        tr = _Track(self._next_id, np.asarray(face.landmarks, np.float64), box, face.score, side,
                    OneEuroFilter(*self.filter_args))
        self._next_id += 1
        return tr

    def update(self, frame: ImageLike, t: float | None = None, color: Color = "rgb") -> list[Face]:
        """Process the next frame (``t``: its time in seconds; default ``frame_index / 30``). Returns its faces,
        landmarks smoothed when ``smooth``; ``Face.score`` is the detector score of the track's last detection."""
        self.frame_index += 1
        t = self.frame_index / 30.0 if t is None else float(t)
        pix = to_pixels(frame, color, describe_image(frame))
        h, w = pix.height, pix.width
        redetect = not self.tracks or self.frame_index - self.last_detection >= self.redetect_every
        if not redetect:
            # constant-velocity prediction: the box follows the face's last motion, so a moving face stays where
            # the model saw faces in training (centred in its box) instead of trailing it by a frame
            boxes = np.stack([box_from_landmarks(tr.raw) + np.tile(tr.velocity, 2) for tr in self.tracks])
            faces = self.aligner.align_pixels([pix], [boxes])[0]
            for tr, face, box in zip(self.tracks, faces, boxes):
                new_box = box_from_landmarks(face.landmarks)
                inside = new_box[2] > 0 and new_box[3] > 0 and new_box[0] < w - 1 and new_box[1] < h - 1
                if not inside or box_iou(new_box[None], box[None])[0, 0] < self.min_iou:
                    redetect = True
                    break
                new_raw = np.asarray(face.landmarks, np.float64)
                tr.velocity = (new_raw - tr.raw).mean(0)
                tr.raw, tr.box = new_raw, box
                tr.face = face
        if redetect:
            self._redetect(pix)
        out = []
        for tr in self.tracks:
            lm = tr.raw
            if self.smooth:
                lm = tr.filter(tr.raw / tr.scale, t) * tr.scale
            lm = lm.astype(np.float32)
            lm.setflags(write=False)
            attrs = tr.face.attributes if tr.face is not None else {}
            out.append(Face(box=tuple(float(v) for v in tr.box), score=tr.score, landmarks=lm, attributes=attrs))
        return out

    def _redetect(self, pix: Any) -> None:
        self.last_detection = self.frame_index
        self.detections += 1
        faces = self.aligner.align_pixels([pix])[0]
        boxes = [box_from_landmarks(f.landmarks) for f in faces]
        old = self.tracks
        new: list[_Track] = []
        used: set[int] = set()
        for face, box in zip(faces, boxes):
            best, best_iou = None, 0.3
            for k, tr in enumerate(old):
                if k in used:
                    continue
                iou = box_iou(box[None], box_from_landmarks(tr.raw)[None])[0, 0]
                if iou > best_iou:
                    best, best_iou = k, iou
            if best is None:
                tr = self._new_track(face, box)
            else:  # same face: keep its identity and its filter state (no jump in the smoothed output)
                used.add(best)
                tr = old[best]
                new_raw = np.asarray(face.landmarks, np.float64)
                tr.velocity = (new_raw - tr.raw).mean(0)
                tr.raw, tr.box, tr.score = new_raw, np.asarray(face.box), face.score
            tr.face = face
            tr.box = np.asarray(face.box, np.float64)
            new.append(tr)
        self.tracks = new


def synthetic_static_video(image_rgb: np.ndarray, frames: int = 60, max_shift: float = 0.25, noise: float = 2.0,
                           seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """A "video" of a still face: ``image_rgb`` repeated ``frames`` times, each copy translated by a random
    sub-pixel shift (uniform in ``[-max_shift, max_shift]`` px per axis, bilinear) with Gaussian pixel noise
    (``noise`` grey levels). Returns ``(frames uint8 RGB, shifts [frames, 2])``."""
    rng = np.random.default_rng(seed)
    shifts = rng.uniform(-max_shift, max_shift, size=(frames, 2))
    return _translated_frames(image_rgb, shifts, noise, rng), shifts


def _translated_frames(image_rgb: np.ndarray, shifts: np.ndarray, noise: float,
                       rng: np.random.Generator) -> list[np.ndarray]:
    """``image_rgb`` translated by each ``(dx, dy)`` of ``shifts`` (bilinear, reflected borders) with Gaussian pixel
    noise of ``noise`` grey levels, as uint8 frames."""
    import cv2

    h, w = image_rgb.shape[:2]
    out = []
    for dx, dy in shifts:
        m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
        f = cv2.warpAffine(image_rgb.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
        f += rng.normal(0.0, noise, size=f.shape).astype(np.float32)
        out.append(np.clip(np.round(f), 0, 255).astype(np.uint8))
    return out


def measure_jitter(aligner: Aligner, frames: list[np.ndarray], shifts: np.ndarray, mode: str = "smooth",
                   fps: float = 30.0) -> dict[str, float]:
    """Landmark jitter of the first face over a static-face video (see :func:`synthetic_static_video`).

    ``mode``: ``"detect"`` (detector + landmarks on every frame, no tracking), ``"track"`` (tracker, no smoothing),
    ``"smooth"`` (tracker + one-euro smoothing). Reported in pixels and in % of the inter-ocular distance:
    ``step``: mean frame-to-frame point motion; ``step_compensated``: the same after removing the frames' known
    shifts (the true motion); ``std``: RMS deviation of the shift-compensated points from their mean position.
    """
    if mode == "detect":
        per = [aligner(f) for f in frames]
    else:
        tr = FaceTracker(aligner, smooth=(mode == "smooth"))
        per = [tr.update(f, t=i / fps) for i, f in enumerate(frames)]
    keep = [i for i, faces in enumerate(per) if faces]
    lm = np.stack([np.asarray(per[i][0].landmarks, np.float64) for i in keep])  # [T, P, 2]
    comp = lm - shifts[keep][:, None, :]
    iod = float(np.linalg.norm(lm[:, 0].mean(0) - lm[:, 1].mean(0))) if lm.shape[1] == 5 else float("nan")
    step = np.linalg.norm(np.diff(lm, axis=0), axis=2).mean()
    step_c = np.linalg.norm(np.diff(comp, axis=0), axis=2).mean()
    std = np.sqrt(((comp - comp.mean(0)) ** 2).sum(2).mean())
    return {"frames": len(frames), "frames_with_face": len(keep), "inter_ocular_px": iod,
            "step_px": float(step), "step_compensated_px": float(step_c), "std_px": float(std),
            "step_pct_iod": float(100 * step / iod), "step_compensated_pct_iod": float(100 * step_c / iod),
            "std_pct_iod": float(100 * std / iod)}


def synthetic_moving_video(image_rgb: np.ndarray, frames: int = 90, amplitude: float = 12.0, period_s: float = 2.0,
                           noise: float = 2.0, fps: float = 30.0, seed: int = 0
                           ) -> tuple[list[np.ndarray], np.ndarray]:
    """A video of a face moving along a known path: ``image_rgb`` translated by ``(a sin(2 pi t / T),
    0.5 a sin(4 pi t / T + phase))`` pixels at time ``t`` (bilinear, reflected borders), plus a random sub-pixel
    wobble of +-0.25 px and Gaussian pixel noise (``noise`` grey levels). Returns ``(frames, shifts [frames, 2])``:
    the true translation of every frame."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    phase = rng.uniform(0, 2 * np.pi)
    shifts = np.stack([amplitude * np.sin(2 * np.pi * t / period_s),
                       0.5 * amplitude * np.sin(4 * np.pi * t / period_s + phase)], 1)
    shifts += rng.uniform(-0.25, 0.25, size=shifts.shape)
    return _translated_frames(image_rgb, shifts, noise, rng), shifts


def measure_tracking(aligner: Aligner, frames: list[np.ndarray], shifts: np.ndarray, reference: np.ndarray,
                     mode: str = "smooth", fps: float = 30.0, **filter_args: float) -> dict[str, float]:
    """Accuracy against the known motion of a :func:`synthetic_moving_video`: the truth of frame ``t`` is
    ``reference + shifts[t]`` (``reference``: the landmarks ``[P, 2]`` of the untranslated face), so the numbers
    measure what tracking and smoothing add, not the model's own error.

    ``mode``: ``"detect"`` (detector + landmarks on every frame), ``"track"`` (tracker, no smoothing) or
    ``"smooth"`` (tracker + one-euro smoothing with ``filter_args``: ``min_cutoff``, ``beta``, ``d_cutoff``).
    Returns, in pixels: ``error_px`` (mean point distance to the truth after removing each point's constant offset
    over the clip, i.e. what moves wrongly: jitter and lag together; the constant part, which depends on how the
    box frames the face rather than on tracking, is ``bias_px``), ``jitter_px`` (mean frame-to-frame step of
    ``output - truth``), ``lag_error_px`` (the same error for the per-frame mean point: mostly lag), and
    ``detections`` (detector calls)."""
    if mode == "detect":
        per = [aligner(f) for f in frames]
        calls = len(frames)
    else:
        tr = FaceTracker(aligner, smooth=(mode == "smooth"), **filter_args)
        per = [tr.update(f, t=i / fps) for i, f in enumerate(frames)]
        calls = tr.detections
    keep = [i for i, faces in enumerate(per) if faces]
    lm = np.stack([np.asarray(per[i][0].landmarks, np.float64) for i in keep])  # [T, P, 2]
    truth = reference[None] + shifts[keep][:, None, :]
    dev = lm - truth
    bias = dev.mean(0)
    return {"frames": len(frames), "frames_with_face": len(keep), "detections": int(calls),
            "error_px": float(np.linalg.norm(dev - bias, axis=2).mean()),
            "bias_px": float(np.linalg.norm(bias, axis=1).mean()),
            "jitter_px": float(np.linalg.norm(np.diff(dev, axis=0), axis=2).mean()),
            "lag_error_px": float(np.linalg.norm(dev.mean(1) - dev.mean((0, 1)), axis=1).mean())}
