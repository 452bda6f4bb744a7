"""Training of the attribute network (:mod:`tcdcn_ext.models.attributes`): class-balanced cross-entropy over the
four MTFL attributes, mirroring and shifts, AdamW with a one-cycle schedule, the epoch with the best mean validation
balanced accuracy kept, a temperature per task fitted on the validation faces; resumable. The command is
``tcdcn-train-attributes`` (:mod:`tcdcn_ext.cli`)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.attributes import (AttributeConfig, AttributeNet, attribute_inputs, predict_logits,
                                 save_attribute_net)
from .evaluate import balanced_accuracy, expected_calibration_error

__all__ = ["AttributeTrainConfig", "fit_temperature", "train_attributes"]


def _augment(x: Tensor, rng: torch.Generator, max_shift: int, flip: Tensor) -> Tensor:
    """Random integer shifts (zero fill; the crops were cut with a margin) and mirroring of ``flip`` rows."""
    n, _, s, _ = x.shape
    out = torch.where(flip[:, None, None, None], x.flip(3), x)
    if max_shift:
        pad = F.pad(out, (max_shift,) * 4)
        dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=rng)
        dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=rng)
        rows = (dy[:, None] + torch.arange(s))[:, :, None].expand(n, s, s)
        cols = (dx[:, None] + torch.arange(s))[:, None, :].expand(n, s, s)
        out = pad[torch.arange(n)[:, None, None], 0, rows, cols][:, None]
    return out


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The temperature T minimising the validation negative log-likelihood of ``softmax(logits / T)`` (golden
    section over log T in [-3, 3])."""
    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    a, b = -3.0, 3.0
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(60):
        if nll(c) < nll(d):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    return math.exp((a + b) / 2)


@dataclass
class AttributeTrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 1
    max_shift: int = 3
    limit: int | None = None
    model: dict[str, Any] = field(default_factory=dict)


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed + 2_000_003).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _scores(logits: dict[str, Tensor], labels: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for t, v in logits.items():
        p = F.softmax(v, 1).numpy()
        out[t] = {"balanced_accuracy": balanced_accuracy(labels[t], p.argmax(1), v.shape[1]),
                  "accuracy": float(np.mean(p.argmax(1) == labels[t])),
                  "ece": expected_calibration_error(labels[t], p)}
    return out


def train_attributes(train_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: AttributeTrainConfig,
                     progress: bool = True, stop_after: int | None = None) -> dict[str, Any] | None:
    """Train :class:`AttributeNet` on a staged split with every MTFL attribute; the epoch with the best mean
    validation balanced accuracy is kept, its temperatures fitted on the validation faces; writes
    ``OUT/attributes.pt`` (+ ``.json`` record) and ``OUT/report.json`` and returns the report.

    Every epoch ends with ``OUT/checkpoint.pt`` (weights, optimiser, schedule and both random states), and a call
    on an ``OUT`` holding one continues from it: a run killed at any point and started again with the same
    arguments ends with the weights of an uninterrupted run. ``stop_after``: end this call after that epoch
    (returns None; the schedule still spans ``cfg.epochs``)."""
    from ..util.files import atomic_torch_save, atomic_write_text
    from ..util.progress import progress_bar
    from .datasets import load_staged

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acfg = AttributeConfig(**cfg.model)
    fs = load_staged(train_dir, limit=cfg.limit, progress=progress)
    missing = [t for t in acfg.tasks if t not in fs.attributes]
    if missing:
        raise ValueError(f"train_attributes: {train_dir} has no {missing} attribute columns")
    x_all = attribute_inputs(fs.images, fs.boxes, acfg)
    labels = {t: fs.attributes[t] for t in acfg.tasks}
    tr_idx, va_idx = _split(len(fs), cfg.val_fraction, cfg.seed)
    x_tr, x_va = x_all[tr_idx], x_all[va_idx]
    y_tr = {t: torch.from_numpy(v[tr_idx]) for t, v in labels.items()}
    y_va = {t: v[va_idx] for t, v in labels.items()}
    # Class-balanced cross-entropy: weight_k ~ 1 / freq_k, normalised to a mean of 1 over the samples.
    weights = {}
    for t, n in acfg.tasks.items():
        counts = np.bincount(y_tr[t].numpy(), minlength=n).astype(np.float64)
        w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        w *= len(y_tr[t]) / float((w * counts).sum())
        weights[t] = torch.tensor(w, dtype=torch.float32)

    net = AttributeNet(acfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(tr_idx) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.15)
    rng = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    best = {"score": -1.0, "epoch": -1, "state": None}
    start = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state.get("train_config") != asdict(cfg):
            raise ValueError(f"train_attributes: {ckpt} was written by a run with other settings "
                             f"({state.get('train_config')}); use another output folder or delete it")
        torch.set_rng_state(state["torch_rng"])
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.set_state(state["rng"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
    for epoch in range(start, cfg.epochs):
        net.train()
        t0 = time.time()
        order = torch.randperm(len(tr_idx), generator=rng)
        total = 0.0
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress, leave=False)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            flip = torch.rand(len(idx), generator=rng) < 0.5
            xb = _augment(x_tr[idx], rng, cfg.max_shift, flip)
            o = net(xb)
            loss = 0.0
            for t in acfg.tasks:
                y = y_tr[t][idx]
                if t == "pose":
                    y = torch.where(flip, 4 - y, y)
                loss = loss + F.cross_entropy(o[t], y, weight=weights[t])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            bar.update(1)
        bar.close()
        scores = _scores(predict_logits(net, x_va), y_va)
        mean_bacc = float(np.mean([v["balanced_accuracy"] for v in scores.values()]))
        row = {"epoch": epoch + 1, "loss": total / steps_per_epoch, "val": scores, "val_mean_bacc": mean_bacc,
               "seconds": time.time() - t0}
        history.append(row)
        if mean_bacc > best["score"]:
            best = {"score": mean_bacc, "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}
        if progress:
            print(f"epoch {epoch + 1}: loss {row['loss']:.4f} val bacc " +
                  " ".join(f"{t} {v['balanced_accuracy'] * 100:.1f}" for t, v in scores.items()) +
                  f" (mean {mean_bacc * 100:.2f}) {row['seconds']:.0f} s", flush=True)
        atomic_torch_save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                           "rng": rng.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                           "best": best, "epoch": epoch, "train_config": asdict(cfg)}, ckpt)
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < cfg.epochs:
            return None
    net.load_state_dict(best["state"])
    # Temperatures on the validation faces (mirror-averaged logits, as inference computes them).
    net.temperature.fill_(1.0)
    logits = predict_logits(net, x_va)
    temps = [fit_temperature(logits[t], torch.from_numpy(y_va[t])) for t in acfg.tasks]
    net.temperature.copy_(torch.tensor(temps))
    final = _scores(predict_logits(net, x_va), y_va)
    report = {"train_config": asdict(cfg), "model_config": {**asdict(acfg), "channels": list(acfg.channels)},
              "best_epoch": best["epoch"],
              "temperatures": dict(zip(acfg.tasks, temps)), "val": final, "history": history,
              "train_faces": int(len(tr_idx)), "val_faces": int(len(va_idx))}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    save_attribute_net(net, out / "attributes.pt", {"best_epoch": best["epoch"], "val": final})
    return report
