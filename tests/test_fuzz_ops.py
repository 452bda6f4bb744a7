"""Property-based fuzzing of every operator against ``tcdcn_ext._reference``.

Each generated case either matches the reference (values, NaN/Inf positions, shape, dtype) or raises a
``RuntimeError`` whose message names the problem. Generated: shapes with zero-sized and 1x1 dimensions, vector
tails (``C_out`` around 8/16), float32/float64 (and float16/bfloat16/int/bool, which must be refused naming the
dtype), contiguous / channels-last / strided / transposed / expanded (overlapping, stride 0) inputs, NaN and
+-Inf planted anywhere, every CPU kernel path (``ops.cpu_isas_supported()``), CUDA where available, and the
backward ops called directly with every ``output_mask``.

The default run is a fixed, derandomised set of examples (fast); ``pytest -m slow tests/test_fuzz_ops.py`` runs
the same properties with many more. ``--hypothesis-show-statistics`` prints how many cases each property ran.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tcdcn_ext import _C
from tcdcn_ext import _reference as ref
from tcdcn_ext import ops

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ISAS = ops.cpu_isas_supported()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and getattr(_C, "with_cuda", False) else [])
GOOD_DTYPES = [torch.float32, torch.float64]
#: Refused dtypes and the name c10 prints for them (the error message must contain it).
BAD_DTYPES = {torch.float16: "Half", torch.bfloat16: "BFloat16", torch.int32: "Int", torch.int64: "Long",
              torch.uint8: "Byte", torch.int8: "Char", torch.bool: "Bool", torch.complex64: "ComplexFloat"}
MASKS = list(itertools.product([False, True], repeat=3))
#: C_out values around the vector widths (8 floats / 4 doubles for AVX2, 16 / 8 for AVX-512) and 0.
C_OUTS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33]
SPECIALS = [math.nan, math.inf, -math.inf]

_COMMON = dict(deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FAST = settings(max_examples=150, **_COMMON)
SLOW = settings(max_examples=3000, **_COMMON)
FAST_SMALL = settings(max_examples=60, **_COMMON)
SLOW_SMALL = settings(max_examples=800, **_COMMON)



def _both(body, fast, slow, *strategies, **kw_strategies):
    """The property ``body`` as a fast default test and a ``slow``-marked one with many more examples."""
    return (fast(given(*strategies, **kw_strategies)(body)),
            pytest.mark.slow(slow(given(*strategies, **kw_strategies)(body))))


# ----------------------------------------------------------------------------------------------------------------
# Tensor factories


LAYOUTS_4D = ["contiguous", "channels_last", "strided", "transposed", "expanded_batch", "expanded_channel"]


def _plant(draw, base: torch.Tensor, allowed: bool) -> None:
    """Write 0-3 NaN / +-Inf values at drawn positions of ``base`` (in place, before any view is taken)."""
    if not allowed or base.numel() == 0:
        return
    count = draw(st.integers(0, 3))
    flat = base.view(-1)
    for _ in range(count):
        flat[draw(st.integers(0, base.numel() - 1))] = draw(st.sampled_from(SPECIALS))


def _tensor4(draw, shape, dtype, device, layout, scale=1.0, specials=False) -> torch.Tensor:
    """A [N, C, H, W] tensor with the given memory layout; the values are planted in the underlying storage."""
    n, c, h, w = shape
    if layout == "channels_last":
        base = torch.randn(n, h, w, c, dtype=dtype) * scale
        _plant(draw, base, specials)
        t = base.permute(0, 3, 1, 2)
    elif layout == "strided":
        base = torch.randn(n, 2 * c, h, 2 * w + 1, dtype=dtype) * scale
        _plant(draw, base, specials)
        t = base[:, ::2, :, 1::2]
    elif layout == "transposed":
        base = torch.randn(n, c, w, h, dtype=dtype) * scale
        _plant(draw, base, specials)
        t = base.transpose(2, 3)
    elif layout == "expanded_batch":
        base = torch.randn(1, c, h, w, dtype=dtype) * scale
        _plant(draw, base, specials)
        t = base.expand(n, c, h, w)
    elif layout == "expanded_channel":
        base = torch.randn(n, 1, h, w, dtype=dtype) * scale
        _plant(draw, base, specials)
        t = base.expand(n, c, h, w)
    else:
        t = torch.randn(n, c, h, w, dtype=dtype) * scale
        _plant(draw, t, specials)
    assert tuple(t.shape) == tuple(shape)
    return t.to(device)


def _weight(draw, shape, dtype, device, layout, specials=False) -> torch.Tensor:
    ho, wo, c_in, kh, kw, c_out = shape
    fan = max(1, c_in * kh * kw) ** 0.5
    if layout == "natural":  # same values, non-contiguous strides (the natural layout permuted)
        base = torch.randn(ho, wo, c_out, c_in, kh, kw, dtype=dtype) / fan
        _plant(draw, base, specials)
        w = base.permute(0, 1, 3, 4, 5, 2)
    elif layout == "expanded":  # stride 0 over C_out
        base = torch.randn(ho, wo, c_in, kh, kw, 1, dtype=dtype) / fan
        _plant(draw, base, specials)
        w = base.expand(ho, wo, c_in, kh, kw, c_out)
    else:
        w = torch.randn(shape, dtype=dtype) / fan
        _plant(draw, w, specials)
    return w.to(device)


def _bias(draw, shape, dtype, device, layout, specials=False) -> torch.Tensor | None:
    if layout == "none":
        return None
    c_out, ho, wo = shape
    if layout == "expanded":
        base = torch.randn(c_out, 1, 1, dtype=dtype)
        _plant(draw, base, specials)
        return base.expand(c_out, ho, wo).to(device)
    if layout == "strided":
        base = torch.randn(c_out, ho, 2 * wo, dtype=dtype)
        _plant(draw, base, specials)
        return base[:, :, ::2].to(device)
    b = torch.randn(shape, dtype=dtype)
    _plant(draw, b, specials)
    return b.to(device)


def is_non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """ATen's predicate: the strides of the dims longer than 1 are a permutation of a packed layout."""
    expected = 1
    for stride, size in sorted((st_, sz) for sz, st_ in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Values within a tolerance relative to the largest finite expected magnitude (the kernels sum in a different
    order from the reference); NaN and +-Inf exactly where the reference has them."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    finite = want[torch.isfinite(want)]
    mag = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    t = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, want, rtol=t, atol=t * mag, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _isa_ctx(device: str, isa: str):
    return ops.use_cpu_isa(isa) if device == "cpu" else _nullcontext()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------------------------------------------
# lc_conv2d, lc_conv2d_abs_tanh, _lc_conv2d_backward


@st.composite
def lc_cases(draw, good_dtypes=True):
    n = draw(st.integers(0, 4))
    c_in = draw(st.integers(0, 4))
    c_out = draw(st.sampled_from(C_OUTS))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    # H or W may be 0 when the padding alone covers the kernel.
    h, w = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    return dict(n=n, c_in=c_in, c_out=c_out, k=(kh, kw), s=(sh, sw), p=(ph, pw), h=h, w=w,
                dtype=draw(st.sampled_from(GOOD_DTYPES)), device=draw(st.sampled_from(DEVICES)),
                isa=draw(st.sampled_from(ISAS)), x_layout=draw(st.sampled_from(LAYOUTS_4D)),
                w_layout=draw(st.sampled_from(["contiguous", "natural", "expanded"])),
                b_layout=draw(st.sampled_from(["contiguous", "none", "strided", "expanded"])),
                scale=draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3])),
                specials=draw(st.sampled_from(["none", "none", "input", "weight", "bias", "grad", "all"])),
                mask=draw(st.sampled_from(MASKS)))


