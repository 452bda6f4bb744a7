"""Files that survive a crash and load without running code: atomic writes and the one ``torch.load`` policy.

Every file the package writes for later (resume checkpoints, weights, their JSON records, the training log when a
resume rewrites it) goes through :func:`atomic_write`: a temp file in the same folder, flushed and fsynced, renamed
over the target, then the folder itself fsynced. The rename is atomic, so a reader sees the old file or the new one,
never a torn one; the folder fsync makes the rename itself durable (without it a power cut after the rename can
bring back the old directory entry, or lose the file when it was new).

Every ``torch.load`` of the package goes through :func:`load_tensors`, which passes ``weights_only=True``: torch's
restricted unpickler builds tensors, numbers, strings and plain containers only and refuses any other global (a
class, a function such as ``os.system``), so a planted or tampered file raises :class:`UnsafeFileError` instead of
executing its payload. The training checkpoint therefore holds nothing else (numpy's RNG state is plain dicts and
ints, the optimiser state tensors, numbers and lists).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["UnsafeFileError", "atomic_torch_save", "atomic_write", "atomic_write_text", "fsync_dir", "load_tensors"]


class UnsafeFileError(pickle.UnpicklingError):
    """A checkpoint or weights file holds pickled Python objects that ``weights_only`` loading refuses to build."""


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync the folder ``path`` so that the renames and creations inside it are durable (no-op where a folder
    cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is still atomic there
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(binary file)`` into ``path.tmp``, fsync it, rename it over ``path`` and fsync
    the folder. On an exception the temp file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_tensors(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a file that would need any other Python object
    raises :class:`UnsafeFileError` naming the file and the refused global (nothing from the file is run)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch reports the refused global in its message ("Unsupported global: GLOBAL os.system ..."); keep the
        # line; its advice to allowlist the global is exactly what must not be done here.
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "global" in line.lower()), first[0] if first else "")
        detail = detail.split(" Please use", 1)[0].strip()
        raise UnsafeFileError(
            f"refusing to load the {what} {path}: it holds pickled Python objects other than tensors, numbers, "
            f"strings and plain containers ({detail}). tcdcn_ext never writes such files; this one was not made by "
            "tcdcn_ext or was tampered with. Nothing from it was executed.") from exc
