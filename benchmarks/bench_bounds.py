"""This machine's ceilings, measured in the same run as the model rows they bound (issue 6):

* ``fma_peak[1|2]``: fp32 GFLOP/s of independent vector FMA chains (``fma_peak.py``: a micro-benchmark built on first
  use, not part of ``tcdcn_ext._C``; the active CPU path's vector width) on 1 and on 2 threads at once. Divided by the
  ~6.8 MFLOP of one 5-point face, it is the batched throughput no implementation can pass (extra_info
  ``faces_per_s_bound``).
* ``read_weights[fp32|fp16]``: one thread streaming the 5-point network's locally connected weights once
  (13.4 MB fp32, 6.7 MB fp16; ``torch.sum``): the batch-1 latency floor (every weight is used once per face).

    pytest benchmarks/bench_bounds.py --benchmark-json=bench_bounds.json
"""

from __future__ import annotations

import threading

import pytest
import torch

from fma_peak import peak_function
from tcdcn_ext import ops
from tcdcn_ext.model import TCDCN
from tcdcn_ext.nn import LocallyConnected2d


def _flop_per_face() -> float:
    m = TCDCN()
    macs = sum(l.weight.numel() for l in m.conv if isinstance(l, LocallyConnected2d))
    macs += m.fc.weight.numel() + m.landmark_head.weight.numel() + sum(h.weight.numel() for h in m.aux_heads.values())
    return 2.0 * macs


@pytest.mark.parametrize("threads", [1, 2])
def test_fma_peak(benchmark, threads):
    results: list[float] = []
    peak = peak_function()  # built (or taken from the cache) before the threads start

    def run():
        results.clear()
        ts = [threading.Thread(target=lambda: results.append(peak(0.2))) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(results)

    benchmark.group = "bounds: fp32 FMA throughput"
    total = benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    flop = _flop_per_face()
    benchmark.extra_info.update(threads=threads, gflops=total, isa=ops.cpu_isa(), flop_per_face=flop,
                                faces_per_s_bound=total * 1e9 / flop)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_read_weights(benchmark, dtype):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = sum(l.weight.numel() for l in TCDCN().conv if isinstance(l, LocallyConnected2d))
        # fp16: the same number of bytes as fp32 floats (torch's half sum is not a full-speed read loop).
        buf = torch.randn(n if dtype == "fp32" else n // 2)
        benchmark.group = "bounds: read the 5-point conv weights once, 1 thread"
        benchmark.pedantic(buf.sum, rounds=100, warmup_rounds=10, iterations=1)
        nbytes = buf.numel() * 4
        benchmark.extra_info.update(bytes=nbytes, gb_per_s=nbytes / benchmark.stats.stats.median / 1e9,
                                    threads=1, latency_floor_ms=1e3 * benchmark.stats.stats.median)
    finally:
        torch.set_num_threads(before)
