"""Tests for tcdcn_ext.early_stopping (paper Eq. 5) on synthetic loss curves."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from tcdcn_ext.early_stopping import TaskwiseEarlyStopping, criterion


def _overfitting(t: int) -> tuple[float, float]:
    # Training loss flattens quickly; validation loss follows it closely until epoch 8, then rises.
    train = 0.3 + 0.7 * math.exp(-0.5 * t)
    val = 0.32 + 0.7 * math.exp(-0.5 * t) + 0.02 * max(0, t - 8)
    return train, val


def _improving(t: int) -> tuple[float, float]:
    # Both losses keep falling steeply; validation tracks training with a 5 % gap.
    train = math.exp(-0.3 * t)
    return train, 1.05 * train


def _run(stopper: TaskwiseEarlyStopping, curves: dict, steps: int) -> dict[int, list[str]]:
    events = {}
    for t in range(steps):
        vals = {name: f(t) for name, f in curves.items() if stopper.active(name)}
        stopped = stopper.update(t, {k: v[0] for k, v in vals.items()}, {k: v[1] for k, v in vals.items()})
        if stopped:
            events[t] = stopped
    return events


def test_overfitting_task_stops_improving_task_does_not(caplog: pytest.LogCaptureFixture) -> None:
    stopper = TaskwiseEarlyStopping(["pose", "smile"], strip_k=5, epsilon=10.0, lambdas={"pose": 1.0, "smile": 1.0})
    with caplog.at_level(logging.INFO, logger="tcdcn_ext.early_stopping"):
        events = _run(stopper, {"pose": _overfitting, "smile": _improving}, 30)
    assert list(stopper.stopped_at) == ["pose"]
    t = stopper.stopped_at["pose"]
    assert 8 < t < 30 and events == {t: ["pose"]}
    assert not stopper.active("pose") and stopper.active("smile") and stopper.active_tasks == ["smile"]
    assert any("'pose'" in r.getMessage() and f"step {t}" in r.getMessage() for r in caplog.records)
    # A stopped task is no longer recorded (its losses may be absent from later updates).
    assert stopper.history["pose"][-1]["step"] == t and len(stopper.history["smile"]) == 30


def test_larger_lambda_delays_stopping() -> None:
    early = TaskwiseEarlyStopping(["a"], 5, 10.0, {"a": 1.0})
    late = TaskwiseEarlyStopping(["a"], 5, 10.0, {"a": 3.0})
    _run(early, {"a": _overfitting}, 40)
    _run(late, {"a": _overfitting}, 40)
    assert early.stopped_at["a"] < late.stopped_at["a"]


def test_learned_lambda_passed_per_update() -> None:
    s = TaskwiseEarlyStopping(["a"], 3, 1.0, {"a": 1.0})
    s.update(0, {"a": 1.0}, {"a": 1.0}, lambdas={"a": 0.5, "landmarks": 9.0})  # unknown keys ignored
    assert s.lambdas["a"] == 0.5 and s.history["a"][0]["lambda"] == 0.5
    with pytest.raises(ValueError, match="lambda for task 'a' must be a finite value > 0"):
        s.update(1, {"a": 1.0}, {"a": 1.0}, lambdas={"a": 0.0})


def test_fewer_than_k_points_never_stops() -> None:
    s = TaskwiseEarlyStopping(["a"], strip_k=6, epsilon=0.0, lambdas={"a": 1.0})
    for t in range(5):  # val loss far above train: would stop at once given enough history
        assert s.update(t, {"a": 1.0 / (t + 1)}, {"a": 100.0}) == []
    assert s.active("a") and all(r["criterion"] == 0.0 for r in s.history["a"])
    assert s.update(5, {"a": 1 / 6}, {"a": 100.0}) == ["a"]


def test_criterion_values_and_degenerate_cases() -> None:
    # Hand computation: strip [4, 2, 1], med 2, k*med 6, sum 7 -> trend 6; val 1.5, min 1, lambda 0.5 -> gen 1.
    assert criterion([4.0, 2.0, 1.0], 1.5, 3, 0.5) == pytest.approx(6.0)
    # The strip is the last k losses, the minimum is over the whole history.
    assert criterion([0.5, 4.0, 2.0, 1.0], 1.5, 3, 1.0) == pytest.approx(6.0 * 2.0)
    # Flat strip: trend term +inf; stops whenever validation exceeds the best training loss...
    assert criterion([1.0, 1.0, 1.0], 1.1, 3, 1.0) == math.inf
    # ...but never when it does not (no NaN from inf * 0).
    assert criterion([1.0, 1.0, 1.0], 1.0, 3, 1.0) == 0.0
    assert criterion([1.0, 1.0, 1.0], 0.9, 3, 1.0) == 0.0
    # Rising strips: stalled, +inf, whether sum - k*med is negative (concave) or positive (convex).
    assert criterion([1.0, 1.4, 1.5], 1.6, 3, 1.0) == math.inf
    assert criterion([1.0, 1.1, 1.5], 1.6, 3, 1.0) == math.inf
    # A strip falling linearly or at an accelerating rate (sum <= k*med) is still learning: never stopped
    # (the literal formula would divide by <= 0; see the module doc).
    assert criterion([1.5, 1.4, 1.0], 1.1, 3, 1.0) == 0.0
    assert criterion([1.5, 1.25, 1.0], 1.1, 3, 1.0) == 0.0
    # Not enough history.
    assert criterion([1.0, 0.5], 5.0, 3, 1.0) == 0.0
    # A zero training loss does not divide by zero.
    assert criterion([1.0, 0.1, 0.0], 0.1, 3, 1.0) > 1e6


def test_state_round_trip_resumes_identically() -> None:
    curves = {"pose": _overfitting, "smile": _improving}
    full = TaskwiseEarlyStopping(list(curves), 5, 10.0, {"pose": 1.0, "smile": 1.0})
    _run(full, curves, 30)

    first = TaskwiseEarlyStopping(list(curves), 5, 10.0, {"pose": 1.0, "smile": 1.0})
    for t in range(7):
        first.update(t, {k: f(t)[0] for k, f in curves.items()}, {k: f(t)[1] for k, f in curves.items()})
    state = json.loads(json.dumps(first.state_dict()))  # survives JSON (and so torch.save)
    resumed = TaskwiseEarlyStopping(list(curves), 5, 10.0, {"pose": 1.0, "smile": 1.0})
    resumed.load_state_dict(state)
    for t in range(7, 30):
        vals = {k: f(t) for k, f in curves.items() if resumed.active(k)}
        resumed.update(t, {k: v[0] for k, v in vals.items()}, {k: v[1] for k, v in vals.items()})
    assert resumed.stopped_at == full.stopped_at
    assert resumed.history == full.history
    with pytest.raises(ValueError, match="state is for tasks"):
        TaskwiseEarlyStopping(["other"], 5, 10.0, {"other": 1.0}).load_state_dict(state)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="no value for tasks"):
        TaskwiseEarlyStopping(["a", "b"], 5, 1.0, {"a": 1.0})
    with pytest.raises(ValueError, match="strip_k"):
        TaskwiseEarlyStopping(["a"], 1, 1.0, {"a": 1.0})
    s = TaskwiseEarlyStopping(["a", "b"], 3, 1.0, {"a": 1.0, "b": 1.0})
    with pytest.raises(KeyError, match=r"train_losses has no value for active tasks \['b'\]"):
        s.update(0, {"a": 1.0}, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="non-finite val_losses"):
        s.update(0, {"a": 1.0, "b": 1.0}, {"a": float("nan"), "b": 1.0})
    with pytest.raises(KeyError, match="unknown task 'c'"):
        s.active("c")


def test_works_for_any_task_set() -> None:
    rng = np.random.default_rng(0)
    tasks = [f"aux{i}" for i in range(6)]
    s = TaskwiseEarlyStopping(tasks, 4, 5.0, {t: 1.0 for t in tasks})
    for t in range(20):
        tr = {k: 1.0 + 0.01 * rng.random() for k in tasks}
        va = {k: 2.0 for k in tasks}
        s.update(t, tr, va)
    assert set(s.stopped_at) == set(tasks)
