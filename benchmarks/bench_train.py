"""Training throughput (issues 6 and 17), all threads (2 here).

* ``test_one_epoch``: one epoch of the shipped 5-point recipe over the 10,000 MTFL training faces (forward +
  backward + Adam update of every batch of 64, augmentation, the validation pass). The row's time is the epoch's
  own clock from the training log (``seconds``: the loop over the training batches and the validation pass, not
  loading the images); extra_info has faces_per_s. Bars (issue 17): need <= 3 s, goal <= 1.5 s. Skipped when
  ``../shared/data/mtfl/train`` (or ``$TCDCN_DATA/mtfl/train``) is absent.
* ``test_train_step[ours|reference]``: one training step on 64 random faces (forward, the recipe's loss, backward,
  gradient clipping, fused Adam), our ops against the same network and weights through the pure-PyTorch reference
  ops (``F.unfold`` + ``einsum``, ``tanh().abs()``, ``max_pool2d``) in the same run; the gradients of the two are
  compared before timing. Needs no data.

    pytest benchmarks/bench_train.py --benchmark-json=bench_train.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bench_model import reference_features

from tcdcn_ext.models import TCDCN
from tcdcn_ext.train import TrainConfig, train
from tcdcn_ext.training.train import clip_gradients


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
                                threads=threads, need_seconds=3.0, goal_seconds=1.5)


def _reference_outputs(model: TCDCN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The training forward through the reference ops only (same parameters, so autograd reaches them)."""
    f = reference_features(model, x)
    return {"landmarks": model.landmark_head(f).view(-1, model.num_points, 2),
            **{t: head(f) for t, head in model.aux_heads.items()}}


@pytest.mark.parametrize("impl", ["ours", "reference"])
def test_train_step(benchmark, impl):
    torch.manual_seed(0)
    model = TCDCN().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
    x, uv = torch.randn(64, 1, 40, 40), torch.rand(64, 5, 2)
    labels = {t: torch.randint(0, head.out_features, (64,)) for t, head in model.aux_heads.items()}
    forward = model if impl == "ours" else (lambda inp: _reference_outputs(model, inp))

    def loss_of(out):
        return (out["landmarks"] - uv).abs().sum(-1).mean() + sum(F.cross_entropy(out[t], y) for t, y in labels.items())

    if impl == "ours":  # same gradients as the reference before anything is timed
        g_ours = torch.autograd.grad(loss_of(model(x)), list(model.parameters()))
        g_ref = torch.autograd.grad(loss_of(_reference_outputs(model, x)), list(model.parameters()))
        for a, b in zip(g_ours, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)

    def step():
        loss = loss_of(forward(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), 10.0)
        opt.step()

    benchmark.group = "training: one step, 64 faces, all threads (ours vs reference ops)"
    benchmark.pedantic(step, rounds=30 if impl == "ours" else 5, warmup_rounds=3, iterations=1)
    benchmark.extra_info.update(threads=torch.get_num_threads(), faces=64)
