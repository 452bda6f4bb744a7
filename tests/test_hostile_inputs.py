"""Hostile inputs to the Aligner and to ``tcdcn-align``: every one gives a clear exception or an honest result
(a list of faces with finite landmarks, or ``[]``), never a crash, a hang or a runaway allocation.

Complements tests/test_aligner.py::test_hostile_inputs (which covers one truncated JPEG, empty/missing/text files,
a directory, a 16-bit PNG, 1x1 files and bad arrays/tensors): here files are cut and corrupted at many points,
PNG colour types are built byte by byte (grey, grey+alpha, RGBA, palette, 16-bit), sizes go to 20000x20000 and
to headers that claim billions of pixels, boxes are hostile, videos end early, and the CLI runs in a subprocess on
a folder of mixed good and bad files.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
import sys
import textwrap
import zlib
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import tcdcn_ext
from tcdcn_ext.aligner import Aligner, Face, ImageError
from tcdcn_ext.model import shipped_models

# Child interpreters must import the tcdcn_ext this process imported (the installed package in CI, an in-place
# build in a checkout) and must not start in the source tree, whose tcdcn_ext (without _C) would shadow it.
PKG_PARENT = str(Path(tcdcn_ext.__file__).resolve().parents[1])
ASTRONAUT = Path(str(files("tcdcn_ext") / "assets" / "astronaut.jpg"))
BOX = (177.0, 77.0, 265.0, 165.0)  # the astronaut's face, model box convention (as in test_aligner.py)
CROP_BOX = (57.0, 57.0, 145.0, 145.0)  # the same face inside CROP
CROP = (slice(20, 220), slice(120, 320))



@pytest.fixture(scope="module")
def boxed() -> Aligner:
    if "5pt" not in shipped_models():
        pytest.skip("the shipped 5-point model is missing")
    return Aligner(detector="none")


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def crop(rgb) -> np.ndarray:
    return np.ascontiguousarray(rgb[CROP])


def _honest(result) -> None:
    """A usable answer: a list of faces, each with finite landmarks of the right shape."""
    assert isinstance(result, list)
    for face in result:
        assert isinstance(face, Face)
        assert face.landmarks.shape == (5, 2) and np.isfinite(face.landmarks).all()


def _error_or_honest(call, name: str) -> str:
    """Run ``call``: an ImageError naming the input, or an honest result. Returns which."""
    try:
        result = call()
    except ImageError as exc:
        assert name in str(exc), str(exc)
        return "error"
    _honest(result)
    return "result"


# ----------------------------------------------------------------------------------------------------------------
# PNG files built byte by byte (cv2 cannot write palette or grey+alpha PNGs)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(pixels: np.ndarray, color_type: int, palette: np.ndarray | None = None,
              trns: bytes | None = None) -> bytes:
    """A PNG of ``pixels`` ([H, W] or [H, W, C], uint8 or big-endian-written uint16) with the given colour type
    (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA)."""
    a = pixels if pixels.ndim == 3 else pixels[:, :, None]
    h, w = a.shape[:2]
    depth = 16 if a.dtype == np.uint16 else 8
    raw = a.astype(">u2").tobytes() if depth == 16 else a.tobytes()
    stride = len(raw) // h
    rows = b"".join(b"\x00" + raw[i * stride:(i + 1) * stride] for i in range(h))
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(rows, 6)) + _chunk(b"IEND", b"")


def png_claiming(width: int, height: int, rows: int = 4) -> bytes:
    """A grey PNG whose header claims ``width x height`` but that holds only ``rows`` rows of zeros."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    data = b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


# ----------------------------------------------------------------------------------------------------------------
# Truncated and corrupt files


CUTS = [0.0005, 0.003, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98, 0.999]


@pytest.mark.parametrize("fmt", [".jpg", ".png"])
def test_truncated_files_at_many_points(boxed, crop, tmp_path, fmt):
    ok, enc = cv2.imencode(fmt, crop[:, :, ::-1])
    blob = enc.tobytes()
    outcomes = {}
    for frac in CUTS:
        path = tmp_path / f"cut_{frac}{fmt}"
        path.write_bytes(blob[: max(1, int(len(blob) * frac))])
        outcomes[frac] = _error_or_honest(lambda: boxed.align(path, [CROP_BOX]), path.name)
    # Headers cut short can never decode; a truncated PNG is always refused (libpng checks the data length).
    assert outcomes[0.0005] == outcomes[0.003] == "error"
    if fmt == ".png":
        assert set(outcomes.values()) == {"error"}, outcomes


