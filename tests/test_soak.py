"""Concurrency and endurance of the Aligner: one instance shared by 8 threads gives exactly the sequential results;
100,000 faces through ``align_batch`` keep the resident memory flat (``slow``)."""

from __future__ import annotations

import threading
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
import pytest

from tcdcn_ext.aligner import Aligner
from tcdcn_ext.model import shipped_models

ASTRONAUT = Path(str(files("tcdcn_ext") / "assets" / "astronaut.jpg"))
BOX = np.array([177.0, 77.0, 265.0, 165.0])  # the astronaut's face (model box convention)



@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    if "5pt" not in shipped_models():
        pytest.skip("the shipped 5-point model is missing")
    return cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)


def synthetic_faces(rgb: np.ndarray, count: int, seed: int, size: int = 112) -> list[tuple[np.ndarray, list]]:
    """``count`` small images of the astronaut's face, each randomly scaled (0.7-1.3), shifted (+-12 px) and
    mirrored, with the face box mapped through the same transform."""
    rng = np.random.default_rng(seed)
    cx, cy = (BOX[0] + BOX[2]) / 2, (BOX[1] + BOX[3]) / 2
    out = []
    for _ in range(count):
        s = rng.uniform(0.7, 1.3)
        dx, dy = rng.uniform(-12, 12, size=2)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        # x' = flip * s * (x - cx) + size/2 + dx, y' = s * (y - cy) + size/2 + dy
        m = np.array([[flip * s, 0, size / 2 + dx - flip * s * cx], [0, s, size / 2 + dy - s * cy]])
        img = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        x0, x1 = sorted(flip * s * (np.array([BOX[0], BOX[2]]) - cx) + size / 2 + dx)
        y0, y1 = s * (np.array([BOX[1], BOX[3]]) - cy) + size / 2 + dy
        out.append((img, [(float(x0), float(y0), float(x1), float(y1))]))
    return out


@pytest.mark.parametrize("count, detections", [(120, 8), pytest.param(1000, 24, marks=pytest.mark.slow)])
def test_one_aligner_shared_by_8_threads_matches_sequential(rgb, count, detections):
    """``count`` boxed faces and ``detections`` detected ones, one Aligner, 8 threads: every Face equal (exactly)
    to the sequential call's. The 1,000-face run takes ~55 s on 2 loaded cores, hence ``slow``."""
    aligner = Aligner(detector="yunet")
    jobs = [(img, boxes) for img, boxes in synthetic_faces(rgb, count, seed=0)]
    big = [(cv2.resize(img, (160, 160)), None) for img, _ in synthetic_faces(rgb, detections, seed=1)]
    jobs += big  # no boxes: detection, then refinement

    def run(job):
        img, boxes = job
        return aligner(img) if boxes is None else aligner.align(img, boxes)

    expected = [run(j) for j in jobs]
    assert sum(len(e) for e in expected[count:]) >= detections // 2, "the detector should find most faces"
    results: list = [None] * len(jobs)
    errors: list = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(t, len(jobs), 8):
                results[i] = run(jobs[i])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors
    mismatches = [i for i, (got, exp) in enumerate(zip(results, expected)) if got != exp]
    assert not mismatches, f"{len(mismatches)} of {len(jobs)} results differ, e.g. #{mismatches[:5]}"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.slow
def test_soak_100k_faces_flat_memory(rgb):
    """100 batches of 1,000 boxed faces through align_batch; RSS sampled every 5 batches. After 10 warm-up
    batches the RSS must not drift by more than 50 MB."""
    aligner = Aligner(detector="none")
    pool = synthetic_faces(rgb, 1000, seed=2)
    images = [img for img, _ in pool]
    rng = np.random.default_rng(3)
    series = []
    for b in range(100):
        jitter = rng.uniform(-2, 2, size=(len(pool), 4))  # new boxes every batch: no result can be reused
        boxes = [[tuple(np.asarray(bx[0]) + j)] for (_, bx), j in zip(pool, jitter)]
        out = aligner.align_batch(images, boxes)
        assert len(out) == 1000 and all(len(f) == 1 for f in out)
        del out
        if b % 5 == 4:
            series.append((b + 1, round(_rss_mb(), 1)))
    print("RSS (batch, MB):", series)
    warm = [mb for batch, mb in series if batch >= 10]
    drift = max(warm) - warm[0]
    print(f"RSS drift after warm-up: {drift:.1f} MB (from {warm[0]:.1f} MB, max {max(warm):.1f} MB)")
    assert drift < 50, series
