"""Aligner overhead over the raw model forward (detection excluded).

    pytest benchmarks/bench_aligner.py --benchmark-json=benchmarks/results/bench_aligner.json

Rows, one thread, the astronaut photo (512x512) with a fixed face box:

* ``raw_forward[1]`` / ``aligner_align[1]``: ``model(x)`` on an already preprocessed Tensor[1, 1, 40, 40] vs
  ``Aligner.align(image, boxes)`` (image validation, grey conversion of the face region, resampling,
  standardisation, forward, softmax, typed results). The issue's bar: ratio <= 1.5.
* ``raw_forward[256]`` / ``aligner_align_batch[256]``: 256 faces (64 images x 4 boxes) in one batched forward vs
  ``Aligner.align_batch``. The bar: the Aligner keeps >= 80 % of the raw batched speed (ratio <= 1.25).

The Aligner rows store ``ratio_vs_raw`` (their mean time over the raw row's, which runs first) in ``extra_info``.
Timings depend on the machine's load; this one shares 2 cores with training runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tcdcn_ext.aligner import Aligner
from tcdcn_ext.model import shipped_models

ASTRONAUT = Path(__file__).resolve().parents[1] / "tcdcn_ext" / "assets" / "astronaut.jpg"
BOX = (177.0, 77.0, 265.0, 165.0)
_RAW: dict[int, float] = {}


def _weights() -> str:
    if "5pt" in shipped_models():
        return "5pt"
    env = os.environ.get("TCDCN_TEST_WEIGHTS")
    if env and Path(env).is_file():
        return env
    pytest.skip("no shipped 5-point model (set TCDCN_TEST_WEIGHTS)")


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    aligner = Aligner(model=_weights(), detector="none")
    rgb = cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for _ in range(64):  # 64 images x 4 faces = 256 faces
        dx, dy = rng.integers(-20, 21, size=2)
        images.append(np.ascontiguousarray(np.roll(rgb, (int(dy), int(dx)), axis=(0, 1))))
        b = np.array(BOX) + [dx, dy, dx, dy]
        boxes.append([b + [s, s, -s, -s] for s in (0.0, 2.0, -2.0, 4.0)])
    yield aligner, rgb, images, boxes
    torch.set_num_threads(threads)


def _raw_input(aligner: Aligner, images, boxes) -> torch.Tensor:
    flat_imgs = [img for img, bs in zip(images, boxes) for _ in bs]
    flat_boxes = np.concatenate([np.asarray(bs) for bs in boxes])
    return aligner.model.preprocess(flat_imgs, flat_boxes)


@pytest.mark.parametrize("batch", [1, 256])
def test_raw_forward(benchmark, setup, batch):
    aligner, rgb, images, boxes = setup
    x = _raw_input(aligner, [rgb], [[BOX]]) if batch == 1 else _raw_input(aligner, images, boxes)
    assert len(x) == batch
    model = aligner.model

    def run():
        with torch.inference_mode():
            return model(x)

    out = benchmark(run)
    assert out["landmarks"].shape == (batch, 5, 2)
    _RAW[batch] = benchmark.stats.stats.mean
    benchmark.extra_info["faces"] = batch


def test_aligner_align(benchmark, setup):
    aligner, rgb, _, _ = setup
    faces = benchmark(aligner.align, rgb, [BOX])
    # same landmarks as the raw path, up to the face-region shrink (the box is 88 px > 2 x 40)
    with torch.inference_mode():
        uv = aligner.model(_raw_input(aligner, [rgb], [[BOX]]))["landmarks"].numpy()
    from tcdcn_ext.data import from_box_frame

    np.testing.assert_allclose(faces[0].landmarks, from_box_frame(uv, np.array([BOX]))[0], atol=1.0)
    benchmark.extra_info["faces"] = 1
    if 1 in _RAW:
        benchmark.extra_info["ratio_vs_raw"] = benchmark.stats.stats.mean / _RAW[1]


def test_aligner_align_batch(benchmark, setup):
    aligner, _, images, boxes = setup
    out = benchmark(aligner.align_batch, images, boxes)
    assert sum(len(f) for f in out) == 256
    benchmark.extra_info["faces"] = 256
    if 256 in _RAW:
        ratio = benchmark.stats.stats.mean / _RAW[256]
        benchmark.extra_info["ratio_vs_raw"] = ratio
        benchmark.extra_info["fraction_of_raw_speed"] = 1.0 / ratio
