"""Face datasets, crop geometry and training augmentation for TCDCN.

Coordinate conventions (the same as ``shared/data/README.md``):

* Image points are **0-based pixel-centre** coordinates: the centre of the top-left pixel is ``(0, 0)``; a point on
  pixel column ``c`` has ``x = c``. This is also OpenCV's convention for ``warpAffine`` matrices, so a 2x3 matrix
  built here can be handed to OpenCV unchanged.
* Boxes are ``(x0, y0, x1, y1)`` in the same coordinates.
* The model works in the **box-normalised frame** ``(u, v) in [0, 1]^2``: ``x = x0 + u * (x1 - x0)``,
  ``y = y0 + v * (y1 - y0)``. The network input is the box resampled to ``S x S`` grey pixels, input pixel ``i``
  having its centre at ``u = (i + 0.5) / S``; hence input pixel coordinate ``i = u * S - 0.5``.

Loaders:

* :func:`load_staged` reads the staged ``<split>/annotations.csv`` + ``<split>/images/*.jpg`` layout.
* :func:`load_mtfl_original` reads the original MTFL release (``training.txt`` / ``testing.txt``), derives a face
  box from the 5 landmarks with a small least-squares model (:data:`MTFL_BOX_MODEL`, fitted by
  :func:`fit_box_model`) and crops like the staged data (:func:`crop_like_staged`).
* :func:`load_300w_original` reads a folder tree of 300-W ``.pts`` files and their images.

Images are loaded with EXIF orientation **ignored**: the annotations refer to the stored pixel grid (the staged
build used PIL, which does not rotate either), whereas OpenCV's default ``IMREAD_COLOR`` would apply the EXIF
rotation and misplace every landmark of a rotated photo.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

__all__ = [
    "DataError",
    "FaceSet",
    "MIRROR_5",
    "MIRROR_68",
    "POSE_MIRROR",
    "LANDMARK_NAMES_5",
    "POSE_NAMES",
    "ATTRIBUTE_CLASSES",
    "MTFL_BOX_MODEL",
    "load_staged",
    "load_mtfl_original",
    "load_300w_original",
    "read_pts",
    "crop_like_staged",
    "fit_box_model",
    "predict_boxes_5pt",
    "box_to_input_matrix",
    "to_box_frame",
    "from_box_frame",
    "scale_boxes",
    "grey",
    "normalise",
    "make_inputs",
    "Augmenter",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------------------------

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

#: Least-squares model predicting a square face box from 5 landmarks (rows: bias, nose-offset feature; columns:
#: box-centre offset along the face's x axis, along its y axis, box side), all in units of the landmarks' RMS
#: spread. See :func:`predict_boxes_5pt` for the frame and :func:`fit_box_model` for the fit. Fitted by
#: ``fit_box_model(load_staged("shared/data/mtfl/train"))`` on the 10,000 staged MTFL training faces (CUHK
#: boxes); fit error there: 4.47 px RMS per box edge for boxes of about 80 px (crop pixels), i.e. about 5.6 % of
#: the side (a constant-only model gives 5.15 px, the full 10-coordinate linear model 4.32 px).
MTFL_BOX_MODEL: np.ndarray = np.array(
    [
        [-0.02585404, -0.05087500, 3.26735251],
        [-0.70238707, 0.01415575, 0.01253957],
    ],
    dtype=np.float64,
)

_POINT_COLUMN = re.compile(r"^([xy])(\d+)$")
_BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_MTFL_PREFIXES = {"lfw_5590": "lfw", "net_7876": "net", "aflw": "aflw"}
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and line."""


