"""Landmarks for a whole folder of images, streamed into one results file that a killed run resumes.

``tcdcn-align DIR --out results.jsonl|results.parquet [--workers N] [--batch-size B]`` (:func:`align_folder`):

* Worker processes (``--workers N``; ``0``: this process) each hold one :class:`~tcdcn_ext.Aligner` (model loaded
  once, one torch thread) and take ``B`` images at a time: decode every image, detect, then one batched native
  forward for all faces of the ``B`` images. Results come back in folder order.
* Rows (one per image: :data:`COLUMNS`) are written as they arrive: JSON lines appended and flushed per batch, or
  Parquet parts (``OUT.parts/part-*.parquet``, each written atomically, every ``--flush-every`` rows) that the end
  of the run merges into ``OUT`` (Parquet needs ``pyarrow``: ``pip install "tcdcn_ext[parquet]"``).
* Resume: a new run with the same ``--out`` reads what is already there and aligns only the other images, so after
  any number of kills every image has exactly one row. A JSON-lines file cut inside a line by the kill loses that
  torn line (its image is aligned again); a Parquet part is either complete or absent (its temp file is removed).
* Progress: a tqdm bar on stderr over all images of the folder (those already done count from the start).

The same row layout comes out of :mod:`tcdcn_ext.integrations.ray`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..util.files import atomic_write, fsync_dir
from ..util.progress import progress_bar

__all__ = ["COLUMNS", "FolderStats", "align_folder", "arrow_schema", "error_row", "face_columns", "list_images"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".jp2"}

#: One row per image. ``boxes`` ``[F][4]`` (x0, y0, x1, y1), ``scores`` ``[F]``, ``landmarks`` ``[F][P][2]`` image
#: pixels, and for every attribute task of the model (5-point model: pose, gender, glasses, smile) the columns
#: ``<task>`` (``[F]`` labels) and ``<task>_probability`` (``[F]``). ``error`` is null unless the image could not
#: be read or aligned (then the face columns are empty).
COLUMNS = ("file", "width", "height", "error", "num_faces", "boxes", "scores", "landmarks")


def list_images(root: str | os.PathLike, recursive: bool = False) -> list[str]:
    """The image files under ``root`` (by extension), as sorted ``/``-separated paths relative to ``root``."""
    root = Path(root)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(f.relative_to(root).as_posix() for f in found
                  if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())


def face_columns(faces: Sequence[Any], tasks: Sequence[str]) -> dict[str, Any]:
    """The face columns of one image's row (:data:`COLUMNS` from ``num_faces`` on, and the attribute columns of
    ``tasks``) from its :class:`~tcdcn_ext.Face` list, as plain Python lists and floats."""
    row: dict[str, Any] = {
        "num_faces": len(faces),
        "boxes": [[float(v) for v in f.box] for f in faces],
        "scores": [float(f.score) for f in faces],
        "landmarks": [np.asarray(f.landmarks, np.float64).tolist() for f in faces],
    }
    for t in tasks:
        attrs = [f.attributes[t] for f in faces]
        row[t] = [a.label for a in attrs]
        row[f"{t}_probability"] = [float(a.probability) for a in attrs]
    return row


def error_row(file: str, tasks: Sequence[str], error: str | None, size: tuple[int, int] | None = None) -> dict:
    """The row of an image that could not be read or aligned: ``error`` set, no faces."""
    row = {"file": file, "width": size[1] if size else None, "height": size[0] if size else None, "error": error}
    row.update(face_columns([], tasks))
    return row


# ----------------------------------------------------------------------------------------------------------------
# Workers


_ALIGNER: Any = None


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies (a SIGKILLed run must not leave
    workers behind that keep the CPU busy)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _init_worker(aligner_kwargs: dict[str, Any]) -> None:
    """A worker process: one Aligner, one torch thread (the workers are the parallelism)."""
    global _ALIGNER
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import torch

    from .aligner import Aligner

    torch.set_num_threads(1)
    _ALIGNER = Aligner(**aligner_kwargs, progress=False)


def _align_chunk(task: tuple[str, list[str]]) -> list[dict[str, Any]]:
    """Decode, detect and align a batch of images (paths relative to ``root``): one row per image."""
    from .images import ImageError, load_image

    root, files = task
    aligner = _ALIGNER
    tasks = aligner.attribute_tasks
    rows: dict[str, dict[str, Any]] = {}
    good, images = [], []
    for f in files:
        try:
            images.append(load_image(Path(root) / f))
            good.append(f)
        except ImageError as exc:
            rows[f] = error_row(f, tasks, str(exc))
    if images:
        try:
            results = aligner.align_batch(images)
        except (ValueError, RuntimeError) as exc:  # detector failures: the batch's rows say so
            results = None
            for f, im in zip(good, images):
                rows[f] = error_row(f, tasks, f"{type(exc).__name__}: {exc}", im.shape[:2])
        if results is not None:
            for f, im, faces in zip(good, images, results):
                rows[f] = {"file": f, "width": im.shape[1], "height": im.shape[0], "error": None,
                           **face_columns(faces, tasks)}
    return [rows[f] for f in files]


# ----------------------------------------------------------------------------------------------------------------
# Sinks: what is already there, and appending rows


class _JsonlSink:
    """Rows as JSON lines appended to ``path``, flushed after every batch."""

    def __init__(self, path: Path, tasks: Sequence[str]) -> None:
        self.path = path
        self.done: set[str] = set()
        if path.exists():
            with open(path, "rb+") as f:
                data = f.read()
                keep = data.rfind(b"\n") + 1  # a line the kill cut short is dropped; its image is aligned again
                if keep != len(data):
                    f.truncate(keep)
            for n, line in enumerate(data[:keep].splitlines(), start=1):
                if line.strip():
                    try:
                        self.done.add(json.loads(line)["file"])
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ValueError(f"{path}:{n}: not a row of tcdcn-align --out ({exc}); give another --out "
                                         "or remove the file") from exc
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._f.write("".join(json.dumps(r) + "\n" for r in rows))
        self._f.flush()

    def close(self, complete: bool) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def arrow_schema(tasks: Sequence[str]) -> Any:
    """The Arrow schema of the rows (:data:`COLUMNS` and the attribute columns of ``tasks``)."""
    import pyarrow as pa

    fields = [("file", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("error", pa.string()),
              ("num_faces", pa.int32()), ("boxes", pa.list_(pa.list_(pa.float64()))),
              ("scores", pa.list_(pa.float64())), ("landmarks", pa.list_(pa.list_(pa.list_(pa.float64()))))]
    for t in tasks:
        fields += [(t, pa.list_(pa.string())), (f"{t}_probability", pa.list_(pa.float64()))]
    return pa.schema(fields)


class _ParquetSink:
    """Rows as Parquet parts in ``OUT.parts/`` (each complete or absent), merged into ``OUT`` at the end."""

    def __init__(self, path: Path, tasks: Sequence[str], flush_every: int) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError("Parquet output needs pyarrow: `pip install pyarrow` (or \"tcdcn_ext[parquet]\"), "
                              "or write JSON lines with --out FILE.jsonl") from exc
        self.pq, self.path, self.flush_every = pq, path, max(1, int(flush_every))
        self.schema = arrow_schema(tasks)
        self.parts = path.with_name(path.name + ".parts")
        self.parts.mkdir(exist_ok=True)
        for tmp in self.parts.glob("*.tmp"):  # a part the kill interrupted: its rows are aligned again
            tmp.unlink()
        if path.exists():  # a finished run's file (new images were added since): it becomes the first part
            os.replace(path, self.parts / "part-000000.parquet")
            fsync_dir(self.parts)
        self.done = set()
        self.count = 0
        for part in sorted(self.parts.glob("part-*.parquet")):
            table = pq.read_table(part, columns=["file"])
            if table.schema.field("file").type != self.schema.field("file").type:
                raise ValueError(f"{part}: not a part of tcdcn-align --out")
            self.done.update(table.column("file").to_pylist())
            self.count = max(self.count, int(part.stem.split("-")[1]) + 1)
        self.pending: list[dict[str, Any]] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        import pyarrow as pa

        table = pa.Table.from_pylist(self.pending, schema=self.schema)
        target = self.parts / f"part-{self.count:06d}.parquet"
        atomic_write(target, lambda f: self.pq.write_table(table, f))
        self.count += 1
        self.pending = []

    def close(self, complete: bool) -> None:
        self._flush()
        if not complete:
            return
        parts = sorted(self.parts.glob("part-*.parquet"))
        tables = [self.pq.read_table(p, schema=self.schema) for p in parts]
        import pyarrow as pa

        table = pa.concat_tables(tables) if tables else self.schema.empty_table()
        table = table.sort_by("file")
        atomic_write(self.path, lambda f: self.pq.write_table(table, f))
        for p in parts:
            p.unlink()
        self.parts.rmdir()
        fsync_dir(self.path.parent)


# ----------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class FolderStats:
    images: int  # in the folder
    skipped: int  # already in the output (resume)
    aligned: int  # rows written by this run
    failed: int  # of those, rows with an error
    faces: int  # faces in this run's rows
    seconds: float  # this run, workers' start included


def _chunks(files: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(files), size):
        yield files[i:i + size]


def align_folder(root: str | os.PathLike, out: str | os.PathLike, aligner_kwargs: dict[str, Any] | None = None,
                 workers: int = 0, batch_size: int = 16, recursive: bool = False, progress: bool = True,
                 flush_every: int = 512, on_rows: Callable[[int], None] | None = None) -> FolderStats:
    """Align every image under ``root`` into ``out`` (``.jsonl`` or ``.parquet``), resuming what ``out`` holds.

    ``aligner_kwargs``: the :class:`~tcdcn_ext.Aligner` arguments (strings and numbers: every worker builds its own).
    ``workers``: processes (0: this one); ``batch_size``: images per worker task and batched forward;
    ``flush_every``: rows per Parquet part. Returns the run's :class:`FolderStats`.
    """
    import time

    from .aligner import Aligner

    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    kwargs = dict(aligner_kwargs or {})
    suffix = out.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"--out must end in .jsonl or .parquet, got {out.name!r}")
    if int(batch_size) < 1 or int(workers) < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    files = list_images(root, recursive)
    global _ALIGNER
    # In this process: the aligner itself (workers == 0), or the model alone for the attribute columns.
    local = Aligner(**(kwargs if workers == 0 else {**kwargs, "detector": "none"}), progress=False)
    tasks = list(local.attribute_tasks)
    out.parent.mkdir(parents=True, exist_ok=True)
    sink = _JsonlSink(out, tasks) if suffix == ".jsonl" else _ParquetSink(out, tasks, flush_every)
    todo = [f for f in files if f not in sink.done]
    skipped = len(files) - len(todo)
    stats = FolderStats(len(files), skipped, 0, 0, 0, 0.0)
    bar = progress_bar(len(files), "tcdcn-align", progress, unit="img", initial=skipped)
    tasks_iter = ((str(root), chunk) for chunk in _chunks(todo, int(batch_size)))
    pool = None
    complete = False
    try:
        if workers == 0:
            _ALIGNER = local
            results: Iterable[list[dict[str, Any]]] = map(_align_chunk, tasks_iter)
        else:
            ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools exist is unsafe
            pool = ctx.Pool(int(workers), initializer=_init_worker, initargs=(kwargs,))
            results = pool.imap(_align_chunk, tasks_iter)
        for rows in results:
            sink.write(rows)
            stats.aligned += len(rows)
            stats.failed += sum(r["error"] is not None for r in rows)
            stats.faces += sum(r["num_faces"] for r in rows)
            bar.update(len(rows))
            if on_rows is not None:
                on_rows(stats.aligned)
        complete = True
    finally:
        if pool is not None:
            pool.terminate() if not complete else pool.close()
            pool.join()
        bar.close()
        sink.close(complete)
        _ALIGNER = None
    stats.seconds = time.perf_counter() - t0
    return stats
