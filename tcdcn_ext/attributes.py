"""Face attributes (head pose, gender, glasses, smile) from their own network.

TCDCN's auxiliary heads are there to help the landmarks (paper Eq. 3), and task-wise early stopping switches them
off within a few epochs: read from the shared 100-unit feature they are near chance (issue 22: balanced accuracy
gender 62.7 %, glasses 50.0 % on mtfl/test). This module gives the attributes a branch of their own:
:class:`AttributeNet`, a small shared-convolution network (four 3x3 conv + batch norm + ReLU stages, global
average pooling, one linear head per task) on a wider, larger crop of the same face box than the landmark network
reads (``context`` x the box, ``input_size`` pixels a side, grey, standardised per image), trained with
class-balanced cross-entropy so that the rare classes (glasses, profiles) count. A temperature per task, fitted on
validation faces, makes the softmax probabilities calibrated.

:func:`train_attributes` trains it (``tcdcn-train-attributes``); the shipped file ``weights/attributes_5pt.pt`` is
what :class:`tcdcn_ext.Aligner` reads its attributes from (its model card: ``weights/ATTRIBUTES.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .evaluate import balanced_accuracy, expected_calibration_error

__all__ = ["ATTRIBUTE_TASKS", "AttributeConfig", "AttributeNet", "attribute_inputs", "attribute_probabilities",
           "load_attribute_net",
           "train_attributes"]

#: The MTFL attribute tasks and their class counts (0-based codes as in the staged CSVs).
ATTRIBUTE_TASKS: dict[str, int] = {"pose": 5, "gender": 2, "glasses": 2, "smile": 2}
#: Mirroring a face maps pose bin k to 4 - k (left profile <-> right profile); the other attributes are unchanged.
_POSE_MIRROR = [4, 3, 2, 1, 0]


@dataclass
class AttributeConfig:
    input_size: int = 48  # S: the network reads S x S grey pixels
    context: float = 1.4  # the crop is the face box enlarged by this factor about its centre
    channels: tuple[int, ...] = (32, 64, 96, 128)
    convs_per_stage: int = 1
    dropout: float = 0.2
    tasks: dict[str, int] = field(default_factory=lambda: dict(ATTRIBUTE_TASKS))


class AttributeNet(nn.Module):
    """``[N, 1, S, S]`` standardised grey crops -> ``{task: logits [N, classes]}`` (divided by each task's fitted
    temperature in eval mode: ``softmax`` of the outputs are calibrated probabilities)."""

    def __init__(self, config: AttributeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AttributeConfig()
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(config.channels):
            for j in range(config.convs_per_stage):
                layers += [nn.Conv2d(c_in if j == 0 else c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.ReLU(inplace=True)]
            if i < len(config.channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({t: nn.Linear(c_in, n) for t, n in config.tasks.items()})
        self.register_buffer("temperature", torch.ones(len(config.tasks)))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        s = self.config.input_size
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"AttributeNet: input must be [N, 1, {s}, {s}], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"AttributeNet: input must be floating point, got {x.dtype}")
        h = self.dropout(self.features(x).mean(dim=(2, 3)))
        out = {t: head(h) for t, head in self.heads.items()}
        if not self.training:
            out = {t: v / self.temperature[i] for i, (t, v) in enumerate(out.items())}
        return out


def attribute_inputs(images: Sequence[np.ndarray], boxes: np.ndarray, config: AttributeConfig) -> Tensor:
    """The network's inputs for faces given by their boxes (the landmark network's box frame): each box enlarged
    by ``config.context`` about its centre, resampled to ``input_size`` grey, standardised per image."""
    from .data import make_inputs, scale_boxes

    b = scale_boxes(np.asarray(boxes, np.float32).reshape(-1, 4), config.context).astype(np.float32)
    return torch.from_numpy(make_inputs(list(images), b, config.input_size))


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


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


@torch.inference_mode()
def predict_logits(net: AttributeNet, x: Tensor, batch_size: int = 512, mirror: bool = True) -> dict[str, Tensor]:
    """Logits (temperature applied) in eval mode, averaged with the mirrored crop's (pose bins reversed) when
    ``mirror``."""
    was = net.training
    net.eval()
    try:
        outs: dict[str, list[Tensor]] = {}
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            o = net(xb)
            if mirror:
                m = net(xb.flip(3))
                o = {t: 0.5 * (v + (m[t][:, _POSE_MIRROR] if t == "pose" else m[t])) for t, v in o.items()}
            for t, v in o.items():
                outs.setdefault(t, []).append(v)
        return {t: torch.cat(v) for t, v in outs.items()}
    finally:
        net.train(was)


@torch.inference_mode()
def attribute_probabilities(net: AttributeNet, x: Tensor) -> dict[str, np.ndarray]:
    """Calibrated class probabilities ``{task: float32 [N, C]}`` (mirror-averaged logits, fitted temperature)."""
    return {t: F.softmax(v.float(), 1).cpu().numpy() for t, v in predict_logits(net, x, len(x) or 1).items()}


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
    from tqdm import tqdm

    from .checkpoint import atomic_torch_save, atomic_write_text
    from .data import load_staged

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
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False)
        for b in bar:
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


#: The shipped attribute network (see ``weights/ATTRIBUTES.md``).
WEIGHTS = Path(__file__).resolve().parent / "weights" / "attributes_5pt.pt"


def shipped_attribute_net_available() -> bool:
    return WEIGHTS.is_file()


def save_attribute_net(net: AttributeNet, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> dict:
    """Write ``path`` (config + float16 state dict; the batch-norm statistics and temperatures as float32) and
    ``path.json`` with its sha256 and ``meta`` (the model card's command, data, seed and metrics)."""
    from .checkpoint import atomic_torch_save, atomic_write_text
    from .model import _sha256

    path = Path(path)
    config = {**asdict(net.config), "channels": list(net.config.channels)}
    state = {k: (v.half() if v.is_floating_point() and not k.endswith(("running_mean", "running_var",
                                                                        "temperature")) else v).clone()
             for k, v in net.state_dict().items()}
    atomic_torch_save({"format": "tcdcn_ext.attributes/1", "config": config, "state_dict": state}, path)
    record = {"file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size, "config": config,
              "meta": dict(meta or {})}
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True, default=str))
    return record


