"""Data-parallel training under ``torchrun``: the process group from the launcher's environment, and the few
collective helpers the training loop needs (sums of per-rank loss totals, the rank's share of a global batch).

``torchrun --nproc_per_node=N -m tcdcn_ext train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` joins that group (gloo for CPU training, nccl for CUDA)
and a plain ``python -m tcdcn_ext train`` (no such variables, or ``WORLD_SIZE=1``) stays a single process with no
process group at all, so the single-process path is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["World", "all_reduce_sums", "init_from_env", "local_share"]


@dataclass(frozen=True)
class World:
    """This process's place in the training job: ``rank`` of ``size``; ``owns_group``: :func:`init_from_env` made
    the process group (and :meth:`close` destroys it)."""

    rank: int = 0
    size: int = 1
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and the summary."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            # Every rank reaches the end before any tears the group down: a rank whose peer had already destroyed
            # its gloo pairs could abort in gloo's threads at exit ("terminate called without an active exception",
            # seen once in CI on an uninterrupted 2-rank run).
            try:
                dist.barrier()
            except Exception:  # a peer that died (kill-and-resume): nothing left to wait for
                pass
            dist.destroy_process_group()


def init_from_env(device: torch.device | str = "cpu") -> World:
    """Join the process group described by ``torchrun``'s environment (or the one already initialised); a single
    process when there is none. Backend: nccl when ``device`` is CUDA, gloo otherwise."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), owns_group=False)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} but this torch build has no torch.distributed")
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's agent hosts the store and keeps it across `--max-restarts` restarts: the keys of the killed
        # attempt (its ranks' gloo addresses) are still there, and a restarted rank would connect to a dead peer
        # ("Connection refused"). A prefix per attempt gives every attempt its own keys.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size, is_master=False)
        dist.init_process_group(backend, store=dist.PrefixStore(f"tcdcn_ext/attempt_{restart}", store),
                                rank=int(os.environ["RANK"]), world_size=size)
    else:
        dist.init_process_group(backend)  # env:// rendezvous: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    return World(dist.get_rank(), dist.get_world_size(), owns_group=True)


def all_reduce_sums(values: Mapping[str, float], world: World) -> dict[str, float]:
    """``{key: sum over ranks of values[key]}``, in float64, the same bits on every rank (one all-reduce). Every rank
    must pass the same keys in the same order."""
    if not world.distributed:
        return {k: float(v) for k, v in values.items()}
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    # Reduction orders could in principle differ between ranks; rank 0's bits are taken by everyone so that a
    # decision made from these numbers (task-wise early stopping) is the same on every rank.
    dist.broadcast(t, src=0)
    return dict(zip(keys, t.cpu().tolist()))


def local_share(indices: Sequence[int] | np.ndarray, world: World) -> tuple[np.ndarray, float]:
    """This rank's rows of a global batch, and the factor its mean loss is scaled by.

    Rank ``r`` takes rows ``r, r + W, r + 2W, ...`` (``DistributedSampler``'s interleaving, applied to each global
    batch of the epoch's shared order, so the ranks' rows at a step together are exactly the single process's batch
    at that step). DDP averages the ranks' gradients; with ``n_r`` rows on rank ``r`` out of ``n`` the factor
    ``n_r * W / n`` makes that average the gradient of the mean loss over all ``n`` rows, also when ``n`` is not a
    multiple of ``W`` (the epoch's last batch). A rank left without rows gets the first row with factor 0 (every rank
    must run the forward and backward so that DDP's all-reduce sees all of them).
    """
    idx = np.asarray(indices)
    if not world.distributed:
        return idx, 1.0
    mine = idx[world.rank::world.size]
    if len(mine) == 0:
        return idx[:1], 0.0
    return mine, len(mine) * world.size / len(idx)