# ----------------------------------------------------------------------------------------------------------------
# FaceSet
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FaceSet:
    """A set of face crops with landmarks.

    Attributes:
        images: ``N`` uint8 RGB arrays ``[H, W, 3]`` (128x128 for staged data).
        boxes: ``float32 [N, 4]`` face boxes ``(x0, y0, x1, y1)`` in each image's pixel coordinates.
        landmarks: ``float32 [N, P, 2]`` points ``(x, y)``, 0-based pixel-centre coordinates.
        attributes: name -> ``int64 [N]`` 0-based codes (``gender``, ``smile``, ``glasses``, ``pose`` for MTFL;
            empty for 300-W). See :data:`ATTRIBUTE_CLASSES`.
        names: ``N`` image ids (file names inside the staged ``images/`` folder).
        sources: ``N`` original relative paths in the dataset release.
    """

    images: list[np.ndarray]
    boxes: np.ndarray
    landmarks: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.images)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
        if self.landmarks.ndim != 3 or self.landmarks.shape[2] != 2:
            if self.landmarks.size == 0 and n == 0:
                self.landmarks = self.landmarks.reshape(0, 0, 2)
            else:
                raise ValueError(f"FaceSet.landmarks must be [N, P, 2], got shape {self.landmarks.shape}")
        self.attributes = {k: np.asarray(v, dtype=np.int64).reshape(-1) for k, v in self.attributes.items()}
        if not self.names:
            self.names = [f"{i:06d}.jpg" for i in range(n)]
        if not self.sources:
            self.sources = list(self.names)
        sizes = {
            "images": n,
            "boxes": len(self.boxes),
            "landmarks": len(self.landmarks),
            "names": len(self.names),
            "sources": len(self.sources),
            **{f"attributes[{k!r}]": len(v) for k, v in self.attributes.items()},
        }
        if len(set(sizes.values())) > 1:
            raise ValueError(f"FaceSet fields have different lengths: {sizes}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_points(self) -> int:
        """Number of landmarks per face (``P``)."""
        return int(self.landmarks.shape[1])

    def subset(self, indices: Sequence[int] | np.ndarray) -> "FaceSet":
        """A new FaceSet holding faces ``indices`` (images are shared, arrays copied). Boolean masks work too."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset index out of range for a FaceSet of {len(self)} faces")
        return FaceSet(
            images=[self.images[i] for i in idx],
            boxes=self.boxes[idx].copy(),
            landmarks=self.landmarks[idx].copy(),
            attributes={k: v[idx].copy() for k, v in self.attributes.items()},
            names=[self.names[i] for i in idx],
            sources=[self.sources[i] for i in idx],
        )


# ----------------------------------------------------------------------------------------------------------------
# Image reading
# ----------------------------------------------------------------------------------------------------------------


def _read_rgb(path: Path) -> np.ndarray | None:
    """Read an image file as uint8 RGB ``[H, W, 3]`` (grey replicated), EXIF orientation ignored; None on failure."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if buf.size == 0:
        return None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W]`` / ``[H, W, 1]`` / ``[H, W, 3]`` / ``[H, W, 4]`` -> uint8 RGB ``[H, W, 3]``."""
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {image.shape}")


class _Progress:
    """Minimal progress line on stderr (no tqdm)."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled and total > 0
        self.step = max(1, total // 20)

    def update(self, i: int) -> None:
        if self.enabled and ((i + 1) % self.step == 0 or i + 1 == self.total):
            end = "\n" if i + 1 == self.total else ""
            print(f"\r{self.label}: {i + 1}/{self.total}", end=end, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Staged data
# ----------------------------------------------------------------------------------------------------------------


def _parse_header(
    header: list[str], csv_path: Path
) -> tuple[list[int], dict[str, int], dict[str, int], int | None]:
    """Validate the staged csv header; return (point columns x0, y0, x1, ..., box columns, attribute columns,
    source column or None)."""
    where = f"{csv_path}:1"
    if not header or header[0] != "image":
        raise DataError(f"{where}: the first column must be 'image', got {header[:1]}")
    col = {name: i for i, name in enumerate(header)}
    if len(col) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{where}: duplicate columns {dup}")
    missing = [c for c in _BOX_COLUMNS if c not in col]
    if missing:
        raise DataError(f"{where}: missing box columns {missing}")
    point_idx = sorted(int(m.group(2)) for h in header if (m := _POINT_COLUMN.match(h)) and m.group(1) == "x")
    num_points = len(point_idx)
    if num_points == 0:
        raise DataError(f"{where}: no landmark columns x0, y0, ...")
    if point_idx != list(range(num_points)):
        raise DataError(f"{where}: landmark columns must be x0..x{num_points - 1} without gaps, got x{point_idx}")
    for k in range(num_points):
        if f"y{k}" not in col:
            raise DataError(f"{where}: column x{k} has no matching y{k}")
        if col[f"y{k}"] != col[f"x{k}"] + 1:
            raise DataError(f"{where}: column y{k} must directly follow x{k}")
    extra_y = [
        h for h in header if (m := _POINT_COLUMN.match(h)) and m.group(1) == "y" and int(m.group(2)) >= num_points
    ]
    if extra_y:
        raise DataError(f"{where}: columns {extra_y} have no matching x column")
    attrs = {name: col[name] for name in ATTRIBUTE_CLASSES if name in col}
    known = {"image", "source", *_BOX_COLUMNS, *attrs}
    unknown = [h for h in header if h not in known and not _POINT_COLUMN.match(h)]
    if unknown:
        logger.warning("%s: ignoring unknown columns %s", where, unknown)
    point_cols = [col[f"{a}{k}"] for k in range(num_points) for a in ("x", "y")]
    return point_cols, {c: col[c] for c in _BOX_COLUMNS}, attrs, col.get("source")


def load_staged(split_dir: str | os.PathLike, limit: int | None = None, progress: bool = True) -> FaceSet:
    """Load a staged split (``<split_dir>/annotations.csv`` + ``<split_dir>/images/*.jpg``).

    The header drives the parsing: the number of points comes from the ``xK, yK`` columns; the attribute columns
    (``gender``, ``smile``, ``glasses``, ``pose``) and ``source`` are optional. Attributes are kept as the staged
    0-based codes and range-checked (:data:`ATTRIBUTE_CLASSES`).

    Args:
        split_dir: the split folder, e.g. ``shared/data/mtfl/train``.
        limit: load only the first ``limit`` rows (None: all).
        progress: print a progress line on stderr while reading the images.

    Returns:
        A :class:`FaceSet` with uint8 RGB images.

    Raises:
        DataError: missing csv or image, bad header, wrong column count, non-numeric or non-finite value, attribute
            out of range; the message names the csv path and line number.
    """
    split_dir = Path(split_dir)
    csv_path = split_dir / "annotations.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: annotations file not found")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    rows: list[tuple[int, list[str]]] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{csv_path}: empty file (no header)") from None
        point_cols, box_cols, attr_cols, source_col = _parse_header(header, csv_path)
        num_points = len(point_cols) // 2
        for row in reader:
            if limit is not None and len(rows) >= limit:
                break
            if not row or all(not c.strip() for c in row):
                continue
            rows.append((reader.line_num, row))

    n = len(rows)
    boxes = np.empty((n, 4), np.float32)
    landmarks = np.empty((n, num_points, 2), np.float32)
    attributes = {name: np.empty(n, np.int64) for name in attr_cols}
    names: list[str] = []
    sources: list[str] = []
    for i, (line, row) in enumerate(rows):
        where = f"{csv_path}:{line}"
        if len(row) != len(header):
            raise DataError(f"{where}: expected {len(header)} columns, got {len(row)}")

        def number(c: int) -> float:
            try:
                v = float(row[c])
            except ValueError:
                raise DataError(f"{where}: column {header[c]!r}: not a number: {row[c]!r}") from None
            if not math.isfinite(v):
                raise DataError(f"{where}: column {header[c]!r}: non-finite value {row[c]!r}")
            return v

        boxes[i] = [number(box_cols[c]) for c in _BOX_COLUMNS]
        if not (boxes[i, 2] > boxes[i, 0] and boxes[i, 3] > boxes[i, 1]):
            raise DataError(f"{where}: empty box {boxes[i].tolist()} (need x1 > x0 and y1 > y0)")
        landmarks[i] = np.array([number(c) for c in point_cols]).reshape(-1, 2)
        for name, c in attr_cols.items():
            text = row[c].strip()
            try:
                code = int(text)
            except ValueError:
                raise DataError(f"{where}: column {name!r}: not an integer: {row[c]!r}") from None
            if not 0 <= code < ATTRIBUTE_CLASSES[name]:
                raise DataError(
                    f"{where}: column {name!r}: value {code} out of range 0..{ATTRIBUTE_CLASSES[name] - 1}"
                )
            attributes[name][i] = code
        image_name = row[0].strip()
        if not image_name:
            raise DataError(f"{where}: empty image name")
        names.append(image_name)
        sources.append(row[source_col].strip() if source_col is not None else image_name)

    images: list[np.ndarray] = []
    bar = _Progress(f"loading {split_dir}", n, progress)
    for i, (line, _) in enumerate(rows):
        path = split_dir / "images" / names[i]
        img = _read_rgb(path)
        if img is None:
            what = "not found" if not path.exists() else "unreadable"
            raise DataError(f"{csv_path}:{line}: image {path} {what}")
        images.append(img)
        bar.update(i)
    return FaceSet(images, boxes, landmarks, attributes, names, sources)


# ----------------------------------------------------------------------------------------------------------------
# Crop recipe (shared/data/README.md, "Crop recipe")
# ----------------------------------------------------------------------------------------------------------------


def crop_like_staged(
    image: np.ndarray, box: Sequence[float] | np.ndarray, landmarks: np.ndarray, out_size: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop a face the way the staged data was built.

    Square crop centred on the box centre with side ``S = round(1.6 * max(x1 - x0, y1 - y0))`` and top-left corner
    ``origin = (round(cx - S/2), round(cy - S/2))`` (Python's round, half to even); pixels outside the image are
    zero; the ``S x S`` crop is resized to ``out_size`` (``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when
    enlarging); points map as ``p' = (p - origin + 0.5) * out_size / S - 0.5``.

    Args:
        image: uint8 ``[H, W]`` or ``[H, W, 3]`` (RGB); grey is replicated to 3 channels.
        box: ``(x0, y0, x1, y1)`` in 0-based pixel-centre image coordinates.
        landmarks: ``[P, 2]`` points in the same coordinates.
        out_size: side of the output crop.

    Returns:
        ``(crop uint8 [out_size, out_size, 3], box float32 [4], landmarks float32 [P, 2])`` in crop coordinates.
    """
    image = _as_rgb(image)
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"crop_like_staged: empty box {[x0, y0, x1, y1]}")
    side = int(round(1.6 * max(x1 - x0, y1 - y0)))
    side = max(side, 1)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    ox, oy = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    h, w = image.shape[:2]
    crop = np.zeros((side, side, 3), np.uint8)
    # Intersection of the crop window [ox, ox + side) x [oy, oy + side) with the image.
    sx0, sy0 = max(ox, 0), max(oy, 0)
    sx1, sy1 = min(ox + side, w), min(oy + side, h)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = image[sy0:sy1, sx0:sx1]
    if side != out_size:
        interp = cv2.INTER_AREA if side > out_size else cv2.INTER_CUBIC
        crop = cv2.resize(crop, (out_size, out_size), interpolation=interp)
    scale = out_size / side
    origin = np.array([ox, oy], np.float64)

    def mapped(p: np.ndarray) -> np.ndarray:
        return ((np.asarray(p, np.float64) - origin + 0.5) * scale - 0.5).astype(np.float32)

    new_box = mapped(np.array([[x0, y0], [x1, y1]])).reshape(4)
    return crop, new_box, mapped(np.asarray(landmarks, np.float64).reshape(-1, 2))


# ----------------------------------------------------------------------------------------------------------------
# Box model for MTFL (which ships no face boxes)
# ----------------------------------------------------------------------------------------------------------------


def _face_frame(landmarks5: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Similarity frame of 5-point faces.

    Returns ``(centroid [N, 2], spread [N], rot [N, 2, 2], q [N, 5, 2])``: ``spread`` is the RMS distance of the
    points from their centroid, ``rot`` the rotation that turns the eye-centre -> mouth-centre vector to +y (so
    the face is upright whatever its in-plane angle, upside-down faces included), ``q = rot @ (p - c) / spread``.
    """
    p = np.asarray(landmarks5, np.float64)
    if p.ndim != 3 or p.shape[1:] != (5, 2):
        raise ValueError(f"expected 5-point landmarks [N, 5, 2], got shape {p.shape}")
    c = p.mean(axis=1)
    d = p - c[:, None, :]
    spread = np.sqrt((d**2).sum(axis=2).mean(axis=1))
    if np.any(spread <= 1e-9):
        bad = np.flatnonzero(spread <= 1e-9)[:5].tolist()
        raise ValueError(f"degenerate landmarks (all 5 points coincide) for faces {bad}")
    v = (p[:, 3] + p[:, 4]) / 2 - (p[:, 0] + p[:, 1]) / 2
    theta = np.arctan2(v[:, 0], v[:, 1])
    ct, st = np.cos(theta), np.sin(theta)
    rot = np.stack([np.stack([ct, -st], -1), np.stack([st, ct], -1)], 1)
    q = np.einsum("nij,npj->npi", rot, d) / spread[:, None, None]
    return c, spread, rot, q


def _box_features(q: np.ndarray) -> np.ndarray:
    # [1, nose x in the upright frame]: the nose's sideways offset measures yaw, which shifts the box sideways.
    return np.stack([np.ones(len(q)), q[:, 2, 0]], axis=1)


def predict_boxes_5pt(landmarks5: np.ndarray, model: np.ndarray | None = None) -> np.ndarray:
    """Square face boxes from 5 landmarks with the least-squares box model.

    In the face's upright frame (see :func:`fit_box_model`) the model gives ``[ox, oy, side] = [1, q_nose_x] @
    model``; the box centre is ``c + spread * rot^T @ (ox, oy)`` and its side ``spread * side``.

    Args:
        landmarks5: ``[N, 5, 2]`` points (any pixel convention; the result uses the same one).
        model: ``[2, 3]`` coefficients; default :data:`MTFL_BOX_MODEL`.

    Returns:
        ``float64 [N, 4]`` boxes ``(x0, y0, x1, y1)``.
    """
    model = MTFL_BOX_MODEL if model is None else np.asarray(model, np.float64)
    if model.shape != (2, 3):
        raise ValueError(f"box model must be [2, 3], got {model.shape}")
    c, spread, rot, q = _face_frame(landmarks5)
    pred = _box_features(q) @ model
    centre = c + np.einsum("nji,nj->ni", rot, pred[:, :2]) * spread[:, None]  # rot^T @ offset
    half = pred[:, 2] * spread / 2
    return np.stack([centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half], axis=1)


def fit_box_model(faceset: FaceSet) -> tuple[np.ndarray, float]:
    """Fit the 5-point -> face box model by linear least squares.

    Each face is put in its similarity frame (centroid ``c``, RMS spread ``s``, rotation ``R`` making eye centre ->
    mouth centre point down, see ``_face_frame``); the targets are the box centre offset ``R (b - c) / s`` and the
    box side ``(w + h) / 2 / s``; the features are ``[1, q_nose_x]``. The frame makes the model invariant to
    translation, scale and in-plane rotation, so fitting on the 128x128 staged crops is the same as fitting on the
    originals.

    Returns:
        ``(model [2, 3], rms)`` where ``rms`` is the root-mean-square error over all four box edges of the refitted
        boxes, in the faceset's pixels.
    """
    if faceset.num_points != 5:
        raise ValueError(f"fit_box_model needs 5-point faces, got {faceset.num_points} points")
    if len(faceset) < 2:
        raise ValueError("fit_box_model needs at least 2 faces")
    b = faceset.boxes.astype(np.float64)
    c, spread, rot, q = _face_frame(faceset.landmarks)
    centre = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    side = ((b[:, 2] - b[:, 0]) + (b[:, 3] - b[:, 1])) / 2
    target = np.concatenate(
        [np.einsum("nij,nj->ni", rot, centre - c) / spread[:, None], (side / spread)[:, None]], axis=1
    )
    model, *_ = np.linalg.lstsq(_box_features(q), target, rcond=None)
    err = predict_boxes_5pt(faceset.landmarks, model) - b
    return model, float(np.sqrt(np.mean(err**2)))


# ----------------------------------------------------------------------------------------------------------------
# Original-format loaders
# ----------------------------------------------------------------------------------------------------------------


def _safe_id(text: str) -> str:
    return _UNSAFE_ID_CHARS.sub("_", text)


def _mtfl_name(relpath: str) -> str:
    parts = relpath.split("/")
    stem = Path(parts[-1]).stem
    if len(parts) > 1:
        prefix = _MTFL_PREFIXES.get(parts[0].lower(), _safe_id(parts[0]).lower())
        return f"{prefix}_{_safe_id(stem)}.jpg"
    return f"{_safe_id(stem)}.jpg"


def load_mtfl_original(
    root: str | os.PathLike,
    list_file: str = "training.txt",
    limit: int | None = None,
    box_model: np.ndarray | None = None,
    out_size: int = 128,
    progress: bool = True,
) -> FaceSet:
    """Load the original MTFL release and crop it like the staged data.

    Each line of ``root/list_file`` is ``relpath x1..x5 y1..y5 gender smile glasses pose`` with 1-based pixel
    coordinates and 1-based codes (gender 1 male / 2 female, smile 1 yes / 2 no, glasses 1 yes / 2 no, pose 1..5);
    paths may use backslashes and are relative to ``root``. Coordinates are shifted by -1 (0-based), codes recoded
    to the staged ones (gender 0/1, smile 1/0, glasses 1/0, pose 0..4); the face box is predicted from the 5 points
    with ``box_model`` (default :data:`MTFL_BOX_MODEL`) and the face cropped with :func:`crop_like_staged`.

    Returns:
        A :class:`FaceSet` (crop coordinates, names ``lfw_<stem>.jpg`` / ``net_<stem>.jpg`` / ``aflw_<stem>.jpg``,
        sources = the list's relative paths with forward slashes).

    Raises:
        DataError: missing list file or image, malformed line (the message names the list file and line number).
    """
    root = Path(root)
    list_path = root / list_file
    if not list_path.is_file():
        raise DataError(f"{list_path}: MTFL list file not found")
    entries: list[tuple[int, str, np.ndarray, list[int]]] = []
    with open(list_path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if limit is not None and len(entries) >= limit:
                break
            # The 14 numbers are taken from the right, so a path containing spaces still parses.
            fields = line.strip().rsplit(None, 14)
            if not fields or not fields[0]:
                continue
            where = f"{list_path}:{line_no}"
            if len(fields) != 15:
                raise DataError(f"{where}: expected 15 fields (path, 10 coordinates, 4 attributes), got {len(fields)}")
            try:
                coords = np.array([float(v) for v in fields[1:11]], np.float64)
            except ValueError:
                raise DataError(f"{where}: non-numeric coordinate in {fields[1:11]}") from None
            if not np.all(np.isfinite(coords)):
                raise DataError(f"{where}: non-finite coordinate in {fields[1:11]}")
            try:
                codes = [int(float(v)) for v in fields[11:15]]
            except ValueError:
                raise DataError(f"{where}: non-numeric attribute in {fields[11:15]}") from None
            for name, code, hi in zip(("gender", "smile", "glasses", "pose"), codes, (2, 2, 2, 5)):
                if not 1 <= code <= hi:
                    raise DataError(f"{where}: {name} code {code} out of range 1..{hi}")
            # x1..x5 then y1..y5, 1-based -> 0-based pixel centres.
            points = np.stack([coords[:5], coords[5:]], axis=1) - 1.0
            entries.append((line_no, fields[0].replace("\\", "/").lstrip("/"), points, codes))

    n = len(entries)
    raw_points = np.stack([e[2] for e in entries]) if n else np.zeros((0, 5, 2))
    raw_boxes = predict_boxes_5pt(raw_points, box_model) if n else np.zeros((0, 4))
    images: list[np.ndarray] = []
    boxes = np.empty((n, 4), np.float32)
    landmarks = np.empty((n, 5, 2), np.float32)
    bar = _Progress(f"loading {list_path}", n, progress)
    for i, (line_no, rel, points, _) in enumerate(entries):
        path = root / rel
        img = _read_rgb(path)
        if img is None:
            what = "not found" if not path.exists() else "unreadable"
            raise DataError(f"{list_path}:{line_no}: image {path} {what}")
        crop, boxes[i], landmarks[i] = crop_like_staged(img, raw_boxes[i], points, out_size)
        images.append(crop)
        bar.update(i)
    codes_arr = np.array([e[3] for e in entries], np.int64).reshape(n, 4)
    attributes = {
        "gender": codes_arr[:, 0] - 1,  # 1 male, 2 female -> 0, 1
        "smile": 2 - codes_arr[:, 1],  # 1 smiling, 2 not -> 1, 0
        "glasses": 2 - codes_arr[:, 2],  # 1 yes, 2 no -> 1, 0
        "pose": codes_arr[:, 3] - 1,  # 1..5 -> 0..4
    }
    names = [_mtfl_name(e[1]) for e in entries]
    sources = [e[1] for e in entries]
    return FaceSet(images, boxes, landmarks, attributes, names, sources)


def read_pts(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.pts`` landmark file, with or without the ``version / n_points / { ... }`` header.

    Returns:
        ``float64 [P, 2]`` points exactly as stored (300-W files are 1-based).

    Raises:
        DataError: unreadable file, malformed line, missing braces, or a point count that disagrees with
            ``n_points``; the message names the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1)]
    lines = [(i, ln) for i, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise DataError(f"{path}: empty .pts file")
    declared: int | None = None
    body = lines
    if not _looks_numeric(lines[0][1]):
        # Header form: "version: 1", "n_points: 68", "{", points, "}".
        k = 0
        while k < len(lines) and lines[k][1] != "{":
            key, _, value = lines[k][1].partition(":")
            key = key.strip().lower()
            if key == "n_points":
                try:
                    declared = int(value.strip())
                except ValueError:
                    raise DataError(f"{path}:{lines[k][0]}: bad n_points value {value.strip()!r}") from None
            elif key != "version":
                raise DataError(f"{path}:{lines[k][0]}: unexpected header line {lines[k][1]!r}")
            k += 1
        if k == len(lines):
            raise DataError(f"{path}: header without an opening '{{'")
        end = next((j for j in range(k + 1, len(lines)) if lines[j][1] == "}"), None)
        if end is None:
            raise DataError(f"{path}: no closing '}}' after the points")
        if end != len(lines) - 1:
            raise DataError(f"{path}:{lines[end + 1][0]}: unexpected text after the closing '}}'")
        body = lines[k + 1 : end]
    points = np.empty((len(body), 2), np.float64)
    for j, (line_no, ln) in enumerate(body):
        parts = ln.split()
        if len(parts) != 2:
            raise DataError(f"{path}:{line_no}: expected 'x y', got {ln!r}")
        try:
            points[j] = [float(parts[0]), float(parts[1])]
        except ValueError:
            raise DataError(f"{path}:{line_no}: non-numeric point {ln!r}") from None
        if not np.all(np.isfinite(points[j])):
            raise DataError(f"{path}:{line_no}: non-finite point {ln!r}")
    if declared is not None and declared != len(points):
        raise DataError(f"{path}: header says n_points: {declared} but the file has {len(points)} points")
    return points


def _looks_numeric(line: str) -> bool:
    try:
        [float(v) for v in line.split()]
        return True
    except ValueError:
        return False


def load_300w_original(
    root: str | os.PathLike, n_points: int = 68, out_size: int = 128, progress: bool = True
) -> FaceSet:
    """Load a 300-W style folder tree (``*.pts`` next to same-stem ``.jpg``/``.png``/``.jpeg`` images).

    Walks ``root`` recursively (sorted paths); points are shifted from 1-based to 0-based; the face box is the
    landmark extent (min/max of the points), and the face is cropped with :func:`crop_like_staged`.

    Returns:
        A :class:`FaceSet` without attributes; names ``<dir parts>_<stem>.jpg`` relative to ``root`` (e.g.
        ``helen_trainset_100032540_1.jpg``), sources the image paths relative to ``root``.

    Raises:
        DataError: no ``.pts`` file, malformed ``.pts``, wrong point count, missing or unreadable image; the
            message names the ``.pts`` file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: 300-W folder not found")
    pts_files = sorted(p for p in root.rglob("*.pts") if p.is_file())
    if not pts_files:
        raise DataError(f"{root}: no .pts files found")
    images: list[np.ndarray] = []
    n = len(pts_files)
    boxes = np.empty((n, 4), np.float32)
    landmarks = np.empty((n, n_points, 2), np.float32)
    names: list[str] = []
    sources: list[str] = []
    bar = _Progress(f"loading {root}", n, progress)
    for i, pts in enumerate(pts_files):
        points = read_pts(pts)
        if len(points) != n_points:
            raise DataError(f"{pts}: expected {n_points} points, got {len(points)}")
        points = points - 1.0  # 300-W is 1-based (Matlab): top-left pixel centre = (1, 1)
        image_path = next((pts.with_suffix(s) for s in _IMAGE_SUFFIXES if pts.with_suffix(s).is_file()), None)
        if image_path is None:
            raise DataError(f"{pts}: no image next to it (looked for {pts.stem} + .jpg/.png/.jpeg)")
        img = _read_rgb(image_path)
        if img is None:
            raise DataError(f"{pts}: image {image_path} is unreadable")
        box = np.concatenate([points.min(axis=0), points.max(axis=0)])
        if not (box[2] > box[0] and box[3] > box[1]):
            raise DataError(f"{pts}: degenerate landmark extent {box.tolist()}")
        crop, boxes[i], landmarks[i] = crop_like_staged(img, box, points, out_size)
        images.append(crop)
        rel = pts.relative_to(root)
        names.append(_safe_id("_".join([*rel.parent.parts, rel.stem])) + ".jpg")
        sources.append(image_path.relative_to(root).as_posix())
        bar.update(i)
    return FaceSet(images, boxes, landmarks, {}, names, sources)


# ----------------------------------------------------------------------------------------------------------------
# Geometry and model inputs
# ----------------------------------------------------------------------------------------------------------------


def box_to_input_matrix(box: Sequence[float] | np.ndarray, size: int) -> np.ndarray:
    """2x3 affine (float64) mapping image pixel coordinates to input pixel coordinates for ``box`` -> ``size^2``.

    Input pixel ``i`` has its centre at box fraction ``u = (i + 0.5) / size``, so ``i = (x - x0) * size / w - 0.5``.
    Both sides use the pixel-centre convention, as ``cv2.warpAffine`` expects (pass it without
    ``WARP_INVERSE_MAP``).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if not (w > 0 and h > 0):
        raise ValueError(f"box_to_input_matrix: empty box {[x0, y0, x1, y1]}")
    sx, sy = size / w, size / h
    return np.array([[sx, 0.0, -x0 * sx - 0.5], [0.0, sy, -y0 * sy - 0.5]], np.float64)


def _box_matrices(boxes: np.ndarray, size: int) -> np.ndarray:
    """Vectorised :func:`box_to_input_matrix`: ``[N, 4] -> [N, 2, 3]`` float64."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if np.any(~(w > 0)) or np.any(~(h > 0)):
        bad = np.flatnonzero(~((w > 0) & (h > 0)))[:5].tolist()
        raise ValueError(f"empty boxes (need x1 > x0 and y1 > y0) at indices {bad}")
    m = np.zeros((len(b), 2, 3))
    m[:, 0, 0] = size / w
    m[:, 1, 1] = size / h
    m[:, 0, 2] = -b[:, 0] * m[:, 0, 0] - 0.5
    m[:, 1, 2] = -b[:, 1] * m[:, 1, 1] - 0.5
    return m


def to_box_frame(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Image points -> box-normalised ``(u, v)``: ``u = (x - x0) / (x1 - x0)``, ``v = (y - y0) / (y1 - y0)``.

    Shapes: ``points [..., P, 2]``, ``boxes [..., 4]`` (e.g. ``[N, P, 2]`` and ``[N, 4]``); returns float32
    ``[..., P, 2]``.
    """
    p = np.asarray(points, np.float64)
    b = np.asarray(boxes, np.float64)[..., None, :]
    origin, size = b[..., 0:2], b[..., 2:4] - b[..., 0:2]
    return ((p - origin) / size).astype(np.float32)


def scale_boxes(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Boxes ``[N, 4]`` ``(x0, y0, x1, y1)`` scaled by ``factor`` about their centres, float64 ``[N, 4]``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c, half = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) / 2 * factor
    return np.concatenate([c - half, c + half], axis=1)


def from_box_frame(uv: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Box-normalised ``(u, v)`` -> image points (inverse of :func:`to_box_frame`); shapes as there, float32."""
    if isinstance(uv, np.ndarray) and uv.ndim == 3 and len(uv) <= 4 and np.ndim(boxes) == 2:
        # A few faces (the Aligner at batch 1): Python floats, float64 as below, beat the numpy calls, each of which
        # costs microseconds on the caches a forward pass has just evicted.
        pts = [[[x0 + u * (x1 - x0), y0 + v * (y1 - y0)] for u, v in face]
               for face, (x0, y0, x1, y1) in zip(uv.tolist(), np.asarray(boxes, np.float64).tolist())]
        return np.array(pts, np.float32).reshape(uv.shape)
    b = np.asarray(boxes, np.float64)[..., None, :]
    origin = b[..., :2]
    return (origin + np.asarray(uv, np.float64) * (b[..., 2:] - origin)).astype(np.float32)


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


def _warp_grey(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
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
    mats = _box_matrices(boxes, size)
    if len(images) != len(mats):
        raise ValueError(f"make_inputs: {len(images)} images but {len(mats)} boxes")
    out = np.empty((len(images), 1, size, size), np.float32)
    for i, img in enumerate(images):
        out[i, 0] = _warp_grey(img, mats[i], size)
    return normalise(out) if standardise else out


# ----------------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------------


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
        base = _box_matrices(b, s)
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
            x[i, 0] = _warp_grey(img, m[i], s)
        x = normalise(x)
        ij = np.einsum("nij,npj->npi", m[:, :, :2], pts) + m[:, None, :, 2]
        uv = ((ij + 0.5) / s).astype(np.float32)
        if flip.any():
            uv[flip] = uv[flip][:, self.mirror_perm]
        out_attrs = {k: np.array(v, dtype=np.int64, copy=True).reshape(-1) for k, v in (attributes or {}).items()}
        if "pose" in out_attrs and flip.any():
            out_attrs["pose"][flip] = np.asarray(POSE_MIRROR, np.int64)[out_attrs["pose"][flip]]
        return x, uv, out_attrs