def _ref_forward(x, w, b, s, p):
    """The reference, also where ``F.unfold`` refuses an input with H or W = 0 that padding makes valid: then the
    padding is applied explicitly (the same zeros the op pads with)."""
    if x.shape[0] > 0 and x.shape[1] > 0 and (x.shape[2] == 0 or x.shape[3] == 0):
        x = torch.nn.functional.pad(x, (p[1], p[1], p[0], p[0]))
        p = (0, 0)
    return ref.lc_conv2d(x, w, b, s, p)


def _lc_property(case, draw):
    c = case
    n, c_in, c_out, (kh, kw), s, p = c["n"], c["c_in"], c["c_out"], c["k"], c["s"], c["p"]
    dtype, device = c["dtype"], c["device"]
    sp = c["specials"]
    ho, wo = ops.lc_output_size((c["h"], c["w"]), (kh, kw), s, p)
    x = _tensor4(draw, (n, c_in, c["h"], c["w"]), dtype, device, c["x_layout"], c["scale"],
                 specials=sp in ("input", "all"))
    if ho < 1 or wo < 1:  # the kernel does not fit: a clear error, whatever the weight
        wt = torch.randn(1, 1, c_in, kh, kw, max(c_out, 1), dtype=dtype, device=device)
        for fn in (ops.lc_conv2d, ops.lc_conv2d_abs_tanh):
            with pytest.raises(RuntimeError, match="smaller than"):
                fn(x, wt, None, s, p)
        return
    wt = _weight(draw, (ho, wo, c_in, kh, kw, c_out), dtype, device, c["w_layout"], sp in ("weight", "all"))
    b = _bias(draw, (c_out, ho, wo), dtype, device, c["b_layout"], sp in ("bias", "all"))

    with _isa_ctx(device, c["isa"]):
        out = ops.lc_conv2d(x, wt, b, s, p)
        with torch.no_grad():
            fused = ops.lc_conv2d_abs_tanh(x, wt, b, s, p)
    want = _ref_forward(x, wt, b, s, p)
    _close(out, want, dtype, "lc_conv2d")
    _close(fused, ref.abs_tanh(want), dtype, "lc_conv2d_abs_tanh")
    if device == "cpu":  # + 2x2 max pooling (a CPU-only inference op)
        with _isa_ctx(device, c["isa"]), torch.no_grad():
            pooled = ops.lc_conv2d_abs_tanh_maxpool2d(x, wt, b, s, p)
        assert pooled.shape == (n, c_out, ho // 2, wo // 2), pooled.shape
        if pooled.numel():
            _close(pooled, torch.nn.functional.max_pool2d(ref.abs_tanh(want), 2), dtype,
                   "lc_conv2d_abs_tanh_maxpool2d")

    # The backward op, called directly with this case's output_mask, against autograd through the reference.
    g = torch.randn(want.shape, dtype=dtype)
    _plant(draw, g, sp in ("grad", "all"))
    g = g.to(device)
    mask = list(c["mask"])
    with _isa_ctx(device, c["isa"]):
        gi, gw, gb = torch.ops.tcdcn_ext._lc_conv2d_backward(g, x, wt, list(s), list(p), mask)
    xr = x.detach().clone().requires_grad_(True)
    wr = wt.detach().clone().requires_grad_(True)
    br = torch.zeros(c_out, ho, wo, dtype=dtype, device=device, requires_grad=True)
    want_grads = torch.autograd.grad(_ref_forward(xr, wr, br, s, p), (xr, wr, br), g, allow_unused=True)
    for flag, got, exp, ref_t, name in zip(mask, (gi, gw, gb), want_grads, (xr, wr, br),
                                           ("grad_input", "grad_weight", "grad_bias")):
        if not flag:
            assert got.numel() == 0, f"{name}: masked off but has shape {tuple(got.shape)}"
            continue
        if exp is None:  # the reference does not use this input (no output elements, or no taps)
            exp = torch.zeros_like(ref_t)
        _close(got, exp, dtype, name)


def _lc_body(case, data):
    _lc_property(case, data.draw)


test_lc_ops_match_reference, test_lc_ops_match_reference_slow = _both(
    _lc_body, FAST, SLOW, case=lc_cases(), data=st.data())


# ----------------------------------------------------------------------------------------------------------------
# abs_tanh, _abs_tanh_backward


@st.composite
def elementwise_cases(draw):
    ndim = draw(st.integers(0, 4))
    dims = [draw(st.sampled_from([0, 1, 1, 2, 3, 5, 8])) for _ in range(ndim)]
    if ndim and draw(st.booleans()):  # a long row: the vector body and its tail
        dims[-1] = draw(st.integers(15, 70))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed", "strided", "expanded"]))
    return dict(dims=dims, layout=layout, g_layout=draw(st.sampled_from(["same", "contiguous", "strided"])),
                dtype=draw(st.sampled_from(GOOD_DTYPES)), device=draw(st.sampled_from(DEVICES)),
                isa=draw(st.sampled_from(ISAS)), scale=draw(st.sampled_from([1.0, 1e-4, 0.05, 30.0, 1e4])),
                specials=draw(st.booleans()), zeros=draw(st.booleans()))


def _elementwise_tensor(draw, dims, layout, dtype, scale, specials, zeros):
    shape = list(dims)
    if layout == "channels_last" and len(shape) == 4:
        n, c, h, w = shape
        base = torch.randn(n, h, w, c, dtype=dtype) * scale
        post = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    elif layout == "transposed" and len(shape) >= 2:
        s2 = shape[:-2] + [shape[-1], shape[-2]]
        base = torch.randn(s2, dtype=dtype) * scale
        post = lambda t: t.transpose(-1, -2)  # noqa: E731
    elif layout == "strided" and len(shape) >= 1:
        base = torch.randn(shape[:-1] + [2 * shape[-1]], dtype=dtype) * scale
        post = lambda t: t[..., ::2]  # noqa: E731
    elif layout == "expanded" and len(shape) >= 1:
        base = torch.randn([1] + shape[1:], dtype=dtype) * scale
        post = lambda t: t.expand(shape)  # noqa: E731
    else:
        base = torch.randn(shape, dtype=dtype) * scale
        post = lambda t: t  # noqa: E731
    if zeros and base.numel():
        base.view(-1)[:: max(1, base.numel() // 3)] = 0.0
        base.view(-1)[-1] = -0.0
    _plant(draw, base, specials)
    t = post(base)
    assert list(t.shape) == shape
    return t


def _assert_values_match(y: torch.Tensor, want: torch.Tensor, x: torch.Tensor) -> None:
    """An elementwise op's output against the reference's: shape, dtype, values (NaN where the reference has NaN)."""
    f32 = x.dtype == torch.float32
    assert y.shape == want.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, want, rtol=1e-6 if f32 else 1e-13, atol=2e-7 if f32 else 1e-15, equal_nan=True)


def _assert_grad_matches(gi: torch.Tensor, reference, x: torch.Tensor, g: torch.Tensor) -> None:
    """An elementwise op's backward ``gi`` (for input ``x`` and output gradient ``g``) against autograd through the
    reference; tolerances scaled by the largest finite |g|, NaN where the reference has NaN."""
    xr = x.detach().clone().requires_grad_(True)
    (want_g,) = torch.autograd.grad(reference(xr), (xr,), g)
    assert gi.shape == x.shape and gi.dtype == x.dtype
    f32 = x.dtype == torch.float32
    finite = g[torch.isfinite(g)]
    mag = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    torch.testing.assert_close(gi, want_g, rtol=1e-5 if f32 else 1e-12, atol=(1e-6 if f32 else 1e-14) * mag,
                               equal_nan=True)


def _abs_tanh_body(case, data):
    draw = data.draw
    c = case
    dtype, device = c["dtype"], c["device"]
    x = _elementwise_tensor(draw, c["dims"], c["layout"], dtype, c["scale"], c["specials"], c["zeros"]).to(device)
    with _isa_ctx(device, c["isa"]):
        y = ops.abs_tanh(x)
    _assert_values_match(y, ref.abs_tanh(x), x)
    if x.numel() > 1 and is_non_overlapping_and_dense(x):  # dense layouts (channels-last, transposed) are kept
        strides = lambda t: [st_ for sz, st_ in zip(t.shape, t.stride()) if sz != 1]  # noqa: E731
        assert strides(y) == strides(x), (y.stride(), x.stride())

    if c["g_layout"] == "same":
        g = torch.randn_like(x)
    else:
        g = _elementwise_tensor(draw, c["dims"], "strided" if c["g_layout"] == "strided" else "contiguous",
                                dtype, 1.0, c["specials"], False).to(device)
    with _isa_ctx(device, c["isa"]):
        gi = torch.ops.tcdcn_ext._abs_tanh_backward(g, x)
    _assert_grad_matches(gi, ref.abs_tanh, x, g)


test_abs_tanh_ops_match_reference, test_abs_tanh_ops_match_reference_slow = _both(
    _abs_tanh_body, FAST, SLOW, case=elementwise_cases(), data=st.data())


# ----------------------------------------------------------------------------------------------------------------
# abs_tanh_maxpool2d, _abs_tanh_maxpool2d_backward


@st.composite
def pool_cases(draw):
    n = draw(st.sampled_from([0, 1, 2, 3]))
    c = draw(st.sampled_from([1, 2, 3, 5, 8, 15, 16, 17, 33]))
    h, w = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    return dict(shape=(n, c, h, w), layout=draw(st.sampled_from(LAYOUTS_4D)),
                g_layout=draw(st.sampled_from(["same", "contiguous", "channels_last", "strided"])),
                dtype=draw(st.sampled_from(GOOD_DTYPES)), device=draw(st.sampled_from(DEVICES)),
                isa=draw(st.sampled_from(ISAS)), scale=draw(st.sampled_from([1.0, 1e-4, 0.05, 3.0])),
                specials=draw(st.booleans()), ties=draw(st.booleans()))


def _pool_body(case, data):
    """Values and gradients against max_pool2d(|tanh(x)|, 2) through autograd; output and gradient in x's
    layout where x is channels-last (else contiguous); NaN where the reference has NaN."""
    draw = data.draw
    c = case
    dtype, device = c["dtype"], c["device"]
    x = _tensor4(draw, c["shape"], dtype, "cpu", c["layout"], c["scale"], c["specials"])
    if c["ties"] and x.numel():  # equal |x| inside cells (x and -x, and exact copies): the first one wins
        x = x.clone(memory_format=torch.preserve_format)
        x[..., 1::2] = -x[..., 0:x.shape[3] - x.shape[3] % 2:2] if x.shape[3] >= 2 else x[..., 1::2]
        x[:, :, 1::2, :] = x[:, :, 0:x.shape[2] - x.shape[2] % 2:2, :]
    x = x.to(device)
    with _isa_ctx(device, c["isa"]):
        y = ops.abs_tanh_maxpool2d(x)
    want = ref.abs_tanh_maxpool2d(x)
    _assert_values_match(y, want, x)
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() and x.shape[1] > 1
    if y.numel() > 1 and cl:
        assert y.is_contiguous(memory_format=torch.channels_last), y.stride()

    g_layout = c["layout"] if c["g_layout"] == "same" else c["g_layout"]
    if g_layout not in LAYOUTS_4D:
        g_layout = "contiguous"
    g = _tensor4(draw, tuple(want.shape), dtype, device, g_layout)
    with _isa_ctx(device, c["isa"]):
        gi = torch.ops.tcdcn_ext._abs_tanh_maxpool2d_backward(g, x, y)
    _assert_grad_matches(gi, ref.abs_tanh_maxpool2d, x, g)


test_abs_tanh_maxpool2d_matches_reference, test_abs_tanh_maxpool2d_matches_reference_slow = _both(
    _pool_body, FAST, SLOW, case=pool_cases(), data=st.data())


# ----------------------------------------------------------------------------------------------------------------
# Refused dtypes and invalid arguments


def _bad_dtype_tensor(shape, dtype, device):
    if dtype == torch.bool:
        return torch.zeros(shape, dtype=dtype, device=device)
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, device=device).to(dtype)
    return torch.randint(0, 3, shape, device=device).to(dtype)


def _bad_dtype_body(dtype, which, op, device):
    """Any refused dtype in any tensor argument: RuntimeError naming that dtype, never a result."""
    name = BAD_DTYPES[dtype]
    x, w, b = torch.randn(2, 3, 6, 5), torch.randn(4, 3, 3, 3, 3, 5), torch.randn(5, 4, 3)
    g = torch.randn(2, 5, 4, 3)
    args = {"input": x, "weight": w, "bias": b, "grad_output": g}
    args[which] = _bad_dtype_tensor(args[which].shape, dtype, "cpu")
    args = {k: v.to(device) for k, v in args.items()}
    if dtype == torch.float16 and which == "weight" and op in ("lc_conv2d", "lc_conv2d_abs_tanh") and device == "cpu":
        # Not refused: the CPU forward ops take a float16 weight with a float32 input (tests/test_half_weights.py).
        with torch.no_grad():
            got = getattr(ops, op)(args["input"], args["weight"], args["bias"])
            want = getattr(ops, op)(args["input"], args["weight"].float(), args["bias"])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        return
    with pytest.raises(RuntimeError, match=name):
        if op == "lc_conv2d":
            ops.lc_conv2d(args["input"], args["weight"], args["bias"])
        elif op == "lc_conv2d_abs_tanh":
            with torch.no_grad():
                ops.lc_conv2d_abs_tanh(args["input"], args["weight"], args["bias"])
        elif op == "_lc_conv2d_backward":
            torch.ops.tcdcn_ext._lc_conv2d_backward(args["grad_output"], args["input"], args["weight"], [1, 1],
                                                    [0, 0], [True, True, True])
        elif op == "abs_tanh":
            ops.abs_tanh(args["input"])
        elif op == "abs_tanh_maxpool2d":
            ops.abs_tanh_maxpool2d(args["input"])
        elif op == "_abs_tanh_maxpool2d_backward":
            xa = args["input"] if which == "input" else torch.randn(x.shape, device=device)
            pooled = (x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2)
            ga = (_bad_dtype_tensor(pooled, dtype, device) if which == "grad_output"
                  else torch.randn(pooled, device=device))
            torch.ops.tcdcn_ext._abs_tanh_maxpool2d_backward(ga, xa, torch.rand(pooled, device=device))
        else:  # _abs_tanh_backward: the x argument or grad_output
            xa = args["input"]
            ga = args["grad_output"] if which == "grad_output" else torch.randn(xa.shape, device=device)
            if which == "grad_output":
                xa = torch.randn(g.shape, device=device)
            torch.ops.tcdcn_ext._abs_tanh_backward(ga, xa)


@st.composite
def bad_dtype_cases(draw):
    op = draw(st.sampled_from(["lc_conv2d", "lc_conv2d_abs_tanh", "_lc_conv2d_backward", "abs_tanh",
                               "_abs_tanh_backward", "abs_tanh_maxpool2d", "_abs_tanh_maxpool2d_backward"]))
    which = {"lc_conv2d": ["input", "weight", "bias"], "lc_conv2d_abs_tanh": ["input", "weight", "bias"],
             "_lc_conv2d_backward": ["input", "weight", "grad_output"], "abs_tanh": ["input"],
             "_abs_tanh_backward": ["input", "grad_output"], "abs_tanh_maxpool2d": ["input"],
             "_abs_tanh_maxpool2d_backward": ["input", "grad_output"]}[op]
    return draw(st.sampled_from(list(BAD_DTYPES))), draw(st.sampled_from(which)), op, draw(st.sampled_from(DEVICES))


def _bad_dtype_case_body(case):
    _bad_dtype_body(*case)


test_refused_dtypes_are_named, test_refused_dtypes_are_named_slow = _both(
    _bad_dtype_case_body, FAST_SMALL, SLOW_SMALL, bad_dtype_cases())


@st.composite
def invalid_lc_cases(draw):
    """Valid geometry with exactly one thing broken."""
    n, c_in, c_out, h, w, k = 2, 3, 4, 7, 6, 3
    stride, padding = [1, 1], [0, 0]
    x_shape, w_shape, b_shape = [n, c_in, h, w], [5, 4, c_in, k, k, c_out], [c_out, 5, 4]
    w_dtype = b_dtype = g_dtype = torch.float32
    g_shape = [n, c_out, 5, 4]
    fault = draw(st.sampled_from(["x_dim", "w_dim", "c_in", "out_size", "bias_shape", "bias_dim", "w_dtype",
                                  "b_dtype", "stride", "padding", "huge_stride", "huge_padding", "g_shape",
                                  "g_dtype", "list_len"]))
    expect = ""
    if fault == "x_dim":
        x_shape = draw(st.sampled_from([[n, c_in, h], [c_in, h, w, 1, 1], [h]]))
        expect = "input must be 4-D"
    elif fault == "w_dim":
        w_shape = draw(st.sampled_from([[5, 4, c_in, k, k], [5, 4, c_in, k, k, c_out, 1], [c_out]]))
        expect = "weight must be 6-D"
    elif fault == "c_in":
        w_shape[2] = draw(st.sampled_from([0, 1, 2, 4, 9]))
        expect = "C_in"
    elif fault == "out_size":
        w_shape[draw(st.sampled_from([0, 1]))] += draw(st.sampled_from([-3, -1, 1, 2]))
        expect = "gives"
    elif fault == "bias_shape":
        b_shape = draw(st.sampled_from([[c_out, 4, 5], [c_out + 1, 5, 4], [1, 5, 4], [c_out, 5, 1]]))
        expect = "bias must be"
    elif fault == "bias_dim":
        b_shape = draw(st.sampled_from([[c_out], [c_out * 5 * 4], [1, c_out, 5, 4]]))
        expect = "bias must be"
    elif fault == "w_dtype":
        w_dtype, expect = torch.float64, "does not match"
    elif fault == "b_dtype":
        b_dtype, expect = torch.float64, "does not match"
    elif fault == "stride":
        stride[draw(st.sampled_from([0, 1]))] = draw(st.sampled_from([0, -1, -(2 ** 63)]))
        expect = "stride must be"
    elif fault == "padding":
        padding[draw(st.sampled_from([0, 1]))] = draw(st.sampled_from([-1, -5, -(2 ** 63)]))
        expect = "padding must be"
    elif fault == "huge_stride":  # geometry no longer fits the weight
        stride[draw(st.sampled_from([0, 1]))] = draw(st.sampled_from([7, 2 ** 31, 2 ** 62, 2 ** 63 - 1]))
        expect = "gives"
    elif fault == "huge_padding":
        # Up to 2 ** 31 the geometry then asks for an output the weight is not for; beyond, padding is refused by
        # name (it bounds H + 2 p, which would otherwise overflow int64).
        p = draw(st.sampled_from([3, 2 ** 20, 2 ** 40, 2 ** 61]))
        padding[draw(st.sampled_from([0, 1]))] = p
        expect = "gives" if p <= 2 ** 31 else r"padding must be <= 2\^31"
    elif fault == "g_shape":
        g_shape = draw(st.sampled_from([[n, c_out, 4, 5], [n + 1, c_out, 5, 4], [n, c_out, 5], [n, 1, 5, 4]]))
        expect = "grad_output must be"
    elif fault == "g_dtype":
        g_dtype, expect = torch.float64, "grad_output must match"
    elif fault == "list_len":
        which = draw(st.sampled_from(["stride", "padding"]))
        if which == "stride":
            stride = draw(st.sampled_from([[1], [1, 1, 1]]))
        else:
            padding = draw(st.sampled_from([[0], [0, 0, 0]]))
        expect = None  # the dispatcher's int[2] schema check, or ours
    op = draw(st.sampled_from(["lc_conv2d", "lc_conv2d_abs_tanh", "_lc_conv2d_backward"]))
    if fault in ("bias_shape", "bias_dim", "b_dtype") and op == "_lc_conv2d_backward":
        op = "lc_conv2d"  # the backward op has no bias argument
    if fault in ("g_shape", "g_dtype"):
        op = "_lc_conv2d_backward"
    return dict(x_shape=x_shape, w_shape=w_shape, b_shape=b_shape, g_shape=g_shape, w_dtype=w_dtype,
                b_dtype=b_dtype, g_dtype=g_dtype, stride=stride, padding=padding, op=op, expect=expect,
                device=draw(st.sampled_from(DEVICES)), isa=draw(st.sampled_from(ISAS)), fault=fault)


def _invalid_body(c):
    dev = c["device"]
    x = torch.randn(c["x_shape"], device=dev)
    w = torch.randn(c["w_shape"], dtype=c["w_dtype"], device=dev)
    b = torch.randn(c["b_shape"], dtype=c["b_dtype"], device=dev)
    g = torch.randn(c["g_shape"], dtype=c["g_dtype"], device=dev)
    with _isa_ctx(dev, c["isa"]), pytest.raises(RuntimeError, match=c["expect"]) as info:
        if c["op"] == "lc_conv2d":
            torch.ops.tcdcn_ext.lc_conv2d(x, w, b, c["stride"], c["padding"])
        elif c["op"] == "lc_conv2d_abs_tanh":
            torch.ops.tcdcn_ext.lc_conv2d_abs_tanh(x, w, b, c["stride"], c["padding"])
        else:
            torch.ops.tcdcn_ext._lc_conv2d_backward(g, x, w, c["stride"], c["padding"], [True, True, True])
    assert len(str(info.value)) > 10


test_invalid_arguments_raise, test_invalid_arguments_raise_slow = _both(
    _invalid_body, FAST_SMALL, SLOW_SMALL, invalid_lc_cases())


@pytest.mark.skipif(len(DEVICES) < 2, reason="needs a CUDA device; none is visible")
def test_mixed_devices_are_refused():
    x, w, b = torch.randn(2, 3, 6, 5), torch.randn(4, 3, 3, 3, 3, 5), torch.randn(5, 4, 3)
    for args in ((x.cuda(), w, b), (x, w.cuda(), b), (x.cuda(), w.cuda(), b)):
        with pytest.raises(RuntimeError, match="is on|device"):
            ops.lc_conv2d(*args)


def test_padding_overflow_is_refused_by_name():
    x = torch.randn(1, 1, 5, 5)
    w = torch.randn(3, 5, 1, 1, 1, 2)  # the 3x5 output that the wrapped arithmetic 5 + 2 * (2**63 - 1) = 3 gives
    with pytest.raises(RuntimeError, match="padding"):
        ops.lc_conv2d(x, w, None, 1, (2 ** 63 - 1, 0))


# ----------------------------------------------------------------------------------------------------------------
# face_patches


@st.composite
def face_patch_cases(draw):
    images = []
    for _ in range(draw(st.integers(1, 3))):
        h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        channels = draw(st.sampled_from([None, 1, 3, 4]))
        shape = (h, w) if channels is None else (h, w, channels)
        t = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(draw(
            st.integers(0, 2 ** 16))))
        if draw(st.booleans()) and t.dim() == 3:
            t = t.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous rows
        images.append(t)
    f = draw(st.integers(0, 5))
    index = torch.tensor([draw(st.integers(0, len(images) - 1)) for _ in range(f)], dtype=torch.int64)
    coord = st.floats(-60, 100, allow_nan=False, allow_infinity=False)
    boxes = []
    for _ in range(f):
        x0, y0 = draw(coord), draw(coord)
        boxes.append([x0, y0, x0 + draw(st.floats(0.01, 80)), y0 + draw(st.floats(0.01, 80))])
    return dict(images=images, index=index, boxes=torch.tensor(boxes, dtype=torch.float64).reshape(f, 4),
                size=draw(st.sampled_from([1, 2, 7, 40])), order=draw(st.sampled_from(["rgb", "bgr"])),
                standardise=draw(st.booleans()))


def _face_patches_body(case):
    c = case
    got = ops.face_patches(c["images"], c["index"], c["boxes"], c["size"], c["order"], c["standardise"])
    want = ref.face_patches(c["images"], c["index"], c["boxes"], c["size"], 1 if c["order"] == "bgr" else 0,
                            c["standardise"])
    assert got.shape == want.shape == (len(c["index"]), 1, c["size"], c["size"])
    # Standardising a nearly constant patch divides by a tiny std: compare the unstandardised values there.
    tol = dict(rtol=1e-4, atol=2e-3) if c["standardise"] else dict(rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got, want, **tol)


test_face_patches_match_reference, test_face_patches_match_reference_slow = _both(
    _face_patches_body, FAST_SMALL, SLOW_SMALL, case=face_patch_cases())
