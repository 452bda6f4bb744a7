"""int8 weights on the CPU inference path (tcdcn_ext.quantize, TCDCN.set_inference_weights("int8")): the
quantisation itself, the kernels on every CPU path against float32 inference with the dequantized weights (the
'vnni' path also rounds its activations to int16: looser tolerance), and the engine's argument checks."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from tcdcn_ext import _C, ops
from tcdcn_ext import _reference as ref
from tcdcn_ext.model import TCDCN, load_model, shipped_models
from tcdcn_ext.quantize import QMAX, dequantize_lc_weight, quantize_lc_weight

ISAS = ops.cpu_isas_supported()
# The float paths widen q exactly and sum in float32; 'vnni' rounds each layer's input to int16 (lc_int8.h); 'amx'
# at 16 faces or more rounds it to bfloat16 (lc_amx.h), below that runs the vnni kernel.
TOL = {"ref": 1e-5, "avx2": 1e-5, "avx512": 1e-5, "vnni": 2e-3, "amx": 3e-2}
CODES = {"none": 0, "abs_tanh": 1, "abs_tanh_maxpool2d": 2}


def test_quantize_bounds_and_layout():
    torch.manual_seed(0)
    w = torch.randn(3, 2, 5, 3, 3, 24)
    w[1, 1, :, :, :, 7] = 0  # an all-zero filter
    q, s = quantize_lc_weight(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.dtype == torch.float32 and s.shape == (3, 2, 24)
    assert int(q.abs().max()) == QMAX and int(q.min()) >= -QMAX
    assert s[1, 1, 7] == 1 and bool((q[1, 1, ..., 7] == 0).all())
    err = (dequantize_lc_weight(q, s) - w).abs()
    assert bool((err <= s[:, :, None, None, None, :] * (0.5 + 1e-6)).all())
    q2, s2 = quantize_lc_weight(w.clone())
    assert torch.equal(q, q2) and torch.equal(s, s2)  # deterministic


def test_quantize_refuses_bad_weights():
    with pytest.raises(ValueError, match="6-D"):
        quantize_lc_weight(torch.randn(3, 3))
    w = torch.randn(1, 1, 1, 1, 1, 4)
    w[0, 0, 0, 0, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_lc_weight(w)


def make_engine(c_in, size, layers, quantize):
    """An engine for the stack `layers` ((k, C_out, epilogue) each, the last giving a 1x1 map); quantize[i]: int8
    weights for layer i. Returns the engine and the float32 weights the int8 ones stand for."""
    example = torch.empty(0, c_in, size, size)
    weights, biases, epilogues, scales, plain = [], [], [], [], []
    for (k, c_out, epilogue), qz in zip(layers, quantize):
        size = size - k + 1
        w = torch.randn(size, size, c_in, k, k, c_out) / (c_in * k * k) ** 0.5
        b = torch.randn(c_out, size, size)
        if qz:
            q, s = quantize_lc_weight(w)
            weights.append(q)
            scales.append(s)
            w = dequantize_lc_weight(q, s)
        else:
            weights.append(w)
            scales.append(None)
        plain.append(w)
        biases.append(b)
        epilogues.append(CODES[epilogue])
        if epilogue == "abs_tanh_maxpool2d":
            size //= 2
        c_in = c_out
    engine = _C.StackEngine(weights, biases, epilogues, example, [layers[-1][1]], [], scale=scales)
    return engine, plain, biases, [e for _, _, e in layers]


# The 5-point TCDCN's layers (fc and heads as 1x1-output layers), and one whose tap runs are odd (kW * C_in = 9,
# 3 and 5) with channel counts the vnni kernel does not take (C_out % 16 != 0: the float int8 path).
TCDCN_LAYERS = [(5, 16, "abs_tanh_maxpool2d"), (3, 48, "abs_tanh_maxpool2d"), (3, 64, "abs_tanh_maxpool2d"),
                (2, 64, "abs_tanh"), (2, 100, "abs_tanh"), (1, 21, "none")]
ODD_LAYERS = [(3, 16, "abs_tanh_maxpool2d"), (3, 24, "abs_tanh"), (3, 32, "abs_tanh_maxpool2d"), (1, 7, "none")]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 40])
def test_engine_equals_float32_with_dequantized_weights(isa, n):
    torch.manual_seed(n)
    for c_in, size, layers, quantize in ((1, 40, TCDCN_LAYERS, [True] * 4 + [False] * 2),
                                         (3, 15, ODD_LAYERS, [True, True, True, False])):
        engine, plain, biases, epilogues = make_engine(c_in, size, layers, quantize)
        x = torch.randn(n, c_in, size, size)
        with ops.use_cpu_isa(isa), torch.no_grad():
            got = engine.stacked(x)
        want = ref.lc_conv2d_stack(x, plain, biases, epilogues).flatten(1)
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=TOL[isa] * max(scale, 1.0))


@pytest.mark.parametrize("isa", ISAS)
def test_engine_non_contiguous_input_and_non_finite_faces(isa):
    torch.manual_seed(1)
    engine, plain, biases, epilogues = make_engine(1, 40, TCDCN_LAYERS, [True] * 4 + [False] * 2)
    x = torch.randn(18, 1, 40, 44)[..., 2:42]  # strided rows; 18 faces: the amx tiles too
    x[1, 0, 5, 7] = float("nan")
    with ops.use_cpu_isa(isa), torch.no_grad():
        got = engine.stacked(x)
    assert bool(got[1].isnan().any())
    keep = [n for n in range(18) if n != 1]
    want = ref.lc_conv2d_stack(x[keep], plain, biases, epilogues).flatten(1)
    torch.testing.assert_close(got[keep], want, rtol=0, atol=TOL[isa] * max(float(want.abs().max()), 1.0))


def test_engine_checks_int8_arguments():
    q, s = quantize_lc_weight(torch.randn(2, 2, 1, 3, 3, 16))
    example = torch.empty(0, 1, 4, 4)
    with pytest.raises(RuntimeError, match="an int8 weight needs its scale"):
        _C.StackEngine([q], [None], [0], example, [16], [])
    with pytest.raises(RuntimeError, match="a scale goes with an int8 weight only"):
        _C.StackEngine([q.float()], [None], [0], example, [16], [], scale=[s])
    with pytest.raises(RuntimeError, match=r"scale must be \[H_out, W_out, C_out\]"):
        _C.StackEngine([q], [None], [0], example, [16], [], scale=[s[:1]])
    with pytest.raises(RuntimeError, match="scale must be float32"):
        _C.StackEngine([q], [None], [0], example, [16], [], scale=[s.double()])
    with pytest.raises(RuntimeError, match="needs a float32 input"):
        _C.StackEngine([q], [None], [0], example.double(), [16], [], scale=[s])


def dequantized_model(m: TCDCN) -> TCDCN:
    """A float32 copy of m whose locally connected conv weights are the int8 ones the plan computes with."""
    m = copy.deepcopy(m).set_inference_weights("float32")
    with torch.no_grad():
        for layer in m.conv:
            if getattr(layer, "weight", None) is not None and layer.weight.dim() == 6:
                layer.weight.copy_(dequantize_lc_weight(*quantize_lc_weight(layer.weight)))
    return m


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 4, 20])
def test_model_int8_equals_dequantized_float32(isa, n):
    torch.manual_seed(2)
    m = TCDCN().eval().set_inference_weights("int8")
    want_m = dequantized_model(m)
    x = torch.randn(n, 1, 40, 40)
    with ops.use_cpu_isa(isa), torch.inference_mode():
        got, want = m(x), want_m(x)
        features, want_features = m.features(x), want_m.features(x)  # (features: float16 of q * scale)
    assert [w.dtype for w in m._plan.weights[:4]] == [torch.int8] * 4
    assert m._plan.weights[4].dtype == torch.float32  # the fc and heads: as "auto" (Glorot weights: float32)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=TOL[isa] * 10, msg=k)
    torch.testing.assert_close(features, want_features, rtol=0, atol=2e-3)


def test_shift_average_takes_the_int8_plan():
    torch.manual_seed(3)
    m = TCDCN().eval().set_inference_weights("int8")
    want_m = dequantized_model(m)
    crop = torch.randn(2, 1, 44, 44)
    shifts = torch.tensor([[0, 0], [1, -1], [-2, 2]])
    with torch.inference_mode():
        got, want = m.predict_shift_average(crop, shifts), want_m.predict_shift_average(crop, shifts)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=2e-3, msg=k)  # (float16 of q * scale)


@pytest.mark.skipif("5pt" not in shipped_models(), reason="no shipped 5-point model")
def test_shipped_model_int8_stays_close():
    m = load_model("5pt")
    x = torch.randn(8, 1, 40, 40)
    with torch.inference_mode():
        f16 = m.set_inference_weights("auto")(x)["landmarks"]
        q8 = m.set_inference_weights("int8")(x)["landmarks"]
    assert (q8 - f16).abs().max() < 0.02  # box-frame units: 2 % of the box; the model card has the test-set error


def test_vnni_and_amx_paths_are_listed_only_where_the_cpu_has_them():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = open("/proc/cpuinfo").read().split()
    vnni = "avx512_vnni" in flags and "avx512bw" in flags
    amx = vnni and all(f in flags for f in ("avx512_bf16", "amx_tile", "amx_bf16"))
    assert ("vnni" in ISAS) == vnni
    assert ("amx" in ISAS) == amx  # (the process' tile permission is granted on Linux 5.16+)
    for name, has in (("vnni", vnni), ("amx", amx)):
        if not has:
            with pytest.raises(ValueError, match="not supported"):
                ops.set_cpu_isa(name)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(1, 20), c_in=st.integers(1, 6), c_out=st.sampled_from([5, 16, 17, 32, 48]),
       k=st.integers(1, 4), extra=st.integers(0, 4), epilogue=st.sampled_from(["none", "abs_tanh", "abs_tanh_maxpool2d"]),
       wide=st.booleans(), isa=st.sampled_from(ISAS))
def test_fuzz_int8_layer_on_every_path(n, c_in, c_out, k, extra, epilogue, wide, isa):
    """One int8 layer (any taps: odd tap runs, fewer than 64 or more; C_out on and off the integer kernels' multiple
    of 16) with a plain 1x1 layer after it, against the reference on the dequantized weights."""
    torch.manual_seed(n * 1000 + c_in * 100 + c_out + k)
    size = k + extra + (1 if epilogue == "abs_tanh_maxpool2d" else 0)
    c_in = c_in * (8 if wide else 1)  # wide: >= 64 taps for k >= 3 (the amx tiles)
    w = torch.randn(size - k + 1, size - k + 1, c_in, k, k, c_out) / (c_in * k * k) ** 0.5
    q, s = quantize_lc_weight(w)
    h = (size - k + 1) // (2 if epilogue == "abs_tanh_maxpool2d" else 1)
    w2 = torch.randn(1, 1, c_out, h, h, 3)
    b1, b2 = torch.randn(c_out, size - k + 1, size - k + 1), torch.randn(3, 1, 1)
    engine = _C.StackEngine([q, w2], [b1, b2], [CODES[epilogue], 0], torch.empty(0, c_in, size, size), [3], [],
                            scale=[s, None])
    x = torch.randn(n, c_in, size, size)
    with ops.use_cpu_isa(isa), torch.no_grad():
        got = engine.stacked(x)
    want = ref.lc_conv2d_stack(x, [dequantize_lc_weight(q, s), w2], [b1, b2], [epilogue, "none"]).flatten(1)
    torch.testing.assert_close(got, want, rtol=0, atol=TOL[isa] * max(float(want.abs().max()), 1.0))


@pytest.mark.skipif("5pt" not in shipped_models(), reason="no shipped 5-point model")
def test_shipped_int8_weights_match_their_record_and_round_trip():
    """The int8 weights the shipped 5-point model runs on are exactly the ones its model card measured (sha256 in
    weights/tcdcn_5pt.json), and quantising their dequantised values gives the same int8 weights and scales back."""
    import json

    from tcdcn_ext.models.weights import WEIGHTS_DIR
    from tcdcn_ext.nn import LocallyConnected2d
    from tcdcn_ext.ops.quantize import dequantize_lc_weight, int8_digest, quantize_lc_weight

    m = load_model("5pt")
    weights = [layer.weight for layer in m.conv if isinstance(layer, LocallyConnected2d)]
    record = json.loads((WEIGHTS_DIR / "tcdcn_5pt.json").read_text())
    assert int8_digest(weights) == record["int8"]["sha256"]
    for w in weights:
        q, scale = quantize_lc_weight(w)
        q2, scale2 = quantize_lc_weight(dequantize_lc_weight(q, scale))
        assert torch.equal(q, q2) and torch.equal(scale, scale2)
    plan = m.eval()._inference_plan(torch.zeros(1, 1, 40, 40))
    got = [w for w, s in zip(plan.weights, plan.scales) if s is not None]
    assert len(got) == len(weights) and all(torch.equal(g, quantize_lc_weight(w)[0]) for g, w in zip(got, weights))
