"""Aligner, detector glue, drawing and the tcdcn-align CLI (fast: CPU, a few detections on small images).

Weights: the shipped 5-point model; while it is not shipped yet, ``$TCDCN_TEST_WEIGHTS`` may point to a checkpoint.
"""

from __future__ import annotations

import json
import os
import threading
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tcdcn_ext.aligner import Aligner, Face, ImageError, load_image
from tcdcn_ext.averaging import default_shifts, predict_averaged
from tcdcn_ext.detect import CALIBRATION_5PT, DetectorError, Detections, calibrate_boxes
from tcdcn_ext.model import WeightsError, shipped_models

ASTRONAUT = Path(str(files("tcdcn_ext") / "assets" / "astronaut.jpg"))
#: The 5 points on the astronaut photo, read by eye from a 9x enlarged crop (eye centres at the pupils, nose tip,
#: mouth corners where the lips meet), 0-based pixel centres.
HAND_POINTS = np.array([[203, 101], [246, 103], [224, 127], [203, 140], [243, 142]], np.float64)
#: A face box in the model's (MTFL) convention around the astronaut's face, for the detector-free tests.
BOX = (177.0, 77.0, 265.0, 165.0)


def _weights() -> str:
    if "5pt" in shipped_models():
        return "5pt"
    env = os.environ.get("TCDCN_TEST_WEIGHTS")
    if env and Path(env).is_file():
        return env
    pytest.skip("the shipped 5-point model is missing (set TCDCN_TEST_WEIGHTS to a checkpoint to test without it)")


@pytest.fixture(scope="module")
def weights() -> str:
    return _weights()


@pytest.fixture(scope="module")
def boxed(weights) -> Aligner:
    """No detector: every call passes boxes."""
    return Aligner(model=weights, detector="none")


@pytest.fixture(scope="module")
def detecting(weights) -> Aligner:
    return Aligner(model=weights, detector="yunet")


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def face_crop(rgb) -> np.ndarray:
    """A small image around the face (fast detection)."""
    return np.ascontiguousarray(rgb[20:220, 120:320])


# ----------------------------------------------------------------------------------------------------------------
# The demo image


def test_demo_face_and_hand_checked_points(detecting):
    faces = detecting(ASTRONAUT)
    assert len(faces) == 1
    f = faces[0]
    assert isinstance(f, Face) and 0.5 <= f.score <= 1.0
    assert f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32
    assert not f.landmarks.flags.writeable
    err = np.linalg.norm(f.landmarks - HAND_POINTS, axis=1)
    assert np.all(err < 6.0), err
    x0, y0, x1, y1 = f.box
    assert x0 < HAND_POINTS[:, 0].min() and x1 > HAND_POINTS[:, 0].max() and y0 < HAND_POINTS[:, 1].min()
    assert set(f.attributes) == {"pose", "gender", "glasses", "smile"}
    for a in f.attributes.values():
        assert a.label in a.probabilities and a.probability == max(a.probabilities.values())
        assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert list(f.attributes["pose"].probabilities) == ["left_profile", "left", "frontal", "right", "right_profile"]
    d = f.to_dict()
    assert json.loads(json.dumps(d)) == d and len(d["landmarks"]) == 5


def test_face_equality_and_dict(boxed, rgb):
    a, b = boxed.align(rgb, [BOX])[0], boxed.align(rgb, [BOX])[0]
    assert a == b and a.box == BOX and a.score == 1.0
    with pytest.raises(TypeError):
        hash(a)


