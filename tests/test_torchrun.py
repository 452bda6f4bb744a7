"""``torchrun --nproc_per_node=2 -m tcdcn_ext train`` (gloo, CPU): one rank SIGKILLed mid-epoch, torchrun restarts
the job (``--max-restarts 1``, the same command with ``--resume``), every rank continues from rank 0's last
checkpoint, and the job ends with exactly the weights of an uninterrupted 2-rank run of the same schedule. The run
early-stops a task on the all-reduced losses (each rank checks that all agree, see ``check_ranks_agree``)."""

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
from conftest import descendants
from test_model_train import write_synthetic_split

import tcdcn_ext

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="finds the rank processes through /proc")

PKG_PARENT = str(Path(tcdcn_ext.__file__).resolve().parents[1])
EPOCHS = 6
SMALL = '{"channels": [4, 8, 8, 8], "feature_dim": 16}'


def _cmd(split: Path, out: Path, restarts: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--max-restarts", str(restarts), "--monitor-interval", "0.1", "-m", "tcdcn_ext", "train",
            "--data", str(split), "--out", str(out), "--epochs", str(EPOCHS), "--batch-size", "8",
            "--val-fraction", "0.25", "--strip-k", "2", "--epsilon", "0", "--seed", "5", "--model-json", SMALL,
            "--threads", "1", "--quiet", "--resume"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=PKG_PARENT, OMP_NUM_THREADS="1")


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(v.startswith(b"TORCHELASTIC_RUN_ID=") for v in env):
            return pid
    return None


def _epoch(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) if ckpt.exists() else 0


def test_torchrun_rank_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    split = write_synthetic_split(tmp_path / "split", n=64)
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    # cwd: not the checkout, whose source tcdcn_ext (no compiled _C where the package is installed, as in CI) would
    # shadow the installed one for `python -m`
    ref = subprocess.run(_cmd(split, ref_dir, 0), env=_env(), capture_output=True, timeout=600, cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr.decode()[-3000:]

    ckpt = run_dir / "checkpoint.pt"
    log = open(tmp_path / "killed.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(_cmd(split, run_dir, 1), env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        victim = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            victim = victim or _rank_pid(proc.pid, 1)
            if victim and ckpt.exists():
                break
            time.sleep(0.002)
        assert victim and proc.poll() is None, "the job ended before a rank could be killed"
        time.sleep(0.05)  # into the next epoch
        os.kill(victim, signal.SIGKILL)
        killed_at = _epoch(ckpt)
        assert proc.wait(timeout=600) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "killed.log").read_text()
    assert killed_at < EPOCHS, "the kill came after the last epoch"
    assert "resumed from" in out, out[-3000:]  # the restarted ranks continued from the checkpoint

    a = torch.load(ref_dir / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs after kill/restart"
    assert a["stopper"]["stopped_at"] == b["stopper"]["stopped_at"] and a["stopper"]["stopped_at"], \
        "no task was early-stopped: the run did not exercise the all-reduced decision"
    ref_log = [json.loads(line) for line in (ref_dir / "log.jsonl").read_text().splitlines()]
    run_log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in run_log] == list(range(1, EPOCHS + 1))
    for x, y in zip(ref_log, run_log):
        x.pop("seconds"), y.pop("seconds")
        assert x == y
    assert not list(run_dir.glob("*.tmp"))
