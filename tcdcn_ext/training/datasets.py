"""Face datasets for TCDCN: the staged layout, the original MTFL and 300-W releases, and the crop recipe.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..inference.boxes import predict_boxes_5pt
from ..util.progress import progress_bar
from ..models.landmarks import ATTRIBUTE_CLASSES

__all__ = ["DataError", "FaceSet", "crop_like_staged", "load_300w_original", "load_mtfl_original", "load_staged",
           "read_pts"]

logger = logging.getLogger("tcdcn_ext.data")  # (its name before the move: logging configs keep working)

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
    bar = progress_bar(n, f"loading {split_dir}", progress, unit="face")
    for i, (line, _) in enumerate(rows):
        path = split_dir / "images" / names[i]
        img = _read_rgb(path)
        if img is None:
            what = "not found" if not path.exists() else "unreadable"
            raise DataError(f"{csv_path}:{line}: image {path} {what}")
        images.append(img)
        bar.update(1)
    bar.close()
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
    bar = progress_bar(n, f"loading {list_path}", progress, unit="face")
    for i, (line_no, rel, points, _) in enumerate(entries):
        path = root / rel
        img = _read_rgb(path)
        if img is None:
            what = "not found" if not path.exists() else "unreadable"
            raise DataError(f"{list_path}:{line_no}: image {path} {what}")
        crop, boxes[i], landmarks[i] = crop_like_staged(img, raw_boxes[i], points, out_size)
        images.append(crop)
        bar.update(1)
    bar.close()
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
    bar = progress_bar(n, f"loading {root}", progress, unit="face")
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
        bar.update(1)
    bar.close()
    return FaceSet(images, boxes, landmarks, {}, names, sources)