@pytest.mark.parametrize("fmt", [".jpg", ".png"])
def test_corrupted_bytes(boxed, crop, tmp_path, fmt):
    ok, enc = cv2.imencode(fmt, crop[:, :, ::-1])
    blob = enc.tobytes()
    rng = np.random.default_rng(0)
    seen = set()
    for trial in range(24):
        data = bytearray(blob)
        if trial < 8:  # the header / first segments
            pos = rng.integers(0, min(200, len(data)), size=3)
        else:  # anywhere, including the entropy-coded data
            pos = rng.integers(0, len(data), size=1 + trial % 4)
        for p in pos:
            data[int(p)] ^= int(rng.integers(1, 256))
        path = tmp_path / f"flip_{trial}{fmt}"
        path.write_bytes(bytes(data))
        seen.add(_error_or_honest(lambda: boxed.align(path, [CROP_BOX]), path.name))
    assert "error" in seen  # some corruptions are detected; the others decode to some image, honestly aligned


def test_wrong_extension_and_garbage(boxed, crop, tmp_path):
    ok, enc = cv2.imencode(".png", crop[:, :, ::-1])
    disguised = tmp_path / "photo.jpg"  # PNG bytes, .jpg name: decoded by content
    disguised.write_bytes(enc.tobytes())
    _honest(boxed.align(disguised, [CROP_BOX]))
    for name, data in [("zero.png", b""), ("nul.jpg", b"\x00" * 4096), ("magic_only.png", b"\x89PNG\r\n\x1a\n"),
                       ("soi_only.jpg", b"\xff\xd8\xff"), ("random.png", np.random.default_rng(1).bytes(5000))]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageError, match=name.replace(".", r"\.")):
            boxed.align(path, [CROP_BOX])
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageError, match="directory"):
        boxed.align(folder, [CROP_BOX])


# ----------------------------------------------------------------------------------------------------------------
# PNG colour types and depths


def test_png_colour_types(boxed, crop, tmp_path):
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    want_grey = boxed.align(grey, [CROP_BOX])[0].landmarks
    want_rgb = boxed.align(crop, [CROP_BOX])[0].landmarks
    alpha = np.random.default_rng(0).integers(0, 256, grey.shape, dtype=np.uint8)
    levels = np.arange(256, dtype=np.uint8)
    cases = {
        "grey.png": (png_bytes(grey, 0), want_grey),
        "grey_alpha.png": (png_bytes(np.stack([grey, alpha], 2), 4), want_grey),
        "rgba.png": (png_bytes(np.concatenate([crop, alpha[:, :, None]], 2), 6), want_rgb),
        "rgb.png": (png_bytes(crop, 2), want_rgb),
        # a palette whose entries are the grey levels: decodes to exactly the grey image
        "palette.png": (png_bytes(grey, 3, palette=np.stack([levels] * 3, 1)), want_grey),
        "palette_trns.png": (png_bytes(grey, 3, palette=np.stack([levels] * 3, 1), trns=bytes(range(256))),
                             want_grey),
    }
    for name, (data, want) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        got = boxed.align(path, [CROP_BOX])
        _honest(got)
        # OpenCV's grey -> BGR -> grey round trip is exact; RGB -> grey rounding is at most half a level.
        np.testing.assert_allclose(got[0].landmarks, want, atol=0.5, err_msg=name)
    for name, pixels, ctype in [("grey16.png", grey.astype(np.uint16) * 257, 0),
                                ("rgba16.png", np.concatenate([crop, alpha[:, :, None]], 2).astype(np.uint16) * 257,
                                 6)]:
        path = tmp_path / name
        path.write_bytes(png_bytes(pixels, ctype))
        with pytest.raises(ImageError, match="16-bit"):
            boxed.align(path, [CROP_BOX])


