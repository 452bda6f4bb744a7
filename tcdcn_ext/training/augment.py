"""Training augmentation: a random similarity transform and mirroring, warped straight to the network input."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..inference.boxes import box_matrices
from ..inference.preprocess import normalise, warp_grey
from ..models.landmarks import MIRROR_5, POSE_MIRROR

__all__ = ["Augmenter"]


class Augmenter:
    """Random similarity transform + mirroring, warped straight to the model input.

    For each face: a similarity about the box centre ``c`` — rotation by ``a ~ U(-max_rotate_deg,
    max_rotate_deg)``, zoom ``z ~ U(zoom)`` (``z > 1`` makes the face larger in the input), translation
    ``t ~ U(-max_shift, max_shift)`` times the box width/height per axis — is composed with the box -> input map,
    and with probability 0.5 (if ``mirror``) a horizontal flip of the input (``i -> S - 1 - i``). The image is
    resampled with one ``cv2.warpAffine`` per face, exactly like :func:`make_inputs`, and the landmark targets are
    the same affine map applied to the points, so they are consistent with the pixels by construction. When a face
    is mirrored its points are re-ordered with ``mirror_perm`` (new point ``k`` = old point ``mirror_perm[k]``) and
    its ``pose`` attribute becomes ``POSE_MIRROR[pose]``.

    With ``max_shift=0, max_rotate_deg=0, zoom=(1, 1), mirror=False`` the output equals :func:`make_inputs`.
    """

    def __init__(
        self,
        size: int = 40,
        max_shift: float = 0.05,
        max_rotate_deg: float = 15.0,
        zoom: tuple[float, float] = (0.9, 1.1),
        mirror: bool = True,
        mirror_perm: Sequence[int] | None = MIRROR_5,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if max_shift < 0 or max_rotate_deg < 0:
            raise ValueError(f"max_shift and max_rotate_deg must be >= 0, got {max_shift}, {max_rotate_deg}")
        if not (0 < zoom[0] <= zoom[1]):
            raise ValueError(f"zoom must be (lo, hi) with 0 < lo <= hi, got {zoom}")
        self.size = int(size)
        self.max_shift = float(max_shift)
        self.max_rotate_deg = float(max_rotate_deg)
        self.zoom = (float(zoom[0]), float(zoom[1]))
        self.mirror = bool(mirror)
        self.mirror_perm = None if mirror_perm is None else np.asarray(mirror_perm, np.int64)
        if self.mirror_perm is not None:
            p = self.mirror_perm
            if sorted(p.tolist()) != list(range(len(p))) or not np.array_equal(p[p], np.arange(len(p))):
                raise ValueError("mirror_perm must be a permutation that is its own inverse")
        if self.mirror and self.mirror_perm is None:
            raise ValueError("mirror=True needs a mirror_perm (e.g. MIRROR_5 or MIRROR_68)")

    def matrices(self, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw the per-face maps: ``(image -> input affine [N, 2, 3] float64, mirrored [N] bool)``."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        n, s = len(b), self.size
        base = box_matrices(b, s)
        shift = rng.uniform(-self.max_shift, self.max_shift, (n, 2))
        angle = np.deg2rad(rng.uniform(-self.max_rotate_deg, self.max_rotate_deg, n))
        zoom = rng.uniform(self.zoom[0], self.zoom[1], n)
        flip = (rng.random(n) < 0.5) if self.mirror else np.zeros(n, bool)
        centre = (b[:, :2] + b[:, 2:]) / 2
        wh = b[:, 2:] - b[:, :2]
        # Image -> "canonical" image: p_c = c + z R(-a) (p - c - t * wh); the window sampled is the box rotated by a,
        # scaled by 1/z and moved by t * wh. Then canonical -> input with the plain box map.
        ca, sa = np.cos(angle), np.sin(angle)
        lin = zoom[:, None, None] * np.stack([np.stack([ca, sa], -1), np.stack([-sa, ca], -1)], 1)
        trans = centre - np.einsum("nij,nj->ni", lin, centre + shift * wh)
        m = np.empty((n, 2, 3))
        m[:, :, :2] = base[:, :, :2] @ lin
        m[:, :, 2] = np.einsum("nij,nj->ni", base[:, :, :2], trans) + base[:, :, 2]
        # Mirror in input space: i -> (S - 1) - i.
        m[flip, 0, :] *= -1.0
        m[flip, 0, 2] += s - 1
        return m, flip

    def __call__(
        self,
        images: Sequence[np.ndarray],
        boxes: np.ndarray,
        landmarks: np.ndarray,
        attributes: Mapping[str, np.ndarray] | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Augment a batch.

        Args:
            images: ``N`` uint8 RGB ``[H, W, 3]`` (or pre-computed grey ``[H, W]``) arrays.
            boxes: ``[N, 4]`` face boxes in image pixels.
            landmarks: ``[N, P, 2]`` points in image pixels.
            attributes: name -> ``[N]`` codes (may be empty/None); ``pose`` is flipped for mirrored faces.
            rng: the random generator (all randomness comes from it).

        Returns:
            ``(x float32 [N, 1, S, S], uv float32 [N, P, 2] box-frame targets of the augmented input,
            attributes dict of new int64 arrays)``. ``uv`` relates to input pixels as ``i = u * S - 0.5``.
        """
        n = len(images)
        pts = np.asarray(landmarks, np.float64)
        if pts.ndim != 3 or pts.shape[0] != n or pts.shape[2] != 2:
            raise ValueError(f"landmarks must be [N={n}, P, 2], got shape {pts.shape}")
        if self.mirror and self.mirror_perm is not None and len(self.mirror_perm) != pts.shape[1]:
            raise ValueError(
                f"mirror_perm has {len(self.mirror_perm)} entries but the faces have {pts.shape[1]} points "
                "(use MIRROR_68 for 68-point data)"
            )
        m, flip = self.matrices(boxes, rng)
        if len(m) != n:
            raise ValueError(f"{n} images but {len(m)} boxes")
        s = self.size
        x = np.empty((n, 1, s, s), np.float32)
        for i, img in enumerate(images):
            x[i, 0] = warp_grey(img, m[i], s)
        x = normalise(x)
        ij = np.einsum("nij,npj->npi", m[:, :, :2], pts) + m[:, None, :, 2]
        uv = ((ij + 0.5) / s).astype(np.float32)
        if flip.any():
            uv[flip] = uv[flip][:, self.mirror_perm]
        out_attrs = {k: np.array(v, dtype=np.int64, copy=True).reshape(-1) for k, v in (attributes or {}).items()}
        if "pose" in out_attrs and flip.any():
            out_attrs["pose"][flip] = np.asarray(POSE_MIRROR, np.int64)[out_attrs["pose"][flip]]
        return x, uv, out_attrs
