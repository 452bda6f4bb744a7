"""Images per second of ``tcdcn-align DIR --out`` (tcdcn_ext.folder_align) against the per-image loop, same run.

    python benchmarks/folder_throughput.py ../shared/data/mtfl/test/images ../shared/data/scenes/test/images \\
        --json benchmarks/results/folder_throughput.json

Rows, for each folder: ``loop`` (today's way: ``for path in files: aligner(path)``, one process, one torch
thread), ``workers=0`` (the streaming CLI in this process, one thread: batched forward across images),
``workers=1`` and ``workers=2`` (worker processes, one thread each). Every row aligns the whole folder from scratch
(the output is deleted first) and counts the workers' start-up (each imports torch and loads the model). The CLI
runs write JSON lines. The detector runs on every image, so photos cost far more than crops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from tcdcn_ext import Aligner, ops
from tcdcn_ext.folder_align import align_folder, list_images


def _loop(root: Path, files: list[str]) -> tuple[float, int]:
    aligner = Aligner(progress=False)
    t0 = time.perf_counter()
    faces = 0
    for f in files:
        try:
            faces += len(aligner(str(root / f)))
        except ValueError:
            pass
    return time.perf_counter() - t0, faces


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    meta = {"cpu_isa": ops.cpu_isa(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "python": platform.python_version(), "batch_size": args.batch_size, "load_average_at_start": load}
    results = []
    for folder in args.folders:
        root = Path(folder)
        files = list_images(root)
        secs, faces = _loop(root, files)
        results.append({"folder": str(root), "images": len(files), "run": "loop", "seconds": secs, "faces": faces,
                        "images_per_s": len(files) / secs})
        print(json.dumps(results[-1]), flush=True)
        for w in args.workers:
            with tempfile.TemporaryDirectory() as tmp:
                stats = align_folder(root, Path(tmp) / "out.jsonl", {}, workers=w, batch_size=args.batch_size,
                                     progress=False)
            results.append({"folder": str(root), "images": len(files), "run": f"workers={w}",
                            "seconds": stats.seconds, "faces": stats.faces, "images_per_s": len(files) / stats.seconds})
            print(json.dumps(results[-1]), flush=True)
    meta["load_average_at_end"] = os.getloadavg()[0]
    print("\n| folder | images | run | s | images/s |\n|---|---:|---|---:|---:|")
    for r in results:
        name = "/".join(Path(r["folder"]).parts[-3:-1])  # e.g. mtfl/test for .../mtfl/test/images
        print(f"| {name} | {r['images']} | {r['run']} | "
              f"{r['seconds']:.1f} | {r['images_per_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