def load_attribute_net(path: str | os.PathLike | None = None) -> AttributeNet:
    """An :class:`AttributeNet` from ``path`` (default: the shipped one), in eval mode, float32. The file's sha256
    is checked against the ``.json`` record beside it and it is read with ``weights_only=True``;
    :class:`tcdcn_ext.model.WeightsError` names the file on any problem."""
    from .checkpoint import UnsafeFileError, load_tensors
    from .model import WeightsError, checked_record

    path = WEIGHTS if path is None else Path(path)
    if not path.is_file():
        raise WeightsError(f"attribute network weights {path} are missing")
    checked_record(path)
    try:
        record = load_tensors(path, "attribute network weights file")
        c = dict(record["config"])
        c["channels"] = tuple(c["channels"])
        net = AttributeNet(AttributeConfig(**c))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in record["state_dict"].items()})
    except UnsafeFileError as exc:
        raise WeightsError(str(exc)) from exc
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: not an attribute network record ({exc})") from exc
    net.requires_grad_(False)
    return net.eval()


def build_parser() -> argparse.ArgumentParser:
    d = AttributeTrainConfig()
    p = argparse.ArgumentParser(prog="tcdcn-train-attributes", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="staged training split (default: $TCDCN_DATA/mtfl/train)")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--max-shift", type=int, default=d.max_shift)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--model-json", default="{}", help="AttributeConfig overrides, e.g. '{\"input_size\": 64}'")
    p.add_argument("--stop-after", type=int, default=None, help="end this invocation after epoch N (the same "
                   "command continues from OUT/checkpoint.pt)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .train import default_data_root

    data = args.data or str(default_data_root() / "mtfl" / "train")
    cfg = AttributeTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, val_fraction=args.val_fraction, seed=args.seed,
                               threads=args.threads, max_shift=args.max_shift, limit=args.limit,
                               model=json.loads(args.model_json))
    report = train_attributes(data, args.out, cfg, progress=not args.quiet, stop_after=args.stop_after)
    if report is None:
        print(f"stopped after epoch {args.stop_after}; run the same command again to continue")
        return 0
    print(json.dumps({"best_epoch": report["best_epoch"], "val": report["val"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
