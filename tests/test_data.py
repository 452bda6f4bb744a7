"""Tests for tcdcn_ext.data: loaders (staged and original formats), crop recipe, geometry, augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcdcn_ext import data
from tcdcn_ext.data import (
    MIRROR_5,
    MIRROR_68,
    POSE_MIRROR,
    Augmenter,
    DataError,
    FaceSet,
    box_to_input_matrix,
    crop_like_staged,
    from_box_frame,
    load_300w_original,
    load_mtfl_original,
    load_staged,
    make_inputs,
    normalise,
    read_pts,
    to_box_frame,
)

DATA = Path(os.environ.get("TCDCN_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(scope="module")
def mtfl_train() -> FaceSet:
    if not (DATA / "mtfl/train/annotations.csv").is_file():
        pytest.skip(f"staged data {DATA / 'mtfl/train'} not found (set TCDCN_DATA)")
    return load_staged(DATA / "mtfl/train", limit=200, progress=False)


@pytest.fixture(scope="module")
def w300_train() -> FaceSet:
    if not (DATA / "300w/train/annotations.csv").is_file():
        pytest.skip(f"staged data {DATA / '300w/train'} not found (set TCDCN_DATA)")
    return load_staged(DATA / "300w/train", limit=150, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Staged loader
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.data
def test_load_staged_mtfl(mtfl_train: FaceSet) -> None:
    fs = mtfl_train
    assert len(fs) == 200 and fs.num_points == 5
    assert fs.boxes.dtype == np.float32 and fs.boxes.shape == (200, 4)
    assert fs.landmarks.dtype == np.float32 and fs.landmarks.shape == (200, 5, 2)
    assert set(fs.attributes) == {"gender", "smile", "glasses", "pose"}
    for name, values in fs.attributes.items():
        assert values.dtype == np.int64 and values.min() >= 0 and values.max() < data.ATTRIBUTE_CLASSES[name]
    assert all(img.shape == (128, 128, 3) and img.dtype == np.uint8 for img in fs.images)
    assert np.all((fs.landmarks > 0) & (fs.landmarks < 127))
    side = fs.boxes[:, 2:] - fs.boxes[:, :2]
    assert np.all(np.abs(side - 80) < 5)
    # Upright faces: image-left eye left of the image-right eye.
    assert np.all(fs.landmarks[:, 0, 0] < fs.landmarks[:, 1, 0])
    assert fs.names[0] == "lfw_Aaron_Eckhart_0001.jpg" and fs.sources[0] == "lfw_5590/Aaron_Eckhart_0001.jpg"
    np.testing.assert_allclose(fs.landmarks[0, 0], [47.11, 40.35], atol=1e-4)


@pytest.mark.data
def test_load_staged_300w(w300_train: FaceSet) -> None:
    fs = w300_train
    assert fs.num_points == 68 and fs.attributes == {}
    # Box = landmark extent.
    np.testing.assert_allclose(fs.boxes[:, :2], fs.landmarks.min(axis=1), atol=0.011)
    np.testing.assert_allclose(fs.boxes[:, 2:], fs.landmarks.max(axis=1), atol=0.011)


def _write_csv(split: Path, header: str, rows: list[str], images: list[str] = ()) -> Path:
    (split / "images").mkdir(parents=True, exist_ok=True)
    for name in images:
        cv2.imwrite(str(split / "images" / name), np.full((16, 16, 3), 128, np.uint8))
    path = split / "annotations.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


HEADER5 = "image,box_x0,box_y0,box_x1,box_y1,x0,y0,x1,y1,x2,y2,x3,y3,x4,y4,gender,smile,glasses,pose,source"
ROW5 = "a.jpg,2,2,14,14,4,5,11,5,8,8,5,11,11,11,0,1,0,{pose},src/a.jpg"


def test_load_staged_synthetic(tmp_path: Path) -> None:
    _write_csv(tmp_path, HEADER5, [ROW5.format(pose=3), ROW5.replace("a.jpg", "b.jpg").format(pose=0)],
               ["a.jpg", "b.jpg"])
    fs = load_staged(tmp_path, progress=False)
    assert len(fs) == 2 and fs.num_points == 5 and fs.images[0].shape == (16, 16, 3)
    assert fs.attributes["pose"].tolist() == [3, 0] and fs.sources == ["src/a.jpg", "src/b.jpg"]
    assert len(load_staged(tmp_path, limit=1, progress=False)) == 1
    # Header-driven: 3 points, no attribute or source column.
    sub = tmp_path / "three"
    _write_csv(sub, "image,box_x0,box_y0,box_x1,box_y1,x0,y0,x1,y1,x2,y2", ["a.jpg,0,0,10,10,1,2,3,4,5,6"], ["a.jpg"])
    fs3 = load_staged(sub, progress=False)
    assert fs3.num_points == 3 and fs3.attributes == {} and fs3.sources == ["a.jpg"]
    np.testing.assert_array_equal(fs3.landmarks[0], [[1, 2], [3, 4], [5, 6]])


@pytest.mark.parametrize(
    "rows, message",
    [
        ([ROW5.format(pose=2), ROW5.format(pose=7)], r"annotations\.csv:3: column 'pose': value 7 out of range 0\.\.4"),
        ([ROW5.format(pose=2) + ",extra"], r"annotations\.csv:2: expected 20 columns, got 21"),
        ([ROW5.format(pose=2).replace(",4,5,", ",4,abc,")], r"annotations\.csv:2: column 'y0': not a number: 'abc'"),
        ([ROW5.format(pose=2).replace(",0,1,0,", ",0,x,0,")], r"annotations\.csv:2: column 'smile': not an integer"),
        ([ROW5.format(pose=2).replace(",4,5,", ",4,nan,")], r"annotations\.csv:2: column 'y0': non-finite"),
        ([ROW5.format(pose=2).replace("a.jpg,", "missing.jpg,", 1)], r"annotations\.csv:2: image .*missing\.jpg not found"),
    ],
)
def test_load_staged_errors(tmp_path: Path, rows: list[str], message: str) -> None:
    _write_csv(tmp_path, HEADER5, rows, ["a.jpg"])
    with pytest.raises(DataError, match=message):
        load_staged(tmp_path, progress=False)


def test_load_staged_header_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"annotations\.csv: annotations file not found"):
        load_staged(tmp_path / "nowhere", progress=False)
    _write_csv(tmp_path, "image,box_x0,box_y0,box_x1,box_y1,x0,y0,x2,y2", [])
    with pytest.raises(DataError, match=r"annotations\.csv:1: landmark columns must be x0\.\.x1 without gaps"):
        load_staged(tmp_path, progress=False)
    _write_csv(tmp_path, "img,box_x0", [])
    with pytest.raises(DataError, match=r"annotations\.csv:1: the first column must be 'image'"):
        load_staged(tmp_path, progress=False)
    assert issubclass(DataError, ValueError)


def test_faceset_subset_and_validation() -> None:
    imgs = [np.full((8, 8, 3), i, np.uint8) for i in range(4)]
    fs = FaceSet(imgs, np.tile([0, 0, 8, 8], (4, 1)), np.zeros((4, 5, 2)), {"pose": [0, 1, 2, 3]})
    sub = fs.subset([3, 1])
    assert len(sub) == 2 and sub.attributes["pose"].tolist() == [3, 1] and sub.images[0][0, 0, 0] == 3
    assert sub.names == [fs.names[3], fs.names[1]] and sub.num_points == 5
    assert len(fs.subset(np.array([True, False, True, False]))) == 2
    with pytest.raises(ValueError, match="different lengths"):
        FaceSet(imgs, np.zeros((3, 4)), np.zeros((4, 5, 2)))


# ---------------------------------------------------------------------------------------------------------------
# Mirror constants
# ---------------------------------------------------------------------------------------------------------------


def test_mirror_permutations_are_involutions() -> None:
    for perm in (MIRROR_5, MIRROR_68, POSE_MIRROR):
        p = np.asarray(perm)
        assert sorted(p.tolist()) == list(range(len(p)))
        np.testing.assert_array_equal(p[p], np.arange(len(p)))
    fixed = [i for i in range(68) if MIRROR_68[i] == i]
    assert fixed == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    assert MIRROR_68[36] == 45 and MIRROR_68[39] == 42 and MIRROR_68[48] == 54 and MIRROR_68[0] == 16


def _mirror_points(points: np.ndarray, width: int, perm: list[int]) -> np.ndarray:
    m = points.copy()
    m[..., 0] = (width - 1) - m[..., 0]  # pixel c -> W - 1 - c
    return m[:, perm]


@pytest.mark.data
def test_mirror_68_on_staged(w300_train: FaceSet) -> None:
    pts = w300_train.landmarks.astype(np.float64)
    mirrored = _mirror_points(pts, 128, MIRROR_68)
    unpermuted = _mirror_points(pts, 128, list(range(68)))
    iod = np.linalg.norm(pts[:, 36] - pts[:, 45], axis=1)[:, None, None]

    def shape(a: np.ndarray) -> np.ndarray:  # centred, scale-normalised
        return (a - a.mean(axis=1, keepdims=True)) / iod

    # A face and its mirror image have about the same shape once left/right points are swapped: in the mean shape
    # every mirrored point's nearest neighbour among the original points is the point with the same index...
    mean_m, mean_p = shape(mirrored).mean(axis=0), shape(pts).mean(axis=0)
    nearest = np.linalg.norm(mean_m[:, None] - mean_p[None], axis=2).argmin(axis=1)
    np.testing.assert_array_equal(nearest, np.arange(68))
    d_perm = np.median(np.linalg.norm(shape(mirrored) - shape(pts), axis=2).mean(axis=1))
    d_raw = np.median(np.linalg.norm(shape(unpermuted) - shape(pts), axis=2).mean(axis=1))
    assert d_perm < 0.5 * d_raw
    # ...and the left/right points land where the original's right/left ones were: eye 36-41 stays image-left.
    left_eye_x = mirrored[:, 36:42, 0].mean(axis=1)
    right_eye_x = mirrored[:, 42:48, 0].mean(axis=1)
    assert np.mean(left_eye_x < right_eye_x) > 0.95
    assert np.mean(mirrored[:, 0, 0] < mirrored[:, 16, 0]) > 0.95  # jaw starts on the image left
    assert np.mean(mirrored[:, 48, 0] < mirrored[:, 54, 0]) > 0.95  # mouth corners


@pytest.mark.data
def test_mirror_5_on_staged(mtfl_train: FaceSet) -> None:
    mirrored = _mirror_points(mtfl_train.landmarks.astype(np.float64), 128, MIRROR_5)
    assert np.all(mirrored[:, 0, 0] < mirrored[:, 1, 0]) and np.mean(mirrored[:, 3, 0] < mirrored[:, 4, 0]) > 0.95


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    x0=st.floats(-50, 50), y0=st.floats(-50, 50), w=st.floats(1, 200), h=st.floats(1, 200),
    u=st.lists(st.floats(-0.5, 1.5), min_size=6, max_size=6),
)
def test_box_frame_round_trip(x0: float, y0: float, w: float, h: float, u: list[float]) -> None:
    boxes = np.array([[x0, y0, x0 + w, y0 + h]])
    uv = np.array(u, np.float64).reshape(1, 3, 2)
    pts = from_box_frame(uv, boxes)
    np.testing.assert_allclose(pts[0, :, 0], x0 + uv[0, :, 0] * w, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(to_box_frame(pts, boxes), uv, rtol=1e-4, atol=1e-4)


def test_box_to_input_matrix_pixel_centres() -> None:
    box, s = (10.0, 20.0, 90.0, 60.0), 40
    m = box_to_input_matrix(box, s)
    assert m.shape == (2, 3) and m.dtype == np.float64
    apply = lambda p: m[:, :2] @ np.asarray(p, float) + m[:, 2]  # noqa: E731
    # Box edges are input pixel edges (-0.5 and S - 0.5); input pixel i has its centre at u = (i + 0.5) / S.
    np.testing.assert_allclose(apply([10, 20]), [-0.5, -0.5])
    np.testing.assert_allclose(apply([90, 60]), [s - 0.5, s - 0.5])
    i = 7
    u = (i + 0.5) / s
    np.testing.assert_allclose(apply(from_box_frame(np.array([[[u, u]]]), np.array([box]))[0, 0]), [i, i], atol=1e-4)
    with pytest.raises(ValueError, match="empty box"):
        box_to_input_matrix((5, 5, 5, 9), s)


def test_make_inputs_samples_pixel_centres() -> None:
    # Grey level = 2 * x + 3 * y: bilinear sampling of a linear ramp is exact, so the warped values must be the
    # ramp at the input pixel centres mapped back into the image.
    h, w, s = 64, 96, 16
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = (xx + 0.5 * yy).astype(np.float32)
    img = np.repeat(ramp[:, :, None], 3, axis=2)  # float RGB with equal channels -> grey = ramp
    box = np.array([[20.0, 10.0, 68.0, 50.0]])
    out = make_inputs([img], box, size=s)
    assert out.shape == (1, 1, s, s) and out.dtype == np.float32
    centres = (np.arange(s) + 0.5) / s
    ex = box[0, 0] + centres * 48.0
    ey = box[0, 1] + centres * 40.0
    expected = ex[None, :] + 0.5 * ey[:, None]
    np.testing.assert_allclose(out[0, 0], normalise(expected), atol=1e-4)


def test_normalise_and_grey() -> None:
    rng = np.random.default_rng(0)
    p = rng.normal(5, 3, (4, 1, 10, 10)).astype(np.float32)
    n = normalise(p)
    np.testing.assert_allclose(n.mean(axis=(-2, -1)), 0, atol=1e-5)
    np.testing.assert_allclose(n.std(axis=(-2, -1)), 1, atol=1e-4)
    assert np.all(normalise(np.full((3, 3), 7.0)) == 0)
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_allclose(data.grey(rgb), rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-3)
    assert data.grey(rgb[:, :, 0]).dtype == np.float32


# ---------------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------------

_FACE_POINTS = np.array([[45.0, 47.0], [83.3, 45.6], [64.2, 66.7], [50.6, 87.1], [78.9, 86.4]])
_AMPLITUDES = np.array([60.0, 100.0, 140.0, 180.0, 220.0])


def _blob_image(points: np.ndarray, amplitudes: np.ndarray, size: int = 128, sigma: float = 2.5) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size))
    for (px, py), a in zip(points, amplitudes):
        img += a * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sigma**2))
    return np.repeat(img.astype(np.float32)[:, :, None], 3, axis=2)


def test_augmenter_targets_match_pixels() -> None:
    """A blob drawn at each landmark must land on that landmark's target in the augmented input."""
    s = 40
    img = _blob_image(_FACE_POINTS, _AMPLITUDES)
    box = np.array([[24.0, 26.0, 104.0, 104.0]])
    aug = Augmenter(size=s, max_shift=0.08, max_rotate_deg=20, zoom=(0.85, 1.15), mirror=True, mirror_perm=MIRROR_5)
    n = 16
    images = [img] * n
    boxes = np.repeat(box, n, axis=0)
    pts = np.repeat(_FACE_POINTS[None], n, axis=0)
    pose = np.full(n, 1)
    _, flip = aug.matrices(boxes, np.random.default_rng(3))
    x, uv, attrs = aug(images, boxes, pts, {"pose": pose, "smile": np.ones(n)}, np.random.default_rng(3))
    assert x.shape == (n, 1, s, s) and uv.shape == (n, 5, 2) and uv.dtype == np.float32
    assert 0 < flip.sum() < n  # both branches exercised
    np.testing.assert_array_equal(attrs["pose"], np.where(flip, POSE_MIRROR[1], 1))
    np.testing.assert_array_equal(attrs["smile"], np.ones(n))
    r = 4
    grid = np.arange(-r, r + 1)
    for f in range(n):
        w_img = x[f, 0] - x[f, 0].min()  # background (0) is the minimum after normalisation
        masses = []
        for k in range(5):
            ci, cj = uv[f, k] * s - 0.5  # input pixel coordinates (column, row) of the target
            c0, r0 = int(round(ci)), int(round(cj))
            win = w_img[r0 - r : r0 + r + 1, c0 - r : c0 + r + 1]
            mass = win.sum()
            cx = (win.sum(axis=0) * (c0 + grid)).sum() / mass
            cy = (win.sum(axis=1) * (r0 + grid)).sum() / mass
            assert abs(cx - ci) < 0.15 and abs(cy - cj) < 0.15, (f, k, cx, ci, cy, cj)
            masses.append(mass)
        # Which blob is where: mirrored faces carry old point MIRROR_5[k] as new point k.
        order = np.asarray(MIRROR_5) if flip[f] else np.arange(5)
        np.testing.assert_array_equal(np.argsort(masses), np.argsort(_AMPLITUDES[order]))
        if flip[f]:
            assert uv[f, 0, 0] < uv[f, 1, 0]  # the image-left eye is still on the left after mirroring


