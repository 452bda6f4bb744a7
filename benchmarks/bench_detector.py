"""Whole photos end to end: detection + landmarks, against OpenCV's YuNet as the yardstick, one thread.

    pytest benchmarks/bench_detector.py --benchmark-json=benchmarks/results/bench_detector.json
    python benchmarks/summarize.py benchmarks/results/bench_detector.json

Frames: the bundled portrait (512x512) pasted into a black 640x480 or 1280x720 frame (one face), or ten copies of
its face region (about 100 px each) on the frame (ten faces). Rows:

* ``opencv_yunet``: ``cv2.FaceDetectorYN`` (OpenCV's DNN engine) on the same ONNX file and frame, at full
  resolution: the yardstick, measured first in the same run.
* ``detector``: the bundled :class:`tcdcn_ext.detect.YuNetDetector` alone (default working resolution: resize,
  the network on the library's kernels, decoding, NMS).
* ``aligner68``: the whole ``Aligner(points=68)(frame)`` call (detection, calibration, landmarks, results);
  ``aligner5`` the same with the 5-point model.
* ``tracking68``: ``FaceTracker(Aligner(points=68)).update(frame)`` between detections (boxes placed from the
  previous frame's landmarks, no detector call).

Each non-yardstick row stores ``ratio_vs_opencv`` (its mean over the OpenCV row's of the same frame) in
``extra_info``. Benchmark on an idle machine: two busy processes on two cores distort each other's timings.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tcdcn_ext import Aligner
from tcdcn_ext.detect import YuNetDetector
from tcdcn_ext.tracking import FaceTracker

ROOT = Path(__file__).resolve().parents[1]
ONNX = ROOT.parent / "shared" / "models" / "yunet" / "face_detection_yunet_2026may.onnx"
FRAMES = {"640x480": (480, 640), "1280x720": (720, 1280)}
_OPENCV: dict[str, float] = {}


def make_frame(name: str, faces: int) -> np.ndarray:
    h, w = FRAMES[name]
    face = cv2.cvtColor(cv2.imread(str(ROOT / "tcdcn_ext" / "assets" / "astronaut.jpg")), cv2.COLOR_BGR2RGB)
    frame = np.zeros((h, w, 3), np.uint8)
    if faces == 1:
        fh, fw = face.shape[:2]
        y0, x0 = (h - fh) // 2, (w - fw) // 2
        ys, xs = max(0, -y0), max(0, -x0)
        frame[max(0, y0):max(0, y0) + min(fh, h), max(0, x0):max(0, x0) + min(fw, w)] = \
            face[ys:ys + min(fh, h), xs:xs + min(fw, w)]
        return frame
    head = cv2.resize(face[40:240, 130:330], (110, 110), interpolation=cv2.INTER_AREA)  # the face and some hair
    cols = 5
    for k in range(faces):
        y, x = 40 + (k // cols) * 150, 20 + (k % cols) * (w - 40) // cols
        frame[y:y + 110, x:x + 110] = head
    return frame


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(threads)


CASES = [("640x480", 1), ("1280x720", 1), ("640x480", 10), ("1280x720", 10)]


def _ids(case):
    return f"{case[0]}-{case[1]}face" + ("s" if case[1] > 1 else "")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_opencv_yunet(benchmark, case):
    if not ONNX.is_file():
        pytest.skip(f"{ONNX} is not present")
    frame = cv2.cvtColor(make_frame(*case), cv2.COLOR_RGB2BGR)
    h, w = frame.shape[:2]
    det = cv2.FaceDetectorYN.create(str(ONNX), "", (w, h), 0.5, 0.3, 5000)
    _, faces = benchmark(det.detect, frame)
    assert faces is not None and len(faces) >= case[1]
    if _mean(benchmark):
        _OPENCV[_ids(case)] = _mean(benchmark)


def _mean(benchmark) -> float | None:
    """The row's mean time, or None when timing is off (--benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.mean if stats is not None else None


def _ratio(benchmark, case):
    ref, mine = _OPENCV.get(_ids(case)), _mean(benchmark)
    if ref and mine:
        benchmark.extra_info["ratio_vs_opencv"] = mine / ref


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_detector(benchmark, case):
    frame = make_frame(*case)
    det = YuNetDetector()
    out = benchmark(det, frame)
    assert len(out) >= case[1]
    _ratio(benchmark, case)


@pytest.mark.parametrize("points", [68, 5])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_aligner(benchmark, case, points):
    frame = make_frame(*case)
    aligner = Aligner(points=points)
    faces = benchmark(aligner, frame)
    assert len(faces) >= case[1]
    benchmark.extra_info["points"] = points
    _ratio(benchmark, case)


@pytest.mark.parametrize("case", [("640x480", 1), ("1280x720", 1)], ids=_ids)
def test_tracking68(benchmark, case):
    frame = make_frame(*case)
    tracker = FaceTracker(Aligner(points=68), redetect_every=10**9, smooth=True)
    tracker.update(frame)  # the first frame detects; every timed one tracks
    faces = benchmark(tracker.update, frame)
    assert len(faces) == 1 and tracker.detections == 1
    _ratio(benchmark, case)