def test_tiny_images(boxed, tmp_path):
    for shape in [(1, 1), (1, 1, 3), (1, 1, 4), (7, 200), (200, 7, 3), (0, 0)]:
        a = np.full(shape, 128, np.uint8)
        color = "rgba" if a.ndim == 3 and a.shape[2] == 4 else "rgb"
        with pytest.raises(ImageError, match="small|empty"):
            boxed.align(a, [(0, 0, 1, 1)], color=color)
    path = tmp_path / "one.png"
    path.write_bytes(png_bytes(np.zeros((1, 1), np.uint8), 0))
    with pytest.raises(ImageError, match="small"):
        boxed.align(path, [(0, 0, 1, 1)])
    # the smallest accepted image, with a box far larger than it: an honest (if meaningless) answer
    _honest(boxed.align(np.zeros((8, 8), np.uint8), [(-50, -50, 50, 50), (0, 0, 7, 7)]))


# ----------------------------------------------------------------------------------------------------------------
# Non-finite tensors and hostile boxes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tensors(boxed, dtype, value):
    for shape in [(3, 64, 64), (64, 64), (1, 64, 64)]:
        t = torch.rand(shape).to(dtype)
        t.view(-1)[17] = value
        with pytest.raises(ImageError, match="NaN or infinite"):
            boxed.align(t, [(0, 0, 60, 60)])


def test_hostile_boxes(boxed, crop):
    for bad in ([(0, 0, float("inf"), 50)], [(float("-inf"), 0, 50, 50)], [(0, 0, float("nan"), 50)],
                [(10, 10, 10, 20)], [(10, 20, 30, 20)]):
        with pytest.raises(ValueError, match="invalid boxes"):
            boxed.align(crop, bad)
    for bad in ([(1, 2, 3)], [[1, 2, 3, 4, 5]], "abcd", [("a", "b", "c", "d")], object()):
        with pytest.raises(ValueError):
            boxed.align(crop, bad)
    # Legal but absurd boxes: far outside, enormous, sub-pixel. Honest, finite answers, and quickly.
    absurd = [(1e6, 1e6, 1e6 + 90, 1e6 + 90), (-1e30, -1e30, 1e30, 1e30), (50.0, 50.0, 50.001, 50.001),
              (-5e8, 3.0, 5e8, 4.0), (0.0, 0.0, 199.0, 199.0)]
    faces = boxed.align(crop, absurd)
    assert len(faces) == len(absurd)
    _honest(faces)


# ----------------------------------------------------------------------------------------------------------------
# Huge images and decompression bombs (memory measured in a fresh interpreter)


_CHILD_PRELUDE = """
import json, resource, sys
import numpy as np
from tcdcn_ext.aligner import Aligner, ImageError
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
al = Aligner(detector="none")
al.align(np.zeros((64, 64), np.uint8), [(4, 4, 60, 60)])  # warm up: weights, kernels, allocator
"""


def _run_child(body: str, timeout: float = 240) -> dict:
    """Run ``_CHILD_PRELUDE`` + ``body`` in a fresh interpreter; its last stdout line is JSON."""
    code = _CHILD_PRELUDE + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir(), env=env)
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])




def test_huge_array_with_boxes_reads_only_the_faces(tmp_path):
    """A 20000x20000 RGB array (1.2 GB, never touched: np.zeros maps pages lazily) with given boxes: only the
    face regions are read, so the process's peak RSS barely moves. A full copy would add 1.2 GB."""
    res = _run_child("""
    before = peak_mb()
    img = np.zeros((20000, 20000, 3), np.uint8)
    faces = al.align(img, [(100, 100, 300, 300), (19000, 19000, 19990, 19990), (0, 0, 19999, 19999)])
    print(json.dumps({"growth_mb": peak_mb() - before, "faces": len(faces),
                      "finite": bool(all(np.isfinite(f.landmarks).all() for f in faces))}))
    """)
    assert res["faces"] == 3 and res["finite"]
    assert res["growth_mb"] < 100, res


def test_header_claiming_billions_of_pixels_is_an_image_error(boxed, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(60000, 60000))  # 3.6e9 pixels claimed in a 200-byte file
    with pytest.raises(ImageError, match="bomb.png"):
        boxed.align(path, [(0, 0, 50, 50)])


