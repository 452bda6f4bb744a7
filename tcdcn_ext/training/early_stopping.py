"""Task-wise early stopping of auxiliary tasks (Zhang et al., ECCV 2014, Sec. 3.2, Eq. 5).

An auxiliary task ``a`` is stopped at evaluation step ``t`` when

.. math::

    \\underbrace{\\frac{k \\cdot \\mathrm{med}(s)}{\\sum s - k \\cdot \\mathrm{med}(s)}}_{\\text{trend}}
    \\cdot
    \\underbrace{\\frac{E_{val}(t) - \\min_j E_{tr}(j)}{\\lambda_a \\min_j E_{tr}(j)}}_{\\text{generalisation}}
    > \\epsilon

where ``s`` is the strip of the task's last ``k`` training losses and ``E_tr`` its whole training-loss history up to
``t``. The trend term is small while the training loss still falls steeply inside the strip (the early values
pull the sum well above ``k`` times the median) and grows as the loss levels off; the generalisation term grows
when the validation loss moves above the best training loss, relative to the task's weight ``lambda_a``.

Degenerate cases (our reading of what the paper intends):

* Fewer than ``k`` training losses recorded: never stop.
* The strip is not falling (its last loss ``>=`` its first): the trend term is ``+inf`` (training has stalled
  or diverges). Without this rule a convexly *rising* strip (e.g. ``1.0, 1.1, 1.5``) would get a finite, even
  small, trend term.
* ``sum(s) - k * med(s) <= 0`` while the strip falls (last < first): the loss is still falling steadily
  (linearly or faster, so the mean is not above the median). Read literally the formula would call this
  "stalled" (a zero or negative denominator); that stopped every auxiliary task of a real MTFL run within its
  first 7 epochs while their losses were still dropping, so the trend term is taken as ``0`` here: a task is
  stopped only once its training curve has levelled off (convex strip with a small tail, or not falling).
* Generalisation term ``<= 0`` (validation loss at or below the best training loss): never stop, even with an
  infinite trend term (``inf * 0`` would be NaN, and there is no over-fitting to stop).
* ``min_j E_tr(j) <= 0`` (a loss that reached zero): the denominator is clamped to ``1e-12`` so a positive gap
  counts as over-fitting.

A stopped task stays stopped. For tasks whose ``lambda`` is learned, pass the current value to :meth:`update`.

Data-parallel training: every rank keeps its own stopper and must switch a task off at the same step, or the ranks'
losses (and DDP's set of used parameters) would part. The training loop therefore feeds :meth:`update` with losses
all-reduced over the ranks (:func:`tcdcn_ext.training.distributed.all_reduce_sums`: the same float64 bits everywhere),
never with a rank's own share, and :func:`check_ranks_agree` verifies the outcome after every update.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["TaskwiseEarlyStopping", "check_ranks_agree", "criterion"]

logger = logging.getLogger("tcdcn_ext.early_stopping")  # (its name before the move: logging configs keep working)

_TINY = 1e-12


def criterion(train_history: Sequence[float], val_loss: float, strip_k: int, lam: float) -> float:
    """Left-hand side of Eq. 5 for one task (``-inf`` / ``nan`` never returned; see the module doc).

    Args:
        train_history: the task's training losses ``E_tr(1..t)``, oldest first.
        val_loss: ``E_val(t)``.
        strip_k: strip length ``k``.
        lam: the task's weight ``lambda_a`` (> 0).

    Returns:
        The criterion value; ``0.0`` when there is not enough history, no over-fitting gap, or a strip falling
        steadily; ``inf`` when the strip is not falling and a positive gap exists.
    """
    if len(train_history) < strip_k:
        return 0.0
    hist = np.asarray(train_history, np.float64)
    strip = hist[-strip_k:]
    best = max(float(hist.min()), _TINY)
    general = (float(val_loss) - float(hist.min())) / (lam * best)
    if general <= 0.0:
        return 0.0
    if strip[-1] >= strip[0]:
        return math.inf
    k_med = strip_k * float(np.median(strip))
    denom = float(strip.sum()) - k_med
    # Falling steadily (mean not above median): still learning, see the module doc.
    if denom <= 1e-12 * max(abs(k_med), _TINY):
        return 0.0
    return k_med / denom * general


class TaskwiseEarlyStopping:
    """Eq. 5 task-wise early stopping for any set of auxiliary tasks.

    Args:
        tasks: names of the auxiliary tasks to monitor (e.g. ``["pose", "gender", "glasses", "smile"]``).
        strip_k: strip length ``k`` (number of recent training losses), ``>= 2``.
        epsilon: threshold ``epsilon``.
        lambdas: task -> weight ``lambda_a`` (> 0); every task needs one.

    Attributes:
        stopped_at: task -> evaluation step at which it was stopped.
        history: task -> list of ``{"step", "train", "val", "lambda", "criterion"}`` records (one per update while
            the task was active).
    """

    def __init__(
        self, tasks: Sequence[str], strip_k: int, epsilon: float, lambdas: Mapping[str, float]
    ) -> None:
        tasks = list(tasks)
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task names in {tasks}")
        if int(strip_k) < 2:
            raise ValueError(f"strip_k must be >= 2 (a median of one loss says nothing), got {strip_k}")
        if not math.isfinite(float(epsilon)):
            raise ValueError(f"epsilon must be finite, got {epsilon}")
        missing = [t for t in tasks if t not in lambdas]
        if missing:
            raise ValueError(f"lambdas has no value for tasks {missing}")
        self.tasks: list[str] = tasks
        self.strip_k = int(strip_k)
        self.epsilon = float(epsilon)
        self.lambdas: dict[str, float] = {}
        for t in tasks:
            self._set_lambda(t, lambdas[t])
        self.stopped_at: dict[str, int] = {}
        self.history: dict[str, list[dict[str, float]]] = {t: [] for t in tasks}

    def _set_lambda(self, task: str, value: float) -> None:
        value = float(value)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"lambda for task {task!r} must be a finite value > 0, got {value}")
        self.lambdas[task] = value

    def active(self, task: str) -> bool:
        """Whether ``task`` is still being trained."""
        if task not in self.history:
            raise KeyError(f"unknown task {task!r}; monitored tasks: {self.tasks}")
        return task not in self.stopped_at

    @property
    def active_tasks(self) -> list[str]:
        """The tasks not stopped yet, in the constructor's order."""
        return [t for t in self.tasks if t not in self.stopped_at]

    def update(
        self,
        step: int,
        train_losses: Mapping[str, float],
        val_losses: Mapping[str, float],
        lambdas: Mapping[str, float] | None = None,
    ) -> list[str]:
        """Record one evaluation step and stop the tasks that meet Eq. 5.

        Args:
            step: the evaluation step ``t`` (e.g. the epoch); recorded in :attr:`stopped_at`.
            train_losses: task -> mean training loss since the previous step. Every active task needs a value;
                other keys (the landmark loss, stopped tasks) are ignored.
            val_losses: task -> validation loss at this step (same keys rule).
            lambdas: optional task -> current ``lambda`` for tasks whose weight is learned.

        Returns:
            The names of the tasks newly stopped at this step (constructor order).
        """
        if lambdas:
            for t, v in lambdas.items():
                if t in self.history:
                    self._set_lambda(t, v)
        active = self.active_tasks
        for name, losses in (("train_losses", train_losses), ("val_losses", val_losses)):
            missing = [t for t in active if t not in losses]
            if missing:
                raise KeyError(f"update(step={step}): {name} has no value for active tasks {missing}")
            bad = {t: losses[t] for t in active if not math.isfinite(float(losses[t]))}
            if bad:
                raise ValueError(f"update(step={step}): non-finite {name} {bad}")
        stopped: list[str] = []
        for t in active:
            rec = self.history[t]
            tr, va = float(train_losses[t]), float(val_losses[t])
            train_hist = [r["train"] for r in rec] + [tr]
            value = criterion(train_hist, va, self.strip_k, self.lambdas[t])
            rec.append({"step": int(step), "train": tr, "val": va, "lambda": self.lambdas[t], "criterion": value})
            if value > self.epsilon:
                self.stopped_at[t] = int(step)
                stopped.append(t)
                logger.info(
                    "task-wise early stopping: stopped %r at step %d (criterion %.4g > epsilon %.4g; "
                    "train %.4g, val %.4g, best train %.4g)",
                    t, step, value, self.epsilon, tr, va, min(train_hist),
                )
        return stopped

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (JSON- and ``torch.save``-friendly) for resuming a run."""
        return {
            "tasks": list(self.tasks),
            "strip_k": self.strip_k,
            "epsilon": self.epsilon,
            "lambdas": dict(self.lambdas),
            "stopped_at": dict(self.stopped_at),
            "history": {t: [dict(r) for r in rec] for t, rec in self.history.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. The task list must match; ``k``/``epsilon`` are taken from ``state``."""
        if list(state.get("tasks", [])) != self.tasks:
            raise ValueError(f"state is for tasks {state.get('tasks')}, this stopper monitors {self.tasks}")
        unknown = [t for t in state.get("stopped_at", {}) if t not in self.history]
        if unknown:
            raise ValueError(f"state stops unknown tasks {unknown}")
        self.strip_k = int(state["strip_k"])
        self.epsilon = float(state["epsilon"])
        for t, v in state["lambdas"].items():
            self._set_lambda(t, v)
        self.stopped_at = {t: int(s) for t, s in state["stopped_at"].items()}
        self.history = {t: [dict(r) for r in state["history"].get(t, [])] for t in self.tasks}

    def __repr__(self) -> str:
        return (
            f"TaskwiseEarlyStopping(tasks={self.tasks}, strip_k={self.strip_k}, epsilon={self.epsilon}, "
            f"stopped_at={self.stopped_at})"
        )


def check_ranks_agree(stopper: TaskwiseEarlyStopping) -> None:
    """Raise ``RuntimeError`` on every rank unless every rank's ``stopper`` has stopped the same tasks at the same
    steps (one all-reduce of the stop steps, as min and max; a no-op without a process group)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    steps = torch.tensor([stopper.stopped_at.get(t, -1) for t in stopper.tasks], dtype=torch.int64)
    both = torch.cat([steps, -steps])  # max of -x is -min of x: one all-reduce gives both
    if dist.get_backend() == "nccl":
        both = both.cuda()
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    hi, lo = both[:len(steps)].cpu(), -both[len(steps):].cpu()
    if not torch.equal(hi, lo):
        differ = [t for t, a, b in zip(stopper.tasks, hi.tolist(), lo.tolist()) if a != b]
        raise RuntimeError(f"task-wise early stopping differs between ranks for {differ} (stop steps from "
                           f"{lo.tolist()} to {hi.tolist()}): the stoppers were fed per-rank losses instead of "
                           "all-reduced ones")
