"""Shared pytest fixtures: device parametrisation, seeds and RNG restoration, the data folder."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch


def cpu_and_cuda():
    """Parametrise a test over "cpu" and "cuda"; the CUDA case carries the needs_cuda mark."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))


def descendants(pid: int) -> list[int]:
    """Linux: the ids of every process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def data_root() -> Path:
    """``$TCDCN_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("TCDCN_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible (torch.cuda.is_available() is False)")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fixed_seeds():
    """Seed every RNG for the test and restore the previous state afterwards."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)