def test_truncated_bomb_does_not_allocate(tmp_path):
    """A 1 kB file whose header claims 30000x30000 (under OpenCV's 2**30 pixel limit, 2.7 GB decoded) and holds
    4 rows: refused without the peak RSS growing."""
    path = tmp_path / "bomb30k.png"
    path.write_bytes(png_claiming(30000, 30000))
    res = _run_child(f"""
    before = peak_mb()
    try:
        al.align({str(path)!r}, [(0, 0, 50, 50)])
        outcome = "result"
    except ImageError as exc:
        outcome = "error: " + str(exc)
    print(json.dumps({{"growth_mb": peak_mb() - before, "outcome": outcome}}))
    """)
    assert res["outcome"].startswith("error") and "bomb30k.png" in res["outcome"], res
    assert res["growth_mb"] < 200, res


@pytest.mark.slow
def test_huge_png_file_memory_is_bounded(tmp_path):
    """A real 20000x20000 grey PNG (400 M pixels, 0.6 MB on disk): decoded and aligned with given boxes; the peak
    RSS growth stays within 2.5x the 3-channel decoded size (the decoder's grey buffer + the BGR image)."""
    path = tmp_path / "huge.png"
    n = 20000
    comp = zlib.compressobj(9)
    row = b"\x00" + bytes(range(256)) * (n // 256) + bytes(n % 256)
    data = b"".join(comp.compress(row) for _ in range(n)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", n, n, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    res = _run_child(f"""
    before = peak_mb()
    faces = al.align({str(path)!r}, [(100, 100, 300, 300), (0, 0, {n - 1}, {n - 1})])
    print(json.dumps({{"growth_mb": peak_mb() - before, "faces": len(faces)}}))
    """, timeout=600)
    decoded_mb = n * n * 3 / 2**20
    print(f"huge PNG: peak RSS growth {res['growth_mb']:.0f} MB for a {decoded_mb:.0f} MB decoded image")
    assert res["faces"] == 2
    assert res["growth_mb"] < 2.5 * decoded_mb, res


# ----------------------------------------------------------------------------------------------------------------
# Videos that end early, and the CLI on a folder of mixed files


def _write_video(path: Path, frames: list[np.ndarray], fourcc: str) -> bool:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (w, h))
    if not writer.isOpened():
        return False
    for f in frames:
        writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()
    return path.is_file() and path.stat().st_size > 0


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_truncated_and_fake_videos(crop, tmp_path):
    from tcdcn_ext.cli import align_main as main

    frames = [np.roll(crop, k, axis=1) for k in range(12)]
    full = tmp_path / "full.mp4"
    if not _write_video(full, frames, "mp4v"):
        pytest.skip("this OpenCV build cannot write mp4v")
    blob = full.read_bytes()
    for frac in (0.97, 0.6, 0.3, 0.05):
        cut = tmp_path / f"cut_{frac}.mp4"
        cut.write_bytes(blob[: int(len(blob) * frac)])
        out = tmp_path / f"cut_{frac}.jsonl"
        code = main([str(cut), "--json", str(out), "--quiet"])
        lines = _jsonl(out)
        assert lines, "no line at all"
        if code == 0:  # some frames were read: one line each, in order, faces honest
            assert [r["frame"] for r in lines] == list(range(len(lines))) and len(lines) <= len(frames)
            assert all("faces" in r for r in lines)
        else:  # nothing readable: one error line naming the file
            assert code == 1 and "error" in lines[-1] and cut.name in lines[-1]["error"], lines
    for name, data in [("zero.mp4", b""), ("text.mp4", b"not a video\n" * 50), ("header_only.mp4", blob[:64])]:
        path = tmp_path / name
        path.write_bytes(data)
        out = tmp_path / (name + ".jsonl")
        assert main([str(path), "--json", str(out), "--quiet"]) == 1
        lines = _jsonl(out)
        assert len(lines) == 1 and name in lines[0]["error"], lines


def test_cli_mixed_folder_keeps_going(crop, tmp_path):
    """``python -m tcdcn_ext align`` on a folder of good and bad files, in a subprocess (a crash would show as a
    signal exit): every file gets one JSON line, the bad ones an error naming them, exit status 1."""
    src = tmp_path / "in"
    src.mkdir()
    ok, jpg = cv2.imencode(".jpg", crop[:, :, ::-1])
    ok, png = cv2.imencode(".png", crop[:, :, ::-1])
    jpg, png = jpg.tobytes(), png.tobytes()
    good = {"a_face.jpg": jpg, "b_face.png": png, "c_grey.png": png_bytes(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), 0),
            "d_noface.png": png_bytes(np.full((64, 64), 90, np.uint8), 0)}
    bad = {"e_zero.jpg": b"", "f_trunc.jpg": jpg[:200], "g_trunc.png": png[: len(png) // 2],
           "h_deep.png": png_bytes(np.zeros((32, 32), np.uint16), 0), "i_text.png": b"hello",
           "j_tiny.png": png_bytes(np.zeros((2, 2), np.uint8), 0), "k_fake.mp4": b"\x00" * 100}
    for name, data in {**good, **bad}.items():
        (src / name).write_bytes(data)
    (src / "l_dir.jpg").mkdir()  # a directory named like an image: not a file, skipped
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "tcdcn_ext", "align", str(src), "--json", str(out), "--quiet",
                           "--batch", "3"], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=PKG_PARENT))
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    lines = _jsonl(out)
    by_file = {Path(r["file"]).name: r for r in lines}
    assert len(by_file) == len(lines) == len(good) + len(bad), sorted(by_file)
    for name in good:
        assert "faces" in by_file[name], by_file[name]
        _faces = by_file[name]["faces"]
        assert all(np.isfinite(np.asarray(f["landmarks"])).all() for f in _faces)
    assert len(by_file["a_face.jpg"]["faces"]) == 1 and by_file["d_noface.png"]["faces"] == []
    for name in bad:
        assert name in by_file[name].get("error", ""), by_file[name]


# ----------------------------------------------------------------------------------------------------------------
# Hostile weights files (complements tests/test_model_train.py::test_weights_round_trip_and_tamper_detection)


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _record_for(path: Path) -> None:
    """A checksum record that matches ``path`` exactly, as an attacker who controls both files would write."""
    import hashlib

    rec = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size,
           "config": {}, "meta": {}}
    path.with_suffix(".json").write_text(json.dumps(rec))


def test_malicious_pickle_with_matching_checksum_is_refused(tmp_path):
    from tcdcn_ext.model import TCDCN, WeightsError, load_model

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    blob = {"format": "tcdcn_ext/1", "config": TCDCN().config.to_dict(), "state_dict": TCDCN().state_dict(),
            "extra": _Payload(marker)}
    torch.save(blob, path)
    _record_for(path)  # the checksum passes: only weights_only stands between the file and code execution
    with pytest.raises(WeightsError, match="refusing to load the weights file"):
        load_model(path)
    assert not marker.exists(), "unpickling ran code"


def test_weights_that_do_not_fit_their_config(tmp_path):
    from tcdcn_ext.model import TCDCN, TCDCNConfig, WeightsError, load_model, save_weights

    path = tmp_path / "w.pt"
    save_weights(TCDCN(), path)
    good = torch.load(path, weights_only=True)
    cases = {
        "wider": {**good, "config": {**good["config"], "feature_dim": 256}},  # config says 256, tensors say 100
        "68pt": {**good, "config": {**good["config"], "num_points": 68}},
        "unknown_field": {**good, "config": {**good["config"], "backdoor": 1}},
        "config_not_dict": {**good, "config": [1, 2, 3]},
        "missing_tensor": {**good, "state_dict": {k: v for i, (k, v) in enumerate(good["state_dict"].items())
                                                  if i}},
        "not_a_dict": [good],
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.pt"
        torch.save(blob, p)
        _record_for(p)
        with pytest.raises(WeightsError, match=f"{name}.pt"):
            load_model(p)
    # truncated, with a record that matches the truncated bytes: the archive itself is refused
    data = path.read_bytes()
    for frac in (0.02, 0.5, 0.99):
        p = tmp_path / f"trunc_{frac}.pt"
        p.write_bytes(data[: int(len(data) * frac)])
        _record_for(p)
        with pytest.raises(WeightsError, match="cannot be read"):
            load_model(p)
    assert TCDCNConfig.from_dict(good["config"]) == TCDCN().config


@pytest.mark.parametrize("state", [torch.zeros(3), {"fc.weight": 3}, ["fc.weight"]])
def test_state_dict_of_the_wrong_type_is_a_weights_error(tmp_path, state):
    from tcdcn_ext.model import TCDCN, WeightsError, load_model

    p = tmp_path / "odd.pt"
    torch.save({"format": "tcdcn_ext/1", "config": TCDCN().config.to_dict(), "state_dict": state}, p)
    _record_for(p)
    with pytest.raises(WeightsError, match="odd.pt"):
        load_model(p)
