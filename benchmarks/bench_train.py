"""Training throughput (issue 6): one epoch of the shipped 5-point recipe over the 10,000 MTFL training faces
(forward + backward + Adam update of every batch of 64, augmentation, the validation pass), all threads.

    pytest benchmarks/bench_train.py --benchmark-json=bench_train.json

The row's time is the epoch's own clock from the training log (``seconds``: the loop over the training batches
and the validation pass, not loading the images); extra_info has faces_per_s. The bar: <= 10 s per epoch.
Skipped when ``../shared/data/mtfl/train`` (or ``$TCDCN_DATA/mtfl/train``) is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tcdcn_ext.train import TrainConfig, train


def _train_dir() -> Path:
    env = os.environ.get("TCDCN_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return root / "mtfl" / "train"


def test_one_epoch(benchmark, tmp_path):
    if not (_train_dir() / "annotations.csv").exists():
        pytest.skip(f"{_train_dir()} is not available")
    threads = torch.get_num_threads()
    epochs: list[float] = []

    def run():
        out = tmp_path / f"run{len(epochs)}"
        cfg = TrainConfig(train_dir=str(_train_dir()), out_dir=str(out), epochs=1, landmark_loss="l1", seed=0,
                          threads=threads, progress=False)
        train(cfg)
        rec = json.loads((out / "log.jsonl").read_text().splitlines()[0])
        epochs.append(rec["seconds"])

    benchmark.group = "training: one epoch over mtfl/train (9,500 faces + 500 validation)"
    benchmark.pedantic(run, rounds=2, warmup_rounds=0, iterations=1)
    best = min(epochs)
    benchmark.extra_info.update(epoch_seconds=epochs, best_epoch_seconds=best, faces_per_s=10_000 / best,
                                threads=threads, bar_seconds=10.0)