def test_face_attributes_built_on_read_behave_as_fields(boxed, rgb):
    """An Aligner's faces build ``attributes`` on first read: the value, copies, pickles and replace() are those of
    a Face made with the attributes given."""
    import copy
    import dataclasses
    import pickle

    faces = boxed.align_batch([rgb, rgb], [[BOX, (170.0, 70.0, 270.0, 170.0)], [BOX]])
    f = faces[0][1]
    eager = Face(box=f.box, score=f.score, landmarks=f.landmarks, attributes=dict(f.attributes))
    assert f == eager and f.attributes is f.attributes
    for a in f.attributes.values():
        assert a.probability == max(a.probabilities.values()) and isinstance(a.probability, float)
    for fresh in (lambda: boxed.align(rgb, [BOX])[0], lambda: faces[1][0]):
        g = fresh()
        assert pickle.loads(pickle.dumps(g)) == g and copy.deepcopy(g) == g and copy.copy(g) == g
        assert sorted(vars(pickle.loads(pickle.dumps(g)))) == ["attributes", "box", "landmarks", "score"]
    assert dataclasses.replace(faces[1][0], score=0.5).attributes == faces[1][0].attributes
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        f.nope  # noqa: B018


# ----------------------------------------------------------------------------------------------------------------
# Input kinds


def test_input_kinds_agree(boxed, rgb, tmp_path):
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
    ref = boxed.align(rgb, [BOX])[0].landmarks
    same = {
        "path": (ASTRONAUT, "rgb"),
        "path_str": (str(ASTRONAUT), "bgr"),  # files know their channel order: color is not used
        "bgr": (bgr, "bgr"),
        "rgba": (np.concatenate([rgb, alpha], 2), "rgba"),
        "bgra": (np.concatenate([bgr, alpha], 2), "bgra"),
        "non_contiguous": (np.asfortranarray(rgb), "rgb"),
        "tensor_u8": (torch.from_numpy(rgb).permute(2, 0, 1), "rgb"),
        "tensor_float": (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, "rgb"),
        "tensor_bgr": (torch.from_numpy(bgr).permute(2, 0, 1).contiguous(), "bgr"),
    }
    decoded = cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded, rgb)
    for name, (img, color) in same.items():
        got = boxed.align(img, [BOX], color=color)[0].landmarks
        np.testing.assert_allclose(got, ref, atol=1e-3, err_msg=name)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # rounded to uint8: not bit-identical, but close
    for name, img in {"grey": grey, "grey_hw1": grey[:, :, None], "grey_tensor": torch.from_numpy(grey)[None]}.items():
        got = boxed.align(img, [BOX])[0].landmarks
        np.testing.assert_allclose(got, ref, atol=0.5, err_msg=name)


class _FakePIL:
    """Duck-typed stand-in for a PIL image (PIL is optional): mode, size, convert and the array interface."""

    def __init__(self, array: np.ndarray, mode: str) -> None:
        self._a, self.mode, self.size = array, mode, (array.shape[1], array.shape[0])

    def convert(self, mode: str) -> "_FakePIL":
        assert mode == "RGB" and self.mode == "P"
        return _FakePIL(self._a, "RGB")

    def __array__(self, dtype=None, copy=None):
        return self._a


def test_pil_like_inputs(boxed, rgb):
    ref = boxed.align(rgb, [BOX])[0].landmarks
    for img in (_FakePIL(rgb, "RGB"), _FakePIL(rgb, "P"),
                _FakePIL(np.concatenate([rgb, np.zeros_like(rgb[:, :, :1])], 2), "RGBA")):
        np.testing.assert_allclose(boxed.align(img, [BOX], color="bgr")[0].landmarks, ref, atol=1e-3)
    with pytest.raises(ImageError, match="16"):
        boxed.align(_FakePIL(rgb[:, :, 0].astype(np.uint16), "I;16"), [BOX])


def test_pil_inputs(boxed, rgb):
    pil = pytest.importorskip("PIL.Image")
    ref = boxed.align(rgb, [BOX])[0].landmarks
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_allclose(boxed.align(pil.fromarray(rgb), [BOX])[0].landmarks, ref, atol=1e-3)
    np.testing.assert_allclose(boxed.align(pil.open(ASTRONAUT), [BOX])[0].landmarks, ref, atol=1e-3)
    np.testing.assert_allclose(boxed.align(pil.fromarray(grey), [BOX])[0].landmarks, ref, atol=0.5)