def test_augmenter_identity_equals_make_inputs() -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (100, 120, 3), dtype=np.uint8) for _ in range(3)]
    boxes = np.array([[10, 10, 90, 90], [20, 5, 100, 95], [0, 0, 119, 99]], np.float64)
    pts = rng.uniform(10, 90, (3, 5, 2))
    aug = Augmenter(size=40, max_shift=0, max_rotate_deg=0, zoom=(1, 1), mirror=False)
    x, uv, _ = aug(images, boxes, pts, None, rng)
    np.testing.assert_allclose(x, make_inputs(images, boxes, 40), atol=1e-6)
    np.testing.assert_allclose(uv, to_box_frame(pts, boxes), atol=1e-5)


def test_augmenter_errors() -> None:
    aug = Augmenter(mirror_perm=MIRROR_5)
    with pytest.raises(ValueError, match="MIRROR_68"):
        aug([np.zeros((8, 8, 3), np.uint8)], np.array([[0, 0, 8, 8]]), np.zeros((1, 68, 2)), {}, np.random.default_rng())
    with pytest.raises(ValueError, match="own inverse"):
        Augmenter(mirror_perm=[1, 2, 0])


# ---------------------------------------------------------------------------------------------------------------
# Crop recipe and original-format loaders
# ---------------------------------------------------------------------------------------------------------------


