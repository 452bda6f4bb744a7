"""lc_conv2d and abs_tanh on the CPU: ours vs the pure-PyTorch reference (F.unfold + einsum), same run.

Rows: the four TCDCN layer shapes x N in {1 (one thread), 256 (all threads)} x {forward, forward+backward} x
{ours, reference}. Every row checks ours against the reference before timing. Summarise a JSON run with
``python benchmarks/summarize.py FILE.json`` (per-layer medians, sums over the four layers, ratios).

    pytest benchmarks/bench_ops.py --benchmark-json=bench_ops.json
"""

from __future__ import annotations

import pytest
import torch

from tcdcn_ext import _reference as ref
from tcdcn_ext import ops

LAYERS = {  # name: (C_in, H, k, C_out)
    "L1_40x40x1_k5_16": (1, 40, 5, 16),
    "L2_18x18x16_k3_48": (16, 18, 3, 48),
    "L3_8x8x48_k3_64": (48, 8, 3, 64),
    "L4_3x3x64_k2_64": (64, 3, 2, 64),
}
IMPLS = {"ours": ops.lc_conv2d, "reference": ref.lc_conv2d}


@pytest.fixture
def threads(request):
    """Pin the thread count for the row (1 for N = 1, every core otherwise) and restore it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _inputs(layer, n, requires_grad):
    c_in, h, k, c_out = LAYERS[layer]
    ho = h - k + 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c_in, h, h, generator=g).requires_grad_(requires_grad and c_in > 1)
    w = (torch.randn(ho, ho, c_in, k, k, c_out, generator=g) / (c_in * k * k) ** 0.5).requires_grad_(requires_grad)
    b = torch.randn(c_out, ho, ho, generator=g).requires_grad_(requires_grad)
    return x, w, b


def _set_threads(n):
    torch.set_num_threads(1 if n == 1 else max(1, torch.get_num_threads()))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("n", [1, 256])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_lc_forward(benchmark, threads, layer, n, impl):
    _set_threads(n)
    x, w, b = _inputs(layer, n, False)
    fn = IMPLS[impl]
    with torch.no_grad():
        torch.testing.assert_close(fn(x, w, b), ref.lc_conv2d(x, w, b), rtol=1e-4, atol=1e-4)
    benchmark.group = f"lc_forward N={n}"
    benchmark.extra_info.update(layer=layer, n=n, impl=impl, mode="forward", threads=torch.get_num_threads())

    def run():
        with torch.no_grad():
            return fn(x, w, b)

    benchmark.pedantic(run, rounds=30 if n == 1 else 8, warmup_rounds=2, iterations=1)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("n", [1, 256])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_lc_forward_backward(benchmark, threads, layer, n, impl):
    _set_threads(n)
    x, w, b = _inputs(layer, n, True)
    fn = IMPLS[impl]
    params = [t for t in (x, w, b) if t.requires_grad]
    gout = torch.randn(ref.lc_conv2d(x, w, b).shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(fn(x, w, b), params, gout)
    want = torch.autograd.grad(ref.lc_conv2d(x, w, b), params, gout)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-3)
    benchmark.group = f"lc_forward_backward N={n}"
    benchmark.extra_info.update(layer=layer, n=n, impl=impl, mode="forward+backward",
                                threads=torch.get_num_threads())

    def run():
        return torch.autograd.grad(fn(x, w, b), params, gout)

    benchmark.pedantic(run, rounds=20 if n == 1 else 5, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("impl", ["ours", "reference"])
def test_abs_tanh(benchmark, threads, impl):
    torch.set_num_threads(1)
    x = torch.randn(256, 16, 36, 36)
    fn = ops.abs_tanh if impl == "ours" else ref.abs_tanh
    torch.testing.assert_close(fn(x), ref.abs_tanh(x), rtol=1e-6, atol=2e-7)
    benchmark.group = "abs_tanh 256x16x36x36 (1 thread)"
    benchmark.extra_info.update(impl=impl, threads=1)
    benchmark.pedantic(fn, args=(x,), rounds=20, warmup_rounds=2, iterations=1)


def test_weight_read_bound(benchmark, threads):
    """The floor for batch-1 latency: streaming the four layers' fp32 weights (13.4 MB) once on one core."""
    torch.set_num_threads(1)
    total = 0
    for c_in, h, k, c_out in LAYERS.values():
        total += (h - k + 1) ** 2 * c_in * k * k * c_out
    buf = torch.randn(total)
    benchmark.group = "lc_forward N=1"
    benchmark.extra_info.update(layer="all", n=1, impl="read 13.4 MB of weights (torch.sum)", mode="bound",
                                threads=1, bytes=buf.numel() * 4)
    benchmark.pedantic(buf.sum, rounds=50, warmup_rounds=5, iterations=1)
