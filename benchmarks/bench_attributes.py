"""What the attribute network costs, one thread, the astronaut photo with a fixed face box.

    pytest benchmarks/bench_attributes.py --benchmark-json=benchmarks/results/bench_attributes.json

Rows (each stores ``ratio_vs_landmarks_only`` against the first row of its batch size, run first):

* ``landmarks_only``: ``Aligner.align(image, boxes)`` with no attribute read (the network never runs: it waits for
  the first read of ``Face.attributes``);
* ``with_attributes``: the same call and every face's ``attributes`` read (one network pass over the call's faces:
  the MTFL box of the landmarks, a 48x48 crop, the face and its mirror image);
* ``heads``: ``Aligner(attributes="heads")`` with the attributes read (the TCDCN heads, computed in the landmark
  pass).

Batch sizes: 1 face, and 64 faces (16 images x 4 boxes) in one ``align_batch``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tcdcn_ext import Aligner
from tcdcn_ext.models import shipped_models
from tcdcn_ext.models.attributes import shipped_attribute_net_available

ASTRONAUT = Path(__file__).resolve().parents[1] / "tcdcn_ext" / "assets" / "astronaut.jpg"
BOX = (177.0, 77.0, 265.0, 165.0)
_BASE: dict[int, float] = {}


@pytest.fixture(scope="module")
def setup():
    if "5pt" not in shipped_models() or not shipped_attribute_net_available():
        pytest.skip("needs the shipped 5-point model and attribute network")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rgb = cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(0)
    images, boxes = [], []
    for _ in range(16):
        dx, dy = rng.integers(-20, 21, size=2)
        images.append(np.ascontiguousarray(np.roll(rgb, (int(dy), int(dx)), axis=(0, 1))))
        b = np.array(BOX) + [dx, dy, dx, dy]
        boxes.append([b + [s, s, -s, -s] for s in (0.0, 2.0, -2.0, 4.0)])
    aligners = {"network": Aligner(detector="none"), "heads": Aligner(detector="none", attributes="heads")}
    yield aligners, rgb, images, boxes
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["landmarks_only", "with_attributes", "heads"])
@pytest.mark.parametrize("faces", [1, 64])
def test_attribute_cost(benchmark, setup, faces, mode):
    aligners, rgb, images, boxes = setup
    aligner = aligners["heads" if mode == "heads" else "network"]
    read = mode != "landmarks_only"

    def run():
        out = aligner.align_batch([rgb], [[BOX]]) if faces == 1 else aligner.align_batch(images, boxes)
        if read:
            for faces_of_image in out:
                for f in faces_of_image:
                    f.attributes
        return out

    got = run()
    assert sum(len(x) for x in got) == faces
    if read:
        assert set(got[0][0].attributes) == {"pose", "gender", "glasses", "smile"}
    benchmark.group = f"attributes, {faces} face(s), 1 thread"
    benchmark.extra_info.update(faces=faces, mode=mode)
    benchmark.pedantic(run, rounds=100 if faces == 1 else 20, warmup_rounds=5, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: a smoke run
        return
    ms = 1e3 * benchmark.stats.stats.median
    benchmark.extra_info["ms"] = ms
    if mode == "landmarks_only":
        _BASE[faces] = ms
    elif faces in _BASE:
        benchmark.extra_info["ratio_vs_landmarks_only"] = ms / _BASE[faces]