def _dot_centroid(img: np.ndarray, guess: np.ndarray, r: int = 6) -> np.ndarray:
    g = img[..., 0].astype(np.float64)
    c0, r0 = int(round(guess[0])), int(round(guess[1]))
    win = g[r0 - r : r0 + r + 1, c0 - r : c0 + r + 1]
    grid = np.arange(-r, r + 1)
    return np.array([(win.sum(0) * (c0 + grid)).sum(), (win.sum(1) * (r0 + grid)).sum()]) / win.sum()


@pytest.mark.parametrize("shape, box", [((300, 260), (40.0, 60.0, 190.0, 200.0)), ((70, 90), (30.0, 10.0, 80.0, 66.0))])
def test_crop_like_staged(shape: tuple[int, int], box: tuple[float, ...]) -> None:
    """Shrinking and enlarging crops, one reaching past the image border (zero fill)."""
    pts = np.array([[box[0] + 12.3, box[1] + 14.7], [box[2] - 10.2, box[3] - 10.4]])
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.full(shape, 30.0)
    for px, py in pts:
        img += 200 * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 2.5**2))
    img = img.astype(np.uint8)  # grey original: replicated to 3 channels
    crop, cbox, cpts = crop_like_staged(img, box, pts, 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    side = round(1.6 * max(box[2] - box[0], box[3] - box[1]))
    origin = np.array([round((box[0] + box[2]) / 2 - side / 2), round((box[1] + box[3]) / 2 - side / 2)])
    np.testing.assert_allclose(cpts, (pts - origin + 0.5) * 128 / side - 0.5, atol=1e-4)
    np.testing.assert_allclose(cbox, ((np.reshape(box, (2, 2)) - origin + 0.5) * 128 / side - 0.5).reshape(4), atol=1e-4)
    # Zero fill outside the image (the small image's crop reaches past its border), grey level 30 inside.
    if origin.min() < 0:
        assert crop[0, 0, 0] == 0
    inside = np.round((np.array([box[2] - 2, box[1] + 2]) - origin + 0.5) * 128 / side - 0.5).astype(int)
    assert abs(int(crop[inside[1], inside[0], 0]) - 30) <= 2
    for k in range(2):
        # The dot's centroid (minus the flat background) is the mapped landmark.
        guess = cpts[k]
        sub = crop.astype(np.float64) - 30.0
        sub[sub < 0] = 0
        np.testing.assert_allclose(_dot_centroid(sub, guess, r=int(8 * 128 / side) + 2), guess, atol=0.2)


def _mtfl_root(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A tiny original-layout MTFL folder: 3 images (one grey), 1-based coordinates, backslash paths."""
    root = tmp_path / "MTFL"
    (root / "lfw_5590").mkdir(parents=True)
    (root / "net_7876").mkdir()
    pts0 = np.array([[100.0, 110.0], [150.0, 108.0], [126.0, 140.0], [105.0, 165.0], [147.0, 166.0]])
    faces = [("lfw_5590", "Aaron_Eckhart_0001.png", pts0, (250, 250)),
             ("net_7876", "1162_0_0.png", np.round(pts0 * 0.7 + 5), (216, 160)),
             ("lfw_5590", "Zoe Ball_0001.png", pts0 + [10, -5], (250, 250))]
    lines = []
    for k, (folder, fname, p, (h, w)) in enumerate(faces):
        img = np.zeros((h, w), np.uint8)
        for px, py in p:  # a dot on pixel (px, py) 0-based, annotated 1-based below
            img[int(py), int(px)] = 255
        if k == 1:
            cv2.imwrite(str(root / folder / fname), img)  # greyscale file
        else:
            cv2.imwrite(str(root / folder / fname), cv2.merge([img, img, img]))
        one_based = p + 1.0
        coords = " ".join(f"{v:.1f}" for v in [*one_based[:, 0], *one_based[:, 1]])
        codes = ["1 2 2 3", "2 1 1 5", "2 2 1 1"][k]
        lines.append(f" {folder}\\{fname} {coords} {codes}")
    (root / "training.txt").write_text("\n".join(lines) + "\n")
    return root, np.stack([f[2] for f in faces])


def test_load_mtfl_original(tmp_path: Path) -> None:
    root, pts0 = _mtfl_root(tmp_path)
    fs = load_mtfl_original(root, "training.txt", progress=False)
    assert len(fs) == 3 and fs.num_points == 5
    assert fs.names == ["lfw_Aaron_Eckhart_0001.jpg", "net_1162_0_0.jpg", "lfw_Zoe_Ball_0001.jpg"]
    assert fs.sources[0] == "lfw_5590/Aaron_Eckhart_0001.png"
    assert fs.attributes["gender"].tolist() == [0, 1, 1]
    assert fs.attributes["smile"].tolist() == [0, 1, 0]
    assert fs.attributes["glasses"].tolist() == [0, 1, 1]
    assert fs.attributes["pose"].tolist() == [2, 4, 0]
    assert all(img.shape == (128, 128, 3) for img in fs.images)
    boxes = data.predict_boxes_5pt(pts0)
    for i in range(3):
        _, cbox, cpts = crop_like_staged(np.zeros((10, 10), np.uint8), boxes[i], pts0[i])
        np.testing.assert_allclose(fs.landmarks[i], cpts, atol=1e-4)  # 1-based file -> 0-based points
        np.testing.assert_allclose(fs.boxes[i], cbox, atol=1e-4)
        for k in range(5):  # the dot drawn at each 0-based point is at the landmark of the crop
            np.testing.assert_allclose(_dot_centroid(fs.images[i], fs.landmarks[i, k], r=3), fs.landmarks[i, k],
                                       atol=0.35)
    side = fs.boxes[:, 2:] - fs.boxes[:, :2]
    assert np.all(np.abs(side - 80) < 6)  # framed like the staged crops


@pytest.mark.parametrize(
    "line, message",
    [
        (" lfw_5590\\a.png 1 2 3", r"training\.txt:2: expected 15 fields"),
        (" lfw_5590\\a.png 1 2 3 4 5 1 2 3 4 x 1 1 1 1", r"training\.txt:2: non-numeric coordinate"),
        (" lfw_5590\\a.png 1 2 3 4 5 1 2 3 4 5 1 1 1 6", r"training\.txt:2: pose code 6 out of range 1\.\.5"),
        (" lfw_5590\\gone.png 100 150 126 105 147 110 108 140 165 166 1 1 1 1", r"training\.txt:2: image .*gone\.png not found"),
    ],
)
def test_load_mtfl_original_errors(tmp_path: Path, line: str, message: str) -> None:
    root, _ = _mtfl_root(tmp_path)
    first = (root / "training.txt").read_text().splitlines()[0]
    (root / "training.txt").write_text(first + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        load_mtfl_original(root, "training.txt", progress=False)
    with pytest.raises(DataError, match=r"testing\.txt: MTFL list file not found"):
        load_mtfl_original(root, "testing.txt", progress=False)


def _pts_text(points: np.ndarray, header: bool) -> str:
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in points)
    return f"version: 1\nn_points:  {len(points)}\n{{\n{body}\n}}\n" if header else body + "\n"


def _w300_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "300W"
    rng = np.random.default_rng(0)
    out = {}
    for folder, stem, ext, header in [("afw", "134212_1", ".jpg", True), ("helen/trainset", "100032540_1", ".png", False)]:
        d = root / folder
        d.mkdir(parents=True)
        pts = rng.uniform(60, 180, (68, 2))  # 1-based file values
        (d / f"{stem}.pts").write_text(_pts_text(pts, header))
        cv2.imwrite(str(d / f"{stem}{ext}"), rng.integers(0, 255, (240, 260, 3), dtype=np.uint8))
        out[f"{folder}/{stem}"] = pts
    return root, out


def test_load_300w_original(tmp_path: Path) -> None:
    root, raw = _w300_root(tmp_path)
    fs = load_300w_original(root, progress=False)
    assert len(fs) == 2 and fs.num_points == 68 and fs.attributes == {}
    assert fs.names == ["afw_134212_1.jpg", "helen_trainset_100032540_1.jpg"]
    assert fs.sources == ["afw/134212_1.jpg", "helen/trainset/100032540_1.png"]
    for i, key in enumerate(["afw/134212_1", "helen/trainset/100032540_1"]):
        p = raw[key] - 1.0
        box = np.concatenate([p.min(0), p.max(0)])
        _, cbox, cpts = crop_like_staged(np.zeros((4, 4), np.uint8), box, p)
        np.testing.assert_allclose(fs.landmarks[i], cpts, atol=1e-3)
        np.testing.assert_allclose(fs.boxes[i], cbox, atol=1e-3)
        np.testing.assert_allclose(fs.boxes[i, :2], fs.landmarks[i].min(0), atol=1e-3)


def test_load_300w_original_errors(tmp_path: Path) -> None:
    root, raw = _w300_root(tmp_path)
    pts_file = root / "afw" / "134212_1.pts"
    pts_file.write_text(_pts_text(raw["afw/134212_1"][:67], header=False))
    with pytest.raises(DataError, match=r"134212_1\.pts: expected 68 points, got 67"):
        load_300w_original(root, progress=False)
    pts_file.write_text(_pts_text(raw["afw/134212_1"], header=True).replace("}\n", ""))
    with pytest.raises(DataError, match=r"134212_1\.pts: no closing '\}'"):
        load_300w_original(root, progress=False)
    pts_file.write_text(_pts_text(raw["afw/134212_1"], header=True).replace("n_points:  68", "n_points: 70"))
    with pytest.raises(DataError, match=r"134212_1\.pts: header says n_points: 70 but the file has 68 points"):
        read_pts(pts_file)
    lines = _pts_text(raw["afw/134212_1"], header=False).splitlines()
    lines[4] = "12.5 abc"
    pts_file.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"134212_1\.pts:5: non-numeric point"):
        load_300w_original(root, progress=False)
    pts_file.write_text(_pts_text(raw["afw/134212_1"], header=True))
    (root / "afw" / "134212_1.jpg").unlink()
    with pytest.raises(DataError, match=r"134212_1\.pts: no image next to it"):
        load_300w_original(root, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no \.pts files found"):
        load_300w_original(tmp_path / "empty", progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Box model
# ---------------------------------------------------------------------------------------------------------------


def test_box_model_is_similarity_equivariant() -> None:
    rng = np.random.default_rng(0)
    pts = _FACE_POINTS[None] + rng.normal(0, 2, (4, 5, 2))
    boxes = data.predict_boxes_5pt(pts)
    # Scale by 2 and shift: boxes follow. (Rotation changes an axis-aligned box, so only check scale + shift.)
    moved = data.predict_boxes_5pt(pts * 2 + [7, -3])
    np.testing.assert_allclose(moved, boxes * 2 + [7, -3, 7, -3], atol=1e-9)
    side = boxes[:, 2] - boxes[:, 0]
    np.testing.assert_allclose(side, boxes[:, 3] - boxes[:, 1])
    # An upside-down face (rotated 180 degrees about its centroid) gets the box rotated with it.
    c = pts.mean(axis=1, keepdims=True)
    flipped = data.predict_boxes_5pt(2 * c - pts)
    cen = (boxes[:, :2] + boxes[:, 2:]) / 2
    np.testing.assert_allclose((flipped[:, :2] + flipped[:, 2:]) / 2, 2 * c[:, 0] - cen, atol=1e-9)


@pytest.mark.data
def test_fit_box_model_on_staged(mtfl_train: FaceSet) -> None:
    model, rms = data.fit_box_model(mtfl_train)
    assert model.shape == (2, 3) and rms < 6.0
    # The shipped constants fit these faces about as well as a refit on them.
    shipped = data.predict_boxes_5pt(mtfl_train.landmarks) - mtfl_train.boxes
    assert np.sqrt(np.mean(shipped**2)) < rms + 0.5
    np.testing.assert_allclose(model[0, 2], data.MTFL_BOX_MODEL[0, 2], rtol=0.05)
