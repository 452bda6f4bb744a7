"""The one prediction loop over faces given as (image, box) pairs: evaluation, TCDCN-Averaged, the calibration fit
and ``tcdcn-eval`` all go through :func:`predict_faces`. (The Aligner runs its own batches on already checked 8-bit
pixels, :meth:`tcdcn_ext.Aligner.align_pixels`; training validates on cached inputs with :meth:`TCDCN.predict`.)"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..util.progress import progress_bar
from .boxes import from_box_frame

__all__ = ["predict_faces"]


def predict_faces(model, images: Sequence[np.ndarray] | np.ndarray, boxes, batch_size: int = 512, *,
                  mirror_average: bool = False, shifts=None, progress: bool = False,
                  desc: str = "predicting") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Landmarks and attribute probabilities of the faces ``(images[i], boxes[i])``, ``batch_size`` faces at a time.

    Args:
        model: a :class:`tcdcn_ext.models.TCDCN` (on any device; the inputs follow it).
        images: ``N`` uint8 RGB ``[H, W, 3]`` (or grey ``[H, W]``) images, or one image.
        boxes: ``[N, 4]`` face boxes ``(x0, y0, x1, y1)`` in each image's pixels.
        mirror_average: plain passes only: average with the mirrored face's prediction (:meth:`TCDCN.predict`).
        shifts: None for the plain pass (:meth:`TCDCN.preprocess` then :meth:`TCDCN.predict`), or ``[K, 2]``
            whole-pixel window shifts for TCDCN-Averaged (:func:`tcdcn_ext.inference.averaging.shift_crops` then
            :meth:`TCDCN.predict_shift_average`).
        progress: a progress bar on stderr, labelled ``desc``.

    Returns:
        ``(landmarks float32 [N, P, 2] in image pixels, {task: probabilities float32 [N, C]})``.
    """
    from ..ops import as_shift_array
    from .averaging import shift_crops

    if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8:
        images = [images]
    images = list(images)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(images) != len(b):
        raise ValueError(f"predict_faces: {len(images)} images but {len(b)} boxes")
    if shifts is not None:
        if mirror_average:
            raise ValueError("predict_faces: mirror_average applies to the plain pass only (shifts=None)")
        shifts = as_shift_array(shifts)
        margin = int(np.abs(shifts).max())
    device = next(model.parameters()).device
    n = len(b)
    pts = np.empty((n, model.num_points, 2), np.float32)
    probs: dict[str, list[np.ndarray]] = {}
    with progress_bar(n, desc, progress, unit="face") as bar:
        for i in range(0, n, batch_size):
            sl = slice(i, min(i + batch_size, n))
            if shifts is None:
                out = model.predict(model.preprocess(images[sl], b[sl]).to(device), mirror_average=mirror_average)
            else:
                out = model.predict_shift_average(shift_crops(model, images[sl], b[sl], margin).to(device), shifts)
            pts[sl] = from_box_frame(out.pop("landmarks").float().cpu().numpy(), b[sl])
            for k, v in out.items():
                probs.setdefault(k, []).append(v.float().cpu().numpy())
            bar.update(sl.stop - sl.start)
    return pts, {k: np.concatenate(v) for k, v in probs.items()}
