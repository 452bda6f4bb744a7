"""The bundled YuNet detector: OpenCV's ``cv2.FaceDetectorYN`` on the same ONNX file is the oracle (same boxes,
points and scores on real photos), the working-resolution mapping, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tcdcn_ext.detect import Detections, YuNetDetector, resolve_detector
from tcdcn_ext.inference.boxes import box_iou
from tcdcn_ext.model import WeightsError
from tcdcn_ext.yunet import load_yunet, nms

from conftest import data_root

ONNX = data_root().parent / "models" / "yunet" / "face_detection_yunet_2026may.onnx"


def _scenes(folder: str, count: int | None) -> list[Path]:
    d = data_root() / "scenes" / folder / "images"
    if not d.is_dir():
        pytest.skip(f"{d} is not present (the staged scenes data)")
    files = sorted(d.glob("*.jpg"))
    if count is None:
        return files
    step = max(1, len(files) // count)  # spread over the folder (HELEN and LFPW, AFW's crowded photos)
    return files[::step][:count]


def _oracle_compare(files: list[Path], max_side: int | None) -> tuple[int, float, float, float]:
    """Our detector vs cv2.FaceDetectorYN on the same (possibly downscaled) pixels: faces both find, their worst
    IoU, worst point distance (px) and worst score difference; asserts neither finds a face the other misses,
    except at the score threshold's edge."""
    cv2 = pytest.importorskip("cv2")
    if not ONNX.is_file():
        pytest.skip(f"{ONNX} is not present")
    sizing = YuNetDetector(max_side=max_side)
    ours = YuNetDetector(max_side=None)  # on the copy sized below, which OpenCV sees too
    theirs = None
    both, worst_iou, worst_pt, worst_score = 0, 1.0, 0.0, 0.0
    for f in files:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        scale = sizing.working_scale(h, w)
        if scale < 1:  # OpenCV sees exactly the copy our network sees
            rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
            h, w = rgb.shape[:2]
        if theirs is None:
            theirs = cv2.FaceDetectorYN.create(str(ONNX), "", (w, h), 0.5, 0.3, 5000)
        theirs.setInputSize((w, h))
        _, faces = theirs.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        faces = np.zeros((0, 15), np.float32) if faces is None else faces
        det = ours(rgb, 0.5)
        cb = np.c_[faces[:, :2], faces[:, :2] + faces[:, 2:4]]
        iou = box_iou(cb, det.boxes) if len(cb) and len(det) else np.zeros((len(cb), len(det)))
        for i in range(len(cb)):
            j = int(np.argmax(iou[i])) if len(det) else -1
            if j < 0 or iou[i, j] < 0.5:
                assert abs(faces[i, 14] - 0.5) < 0.02, f"{f.name}: OpenCV found a face we missed: {faces[i]}"
                continue
            both += 1
            worst_iou = min(worst_iou, float(iou[i, j]))
            worst_pt = max(worst_pt, float(np.abs(faces[i, 4:14].reshape(5, 2) - det.points[j]).max()))
            worst_score = max(worst_score, abs(float(faces[i, 14]) - float(det.scores[j])))
        for j in range(len(det)):
            if not len(cb) or iou[:, j].max() < 0.5:
                assert abs(det.scores[j] - 0.5) < 0.02, f"{f.name}: we found a face OpenCV did not: {det.boxes[j]}"
    return both, worst_iou, worst_pt, worst_score


@pytest.mark.data
@pytest.mark.parametrize("folder,count,max_side", [("test", 40, None), ("afw", 25, None), ("test", 40, 320),
                                                   ("afw", 25, 480)])
def test_matches_opencv_on_scenes_photos(folder, count, max_side):
    both, worst_iou, worst_pt, worst_score = _oracle_compare(_scenes(folder, count), max_side)
    assert both >= count * 0.9
    assert worst_iou >= 0.95 and worst_pt <= 1.0 and worst_score <= 1e-3, (worst_iou, worst_pt, worst_score)


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("folder", ["test", "afw"])
def test_matches_opencv_on_every_scenes_photo(folder):
    files = _scenes(folder, None)
    both, worst_iou, worst_pt, worst_score = _oracle_compare(files, None)
    assert both >= len(files) * 0.9
    assert worst_iou >= 0.95 and worst_pt <= 1.0 and worst_score <= 1e-3, (worst_iou, worst_pt, worst_score)


def _portrait(size=(480, 640)) -> np.ndarray:
    import cv2

    face = cv2.cvtColor(cv2.imread(str(Path(__file__).resolve().parents[1] / "tcdcn_ext" / "assets" /
                                       "astronaut.jpg")), cv2.COLOR_BGR2RGB)
    frame = np.zeros((*size, 3), np.uint8)
    h, w = face.shape[:2]
    y0, x0 = (size[0] - h) // 2, (size[1] - w) // 2
    frame[max(0, y0):max(0, y0) + min(h, size[0]), max(0, x0):max(0, x0) + min(w, size[1])] = \
        face[max(0, -y0):max(0, -y0) + min(h, size[0]), max(0, -x0):max(0, -x0) + min(w, size[1])]
    return frame


def test_working_resolution_maps_back_to_full_resolution():
    frame = _portrait()
    full = YuNetDetector(max_side=None)(frame)
    small = YuNetDetector(max_side=320)(frame)
    assert len(full) == len(small) == 1
    assert box_iou(full.boxes, small.boxes)[0, 0] > 0.85
    eye_dist = np.linalg.norm(full.points[0, 1] - full.points[0, 0])
    assert np.abs(full.points - small.points).max() < 0.1 * eye_dist


