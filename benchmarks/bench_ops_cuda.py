"""lc_conv2d and abs_tanh on the GPU: our CUDA kernels vs the pure-PyTorch reference (F.unfold + einsum, itself
on the GPU), same run.

Rows: the four TCDCN layer shapes x N in {1, 4096} x {forward, forward+backward} x {ours, reference}, plus one
abs_tanh row pair. Every row checks ours against the reference before timing, and every timed call ends with
``torch.cuda.synchronize()`` so the time is the GPU's, not the launch's. Skipped where no CUDA device is visible.
The extra_info keys match bench_ops.py, so ``python benchmarks/summarize.py FILE.json`` tabulates both.

    pytest benchmarks/bench_ops_cuda.py --benchmark-json=bench_ops_cuda.json

Dry run without a GPU (same code path, CPU tensors, small batches): ``TCDCN_BENCH_DEVICE=cpu
TCDCN_BENCH_NS=1,8 pytest benchmarks/bench_ops_cuda.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

import tcdcn_ext
from tcdcn_ext import _reference as ref
from tcdcn_ext import ops

DEVICE = os.environ.get("TCDCN_BENCH_DEVICE", "cuda")
NS = [int(v) for v in os.environ.get("TCDCN_BENCH_NS", "1,4096").split(",")]

pytestmark = [
    pytest.mark.needs_cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(DEVICE == "cuda" and not tcdcn_ext._C.with_cuda,
                       reason="tcdcn_ext was built without its CUDA kernels"),
]

LAYERS = {  # name: (C_in, H, k, C_out), the same names as bench_ops.py
    "L1_40x40x1_k5_16": (1, 40, 5, 16),
    "L2_18x18x16_k3_48": (16, 18, 3, 48),
    "L3_8x8x48_k3_64": (48, 8, 3, 64),
    "L4_3x3x64_k2_64": (64, 3, 2, 64),
}
IMPLS = {"ours": ops.lc_conv2d, "reference": ref.lc_conv2d}


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _meta(benchmark, **info) -> None:
    benchmark.extra_info.update(
        device=DEVICE,
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name(0) if DEVICE == "cuda" else None,
        **info,
    )


def _flops(layer: str, n: int, mode: str) -> float:
    """Multiply-adds x 2 of the lc_conv2d products (backward: grad_weight, plus grad_input past layer 1)."""
    c_in, h, k, c_out = LAYERS[layer]
    ho = h - k + 1
    fwd = 2.0 * n * ho * ho * c_in * k * k * c_out
    if mode == "forward":
        return fwd
    return fwd * (2 if c_in == 1 else 3)


def _inputs(layer: str, n: int, requires_grad: bool):
    c_in, h, k, c_out = LAYERS[layer]
    ho = h - k + 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c_in, h, h, generator=g)
    w = torch.randn(ho, ho, c_in, k, k, c_out, generator=g) / (c_in * k * k) ** 0.5
    b = torch.randn(c_out, ho, ho, generator=g)
    # As in training: the image (layer 1's input) needs no gradient, every later input does.
    x = x.to(DEVICE).requires_grad_(requires_grad and c_in > 1)
    w = w.to(DEVICE).requires_grad_(requires_grad)
    b = b.to(DEVICE).requires_grad_(requires_grad)
    return x, w, b


def _rounds(n: int) -> dict:
    return dict(rounds=50, warmup_rounds=5, iterations=1) if n == 1 else dict(rounds=15, warmup_rounds=3, iterations=1)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_lc_forward_cuda(benchmark, layer, n, impl):
    x, w, b = _inputs(layer, n, False)
    fn = IMPLS[impl]
    with torch.no_grad():
        torch.testing.assert_close(fn(x, w, b), ref.lc_conv2d(x, w, b), rtol=1e-4, atol=1e-4)
    benchmark.group = f"lc_forward {DEVICE} N={n} {layer}"
    _meta(benchmark, layer=layer, n=n, impl=impl, mode="forward", gflop=_flops(layer, n, "forward") / 1e9)

    def run():
        with torch.no_grad():
            out = fn(x, w, b)
        _sync()
        return out

    benchmark.pedantic(run, **_rounds(n))


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_lc_forward_backward_cuda(benchmark, layer, n, impl):
    x, w, b = _inputs(layer, n, True)
    fn = IMPLS[impl]
    params = [t for t in (x, w, b) if t.requires_grad]
    gout = torch.randn(ref.lc_conv2d(x, w, b).shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = torch.autograd.grad(fn(x, w, b), params, gout)
    want = torch.autograd.grad(ref.lc_conv2d(x, w, b), params, gout)
    for a, e in zip(got, want):
        # grad_weight sums over up to 4096 faces: scale the absolute tolerance with its size.
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4 * max(1.0, float(e.abs().max())))
    benchmark.group = f"lc_forward_backward {DEVICE} N={n} {layer}"
    _meta(benchmark, layer=layer, n=n, impl=impl, mode="forward+backward",
          gflop=_flops(layer, n, "forward+backward") / 1e9)

    def run():
        grads = torch.autograd.grad(fn(x, w, b), params, gout)
        _sync()
        return grads

    benchmark.pedantic(run, **_rounds(n))


@pytest.mark.parametrize("impl", ["ours", "reference"])
def test_abs_tanh_cuda(benchmark, impl):
    n = max(NS)
    x = torch.randn(n, 16, 36, 36, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    fn = ops.abs_tanh if impl == "ours" else ref.abs_tanh
    torch.testing.assert_close(fn(x), ref.abs_tanh(x), rtol=1e-6, atol=2e-7)
    benchmark.group = f"abs_tanh {DEVICE} {n}x16x36x36"
    _meta(benchmark, impl=impl, elements=x.numel())

    def run():
        y = fn(x)
        _sync()
        return y

    benchmark.pedantic(run, **_rounds(n))
