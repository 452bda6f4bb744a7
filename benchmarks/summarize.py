"""Summarise a pytest-benchmark JSON of the benchmarks: for the layer rows (bench_ops*.py) the median per row, sums
over the four TCDCN layers and the reference/ours ratios; for every other row (model, averaged, Aligner, bounds,
training) its median and the ratios and rates it stores in extra_info.

    python benchmarks/summarize.py bench_ops.json [--markdown]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


LAYER_NAMES = {"L1_40x40x1_k5_16", "L2_18x18x16_k3_48", "L3_8x8x48_k3_64", "L4_3x3x64_k2_64"}


def summarise(path: str) -> str:
    data = json.load(open(path))
    rows: dict[tuple, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "layer" not in info:
            continue
        key = (info.get("device", "cpu"), info["mode"], info["n"], info["layer"])
        rows[key][info["impl"]] = b["stats"]["median"]
    lines = ["| device | mode | N | layer | ours (ms) | reference (ms) | ratio |", "|---|---|---|---|---|---|---|"]
    totals: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for key in sorted(rows):
        r = rows[key]
        if "ours" in r and "reference" in r:
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {1e3 * r['ours']:.3f} | "
                         f"{1e3 * r['reference']:.3f} | {r['reference'] / r['ours']:.1f}x |")
            if key[3] in LAYER_NAMES:  # sums over the four TCDCN layers only (not the whole-model rows)
                for impl in ("ours", "reference"):
                    totals[key[:3]][impl] += r[impl]
    for key in sorted(totals):
        t = totals[key]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | **sum of 4 layers** | **{1e3 * t['ours']:.3f}** | "
                     f"**{1e3 * t['reference']:.3f}** | **{t['reference'] / t['ours']:.1f}x** |")
    keys = ("ratio_vs_one_pass", "ratio_vs_raw", "ratio_vs_reference", "speedup_vs_paper_17ms", "per_face_ms",
            "faces_per_s", "gflops", "faces_per_s_bound", "latency_floor_ms", "gb_per_s", "best_epoch_seconds")
    other = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "layer" in info and info.get("layer") != "model":
            continue
        facts = ", ".join(f"{k} {info[k]:.4g}" if isinstance(info[k], float) else f"{k} {info[k]}"
                          for k in keys if k in info)
        other.append(f"| {b['name']} | {1e3 * b['stats']['median']:.3f} | {facts} |")
    if other:
        lines += ["", "| row | median (ms) | from extra_info |", "|---|---|---|"] + other
    mi = data.get("machine_info", {})
    ci = data.get("commit_info", {})
    lines.append("")
    lines.append(f"torch {mi.get('torch')}, cpu_isa {mi.get('cpu_isa')}, gpu {mi.get('gpu')}, "
                 f"commit {str(ci.get('id', ''))[:10]}{' (dirty)' if ci.get('dirty') else ''}, {data.get('datetime')}")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("json")
    print(summarise(p.parse_args().json))