def test_min_face_size_raises_resolution_and_drops_small_faces():
    det = YuNetDetector(max_side=160, min_face_size=40)
    assert det.working_scale(480, 640) == pytest.approx(12 / 40)
    assert YuNetDetector(max_side=160).working_scale(480, 640) == pytest.approx(0.25)
    big = YuNetDetector(max_side=None, min_face_size=10_000)(_portrait())
    assert len(big) == 0


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 3), (31, 33, 3), (480, 640, 3), (5, 4000, 3)])
def test_no_face_gives_empty_detections(shape):
    det = YuNetDetector()(np.zeros(shape, np.uint8))
    assert len(det) == 0 and det.boxes.shape == (0, 4) and det.points.shape == (0, 5, 2)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.9])
    assert nms(scores, boxes, 0.3).tolist() == [1, 2]
    assert nms(np.zeros(0), np.zeros((0, 4)), 0.3).tolist() == []


def test_detector_names_and_bad_arguments():
    assert isinstance(resolve_detector("auto"), YuNetDetector)
    assert isinstance(resolve_detector("yuface"), YuNetDetector)  # the earlier releases' name
    assert resolve_detector("none") is None
    with pytest.raises(ValueError, match="detector must be"):
        resolve_detector("haar")
    with pytest.raises(ValueError, match="max_side"):
        YuNetDetector(max_side=8)
    with pytest.raises(ValueError, match="min_face_size"):
        YuNetDetector(min_face_size=float("nan"))


def test_weights_are_checked_before_loading(tmp_path):
    from tcdcn_ext.yunet import WEIGHTS

    bad = tmp_path / "yunet.pt"
    bad.write_bytes(WEIGHTS.read_bytes()[:-10])
    (tmp_path / "yunet.json").write_text(WEIGHTS.with_suffix(".json").read_text())
    with pytest.raises(WeightsError, match="sha256"):
        load_yunet(bad)
    with pytest.raises(WeightsError, match="missing"):
        load_yunet(tmp_path / "absent.pt")
    record = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert record["source_sha256"] == "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
    assert (WEIGHTS.parent / "YUNET_LICENSE").is_file()


def test_detections_are_float32_and_sorted():
    det = YuNetDetector()(_portrait())
    assert isinstance(det, Detections)
    assert det.boxes.dtype == det.points.dtype == det.scores.dtype == np.float32
    assert np.all(np.diff(det.scores) <= 0)
    with torch.inference_mode():  # also inside an inference_mode block (the Aligner's)
        assert len(YuNetDetector()(_portrait())) == 1


def _rotated(frame: np.ndarray, points: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h, w = frame.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(w * c + h * s)), int(np.ceil(w * s + h * c))
    m[:, 2] += [(nw - w) / 2, (nh - h) / 2]
    return cv2.warpAffine(frame, m, (nw, nh)), points @ m[:, :2].T + m[:, 2]


@pytest.mark.parametrize("degrees", [60, -90])
def test_turned_faces_are_read_upright(degrees):
    """YuNet's points do not follow a face's roll; the Aligner's orientation search (search_rotations=True) finds the
    upright copy, and the landmarks on the turned photo match the upright photo's, turned (within 4 % of the
    eye-corner distance), where reading the face as detected misses by far more."""
    from tcdcn_ext import Aligner

    frame = _portrait()
    upright = np.asarray(Aligner(points=68)(frame)[0].landmarks, np.float64)
    img, truth = _rotated(frame, upright, degrees)
    scale = np.linalg.norm(truth[36] - truth[45])
    errors = {}
    for turn in (True, False):
        faces = Aligner(points=68, derotate=turn, search_rotations=turn)(img)
        errors[turn] = min(np.linalg.norm(np.asarray(f.landmarks) - truth, axis=1).mean() / scale for f in faces)
    assert errors[True] < 0.04 < 0.15 < errors[False], errors


def test_tilted_faces_are_levelled_by_default():
    """Faces turned by 30-40 degrees: the default Aligner reads them again from a levelled copy."""
    from tcdcn_ext import Aligner

    frame = _portrait()
    upright = np.asarray(Aligner(points=68)(frame)[0].landmarks, np.float64)
    for degrees in (35, -35):
        img, truth = _rotated(frame, upright, degrees)
        scale = np.linalg.norm(truth[36] - truth[45])
        errors = {d: np.linalg.norm(np.asarray(Aligner(points=68, derotate=d)(img)[0].landmarks) - truth,
                                    axis=1).mean() / scale for d in (True, False)}
        assert errors[True] < 0.03 and errors[True] < errors[False], errors


def test_tracker_follows_known_motion_without_lag():
    """On a clip with known motion the tracker (no detector between re-detections) is as close to the truth as
    detecting every frame, and the tuned smoothing does not trail the face as the earlier defaults did."""
    from tcdcn_ext import Aligner
    from tcdcn_ext.tracking import measure_tracking, synthetic_moving_video

    aligner = Aligner(points=5)
    frame = _portrait()
    reference = np.asarray(aligner(frame)[0].landmarks, np.float64)
    frames, shifts = synthetic_moving_video(frame, frames=30, seed=0)
    detect = measure_tracking(aligner, frames, shifts, reference, "detect")
    tuned = measure_tracking(aligner, frames, shifts, reference, "smooth")
    old = measure_tracking(aligner, frames, shifts, reference, "smooth", min_cutoff=1.0, beta=10.0)
    assert tuned["frames_with_face"] == 30 and tuned["detections"] == 1
    assert tuned["error_px"] < 1.5 * detect["error_px"] + 0.1
    assert tuned["lag_error_px"] < 0.5 * old["lag_error_px"]
