"""The whole 5-point TCDCN forward: ours (custom ops, fused lc_conv2d+|tanh| in inference) vs the same network and
weights run with the pure-PyTorch reference ops (F.unfold + einsum, tanh().abs()), in the same run.

Rows: batch 1 on one thread (latency; the paper: 17 ms per face on a 2014 CPU) and batch 256 on every thread
(throughput). extra_info holds per-face milliseconds and the ratio to the paper's 17 ms. Then batch 1 on one
thread with the weights stored as float16, float32 and int8 (TCDCN.set_inference_weights; int8 on the 'vnni'
integer kernels and on the avx512 float ones), beside the read bound.

    pytest benchmarks/bench_model.py --benchmark-json=bench_model.json
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tcdcn_ext import _reference as ref
from tcdcn_ext import ops
from tcdcn_ext.model import TCDCN, load_model, shipped_models
from tcdcn_ext.nn import AbsTanh, LocallyConnected2d
from tcdcn_ext.quantize import dequantize_lc_weight, quantize_lc_weight

PAPER_CPU_MS = 17.0


def _model() -> TCDCN:
    return load_model("5pt") if "5pt" in shipped_models() else TCDCN().eval()


# Tolerance of our forward against the reference: int8 weights are compared with the float32 weights they stand for
# (the 'vnni' kernels also round activations to int16).
TOL = {"int8": 3e-3}


_DEQUANTIZED: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _dequantized(w: torch.Tensor) -> torch.Tensor:
    """The float32 weights int8 storage stands for, made once per parameter (not inside the timed reference row)."""
    key = id(w)
    if key not in _DEQUANTIZED or _DEQUANTIZED[key][0] is not w:
        _DEQUANTIZED[key] = (w, dequantize_lc_weight(*quantize_lc_weight(w)))
    return _DEQUANTIZED[key][1]


def reference_forward(model: TCDCN, x: torch.Tensor) -> torch.Tensor:
    """The model's landmarks computed with the reference ops only (with int8 inference weights: from the float32
    weights the int8 ones stand for)."""
    return model.landmark_head(reference_features(model, x)).view(-1, model.num_points, 2)


def reference_features(model: TCDCN, x: torch.Tensor) -> torch.Tensor:
    """The shared feature through the reference ops only (autograd reaches the parameters; int8 inference weights:
    the float32 weights they stand for)."""
    int8 = model.inference_weights == "int8"
    h = x
    for layer in model.conv:
        if isinstance(layer, LocallyConnected2d):
            w = _dequantized(layer.weight) if int8 else layer.weight
            h = ref.lc_conv2d(h, w, layer.bias, layer.stride, layer.padding)
        elif isinstance(layer, AbsTanh):
            h = ref.abs_tanh(h)
        else:
            h = layer(h)
    return ref.abs_tanh(F.linear(h.flatten(1), model.fc.weight, model.fc.bias))


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("impl", ["ours", "reference"])
@pytest.mark.parametrize("n", [1, 256])
def test_model_forward(benchmark, threads, n, impl):
    torch.set_num_threads(1 if n == 1 else torch.get_num_threads())
    model = _model()
    x = torch.randn(n, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    tol = TOL.get(model.inference_weights, 1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(model(x)["landmarks"], reference_forward(model, x), rtol=tol, atol=tol)

    def run():
        with torch.inference_mode():
            return model(x)["landmarks"] if impl == "ours" else reference_forward(model, x)

    benchmark.group = f"TCDCN 5-point forward, N={n}"
    benchmark.extra_info.update(layer="model", n=n, impl=impl, mode="model forward", threads=torch.get_num_threads(),
                                weights=model.inference_weights)
    benchmark.pedantic(run, rounds=100 if n == 1 else 10, warmup_rounds=3, iterations=1)
    per_face_ms = 1e3 * benchmark.stats.stats.median / n
    benchmark.extra_info.update(per_face_ms=per_face_ms, faces_per_s=1e3 / per_face_ms,
                                speedup_vs_paper_17ms=PAPER_CPU_MS / per_face_ms)


# -- weight storage at batch 1, one thread: every weight is read once per face, so bytes are time ----------------


@pytest.mark.parametrize("weights", ["float16", "float32", "int8", "int8-avx512"])
def test_model_forward_weight_storage(benchmark, threads, weights, request):
    """The forward with its weights stored as float16 (the shipped weights are float16 values), float32 or int8
    (the shipped 5-point model's default; on the 'vnni' integer kernels where the CPU has them, and as
    "int8-avx512" on the avx512 float kernels, which widen each int8 weight to float). extra_info: the stored weight
    bytes and the read bound, the median time of a one-thread torch.sum over that many bytes (the weights as float32
    elements), measured in the same run."""
    import contextlib
    import statistics
    import time

    storage, _, isa = weights.partition("-")
    if isa and isa not in ops.cpu_isas_supported():
        pytest.skip(f"this CPU has no {isa} path")
    torch.set_num_threads(1)
    model = _model().set_inference_weights(storage)
    x = torch.randn(1, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)  # (also when an assertion below fails)
    if isa:
        stack.enter_context(ops.use_cpu_isa(isa))
    benchmark.extra_info["isa"] = ops.cpu_isa()
    tol = TOL.get(storage, 1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(model(x)["landmarks"], reference_forward(model, x), rtol=tol, atol=tol)
        stored = model._plan.weights
    nbytes = sum(w.numel() * w.element_size() for w in stored)
    flat = torch.cat([w.reshape(-1).view(torch.uint8) for w in stored])
    flat = flat[: flat.numel() // 4 * 4].view(torch.float32)
    reads = []
    for _ in range(200):
        t0 = time.perf_counter()
        flat.sum()
        reads.append(time.perf_counter() - t0)

    def run():
        with torch.inference_mode():
            return model(x)["landmarks"]

    benchmark.group = "TCDCN 5-point forward, N=1, 1 thread: weight storage"
    benchmark.extra_info.update(weights=weights, n=1, threads=1, weight_bytes=nbytes,
                                read_bound_ms=1e3 * statistics.median(reads))
    with stack:
        benchmark.pedantic(run, rounds=200, warmup_rounds=10, iterations=1)
    benchmark.extra_info["per_face_ms"] = 1e3 * benchmark.stats.stats.median


# -- TCDCN-Averaged: the shift_average op vs one pass and vs 20 naive passes (batch 1, one thread) ------------------

_ONE_PASS_MS: dict[str, float] = {}


@pytest.mark.parametrize("impl", ["one_pass", "shift_average_20", "naive_20_passes"])
@pytest.mark.parametrize("name", ["5pt", "68pt"])
def test_averaged(benchmark, threads, name, impl):
    """Rows store ``ratio_vs_one_pass`` (the issue's bars: shift_average_20 <= 4x one pass, and naive_20 / ours
    >= 4) in extra_info; the one-pass row of the same model runs first."""
    from tcdcn_ext.averaging import default_shifts

    if name not in shipped_models():
        pytest.skip(f"no shipped {name} model")
    torch.set_num_threads(1)
    model = load_model(name)
    s, shifts = model.input_size, default_shifts(model)
    m = int(abs(shifts).max())
    crop = torch.randn(1, 1, s + 2 * m, s + 2 * m, generator=torch.Generator().manual_seed(0))
    windows = [crop[..., m + dy:m + dy + s, m + dx:m + dx + s].contiguous() for dx, dy in shifts.tolist()]

    def run():
        with torch.inference_mode():
            if impl == "one_pass":
                return model(windows[0])
            if impl == "shift_average_20":
                return model.predict_shift_average(crop, shifts)
            return [model(w) for w in windows]

    benchmark.group = f"TCDCN-Averaged {name}, batch 1, 1 thread"
    benchmark.extra_info.update(model=name, impl=impl, shifts=len(shifts), threads=1)
    benchmark.pedantic(run, rounds=60 if impl != "naive_20_passes" else 20, warmup_rounds=3, iterations=1)
    med = 1e3 * benchmark.stats.stats.median
    if impl == "one_pass":
        _ONE_PASS_MS[name] = med
    elif name in _ONE_PASS_MS:
        benchmark.extra_info["ratio_vs_one_pass"] = med / _ONE_PASS_MS[name]
    benchmark.extra_info["ms"] = med


# -- weight storage at N = 256 on one thread: the int8 kernels against float16 storage (one core: the other cores of
# the development machine run other work, so one-thread rows compare like for like) --------------------------------


@pytest.mark.parametrize("weights", ["float16", "int8-avx512", "int8"])
def test_model_forward_batched_storage(benchmark, threads, weights, request):
    """N = 256, one thread: float16 storage, int8 widened to float by the avx512 kernels, and int8 on the best path
    (the AMX bf16 tiles where the CPU has them: layers of >= 64 taps; extra_info["isa"])."""
    import contextlib

    storage, _, isa = weights.partition("-")
    if isa and isa not in ops.cpu_isas_supported():
        pytest.skip(f"this CPU has no {isa} path")
    torch.set_num_threads(1)
    model = _model().set_inference_weights(storage)
    x = torch.randn(256, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)
    if isa:
        stack.enter_context(ops.use_cpu_isa(isa))
    tol = {"int8": 3e-2 if ops.cpu_isa() == "amx" else 3e-3}.get(storage, 1e-4)  # amx: bfloat16 activations
    with torch.inference_mode():
        torch.testing.assert_close(model(x)["landmarks"], reference_forward(model, x), rtol=tol, atol=tol)

    def run():
        with torch.inference_mode():
            return model(x)["landmarks"]

    benchmark.group = "TCDCN 5-point forward, N=256, 1 thread: weight storage"
    benchmark.extra_info.update(weights=weights, n=256, threads=1, isa=ops.cpu_isa())
    with stack:
        benchmark.pedantic(run, rounds=20, warmup_rounds=2, iterations=1)
    benchmark.extra_info["faces_per_s"] = 256 / benchmark.stats.stats.median
