"""Data-parallel training on 2 CPU processes (gloo), as ``torchrun`` runs it.

* The gradients DDP all-reduces from the ranks' shares of a batch equal one process's gradients of the whole batch
  (also for an uneven share and with an early-stopped task's head left out of the loss).
* Task-wise early stopping fed with the all-reduced losses stops a task at the same step on every rank, the step
  one process would stop it at on the pooled losses, where each rank's own losses would disagree.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tcdcn_ext.distributed import World, all_reduce_sums, init_from_env, local_share
from tcdcn_ext.early_stopping import TaskwiseEarlyStopping, check_ranks_agree
from tcdcn_ext.model import TCDCN, TCDCNConfig
from tcdcn_ext.train import TrainConfig, _data_parallel, _objective

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform != "linux",
                                reason="needs torch.distributed (gloo) on Linux")

WORLD = 2
SMALL = {"channels": [4, 8, 8, 8], "feature_dim": 16}
TASKS = ("pose", "gender", "glasses", "smile")

# Per-step mean losses of one task on each rank (same face count per rank): rank 0's own curve levels off with a
# validation gap (Eq. 5 stops it at step 3), rank 1's keeps falling with no gap (never stops); pooled, the task
# stops at step 5.
RANK_TRAIN = [[1.0, 0.8, 0.75, 0.74, 0.74, 0.74], [1.0, 0.8, 0.6, 0.4, 0.2, 0.2]]
RANK_VAL = [[1.0] * 6, [0.1] * 6]


def _batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 40, 40, generator=g)
    uv = torch.rand(n, 5, 2, generator=g)
    attrs = {t: torch.randint(0, c, (n,), generator=g) for t, c in {"pose": 5, "gender": 2, "glasses": 2,
                                                                    "smile": 2}.items()}
    return x, uv, attrs


def _grads(n: int, stopped: tuple[str, ...], world: World) -> dict[str, torch.Tensor | None]:
    """Gradients of one training step on a batch of ``n`` faces: data-parallel on ``world``'s share, or of the whole
    batch in one process (``world.size == 1``)."""
    torch.manual_seed(0)
    model = TCDCN(TCDCNConfig(**SMALL)).train()
    cfg = TrainConfig(model=SMALL)
    stopper = TaskwiseEarlyStopping(TASKS, 2, 0.5, {t: 1.0 for t in TASKS})
    stopper.stopped_at.update({t: 1 for t in stopped})
    x, uv, attrs = _batch(n)
    rows, scale = local_share(np.arange(n), world)
    net = _data_parallel(model, stopper) if world.distributed else model
    out = net(x[rows])
    total, _ = _objective(model, out, uv[rows], {k: v[rows] for k, v in attrs.items()}, cfg, stopper,
                          {t: 1.0 for t in TASKS}, None)
    (total * scale).backward()
    return {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}


def _compare(a: dict, b: dict) -> dict:
    none_differs = [k for k in a if (a[k] is None) != (b[k] is None)]
    diffs = {k: float((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)) for k in a
             if a[k] is not None and b[k] is not None}
    return {"none_differs": none_differs, "max_rel": max(diffs.values()),
            "unused": sorted(k for k in a if a[k] is None)}


def _stoppers(world: World) -> dict:
    pooled = TaskwiseEarlyStopping(["pose"], 3, 1.0, {"pose": 1.0})
    own = TaskwiseEarlyStopping(["pose"], 3, 1.0, {"pose": 1.0})
    n = 10  # faces per rank
    for step, (tr, va) in enumerate(zip(RANK_TRAIN[world.rank], RANK_VAL[world.rank]), start=1):
        sums = all_reduce_sums({"train": tr * n, "val": va * n, "count": n}, world)
        pooled.update(step, {"pose": sums["train"] / sums["count"]}, {"pose": sums["val"] / sums["count"]})
        check_ranks_agree(pooled)
        own.update(step, {"pose": tr}, {"pose": va})
    try:
        check_ranks_agree(own)
        refused = ""
    except RuntimeError as exc:
        refused = str(exc)
    return {"pooled": pooled.stopped_at, "own": own.stopped_at, "own_refused": refused}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    world = init_from_env()
    try:
        res = {"world": [world.rank, world.size, dist.get_backend()]}
        for name, n, stopped in (("even", 8, ()), ("uneven_with_stopped_head", 7, ("smile",))):
            res[name] = _compare(_grads(n, stopped, world), _grads(n, stopped, World()))
        res["stoppers"] = _stoppers(world)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        world.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_two_gloo_ranks(two_ranks):
    assert [r["world"] for r in two_ranks] == [[0, 2, "gloo"], [1, 2, "gloo"]]


@pytest.mark.parametrize("case", ["even", "uneven_with_stopped_head"])
def test_all_reduced_gradients_equal_one_process_on_the_whole_batch(two_ranks, case):
    for r in two_ranks:
        assert r[case]["none_differs"] == []
        assert r[case]["max_rel"] < 1e-5, r[case]
    if case == "uneven_with_stopped_head":  # the stopped head has no gradient, on every rank as in one process
        assert two_ranks[0][case]["unused"] == ["aux_heads.smile.bias", "aux_heads.smile.weight"]


def test_early_stopping_decides_from_all_reduced_losses(two_ranks):
    pooled = TaskwiseEarlyStopping(["pose"], 3, 1.0, {"pose": 1.0})
    for step in range(1, 7):
        pooled.update(step, {"pose": float(np.mean([c[step - 1] for c in RANK_TRAIN]))},
                      {"pose": float(np.mean([c[step - 1] for c in RANK_VAL]))})
    assert pooled.stopped_at == {"pose": 5}
    s0, s1 = (r["stoppers"] for r in two_ranks)
    assert s0["pooled"] == s1["pooled"] == {"pose": 5}
    # Fed with their own losses, the ranks would part (rank 0 stops at 3, rank 1 never), and the check says so.
    assert s0["own"] == {"pose": 3} and s1["own"] == {}
    assert "differs between ranks" in s0["own_refused"] and "differs between ranks" in s1["own_refused"]


def test_local_share_is_the_single_process_batch():
    batch = np.arange(10, 17)  # 7 faces on 2 ranks
    shares = [local_share(batch, World(r, 2)) for r in range(2)]
    assert sorted(np.concatenate([s for s, _ in shares]).tolist()) == batch.tolist()
    assert [f for _, f in shares] == [4 * 2 / 7, 3 * 2 / 7]  # DDP's average of n_r * W / n * mean_r = global mean
    lone = local_share(np.array([5]), World(1, 2))
    assert lone[0].tolist() == [5] and lone[1] == 0.0
    assert local_share(batch, World())[1] == 1.0
