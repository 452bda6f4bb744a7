"""``tcdcn-align DIR --out FILE.jsonl|FILE.parquet`` (tcdcn_ext.folder_align): rows equal the Aligner's results,
and a run SIGKILLed mid-way and started again ends with every image's row exactly once."""

from __future__ import annotations

import importlib.resources
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import descendants

import tcdcn_ext
from tcdcn_ext.cli import align_main
from tcdcn_ext.folder_align import align_folder, list_images

PKG_PARENT = str(Path(tcdcn_ext.__file__).resolve().parents[1])
N_IMAGES = 24


def _make_folder(root: Path, n: int = N_IMAGES) -> Path:
    """``n`` photos from the bundled astronaut (scaled, mirrored, shifted), one unreadable ``.jpg`` and a text
    file (not an image: ignored)."""
    blob = (importlib.resources.files("tcdcn_ext") / "assets" / "astronaut.jpg").read_bytes()
    bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        s = 0.45 + 0.3 * rng.random()
        im = cv2.resize(bgr, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        if i % 2:
            im = im[:, ::-1]
        dy, dx = rng.integers(0, 20, 2)
        cv2.imwrite(str(root / f"img_{i:03d}.jpg"), np.ascontiguousarray(im[dy:, dx:]))
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("photos") / "photos")


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_against_aligner(rows: list[dict], root: Path) -> None:
    from tcdcn_ext import Aligner

    aligner = Aligner()
    assert sorted(r["file"] for r in rows) == list_images(root)
    for r in rows:
        if r["file"] == "broken.jpg":
            assert r["error"] and r["num_faces"] == 0
            continue
        faces = aligner(str(root / r["file"]))
        assert r["error"] is None and r["num_faces"] == len(faces) > 0
        np.testing.assert_allclose(np.array(r["boxes"]), np.array([f.box for f in faces]), rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.array(r["landmarks"]), np.stack([f.landmarks for f in faces]), atol=1e-3)
        assert r["gender"] == [f.attributes["gender"].label for f in faces]


def test_jsonl_rows_equal_the_aligner(folder, tmp_path):
    out = tmp_path / "faces.jsonl"
    assert align_main([str(folder), "--out", str(out), "--batch-size", "5", "--quiet"]) == 1  # broken.jpg failed
    rows = _rows(out)
    _check_against_aligner(rows, folder)
    # Run again: everything is there, nothing is added.
    assert align_main([str(folder), "--out", str(out), "--quiet"]) == 0
    assert _rows(out) == rows


def test_parquet_resumes_from_its_parts(folder, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "faces.parquet"

    class Killed(Exception):
        pass

    def stop_after_two_parts(n: int) -> None:
        if n >= 16:
            raise Killed  # as a kill would: the pending rows are lost, the written parts stay

    with pytest.raises(Killed):
        align_folder(folder, out, batch_size=4, progress=False, flush_every=8, on_rows=stop_after_two_parts)
    parts_dir = tmp_path / "faces.parquet.parts"
    assert len(list(parts_dir.glob("part-*.parquet"))) == 2 and not out.exists()
    (parts_dir / "part-000002.parquet.tmp").write_bytes(b"torn")  # a part cut short by a kill
    stats = align_folder(folder, out, batch_size=4, progress=False, flush_every=8)
    assert stats.skipped == 16 and stats.aligned == N_IMAGES + 1 - 16
    assert not parts_dir.exists()
    _check_against_aligner(_rows(out), folder)


def test_sigkill_mid_run_then_resume_gives_every_row_once(folder, tmp_path):
    """Two worker processes; the CLI is SIGKILLed once rows have started to arrive, then run again."""
    out = tmp_path / "faces.jsonl"
    cmd = [sys.executable, "-m", "tcdcn_ext", "align", str(folder), "--out", str(out), "--workers", "2",
           "--batch-size", "2", "--quiet"]
    env = dict(os.environ, PYTHONPATH=PKG_PARENT, OMP_NUM_THREADS="1")
    # cwd: not the checkout, whose source tcdcn_ext (no compiled _C where the package is installed, as in CI) would
    # shadow the installed one for `python -m`
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.stat().st_size > 0:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed"
        workers = descendants(proc.pid) if sys.platform.startswith("linux") else []
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The workers die with the killed run (PR_SET_PDEATHSIG) instead of aligning on for nobody.
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]
    before = _rows(out) if out.exists() else []
    assert 0 < len(before) < N_IMAGES + 1, len(before)
    with open(out, "a") as f:  # and a line torn by the kill
        f.write('{"file": "img_0')
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=600, cwd=tmp_path)
    # Exit status 1 when this run wrote an error row (broken.jpg, unless the killed run had written it).
    assert done.returncode == (0 if any(r["file"] == "broken.jpg" for r in before) else 1), \
        done.stderr.decode()[-2000:]
    rows = _rows(out)
    assert len(rows) == N_IMAGES + 1 and len({r["file"] for r in rows}) == len(rows)
    assert rows[:len(before)] == before
    _check_against_aligner(rows, folder)
