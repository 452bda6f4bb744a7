"""Overlay drawing for :class:`tcdcn_ext.Aligner` results: box, landmarks and attribute tags (like the paper's
Fig. 10: gender, smiling, glasses, pose under each face)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .results import Face

__all__ = ["draw_faces", "face_tags"]

# BGR colours: one per 5-point landmark (eyes, nose, mouth corners); 68-point faces use the first for all.
_POINT_COLOURS = [(0, 200, 255), (0, 200, 255), (0, 255, 0), (255, 80, 255), (255, 80, 255)]
_BOX_COLOUR = (255, 160, 0)
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel landmark positions


def face_tags(face: "Face", min_probability: float = 0.0) -> list[str]:
    """Short attribute tags, e.g. ``["female", "smiling", "no glasses", "frontal"]``."""
    tags = []
    for task in ("gender", "smile", "glasses", "pose"):
        a = face.attributes.get(task)
        if a is not None and a.probability >= min_probability:
            tags.append(a.label.replace("_", " "))
    return tags


def draw_faces(image: np.ndarray, faces: Sequence["Face"], color: str = "bgr", tags: bool = True) -> np.ndarray:
    """A copy of ``image`` (uint8 ``[H, W, 3]``, channel order ``color``: ``"bgr"`` or ``"rgb"``) with each face's box,
    landmarks and (``tags``) attribute tags drawn; line widths scale with the image size."""
    import cv2

    if color not in ("bgr", "rgb"):
        raise ValueError(f"draw_faces: color must be 'bgr' or 'rgb', got {color!r}")
    img = np.ascontiguousarray(image[:, :, :3] if image.ndim == 3 else np.repeat(image[:, :, None], 3, 2)).copy()
    flip = (lambda c: c[::-1]) if color == "rgb" else (lambda c: c)  # noqa: E731
    h, w = img.shape[:2]
    unit = max(1.0, max(h, w) / 640.0)
    thick = max(1, int(round(unit)))
    for face in faces:
        x0, y0, x1, y1 = face.box
        cv2.rectangle(img, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), flip(_BOX_COLOUR),
                      thick, cv2.LINE_AA)
        pts = np.asarray(face.landmarks, np.float64)
        side = max(x1 - x0, y1 - y0, 1.0)
        radius = max(1.5, side / 45.0)
        for k, (x, y) in enumerate(pts):
            colour = _POINT_COLOURS[k] if len(pts) == 5 else _POINT_COLOURS[0]
            centre = (int(round(x * (1 << _SHIFT))), int(round(y * (1 << _SHIFT))))
            cv2.circle(img, centre, int(round(radius * (1 << _SHIFT))), flip(colour), -1, cv2.LINE_AA, _SHIFT)
        if tags:
            lines = face_tags(face)
            scale = 0.4 * unit
            y = int(round(y1)) + int(14 * unit)
            for text in lines:
                (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
                org = (int(round(x0)), min(y, h - base - 1))
                cv2.rectangle(img, (org[0] - 1, org[1] - th - 2), (org[0] + tw + 1, org[1] + base),
                              (0, 0, 0), -1)
                cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
                y += th + base + 3
    return img
