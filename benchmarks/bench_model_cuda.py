"""The whole TCDCN forward on the GPU: latency at batch 1 (eager and CUDA graph) and batched throughput, against the
paper's 1.5 ms per face and against the same network run with the pure-PyTorch reference ops on the same GPU.

Rows (extra_info: us_per_face, faces_per_s, speedup_vs_paper_1_5ms, and ratio_vs_reference where one exists):

* ``forward[5pt-eager-1]`` / ``forward[5pt-graph-1]``: batch 1 (the issue's bar: <= 50 us);
* ``forward[5pt-eager-N]`` / ``forward[5pt-reference-N]`` for N in TCDCN_BENCH_GPU_NS (default 16384, 65536)
  (the bar: >= 2 M faces/s);
* ``averaged[68pt|5pt]``: shift_average over the default 20 shifts at batch 1 vs one eager pass.

    pytest benchmarks/bench_model_cuda.py --benchmark-json=bench_model_cuda.json

Every timed call ends with torch.cuda.synchronize(). Skipped where no CUDA device is visible.
"""

from __future__ import annotations

import os

import pytest
import torch

import tcdcn_ext
from tcdcn_ext.model import CudaGraphForward, load_model

from bench_model import reference_forward

NS = [int(v) for v in os.environ.get("TCDCN_BENCH_GPU_NS", "16384,65536").split(",")]
PAPER_GPU_MS = 1.5

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(not tcdcn_ext._C.with_cuda, reason="tcdcn_ext was built without its CUDA kernels"),
]

_REF: dict[int, float] = {}
_ONE: dict[str, float] = {}


def _record(benchmark, n: int) -> float:
    med = benchmark.stats.stats.median
    us = 1e6 * med / n
    benchmark.extra_info.update(us_per_face=us, faces_per_s=n / med, speedup_vs_paper_1_5ms=PAPER_GPU_MS * 1e3 / us,
                                gpu=torch.cuda.get_device_name(0), torch=torch.__version__)
    return med


@pytest.mark.parametrize("case", ["eager-1", "graph-1"] + [f"reference-{n}" for n in NS] + [f"eager-{n}" for n in NS])
def test_forward(benchmark, case):
    impl, n = case.split("-")
    n = int(n)
    model = load_model("5pt", device="cuda")
    x = torch.randn(n, 1, 40, 40, generator=torch.Generator().manual_seed(0)).cuda()
    graph = CudaGraphForward(model, n) if impl == "graph" else None
    with torch.inference_mode():
        torch.testing.assert_close(model(x)["landmarks"], reference_forward(model, x), rtol=1e-3, atol=1e-3)

    def run():
        with torch.inference_mode():
            if impl == "graph":
                out = graph(x)["landmarks"]
            elif impl == "eager":
                out = model(x)["landmarks"]
            else:
                out = reference_forward(model, x)
        torch.cuda.synchronize()
        return out

    benchmark.group = f"TCDCN 5-point forward on the GPU, N={n}"
    benchmark.extra_info.update(impl=impl, n=n)
    benchmark.pedantic(run, rounds=200 if n == 1 else 20, warmup_rounds=5, iterations=1)
    med = _record(benchmark, n)
    if impl == "reference":
        _REF[n] = med
    elif n in _REF:
        benchmark.extra_info["ratio_vs_reference"] = _REF[n] / med


@pytest.mark.parametrize("impl", ["one_pass", "shift_average_20"])
@pytest.mark.parametrize("name", ["5pt", "68pt"])
def test_averaged(benchmark, name, impl):
    from tcdcn_ext.averaging import default_shifts

    model = load_model(name, device="cuda")
    s, shifts = model.input_size, default_shifts(model)
    m = int(abs(shifts).max())
    crop = torch.randn(1, 1, s + 2 * m, s + 2 * m, generator=torch.Generator().manual_seed(0)).cuda()
    window = crop[..., m:m + s, m:m + s].contiguous()

    def run():
        with torch.inference_mode():
            out = model(window) if impl == "one_pass" else model.predict_shift_average(crop, shifts)
        torch.cuda.synchronize()
        return out

    benchmark.group = f"TCDCN-Averaged {name} on the GPU, batch 1"
    benchmark.extra_info.update(model=name, impl=impl)
    benchmark.pedantic(run, rounds=100, warmup_rounds=5, iterations=1)
    med = _record(benchmark, 1)
    if impl == "one_pass":
        _ONE[name] = med
    elif name in _ONE:
        benchmark.extra_info["ratio_vs_one_pass"] = med / _ONE[name]
