"""Crash-safe training: ``python -m tcdcn_ext train`` killed with SIGKILL mid-epoch (and once while it saves a
checkpoint) and restarted with ``--resume`` ends with exactly the weights of an uninterrupted run (training on one
thread is bit-deterministic). After every kill the checkpoint loads; at the end no temp file is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_model_train import write_synthetic_split

import tcdcn_ext

# The child trainings import the tcdcn_ext this process imported (installed package or in-place build) and start
# outside the source tree, whose tcdcn_ext (without _C) would shadow it.
PKG_PARENT = str(Path(tcdcn_ext.__file__).resolve().parents[1])
EPOCHS = 5


def _cmd(split: Path, out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "tcdcn_ext", "train", "--data", str(split), "--out", str(out),
           "--epochs", str(EPOCHS), "--batch-size", "8", "--threads", "1", "--val-fraction", "0.25",
           "--strip-k", "2", "--seed", "3", "--quiet"]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=PKG_PARENT, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _epoch_of(ckpt: Path) -> int:
    """The checkpoint's epoch; it must always load (a torn file would raise here)."""
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])


def _start(split: Path, out: Path, resume: bool) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}.stderr", "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(_cmd(split, out, resume), cwd=str(split.parent), env=_env(), stdout=log,
                            stderr=log)


def _kill(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 240.0, poll: float = 0.002) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise TimeoutError("training made no progress")


def test_sigkill_and_resume_reaches_the_uninterrupted_weights(tmp_path):
    split = write_synthetic_split(tmp_path / "split", n=64)
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref_dir.mkdir()
    run_dir.mkdir()
    ckpt = run_dir / "checkpoint.pt"
    tmp_ckpt = run_dir / "checkpoint.pt.tmp"

    ref = subprocess.run(_cmd(split, ref_dir, False), cwd=str(split.parent), env=_env(), capture_output=True,
                         timeout=900)
    assert ref.returncode == 0, ref.stderr.decode()[-3000:]

    kills: list[tuple[str, int, bool]] = []  # (how, checkpoint epoch after the kill, a .tmp was left)
    # 1: mid-epoch, after the first checkpoint exists (epoch 2 is running).
    proc = _start(split, run_dir, resume=False)
    assert _wait_for(lambda: ckpt.exists(), proc)
    time.sleep(0.15)
    assert _kill(proc) == -signal.SIGKILL
    kills.append(("mid-epoch", _epoch_of(ckpt), tmp_ckpt.exists()))
    # 2: while a checkpoint is being written (the temp file exists): the previous checkpoint must stay intact.
    proc = _start(split, run_dir, resume=True)
    before = _epoch_of(ckpt)
    if _wait_for(lambda: tmp_ckpt.exists(), proc, poll=0.0005):
        _kill(proc)
    kills.append(("during save", _epoch_of(ckpt), tmp_ckpt.exists()))
    assert kills[-1][1] >= before
    # 3: mid-epoch again, after one more epoch.
    proc = _start(split, run_dir, resume=True)
    now = _epoch_of(ckpt)
    if _wait_for(lambda: _epoch_of(ckpt) > now if ckpt.exists() else False, proc):
        time.sleep(0.1)
        _kill(proc)
    kills.append(("mid-epoch", _epoch_of(ckpt), tmp_ckpt.exists()))
    print("kills (how, checkpoint epoch, tmp left):", kills)
    assert any(epoch < EPOCHS for _, epoch, _ in kills), "every kill came too late to interrupt anything"

    # Resume to the end.
    done = subprocess.run(_cmd(split, run_dir, True), cwd=str(split.parent), env=_env(), capture_output=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert not list(run_dir.glob("*.tmp")), "a temp file was left behind"

    a = torch.load(ref_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    b = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after kill/resume"
    assert a["best"] == b["best"]
    ref_sd = torch.load(ref_dir / "best.pt", weights_only=True)["state_dict"]
    run_sd = torch.load(run_dir / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ref_sd[k], run_sd[k]) for k in ref_sd)
    assert json.loads((ref_dir / "summary.json").read_text()) == json.loads((run_dir / "summary.json").read_text())

    # The epoch log: every epoch's metrics equal the reference's. An epoch killed between its log line and its
    # checkpoint is run again on resume and logged twice, identically (see docs/RELIABILITY.md).
    def metrics(path: Path) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            rec.pop("seconds")
            out.setdefault(rec["epoch"], []).append(rec)
        return out

    ref_log, run_log = metrics(ref_dir / "log.jsonl"), metrics(run_dir / "log.jsonl")
    assert sorted(run_log) == sorted(ref_log) == list(range(1, EPOCHS + 1))
    for epoch, recs in run_log.items():
        assert all(r == ref_log[epoch][0] for r in recs), f"epoch {epoch} differs from the reference"
    dup = {e: len(r) for e, r in run_log.items() if len(r) > 1}
    print("epochs logged twice after a kill:", dup or "none")


def test_resume_after_kill_between_log_and_checkpoint_logs_each_epoch_once(tmp_path):
    """The state a SIGKILL leaves between the log append and the checkpoint rename, built deterministically:
    the checkpoint of epoch 1 with the log of epochs 1-2."""
    from tcdcn_ext.train import TrainConfig, train

    split = write_synthetic_split(tmp_path / "split", n=24)
    base = dict(train_dir=str(split), batch_size=8, threads=1, progress=False, val_fraction=0.25, seed=3, epochs=3)
    one, two = tmp_path / "one", tmp_path / "two"
    train(TrainConfig(out_dir=str(one), **base), stop_after=1)
    train(TrainConfig(out_dir=str(two), **base), stop_after=2)
    (one / "log.jsonl").write_text((two / "log.jsonl").read_text())  # the epoch-2 line made it, the checkpoint not
    train(TrainConfig(out_dir=str(one), **base), resume=True)
    epochs = [json.loads(line)["epoch"] for line in (one / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3], epochs
