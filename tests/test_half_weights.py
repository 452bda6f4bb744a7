"""float16 weights with float32 activations in the CPU forward ops: each weight is widened to float32 on load and
the sums stay float32, so the result must be the float32 op's on ``weight.float()``."""

from __future__ import annotations

import pytest
import torch
from conftest import cpu_and_cuda

from tcdcn_ext import _reference as ref
from tcdcn_ext import ops

# (C_in, H, W, k, C_out, stride, padding): the TCDCN layers, then C_out that fill no vector (5), leave a tail
# after whole vectors (17, 33, 100) or need more than four vectors; stride and padding.
SHAPES = [(1, 40, 40, 5, 16, 1, 0), (16, 18, 18, 3, 48, 1, 0), (48, 8, 8, 3, 64, 1, 0), (64, 3, 3, 2, 64, 1, 0),
          (3, 7, 9, 3, 5, 1, 0), (2, 9, 8, 3, 17, 2, 1), (5, 6, 6, 2, 33, 1, 2), (64, 3, 3, 2, 100, 1, 0),
          (4, 5, 5, 2, 144, 1, 0)]
FORWARD_OPS = [ops.lc_conv2d, ops.lc_conv2d_abs_tanh, ops.lc_conv2d_abs_tanh_maxpool2d]
FORWARD_REFS = [ref.lc_conv2d, ref.lc_conv2d_abs_tanh, ref.lc_conv2d_abs_tanh_maxpool2d]


def make(shape, n, bias=True):
    c_in, h, w, k, c_out, s, p = shape
    ho, wo = ops.lc_output_size((h, w), k, s, p)
    x = torch.randn(n, c_in, h, w)
    wt = (torch.randn(ho, wo, c_in, k, k, c_out) / (c_in * k * k) ** 0.5).half()
    b = torch.randn(c_out, ho, wo) if bias else None
    return x, wt, b, (s, s), (p, p)


@pytest.mark.parametrize("isa", ops.cpu_isas_supported())
@pytest.mark.parametrize("op", range(3), ids=["plain", "abs_tanh", "abs_tanh_maxpool2d"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("n", [1, 2, 3, 40])  # N <= 2: the location-tiled path; N > 2: the face-tiled one
def test_equals_float32_op_on_rounded_weights(isa, op, shape, n):
    x, w16, b, s, p = make(shape, n, bias=shape[4] != 5)
    with ops.use_cpu_isa(isa), torch.no_grad():
        got = FORWARD_OPS[op](x, w16, b, s, p)
        want = FORWARD_OPS[op](x, w16.float(), b, s, p)
        oracle = FORWARD_REFS[op](x, w16, b, s, p)
    assert got.dtype == torch.float32 and got.shape == want.shape and got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, oracle, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("isa", ops.cpu_isas_supported())
@pytest.mark.parametrize("c_out", [16, 7])  # whole vectors, and the scalar channel loop alone
@pytest.mark.parametrize("n", [1, 3])
def test_every_float16_value_widens_exactly(isa, c_out, n):
    """All 65536 bit patterns (subnormals, +-0, +-inf, NaNs) as weights of 1x1 taps on a 1-pixel input of 1s:
    out = 1 * w + 0, so every ISA's conversion, vector and scalar, must give torch's ``half.float()``."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    locs = -(-bits.numel() // c_out)
    w16 = torch.cat([bits, bits[: locs * c_out - bits.numel()]]).view(torch.float16).view(1, locs, 1, 1, 1, c_out)
    x = torch.ones(n, 1, 1, locs)
    with ops.use_cpu_isa(isa):
        got = ops.lc_conv2d(x, w16)
    want = (w16.float() + 0.0).view(1, locs, c_out).permute(2, 0, 1).expand(n, c_out, 1, locs)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_weight_and_input_layouts():
    x, w16, b, s, p = make(SHAPES[5], 3)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous input
    wt = w16.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous float16 weight
    with torch.no_grad():
        for xi in (x, xt, x.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(ops.lc_conv2d(xi, wt, b, s, p), ops.lc_conv2d(x, w16.float(), b, s, p),
                                       rtol=1e-5, atol=1e-5)
    assert ops.lc_conv2d(x[:0], w16, b, s, p).shape == (0, 17, 5, 4)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda x, w, b: (x.half(), w, b.half()), "input must be float32 or float64"),
        (lambda x, w, b: (x.double(), w, b.double()), "a float16 weight needs a float32 input"),
        (lambda x, w, b: (x, w, b.half()), "bias dtype Half does not match input dtype Float"),
        (lambda x, w, b: (x, w.bfloat16(), b), "weight dtype BFloat16 does not match input dtype Float"),
    ],
)
def test_clear_errors(make_args, message):
    x, w16, b, s, p = make(SHAPES[4], 2)
    for f in FORWARD_OPS:
        with pytest.raises(RuntimeError, match=message), torch.no_grad():
            f(*make_args(x, w16, b), s, p)


def test_no_gradients_through_float16_weights():
    x, w16, b, s, p = make(SHAPES[4], 2)
    for tensors in ((x.requires_grad_(True), w16, b), (x.detach(), w16.requires_grad_(True), b)):
        with pytest.raises(RuntimeError, match="float16 weight"):
            ops.lc_conv2d(*tensors, s, p)
    with pytest.raises(RuntimeError, match="float16 weights are taken only by the CPU forward ops"):
        go = torch.randn(2, 5, 5, 7)
        torch.ops.tcdcn_ext._lc_conv2d_backward(go, x.detach(), w16.detach(), list(s), list(p), [True, True, True])


@pytest.mark.parametrize("op", ["lc_conv2d", "lc_conv2d_abs_tanh", "lc_conv2d_abs_tanh_maxpool2d"])
def test_opcheck(op):
    x, w16, b, s, p = make(SHAPES[5], 3)
    torch.library.opcheck(getattr(torch.ops.tcdcn_ext, op).default, (x, w16, b, list(s), list(p)))
    torch.library.opcheck(getattr(torch.ops.tcdcn_ext, op).default, (x[:1], w16, None, list(s), list(p)))


@pytest.mark.parametrize("device", [d for d in cpu_and_cuda() if not isinstance(d, str)])
def test_cuda_refuses_float16_weights(device):
    x, w16, b, s, p = make(SHAPES[4], 2)
    with pytest.raises(RuntimeError, match="float16 weights are taken only by the CPU forward ops"), torch.no_grad():
        ops.lc_conv2d_abs_tanh(x.to(device), w16.to(device), b.to(device), s, p)
