"""What the network's outputs mean: the landmark orders, their left/right mirror permutations, the pose classes and
the MTFL attributes (codes of ``shared/data/README.md``)."""

from __future__ import annotations

import numpy as np

__all__ = ["ATTRIBUTE_CLASSES", "LANDMARK_NAMES_5", "MIRROR_5", "MIRROR_68", "POSE_MIRROR", "POSE_NAMES", "five_from_68"]

#: 5-point order: image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
LANDMARK_NAMES_5: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

#: After a horizontal flip, new point ``k`` is old point ``MIRROR_5[k]`` (swap eyes and mouth corners).
MIRROR_5: list[int] = [1, 0, 2, 4, 3]


def _mirror_68() -> list[int]:
    # Standard iBUG 68-point markup, 0-based. Pairs of points that swap under a horizontal flip; points not listed
    # (jaw 8, nose bridge 27-30, nose 33, mouth centres 51, 57, 62, 66) lie on the symmetry axis.
    pairs = [(i, 16 - i) for i in range(8)]  # jaw 0..7 <-> 16..9
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows 17..21 <-> 26..22
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes (outer corner 36 <-> 45)
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lip
    perm = list(range(68))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


#: After a horizontal flip, new point ``k`` is old point ``MIRROR_68[k]`` (an involution).
MIRROR_68: list[int] = _mirror_68()

#: Pose codes (0 left profile, 1 left, 2 frontal, 3 right, 4 right profile) after a horizontal flip.
POSE_MIRROR: list[int] = [4, 3, 2, 1, 0]

POSE_NAMES: tuple[str, ...] = ("left_profile", "left", "frontal", "right", "right_profile")

#: Number of classes of each MTFL attribute, with the 0-based codes of the staged README:
#: gender 0 male / 1 female; smile 1 smiling / 0 not; glasses 1 yes / 0 no; pose 0..4 (see :data:`POSE_NAMES`).
ATTRIBUTE_CLASSES: dict[str, int] = {"gender": 2, "smile": 2, "glasses": 2, "pose": 5}


def five_from_68(points: np.ndarray) -> np.ndarray:
    """68-point markup ``[N, 68, 2]`` -> the 5 MTFL points ``[N, 5, 2]``: eye centres (means of 36-41 and 42-47),
    nose tip 30, mouth corners 48 / 54."""
    p = np.asarray(points, np.float64)
    if p.ndim != 3 or p.shape[1:] != (68, 2):
        raise ValueError(f"five_from_68 needs 68 points [N, 68, 2], got shape {p.shape}")
    return np.stack([p[:, 36:42].mean(1), p[:, 42:48].mean(1), p[:, 30], p[:, 48], p[:, 54]], axis=1)