def test_detection_inputs_agree(detecting, face_crop):
    ref = detecting(face_crop)
    assert len(ref) == 1
    for img, color in [(np.ascontiguousarray(face_crop[:, :, ::-1]), "bgr"),
                       (torch.from_numpy(face_crop).permute(2, 0, 1), "rgb")]:
        got = detecting(img, color=color)
        assert len(got) == 1 and got[0].box == ref[0].box
        np.testing.assert_allclose(got[0].landmarks, ref[0].landmarks, atol=1e-3)


def test_load_image(rgb):
    assert np.array_equal(load_image(ASTRONAUT), rgb)
    assert np.array_equal(load_image(rgb[:, :, ::-1].copy(), color="bgr"), rgb)


# ----------------------------------------------------------------------------------------------------------------
# Boxes, batches, averaging, detection


def test_align_given_boxes(boxed, rgb):
    boxes = [BOX, (100.0, 200.0, 160.0, 260.0), (-40.0, -40.0, 40.0, 40.0)]  # the last is partly outside
    faces = boxed.align(rgb, boxes)
    assert [f.box for f in faces] == [tuple(b) for b in boxes]
    assert all(np.isfinite(f.landmarks).all() for f in faces)
    assert boxed.align(rgb, np.zeros((0, 4))) == []
    with pytest.raises(ValueError, match="invalid boxes"):
        boxed.align(rgb, [(10, 10, 5, 20)])
    with pytest.raises(ValueError, match="invalid boxes"):
        boxed.align(rgb, [(10, 10, float("nan"), 20)])


def test_align_batch_equals_single_calls(boxed, rgb):
    imgs = [rgb, np.ascontiguousarray(rgb[:, ::-1]), cv2.resize(rgb, (300, 300)), rgb[50:300, 100:350].copy()]
    boxes = [[BOX, (150.0, 60.0, 290.0, 200.0)], [(247.0, 77.0, 335.0, 165.0)], [(104.0, 45.0, 155.0, 97.0)],
             [(77.0, 27.0, 165.0, 115.0)]]
    batch = boxed.align_batch(imgs, boxes)
    assert [len(b) for b in batch] == [2, 1, 1, 1]
    # (The shipped model's int8 weights run batches of up to 3 faces on the 'vnni' kernel where the CPU has it, which
    # rounds activations to int16, and larger ones on the float kernels: ~2e-4 px apart.)
    for img, b, got in zip(imgs, boxes, batch):
        single = boxed.align(img, b)
        for s, g in zip(single, got):
            assert s.box == g.box
            np.testing.assert_allclose(g.landmarks, s.landmarks, atol=1e-3)
    # chunked forward passes give the same result (to the kernels' difference above)
    small = Aligner(model=boxed.model, detector="none", batch_size=2)
    for got, ref in zip(small.align_batch(imgs, boxes), batch):
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g.landmarks, r.landmarks, atol=1e-3)
    # the mirrored face's points mirror back (same face, x -> W - 1 - x)
    w = rgb.shape[1]
    a, m = batch[0][0].landmarks, batch[1][0].landmarks
    mirrored = np.stack([w - 1 - m[:, 0], m[:, 1]], 1)[[1, 0, 2, 4, 3]]
    assert np.abs(mirrored - a).max() < 4.0


def test_averaged(boxed, rgb):
    avg = Aligner(model=boxed.model, detector="none", averaged=True)
    np.testing.assert_array_equal(avg.shifts, default_shifts(boxed.model))
    assert len(avg.shifts) == 20 and np.allclose(avg.shifts.mean(0), 0)
    ref = boxed.align(rgb, [BOX])[0]
    got = avg.align(rgb, [BOX])[0]
    assert np.abs(got.landmarks - ref.landmarks).max() < 3.0
    # The Aligner's averaged path is the averaging module's (same crops, same op), and its attributes are averaged.
    np.testing.assert_allclose(got.landmarks, predict_averaged(boxed.model, rgb, [BOX])[0], atol=2e-3)
    assert abs(sum(got.attributes["pose"].probabilities.values()) - 1.0) < 1e-5
    one = Aligner(model=boxed.model, detector="none", averaged=True, shifts=[[0, 0]])
    np.testing.assert_allclose(one.align(rgb, [BOX])[0].landmarks, ref.landmarks, atol=2e-3)
    for bad in (np.zeros((0, 2)), [[0.5, 0.0]], [[1, 2, 3]]):
        with pytest.raises(ValueError, match="whole-pixel"):
            Aligner(model=boxed.model, detector="none", shifts=bad)


