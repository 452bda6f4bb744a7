"""Training of TCDCN: the multi-task loss of paper Eq. 3 with task-wise early stopping (Eq. 5).

Loss for a batch (Eq. 3)::

    E = 1/2 * mean_n || S * (f(x_n) - y_n) ||^2                      (landmarks, least squares; S = input size)
        + sum_{a active} lambda_a * mean_n CE(softmax(h_a(x_n)), c_n^a)  (auxiliary tasks)
        + weight_decay * ||W||^2 / 2                                   (L2, applied by the optimiser)

Landmarks are in the box frame (``tcdcn_ext.models``); scaling by ``S`` puts the squared error in input pixels so
that it is of the same order as the cross-entropies. ``--landmark-loss l1`` replaces the squared error by the
absolute error (a robust variant, reported beside the paper's choice).

``lambda_a`` is fixed (``--aux-weight``) or learned (``--learn-lambda``): plain gradient descent on lambda_a in
Eq. 3 would drive it to 0, so the learned form weights task a by ``exp(-s_a)`` and adds ``s_a`` (the
homoscedastic-uncertainty weighting of Kendall et al., 2018): lambda_a = exp(-s_a) is learned by gradient descent
with the other parameters and cannot collapse.

Task-wise early stopping (:class:`tcdcn_ext.training.early_stopping.TaskwiseEarlyStopping`) is evaluated once per epoch
on the epoch's mean training loss and the validation loss of each auxiliary task; a stopped task contributes
neither loss nor gradient from then on, and the epoch log records when each task stopped.

Everything needed to resume (model, optimiser, early-stopping state, RNG states, history) is checkpointed
atomically (temp file, fsync, rename, folder fsync: :mod:`tcdcn_ext.util.files`) at the end of every epoch;
``--resume`` continues a killed run. The checkpoint holds only tensors, numbers, strings and plain containers and
is read back with ``weights_only=True``: a planted checkpoint with pickled code is refused, not run.

Data-parallel under ``torchrun`` (PyTorch DDP, gloo on the CPU; :mod:`tcdcn_ext.training.distributed`)::

    torchrun --nproc_per_node=2 --max-restarts=3 -m tcdcn_ext train --batch-size 64 --out runs/x --resume

``--batch-size`` stays the global batch: each step every rank takes its interleaved share of the single process's
batch (the same epoch order and augmentation numbers on every rank), so N ranks follow the single-process
schedule. Early stopping decides from losses all-reduced over the ranks; rank 0 writes every file; ``--resume``
(harmless on a first start) makes every rank of a restarted job continue from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.boxes import from_box_frame, predict_boxes_5pt, to_box_frame
from ..inference.preprocess import grey, make_inputs
from ..models.landmarks import MIRROR_5, MIRROR_68
from .augment import Augmenter
from .datasets import FaceSet, load_staged
from ..util.progress import progress_bar
from ..util.files import atomic_torch_save, atomic_write_text, load_tensors
from .distributed import World, all_reduce_sums, init_from_env, local_share
from .early_stopping import TaskwiseEarlyStopping, check_ranks_agree
from ..models import AUX_TASKS_5PT, TCDCN, TCDCNConfig, save_weights

__all__ = ["TrainConfig", "train"]

log = logging.getLogger("tcdcn_ext.train")


def default_data_root() -> Path:
    """``$TCDCN_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("TCDCN_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass
class TrainConfig:
    train_dir: str = ""
    out_dir: str = "runs/tcdcn_5pt"
    points: int = 5
    aux_tasks: tuple[str, ...] = ("pose", "gender", "glasses", "smile")
    epochs: int = 60
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.01
    landmark_loss: str = "l2"  # l2 | l1
    aux_weight: float = 1.0
    learn_lambda: bool = False
    early_stopping: bool = True
    strip_k: int = 5
    epsilon: float = 0.5
    val_fraction: float = 0.05
    seed: int = 0
    threads: int = 0
    limit: int | None = None
    max_shift: float = 0.05
    max_rotate_deg: float = 15.0
    zoom: tuple[float, float] = (0.9, 1.1)
    mirror: bool = True
    grad_clip: float = 10.0
    balance_pose: float = 0.0  # 0: uniform sampling; 1: pose classes equally likely; 0.5: weights ~ 1/sqrt(freq)
    model: dict[str, Any] = field(default_factory=dict)  # TCDCNConfig overrides
    init_from: str | None = None  # warm start (transfer): load matching tensors from this checkpoint
    box_scale: float = 1.0  # enlarge the annotated boxes by this factor about their centre (stored in the model)
    boxes: str = "given"  # given: the split's boxes | landmarks: MTFL box model boxes of the true 5 landmarks
    progress: bool = True


def _lr_at(cfg: TrainConfig, epoch_float: float) -> float:
    if epoch_float < cfg.warmup_epochs:
        return cfg.lr * max(epoch_float / cfg.warmup_epochs, 0.02)
    t = (epoch_float - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


class _Batches:
    """Training data prepared once: grey images, boxes, landmarks, attribute codes."""

    def __init__(self, fs: FaceSet) -> None:
        self.grey = [grey(im) if im.ndim == 3 else im for im in fs.images]
        self.boxes = fs.boxes.astype(np.float32)
        self.landmarks = fs.landmarks.astype(np.float32)
        self.attributes = {k: np.asarray(v, np.int64) for k, v in fs.attributes.items()}

    def __len__(self) -> int:
        return len(self.grey)

    def take(self, idx: np.ndarray):
        return ([self.grey[i] for i in idx], self.boxes[idx], self.landmarks[idx],
                {k: v[idx] for k, v in self.attributes.items()})


def _epoch_order(tr: "_Batches", cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """The faces of one epoch: a permutation, or with ``balance_pose`` a weighted draw (with replacement) that
    shows the rare profile poses more often (sampling weight ~ freq(pose) ** -balance_pose)."""
    if cfg.balance_pose <= 0 or "pose" not in tr.attributes:
        return rng.permutation(len(tr))
    pose = tr.attributes["pose"]
    freq = np.bincount(pose, minlength=5).astype(np.float64)
    w = np.power(np.maximum(freq[pose], 1.0), -cfg.balance_pose)
    return rng.choice(len(tr), size=len(tr), replace=True, p=w / w.sum())


def _losses(model: TCDCN, out: dict[str, torch.Tensor], uv: torch.Tensor, attrs: dict[str, torch.Tensor],
            cfg: TrainConfig) -> dict[str, torch.Tensor]:
    s = model.input_size
    diff = (out["landmarks"] - uv) * s
    if cfg.landmark_loss == "l1":
        lm = diff.abs().sum(dim=(1, 2)).mean()
    else:
        lm = 0.5 * diff.pow(2).sum(dim=(1, 2)).mean()
    losses = {"landmarks": lm}
    for task in cfg.aux_tasks:
        losses[task] = F.cross_entropy(out[task], attrs[task])
    return losses


class _StoppedHeadsDetached(torch.nn.Module):
    """``model``'s forward with the logits of early-stopped tasks detached: what DDP sees of the training forward.

    A stopped task's head is left out of the loss on every rank at the same step. DDP finds the parameters a step
    leaves without gradient by walking the graph from the forward's outputs; with the stopped logits detached, that
    walk does not reach their heads, so DDP leaves their gradients None (as one process does; the optimiser skips
    them) instead of waiting for them. The detached logits still give the epoch log the stopped tasks' losses."""

    def __init__(self, model: TCDCN, stopper: TaskwiseEarlyStopping | None) -> None:
        super().__init__()
        self.model, self.stopper = model, stopper

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(x)
        if self.stopper is None:
            return out
        return {k: v.detach() if k in self.stopper.stopped_at else v for k, v in out.items()}


def _data_parallel(model: TCDCN, stopper: TaskwiseEarlyStopping | None) -> torch.nn.Module:
    """DDP over ``model`` (CPU: gloo). Until a task stops every parameter gets a gradient at every step, and the
    search for unused ones (a graph walk per step) is left off; the loop wraps the model again after a stop."""
    unused = bool(stopper is not None and stopper.stopped_at)
    return torch.nn.parallel.DistributedDataParallel(_StoppedHeadsDetached(model, stopper),
                                                     find_unused_parameters=unused)


def _objective(model: TCDCN, out: dict[str, torch.Tensor], uv: torch.Tensor, attrs: dict[str, torch.Tensor],
               cfg: TrainConfig, stopper: TaskwiseEarlyStopping | None, lambdas: dict[str, float],
               log_s: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training objective of a batch (Eq. 3 over the active tasks) and its per-task losses."""
    losses = _losses(model, out, uv, attrs, cfg)
    total = losses["landmarks"]
    for j, task in enumerate(cfg.aux_tasks):
        if stopper is not None and not stopper.active(task):
            continue
        if log_s is not None:
            total = total + torch.exp(-log_s[j]) * losses[task] + log_s[j]
        else:
            total = total + lambdas[task] * losses[task]
    return total, losses


def _evaluate(model: TCDCN, batches: _Batches, cfg: TrainConfig, x_cache: torch.Tensor,
              uv_cache: torch.Tensor, world: World = World()) -> dict[str, float]:
    """Validation losses per task and the landmark error (inter-ocular mean / failure for 5 points). Distributed,
    each rank scores every ``W``-th validation face and the sums are all-reduced: every rank gets the same numbers
    (the ones task-wise early stopping decides from)."""
    from . import evaluate as ev

    rows = np.arange(world.rank, len(x_cache), world.size) if world.distributed else slice(None)
    attrs = {k: torch.from_numpy(v[rows]) for k, v in batches.attributes.items()}
    model.eval()
    with torch.inference_mode():
        out = model.predict(x_cache[rows])
        logits = {}
        for task in cfg.aux_tasks:  # predict() gives probabilities; the losses need logits
            logits[task] = torch.log(out[task].clamp_min(1e-12))
        losses = _losses(model, {"landmarks": out["landmarks"], **logits}, uv_cache[rows], attrs, cfg)
    pred_px = from_box_frame(out["landmarks"].numpy(), batches.boxes[rows])
    norm = "inter_ocular" if cfg.points == 5 else "outer_corners"
    err = ev.landmark_errors(pred_px, batches.landmarks[rows], norm)
    model.train()
    if not world.distributed:
        res = {f"val_{k}": float(v) for k, v in losses.items()}
        res["val_error"] = float(err.mean())
        res["val_failure"] = float(ev.failure_rate(err))
        return res
    n = len(err)
    sums = {f"val_{k}": float(v) * n for k, v in losses.items()}
    sums.update(val_error=float(err.sum()), val_failure=float(np.count_nonzero(err > 0.10)), count=float(n))
    sums = all_reduce_sums(sums, world)
    total = sums.pop("count")
    return {k: v / total for k, v in sums.items()}


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) a training (see :func:`_train`). Denormals are flushed to zero while it runs (see there)
    and the floating-point mode and torch's thread count are restored afterwards: they are process/thread state
    that would otherwise leak into everything the caller does next.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment, or a process group already initialised) the training
    is data-parallel (:mod:`tcdcn_ext.training.distributed`): every rank runs the same schedule on its share of each
    global batch of ``batch_size`` faces, DDP averages the gradients, rank 0 writes every file, and ``resume`` makes
    every rank continue from ``checkpoint.pt``. The summary is returned on every rank."""
    # Adam's second moments of the many small locally connected weights' gradients fall into the denormal
    # range, where x86 arithmetic is ~50x slower: flush them (measured: 410 -> 58 ms per 64-face step).
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    world = init_from_env()
    try:
        return _train(cfg, resume, stop_after, world)
    finally:
        world.close()
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def validation_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` face indices (sorted): the validation faces carved from the training data (never
    the test set), fixed by the seed."""
    perm = np.random.default_rng(seed + 1_000_003).permutation(n)
    n_val = max(1, int(round(val_fraction * n))) if n > 1 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def landmark_boxes(fs: FaceSet) -> np.ndarray:
    """Every face's box made from its true 5 landmarks by the MTFL box model
    (:func:`tcdcn_ext.inference.boxes.predict_boxes_5pt`): the framing of the MTFL test faces (their boxes were made that way from the landmarks) and
    of the Aligner's refining pass (which re-boxes each face from its predicted landmarks), instead of the
    training split's detector boxes (about 5.6 % of the side off that framing, RMS per edge)."""
    if fs.num_points != 5:
        raise ValueError(f"boxes='landmarks' needs 5-point annotations, got {fs.num_points}")
    return predict_boxes_5pt(fs.landmarks.astype(np.float64)).astype(np.float32)


def _train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None,
           world: World = World()) -> dict[str, Any]:
    """Run (or resume) a training; returns the final summary. ``stop_after`` ends this invocation after that
    epoch (the schedule still spans ``cfg.epochs``; continue with ``resume=True``). Writes into ``cfg.out_dir``:
    ``checkpoint.pt`` (resume state), ``best.pt`` + ``best.json`` (best validation error, shippable weights),
    ``log.jsonl`` (one line per epoch), ``config.json``."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = world.is_main  # the rank that writes files
    progress = cfg.progress and main
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    ckpt_path = out_dir / "checkpoint.pt"
    train_dir = Path(cfg.train_dir) if cfg.train_dir else default_data_root() / ("mtfl/train" if cfg.points == 5
                                                                                    else "300w/train")
    fs = load_staged(train_dir, limit=cfg.limit, progress=progress)
    if fs.num_points != cfg.points:
        raise ValueError(f"{train_dir} has {fs.num_points}-point annotations but --points is {cfg.points}")
    missing = [t for t in cfg.aux_tasks if t not in fs.attributes]
    if missing:
        raise ValueError(f"{train_dir} has no {missing} attribute columns; drop them from --aux-tasks")
    if cfg.boxes == "landmarks":
        fs.boxes = landmark_boxes(fs)
    elif cfg.boxes != "given":
        raise ValueError(f"boxes must be 'given' or 'landmarks', got {cfg.boxes!r}")

    tr_idx, val_idx = validation_split(len(fs), cfg.val_fraction, cfg.seed)
    tr, va = _Batches(fs.subset(tr_idx)), _Batches(fs.subset(val_idx))
    mcfg = TCDCNConfig(num_points=cfg.points, aux_tasks={t: AUX_TASKS_5PT[t] for t in cfg.aux_tasks},
                       **{"box_scale": cfg.box_scale, **cfg.model})
    model = TCDCN(mcfg)
    # The network trains on the enlarged boxes (its raw output frame); validation keeps the annotated boxes and goes
    # through model.preprocess/predict semantics (enlarge, then map back), as evaluation and shipping do.
    tr.boxes = model.input_boxes(tr.boxes)
    if main:
        log.info("data: %d train / %d validation faces from %s%s", len(tr), len(va), train_dir,
                 f" ({world.size} ranks)" if world.distributed else "")

    torch.manual_seed(cfg.seed)
    model = TCDCN(mcfg)
    uv_train = to_box_frame(tr.landmarks, tr.boxes)
    model.set_mean_shape(uv_train.mean(axis=0))
    if cfg.init_from:
        src = load_tensors(cfg.init_from, "--init-from checkpoint")
        sd = src["state_dict"] if "state_dict" in src else src["model"]
        own = model.state_dict()
        taken = {k: v.float() for k, v in sd.items() if k in own and own[k].shape == v.shape and
                 not k.startswith(("landmark_head", "aux_heads"))}
        model.load_state_dict(taken, strict=False)
        if main:
            log.info("initialised %d tensors from %s (heads re-initialised)", len(taken), cfg.init_from)

    log_s = torch.nn.Parameter(torch.zeros(len(cfg.aux_tasks))) if cfg.learn_lambda else None
    params = list(model.parameters()) + ([log_s] if log_s is not None else [])
    # fused=True: one kernel per step over all tensors (~80x faster than the per-tensor loop for the 3.4 M
    # locally connected weights on the CPU; a step is then ~2 ms, not a tenth of the epoch).
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'sgd' or 'adam'")
    lambdas = {t: cfg.aux_weight for t in cfg.aux_tasks}
    stopper = TaskwiseEarlyStopping(cfg.aux_tasks, cfg.strip_k, cfg.epsilon, lambdas) if cfg.aux_tasks else None

    rng = np.random.default_rng(cfg.seed)
    start_epoch, best, history = 0, {"val_error": float("inf")}, []
    if resume and ckpt_path.exists():
        st = load_tensors(ckpt_path, "resume checkpoint")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if log_s is not None and st.get("log_s") is not None:
            log_s.data.copy_(st["log_s"])
        if stopper is not None and st.get("stopper"):
            stopper.load_state_dict(st["stopper"])
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        start_epoch, best, history = st["epoch"], st["best"], st["history"]
        if main:
            # A kill between an epoch's log line and its checkpoint leaves that line behind: the log restarts from
            # the checkpoint's history so every epoch appears once.
            atomic_write_text(out_dir / "log.jsonl", "".join(json.dumps(rec) + "\n" for rec in history))
            log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    if main:
        atomic_write_text(out_dir / "config.json", json.dumps(asdict(cfg), indent=2, default=str))
    # Every rank has read the checkpoint before rank 0 can write the next one.
    world.barrier()
    net, net_unused = model, False

    aug = Augmenter(size=mcfg.input_size, max_shift=cfg.max_shift, max_rotate_deg=cfg.max_rotate_deg,
                             zoom=cfg.zoom, mirror=cfg.mirror,
                             mirror_perm=MIRROR_5 if cfg.points == 5 else MIRROR_68)
    x_val = torch.from_numpy(make_inputs(va.grey, model.input_boxes(va.boxes), mcfg.input_size))
    uv_val = torch.from_numpy(to_box_frame(va.landmarks, va.boxes).astype(np.float32))
    steps = max(1, math.ceil(len(tr) / cfg.batch_size))
    model.train()
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    for epoch in range(start_epoch, last_epoch):
        t0 = time.time()
        order = _epoch_order(tr, cfg, rng)
        sums = {k: 0.0 for k in ["landmarks", *cfg.aux_tasks]}
        bar = progress_bar(steps, f"epoch {epoch + 1}/{cfg.epochs}", progress, unit="step")
        if world.distributed and (net is model or net_unused != bool(stopper and stopper.stopped_at)):
            net_unused = bool(stopper and stopper.stopped_at)
            net = _data_parallel(model, stopper)
        for it in range(steps):
            lr = _lr_at(cfg, epoch + it / steps)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = order[it * cfg.batch_size:(it + 1) * cfg.batch_size]
            # Every rank draws the whole global batch's augmentation (the same random numbers as one process, ~20 us
            # a face) and keeps its own rows, so the RNG stays the same on every rank and in the checkpoint.
            x, uv, attrs = aug(*tr.take(batch), rng)
            rows, scale = local_share(np.arange(len(batch)), world)
            idx = batch[rows]
            if world.distributed:
                x, uv, attrs = x[rows], uv[rows], {k: v[rows] for k, v in attrs.items()}
            out = net(torch.from_numpy(x))
            total, losses = _objective(model, out, torch.from_numpy(uv),
                                       {k: torch.from_numpy(v) for k, v in attrs.items()}, cfg, stopper, lambdas,
                                       log_s)
            if not torch.isfinite(total):
                raise FloatingPointError(f"epoch {epoch + 1} step {it}: loss is {float(total)} (lr {lr:.2e}); "
                                         "lower --lr or raise --grad-clip")
            opt.zero_grad(set_to_none=True)
            (total * scale if world.distributed else total).backward()
            if log_s is not None and world.distributed:  # outside the DDP module: averaged here
                torch.distributed.all_reduce(log_s.grad)
                log_s.grad /= world.size
            if cfg.grad_clip > 0:
                clip_gradients(model.parameters(), cfg.grad_clip)
            opt.step()
            if scale > 0:  # (a rank without rows ran a dummy row with factor 0)
                for k, v in losses.items():
                    sums[k] += float(v.detach()) * len(idx)
            bar.update(1)
            if bar.n % 10 == 0 or bar.n == steps:
                bar.set_postfix_str(f"lm {losses['landmarks'].item():.3f}", refresh=False)
        bar.close()
        # Epoch means over every rank's faces: the losses early stopping decides from are the same on every rank.
        train_losses = {k: v / len(tr) for k, v in all_reduce_sums(sums, world).items()}
        val = _evaluate(model, va, cfg, x_val, uv_val, world)
        newly: list[str] = []
        if stopper is not None:
            if log_s is not None:
                lambdas = {t: float(torch.exp(-log_s[j].detach())) for j, t in enumerate(cfg.aux_tasks)}
            if cfg.early_stopping:
                newly = stopper.update(epoch + 1, {t: train_losses[t] for t in cfg.aux_tasks},
                                       {t: val[f"val_{t}"] for t in cfg.aux_tasks}, lambdas)
                if world.distributed:
                    check_ranks_agree(stopper)
        rec = {"epoch": epoch + 1, "lr": lr, "seconds": round(time.time() - t0, 2),
               **{f"train_{k}": v for k, v in train_losses.items()}, **val,
               "active_tasks": stopper.active_tasks if stopper is not None else [],
               "stopped_now": newly, "lambdas": lambdas}
        history.append(rec)
        if best_now := val["val_error"] < best["val_error"]:
            best = {"epoch": epoch + 1, **val}
        if not main:
            continue
        with open(out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        msg = (f"epoch {epoch + 1}/{cfg.epochs} {rec['seconds']:.1f}s lr {lr:.2e} train_lm "
               f"{train_losses['landmarks']:.3f} val_err {100 * val['val_error']:.2f}% "
               f"fail {100 * val['val_failure']:.1f}%")
        if newly:
            msg += f" | early-stopped: {', '.join(newly)}"
        log.info(msg)
        if best_now:
            save_weights(model, out_dir / "best.pt", meta={"epoch": epoch + 1, "val": val, "train_config": asdict(cfg)})
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "log_s": log_s.detach() if log_s is not None else None,
                           "stopper": stopper.state_dict() if stopper is not None else None,
                           "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                           "epoch": epoch + 1, "best": best, "history": history}, ckpt_path)
    summary = {"best": best, "epochs": cfg.epochs,
               "stopped_at": dict(stopper.stopped_at) if stopper is not None else {}}
    if main:
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_``'s rule (every gradient times ``max_norm / (norm + 1e-6)`` when that is
    below 1; the 2-norm over all of them) without the scaling pass when it would multiply by 1, as in most steps:
    one read of the 3.4 M gradients instead of a read and then a read-modify-write (~0.6 ms a step of 64 faces on
    2 threads). Returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.nn.utils.get_total_norm(grads, 2.0, foreach=True))
    coef = max_norm / (norm + 1e-6)
    if not coef >= 1.0:  # below 1, or NaN (a non-finite norm spreads to the gradients, as clip_grad_norm_ does)
        torch._foreach_mul_(grads, coef)
    return norm


def refit_aux_heads(weights: str | os.PathLike, out: str | os.PathLike, train_dir: str | os.PathLike | None = None,
                    val_fraction: float = 0.05, seed: int = 0, steps: int = 300, progress: bool = True,
                    boxes: str = "given") -> dict:
    """Refit the auxiliary heads of a trained model on its frozen shared feature.

    Task-wise early stopping switches a task off early (that is its point: it stops the task from disturbing the
    shared representation), but the switched-off head then no longer matches the feature that keeps changing, and
    its predictions decay to chance. Refitting each auxiliary head as a softmax regression on the final feature
    (the landmark path is untouched, so landmark accuracy is unchanged) gives usable attribute predictions. Uses
    the same training/validation split as :func:`train` (``seed``, ``val_fraction``) and framing (``boxes``, as
    ``tcdcn-train --boxes``); returns validation accuracy before and after.
    """
    from ..models import load_model

    model = load_model(weights)
    train_dir = Path(train_dir) if train_dir else default_data_root() / "mtfl/train"
    fs = load_staged(train_dir, progress=progress)
    if boxes == "landmarks":
        fs.boxes = landmark_boxes(fs)
    elif boxes != "given":
        raise ValueError(f"boxes must be 'given' or 'landmarks', got {boxes!r}")
    tr_idx, val_idx = validation_split(len(fs), val_fraction, seed)
    parts = {"val": val_idx, "train": tr_idx}
    feats, labels = {}, {}
    with torch.no_grad():
        for name, idx in parts.items():
            sub = fs.subset(idx)
            x = model.preprocess(sub.images, sub.boxes)
            feats[name] = torch.cat([model.features(x[i:i + 1024]) for i in range(0, len(x), 1024)])
            labels[name] = {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in sub.attributes.items()}
    report = {}
    torch.manual_seed(seed)
    for task, head in model.aux_heads.items():
        def acc() -> float:
            with torch.no_grad():
                return float((head(feats["val"]).argmax(1) == labels["val"][task]).float().mean())

        before = acc()
        ftr, ytr = feats["train"], labels["train"][task]
        head.requires_grad_(True)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(head(ftr), ytr).backward()
            opt.step()
        report[task] = {"val_accuracy_before": before, "val_accuracy_after": acc()}
        log.info("refit %s head: validation accuracy %.3f -> %.3f", task, before, report[task]["val_accuracy_after"])
    meta = {"refit_aux_heads": {"from": str(weights), "steps": steps, "seed": seed, "boxes": boxes,
                                "report": report}}
    try:
        meta["source_meta"] = json.loads(Path(weights).with_suffix(".json").read_text()).get("meta", {})
    except (OSError, ValueError):
        pass
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, out, meta=meta)
    return report