def test_no_face_gives_empty_list(detecting):
    assert detecting(np.zeros((64, 64, 3), np.uint8)) == []
    assert detecting(np.full((120, 90), 200, np.uint8)) == []


def test_big_image_detected_downscaled(detecting, rgb):
    big = cv2.resize(rgb, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    faces = detecting(big)
    assert len(faces) == 1
    expected = (HAND_POINTS + 0.5) * 4 - 0.5
    assert np.linalg.norm(faces[0].landmarks - expected, axis=1).max() < 6.0 * 4


def test_no_detector_needs_boxes(boxed, rgb):
    with pytest.raises(DetectorError, match="boxes"):
        boxed(rgb)


def test_user_detector_callable(weights, rgb):
    al = Aligner(model=weights, detector=lambda img: np.array([BOX]), refine=0)
    faces = al(rgb)
    assert len(faces) == 1 and faces[0].box == BOX
    np.testing.assert_allclose(faces[0].landmarks, Aligner(model=weights, detector="none").align(rgb, [BOX])[0]
                               .landmarks, atol=1e-4)
    # refine (default 1): detected faces are re-boxed from their landmarks; given boxes never are
    refined = Aligner(model=weights, detector=lambda img: np.array([BOX]))(rgb)[0]
    assert refined.box == BOX and np.abs(refined.landmarks - faces[0].landmarks).max() < 3.0
    al2 = Aligner(model=weights, detector=lambda img: (np.array([BOX]), np.array([0.2])), min_score=0.5)
    assert al2(rgb) == []


def test_calibration_constants():
    assert CALIBRATION_5PT["method"] in ("linear", "points")
    assert np.asarray(CALIBRATION_5PT["linear"]).shape == (2, 4)
    assert np.asarray(CALIBRATION_5PT["points"]).shape == (2, 3)
    det = Detections(np.ones(1, np.float32), np.array([[10, 20, 90, 120]], np.float32),
                     np.array([[[35, 55], [65, 55], [50, 75], [38, 95], [62, 95]]], np.float32))
    for method in ("none", "linear", "points"):
        b = calibrate_boxes(det, method=method)
        assert b.shape == (1, 4) and b[0, 2] > b[0, 0] and b[0, 3] > b[0, 1]
    # translation equivariance: shifting the detection shifts the calibrated box
    moved = Detections(det.scores, det.boxes + 7, det.points + 7)
    for method in ("linear", "points"):
        np.testing.assert_allclose(calibrate_boxes(moved, method=method), calibrate_boxes(det, method=method) + 7,
                                   atol=1e-3)


def test_68_points_not_shipped_is_clear():
    if "68pt" in shipped_models():
        pytest.skip("a 68-point model is shipped")
    with pytest.raises(WeightsError, match="68"):
        Aligner(points=68, detector="none")


def test_68_points_detected_calibrated_and_averaged(rgb):
    if "68pt" not in shipped_models():
        pytest.skip("no 68-point model is shipped")
    from tcdcn_ext.detect import CALIBRATION_68PT

    plain = Aligner(points=68, detector="auto")
    assert plain._detect is not None  # the bundled detector is always there
    assert plain.calibration is CALIBRATION_68PT
    faces = plain(rgb)
    assert len(faces) == 1 and faces[0].landmarks.shape == (68, 2)
    # Attributes from the shipped attribute network (from the 68 points' eye centres, nose tip, mouth corners).
    from tcdcn_ext.models.attributes import shipped_attribute_net_available

    want = {"pose", "gender", "glasses", "smile"} if shipped_attribute_net_available() else set()
    assert set(faces[0].attributes) == want
    x0, y0, x1, y1 = faces[0].box
    pts = faces[0].landmarks
    assert np.all((pts[:, 0] > x0 - 20) & (pts[:, 0] < x1 + 20) & (pts[:, 1] > y0 - 20) & (pts[:, 1] < y1 + 20))
    avg = Aligner(points=68, detector="auto", averaged=True)(rgb)
    assert len(avg) == 1 and np.abs(avg[0].landmarks - pts).max() < 4.0


def test_model_points_mismatch(boxed):
    with pytest.raises(ValueError, match="points"):
        Aligner(points=68, model=boxed.model, detector="none")


# ----------------------------------------------------------------------------------------------------------------
# Hostile inputs


def _expect_image_error(al: Aligner, image, named: str, color: str = "rgb", match: str | None = None) -> None:
    with pytest.raises(ImageError) as info:
        al.align(image, [BOX], color=color)
    msg = str(info.value)
    assert named in msg, msg
    if match:
        assert match in msg.lower(), msg


def test_hostile_inputs(boxed, rgb, tmp_path):
    blob = ASTRONAUT.read_bytes()
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(blob[: len(blob) // 2])
    _expect_image_error(boxed, trunc, "truncated.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    _expect_image_error(boxed, empty, "empty.jpg", match="empty")
    folder = tmp_path / "x.jpg"
    folder.mkdir()
    _expect_image_error(boxed, folder, "x.jpg", match="directory")
    _expect_image_error(boxed, tmp_path / "missing.png", "missing.png", match="no such file")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    _expect_image_error(boxed, text, "notes.png")
    png16 = tmp_path / "deep.png"
    cv2.imwrite(str(png16), rgb.astype(np.uint16) * 257)
    _expect_image_error(boxed, png16, "deep.png", match="16-bit")
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1, 3), np.uint8))
    _expect_image_error(boxed, tiny, "tiny.png", match="small")
    _expect_image_error(boxed, np.zeros((1, 1, 3), np.uint8), "numpy array", match="small")
    _expect_image_error(boxed, np.zeros((0, 5, 3), np.uint8), "numpy array", match="empty")
    _expect_image_error(boxed, rgb.astype(np.uint16), "numpy array", match="16-bit")
    _expect_image_error(boxed, rgb.astype(np.float32), "numpy array", match="uint8")
    nan = torch.rand(3, 64, 64)
    nan[0, 3, 3] = float("nan")
    _expect_image_error(boxed, nan, "tensor", match="nan")
    _expect_image_error(boxed, torch.rand(3, 64, 64) * 2, "tensor", match="[0, 1]")
    _expect_image_error(boxed, torch.zeros(64, 64, 3, dtype=torch.uint8), "tensor", match="permute")
    _expect_image_error(boxed, torch.zeros(3, 64, 3, dtype=torch.uint8), "tensor", match="ambiguous")
    _expect_image_error(boxed, torch.zeros(3, 64, 64, dtype=torch.int32), "tensor", match="dtype")
    rgba = np.zeros((64, 64, 4), np.uint8)
    _expect_image_error(boxed, rgba, "numpy array", color="rgb", match="rgba")
    _expect_image_error(boxed, rgb, "numpy array", color="rgba", match="3-channel")
    _expect_image_error(boxed, rgb, "color", color="RGB")
    _expect_image_error(boxed, np.zeros((2, 64, 64, 3), np.uint8), "numpy array", match="shape")
    _expect_image_error(boxed, [[1, 2], [3, 4]], "list", match="unsupported")
    with pytest.raises(ImageError, match=r"images\[1\]"):
        boxed.align_batch([rgb, np.zeros((64, 64, 4), np.uint8)], [[BOX], [BOX]])


# ----------------------------------------------------------------------------------------------------------------
# Thread safety


def test_shared_by_threads(boxed, detecting, rgb, face_crop):
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(48):
        dx, dy = rng.integers(-15, 16, size=2)
        img = np.ascontiguousarray(np.roll(rgb, (int(dy), int(dx)), axis=(0, 1)))
        box = [BOX[0] + dx, BOX[1] + dy, BOX[2] + dx, BOX[3] + dy]
        jobs.append((boxed, img, [box]))
    for k in range(4):
        jobs.append((detecting, np.ascontiguousarray(np.roll(face_crop, 3 * k, axis=1)), None))

    def run(job):
        al, img, boxes = job
        return al(img) if boxes is None else al.align(img, boxes)

    expected = [run(j) for j in jobs]
    results: list = [None] * len(jobs)
    errors: list = []

    def worker(t: int) -> None:
        try:
            for i in range(t, len(jobs), 8):
                results[i] = run(jobs[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, exp in zip(results, expected):
        assert len(got) == len(exp)
        for g, e in zip(got, exp):
            assert g.box == e.box
            np.testing.assert_allclose(g.landmarks, e.landmarks, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Drawing and CLI


def test_draw_faces(boxed, rgb):
    from tcdcn_ext.draw import draw_faces, face_tags

    faces = boxed.align(rgb, [BOX])
    out = draw_faces(rgb, faces, color="rgb")
    assert out.shape == rgb.shape and out.dtype == np.uint8 and not np.array_equal(out, rgb)
    assert len(face_tags(faces[0])) == 4
    assert np.array_equal(draw_faces(rgb, [], color="rgb"), rgb)


def test_cli_demo(weights, tmp_path, monkeypatch, capsys):
    from tcdcn_ext.cli import align_main as main

    monkeypatch.chdir(tmp_path)
    assert main(["--demo", "--model", weights]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rec = json.loads(out[-1])
    assert len(rec["faces"]) == 1 and len(rec["faces"][0]["landmarks"]) == 5
    png = tmp_path / "tcdcn_demo.png"
    assert png.is_file() and Path(rec["drawn"]) == png.resolve()
    assert cv2.imread(str(png)).shape == (512, 512, 3)


def test_cli_folder_json_lines_and_draw(weights, face_crop, tmp_path):
    from tcdcn_ext.cli import align_main as main

    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), face_crop[:, :, ::-1])
    cv2.imwrite(str(src / "b.png"), np.zeros((48, 48, 3), np.uint8))
    (src / "c.jpg").write_bytes(b"\xff\xd8 broken")
    (src / "readme.txt").write_text("ignored")
    out, draw = tmp_path / "faces.jsonl", tmp_path / "drawn"
    code = main([str(src), "--model", weights, "--json", str(out), "--draw", str(draw), "--quiet"])
    assert code == 1  # c.jpg fails, the others are processed
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    by_file = {Path(r["file"]).name: r for r in lines}
    assert sorted(by_file) == ["a.jpg", "b.png", "c.jpg"]
    assert len(by_file["a.jpg"]["faces"]) == 1 and by_file["b.png"]["faces"] == []
    assert "c.jpg" in by_file["c.jpg"]["error"]
    assert (draw / "a.jpg").is_file() and (draw / "b.png").is_file()


def test_cli_video_tracking(weights, face_crop, tmp_path):
    from tcdcn_ext.cli import align_main as main

    video = tmp_path / "clip.avi"
    h, w = face_crop.shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG AVI")
    for k in range(8):
        writer.write(np.ascontiguousarray(np.roll(face_crop, k, axis=1)[:, :, ::-1]))
    writer.release()
    out = tmp_path / "frames.jsonl"
    code = main([str(video), "--model", weights, "--json", str(out), "--draw", str(tmp_path / "o.avi"), "--quiet"])
    assert code == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(8))
    assert all(len(r["faces"]) == 1 for r in lines)
    xs = [r["faces"][0]["landmarks"][0][0] for r in lines]
    assert xs[-1] > xs[0]  # the face moves right by 7 px; the track follows
    assert (tmp_path / "o.avi").is_file()


def test_cli_usage_errors(weights, capsys):
    from tcdcn_ext.cli import align_main as main

    assert main([]) == 2
    assert main(["x.jpg", "y.jpg", "--draw", "out.mp4", "--model", weights, "--detector", "yunet"]) in (2,)
