"""CUDA kernel tests beyond the cpu/cuda-parametrised ones in test_ops.py.

CUDA against the CPU kernels on the four TCDCN layer shapes (N = 1, 7, 300: one face tile, a partial tile, and
several tiles plus the split-over-faces grad_weight path), float64 gradcheck with stride and padding, opcheck of
every op on CUDA, non-contiguous and empty inputs, determinism of the atomics-free backward, and the message for
arguments on mixed devices. The whole module is skipped (with the reason) where no CUDA device is visible or the
extension was built without CUDA kernels.
"""

from __future__ import annotations

import pytest
import torch

import tcdcn_ext
from tcdcn_ext import _reference, ops

pytestmark = [
    pytest.mark.needs_cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(not tcdcn_ext._C.with_cuda, reason="tcdcn_ext was built without its CUDA kernels"),
]

CUDA = "cuda"
# (C_in, H=W, k, C_out) of the four locally connected TCDCN layers; stride 1, no padding.
TCDCN_LAYERS = [(1, 40, 5, 16), (16, 18, 3, 48), (48, 8, 3, 64), (64, 3, 2, 64)]
LAYER_IDS = ["conv1_40x40x1_k5_16", "conv2_18x18x16_k3_48", "conv3_8x8x48_k3_64", "conv4_3x3x64_k2_64"]
OPS = torch.ops.tcdcn_ext


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _make(n, c_in, h, w, k, c_out, stride=(1, 1), padding=(0, 0), dtype=torch.float32, seed=0, bias=True):
    """CPU tensors (input, weight, bias) with O(1) outputs: weights scaled by 1/sqrt(K)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    h_out, w_out = ops.lc_output_size((h, w), (kh, kw), stride, padding)
    g = _gen(seed)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=dtype)
    wt = torch.randn(h_out, w_out, c_in, kh, kw, c_out, generator=g, dtype=dtype) / (c_in * kh * kw) ** 0.5
    b = torch.randn(c_out, h_out, w_out, generator=g, dtype=dtype) if bias else None
    return x, wt, b


def _cuda(*ts):
    return tuple(None if t is None else t.to(CUDA) for t in ts)


def _tol(dtype):
    return dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# CUDA against CPU on the real shapes


@pytest.mark.parametrize("n", [1, 7, 300])
@pytest.mark.parametrize("layer", TCDCN_LAYERS, ids=LAYER_IDS)
def test_forward_matches_cpu_tcdcn_shapes(layer, n):
    c_in, hw, k, c_out = layer
    x, w, b = _make(n, c_in, hw, hw, k, c_out, seed=n)
    xc, wc, bc = _cuda(x, w, b)
    with torch.no_grad():
        for fn in (ops.lc_conv2d, ops.lc_conv2d_abs_tanh):
            want = fn(x, w, b)
            got = fn(xc, wc, bc)
            assert got.shape == want.shape and got.stride() == want.stride()
            assert got.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(got.cpu(), want, **_tol(torch.float32))


@pytest.mark.parametrize("n", [1, 7, 300])
@pytest.mark.parametrize("layer", TCDCN_LAYERS, ids=LAYER_IDS)
def test_backward_matches_cpu_tcdcn_shapes(layer, n):
    c_in, hw, k, c_out = layer
    x, w, b = _make(n, c_in, hw, hw, k, c_out, seed=100 + n)
    go = torch.randn(n, c_out, hw - k + 1, hw - k + 1, generator=_gen(7))
    want = OPS._lc_conv2d_backward(go, x, w, [1, 1], [0, 0], [True, True, True])
    got = OPS._lc_conv2d_backward(*_cuda(go, x, w), [1, 1], [0, 0], [True, True, True])
    for name, g_cuda, g_cpu in zip(("grad_input", "grad_weight", "grad_bias"), got, want):
        assert g_cuda.device.type == CUDA and g_cuda.is_contiguous(), name
        assert g_cuda.shape == g_cpu.shape, name
        # grad_weight / grad_bias sum over n faces: scale the tolerance with the size of the sum.
        scale = max(1.0, float(g_cpu.abs().max()))
        torch.testing.assert_close(g_cuda.cpu(), g_cpu, rtol=2e-4, atol=2e-5 * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, True, True), (True, False, True)])
def test_backward_output_mask_matches_cpu(mask):
    x, w, _ = _make(300, 5, 9, 8, 3, 70, stride=(2, 1), padding=(1, 0), seed=3, bias=False)
    go = torch.randn(300, 70, w.shape[0], w.shape[1], generator=_gen(4))
    want = OPS._lc_conv2d_backward(go, x, w, [2, 1], [1, 0], list(mask))
    got = OPS._lc_conv2d_backward(*_cuda(go, x, w), [2, 1], [1, 0], list(mask))
    for flag, g_cuda, g_cpu in zip(mask, got, want):
        if not flag:
            assert g_cuda.shape == (0,) and g_cuda.device.type == CUDA
            continue
        scale = max(1.0, float(g_cpu.abs().max()))
        torch.testing.assert_close(g_cuda.cpu(), g_cpu, rtol=2e-4, atol=2e-5 * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tile_edges_against_reference(dtype):
    # C_out = 70 and C_in = 67: two channel tiles with a ragged tail; K = 67*3*2 = 402 taps: several tap tiles in
    # grad_weight; N = 261: a ragged last face tile.
    x, w, b = _make(261, 67, 7, 6, (3, 2), 70, stride=(1, 2), padding=(1, 1), dtype=dtype, seed=5)
    xc, wc, bc = _cuda(x, w, b)
    for t in (xc, wc, bc):
        t.requires_grad_(True)
    out = ops.lc_conv2d(xc, wc, bc, stride=(1, 2), padding=(1, 1))
    xr, wr, br = (t.detach().clone().requires_grad_(True) for t in (xc, wc, bc))
    ref = _reference.lc_conv2d(xr, wr, br, (1, 2), (1, 1))
    torch.testing.assert_close(out, ref, **_tol(dtype))
    go = torch.randn(out.shape, generator=_gen(6), dtype=dtype).to(CUDA)
    out.backward(go)
    ref.backward(go)
    tol = dict(rtol=5e-4, atol=5e-3) if dtype == torch.float32 else _tol(dtype)
    for a, r in ((xc, xr), (wc, wr), (bc, br)):
        torch.testing.assert_close(a.grad, r.grad, **tol)


# ----------------------------------------------------------------------------------------------------------------
# gradcheck and opcheck on CUDA


@pytest.mark.parametrize("stride,padding", [((2, 2), (1, 1)), ((2, 1), (1, 0)), ((3, 3), (0, 0))],
                         ids=["s2_p1", "s21_p10", "s3_uncovered_pixels"])
def test_gradcheck_lc_conv2d(stride, padding):
    # Stride 3 with a 2x2 kernel leaves input pixels under no window: their gradient must be exactly 0.
    x, w, b = _make(2, 3, 7, 6, (3, 3) if stride != (3, 3) else (2, 2), 5, stride=stride, padding=padding,
                    dtype=torch.float64, seed=8)
    args = [t.to(CUDA).requires_grad_(True) for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda i, wt, bs: ops.lc_conv2d(i, wt, bs, stride, padding), args)


def test_gradcheck_abs_tanh():
    x = torch.randn(3, 4, 5, generator=_gen(9), dtype=torch.float64)
    x = torch.where(x.abs() < 0.05, x + 0.2, x)  # keep away from the kink at 0
    assert torch.autograd.gradcheck(ops.abs_tanh, [x.to(CUDA).requires_grad_(True)])


OPCHECK_CASES = ["lc_conv2d", "lc_conv2d_nobias", "lc_conv2d_abs_tanh", "_lc_conv2d_backward",
                 "_lc_conv2d_backward_mask", "abs_tanh", "abs_tanh_channels_last", "_abs_tanh_backward"]


def _opcheck_case(name):
    x, w, b = _cuda(*_make(3, 4, 6, 5, 3, 6, stride=(2, 1), padding=(1, 1), seed=10))
    go = torch.randn(3, 6, w.shape[0], w.shape[1], generator=_gen(11)).to(CUDA)
    xt = torch.randn(2, 3, 4, 5, generator=_gen(12)).to(CUDA)
    st, pd = [2, 1], [1, 1]

    def grad(*ts):
        return [t.clone().requires_grad_(True) for t in ts]

    return {
        "lc_conv2d": (OPS.lc_conv2d.default, (*grad(x, w, b), st, pd)),
        "lc_conv2d_nobias": (OPS.lc_conv2d.default, (*grad(x, w), None, st, pd)),
        "lc_conv2d_abs_tanh": (OPS.lc_conv2d_abs_tanh.default, (x, w, b, st, pd)),
        "_lc_conv2d_backward": (OPS._lc_conv2d_backward.default, (go, x, w, st, pd, [True, True, True])),
        "_lc_conv2d_backward_mask": (OPS._lc_conv2d_backward.default, (go, x, w, st, pd, [False, True, False])),
        "abs_tanh": (OPS.abs_tanh.default, (xt.clone().requires_grad_(True),)),
        "abs_tanh_channels_last": (OPS.abs_tanh.default, (xt.contiguous(memory_format=torch.channels_last),)),
        "_abs_tanh_backward": (OPS._abs_tanh_backward.default, (torch.randn_like(xt), xt)),
    }[name]


@pytest.mark.parametrize("name", OPCHECK_CASES)
def test_opcheck_cuda(name):
    op, args = _opcheck_case(name)
    torch.library.opcheck(op, args)


# ----------------------------------------------------------------------------------------------------------------
# Layouts, empty inputs, determinism, devices


def test_noncontiguous_inputs():
    x, w, b = _make(9, 6, 11, 10, 3, 20, seed=13)
    xc, wc, bc = _cuda(x, w, b)
    x_cl = xc.contiguous(memory_format=torch.channels_last)  # channels-last input
    x_big = torch.zeros(9, 12, 11, 20, device=CUDA)
    x_big[:, ::2, :, ::2] = xc
    x_sliced = x_big[:, ::2, :, ::2]  # strided view
    assert not x_sliced.is_contiguous()
    w_nc = ops.lc_weight_to_natural(wc).permute(0, 1, 3, 4, 5, 2)  # weight-shaped, not contiguous
    assert not w_nc.is_contiguous()
    b_nc = bc.transpose(1, 2).contiguous().transpose(1, 2)
    want = ops.lc_conv2d(x, w, b)
    for xi in (x_cl, x_sliced):
        got = ops.lc_conv2d(xi, w_nc, b_nc)
        torch.testing.assert_close(got.cpu(), want, **_tol(torch.float32))
    # Backward through non-contiguous views that require grad: the gradients land in their bases.
    x_base = x_big.clone().requires_grad_(True)
    w_base = ops.lc_weight_to_natural(wc).requires_grad_(True)  # [H_out, W_out, C_out, C_in, kH, kW]
    out = ops.lc_conv2d(x_base[:, ::2, :, ::2], w_base.permute(0, 1, 3, 4, 5, 2), b_nc)
    go = torch.randn(out.shape[0], out.shape[2], out.shape[3], out.shape[1], generator=_gen(14))
    go = go.permute(0, 3, 1, 2)  # NCHW-shaped view of an NHWC tensor
    out.backward(go.to(CUDA))
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ops.lc_conv2d(xr, wr, b).backward(go)
    torch.testing.assert_close(x_base.grad[:, ::2, :, ::2].cpu(), xr.grad, rtol=2e-4, atol=2e-4)
    assert torch.count_nonzero(x_base.grad[:, 1::2]) == 0
    torch.testing.assert_close(w_base.grad.cpu(), ops.lc_weight_to_natural(wr.grad), rtol=2e-4, atol=2e-4)
    # A strided grad_output straight into the backward op.
    go2 = torch.randn(2 * out.shape[0], out.shape[1], out.shape[2], out.shape[3], generator=_gen(15)).to(CUDA)[::2]
    gi = OPS._lc_conv2d_backward(go2, x_sliced, w_nc, [1, 1], [0, 0], [True, True, True])
    gi_ref = OPS._lc_conv2d_backward(go2.cpu(), x, w, [1, 1], [0, 0], [True, True, True])
    for a, r in zip(gi, gi_ref):
        torch.testing.assert_close(a.cpu(), r, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("make", ["channels_last", "transposed", "sliced", "expanded"])
def test_abs_tanh_layouts_match_cpu(make):
    layout = {
        "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
        "transposed": lambda t: t.transpose(1, 3),  # dense, permuted: kept
        "sliced": lambda t: t[:, ::2, 1:, ::3],  # not dense: made contiguous
        "expanded": lambda t: t[:, :1].expand(4, 6, 5, 7),  # overlapping: made contiguous
    }[make]
    base = torch.randn(4, 6, 5, 7, generator=_gen(16))
    x_cpu, x_dev = layout(base), layout(base.to(CUDA))
    assert x_dev.stride() == x_cpu.stride()
    y_cpu, y = ops.abs_tanh(x_cpu), ops.abs_tanh(x_dev)
    assert y.stride() == y_cpu.stride()
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-6, atol=1e-6)
    go = torch.randn(x_cpu.shape, generator=_gen(17))
    for go_cpu in (go, go.contiguous(memory_format=torch.channels_last), layout(torch.randn(base.shape, generator=_gen(18))).clone()):
        go_dev = go_cpu.to(CUDA)
        assert go_dev.stride() == go_cpu.stride()
        gi_cpu = OPS._abs_tanh_backward(go_cpu, x_cpu)
        gi = OPS._abs_tanh_backward(go_dev, x_dev)
        assert gi.stride() == gi_cpu.stride()
        torch.testing.assert_close(gi.cpu(), gi_cpu, rtol=1e-6, atol=1e-6)


def test_abs_tanh_values_and_zero():
    x = torch.tensor([0.0, -0.0, 1e-8, -3.0, 20.0, -20.0, 0.5, float("inf"), float("-inf")], device=CUDA)
    y = ops.abs_tanh(x)
    torch.testing.assert_close(y, torch.tanh(x).abs(), rtol=2e-7, atol=2e-7)
    gi = OPS._abs_tanh_backward(torch.ones_like(x), x)
    assert gi[0].item() == 0.0 and gi[1].item() == 0.0  # sign(0) = 0
    xd = torch.linspace(-6, 6, 10001, dtype=torch.float64, device=CUDA)
    torch.testing.assert_close(ops.abs_tanh(xd.float()).double(), torch.tanh(xd).abs(), rtol=0, atol=3e-7)
    gid = OPS._abs_tanh_backward(torch.ones_like(xd), xd)
    torch.testing.assert_close(gid, torch.sign(xd) * (1 - torch.tanh(xd) ** 2), rtol=1e-12, atol=1e-12)


def test_empty_batch():
    x, w, b = _make(0, 3, 6, 6, 3, 4, seed=18)
    xc, wc, bc = (t.to(CUDA).requires_grad_(True) for t in (x, w, b))
    out = ops.lc_conv2d(xc, wc, bc)
    assert out.shape == (0, 4, 4, 4) and out.device.type == CUDA
    assert out.stride() == ops.lc_conv2d(x, w, b).stride()
    out.sum().backward()
    assert xc.grad.shape == xc.shape
    assert torch.equal(wc.grad, torch.zeros_like(wc)) and torch.equal(bc.grad, torch.zeros_like(bc))
    with torch.no_grad():
        assert ops.lc_conv2d_abs_tanh(xc, wc, bc).shape == (0, 4, 4, 4)
    assert ops.abs_tanh(torch.empty(0, 3, device=CUDA)).shape == (0, 3)
    e = torch.empty(2, 0, device=CUDA)
    assert OPS._abs_tanh_backward(e, e).shape == (2, 0)


def test_backward_is_deterministic():
    x, w, b = _make(1000, 16, 18, 18, 3, 48, seed=19)
    go = torch.randn(1000, 48, 16, 16, generator=_gen(20))
    args = (*_cuda(go, x, w), [1, 1], [0, 0], [True, True, True])
    first = OPS._lc_conv2d_backward(*args)
    for _ in range(3):
        again = OPS._lc_conv2d_backward(*args)
        for a, b_ in zip(first, again):
            assert torch.equal(a, b_)


def test_float64_matches_reference_tight():
    x, w, b = _make(33, 16, 18, 18, 3, 48, dtype=torch.float64, seed=21)
    xc, wc, bc = _cuda(x, w, b)
    torch.testing.assert_close(ops.lc_conv2d(xc, wc, bc), _reference.lc_conv2d(xc, wc, bc), rtol=1e-12, atol=1e-12)


def test_current_stream_is_used():
    x, w, b = _cuda(*_make(64, 16, 18, 18, 3, 48, seed=22))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = ops.lc_conv2d(x, w, b)
        y = ops.abs_tanh(out)
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(y, _reference.abs_tanh(_reference.lc_conv2d(x, w, b)), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("which", ["weight", "bias", "input"])
def test_mixed_devices_raise_clear_error(which):
    x, w, b = _make(2, 3, 6, 6, 3, 4, seed=23)
    xc, wc, bc = _cuda(x, w, b)
    args = {"input": (x, wc, bc), "weight": (xc, w, bc), "bias": (xc, wc, b)}[which]
    with pytest.raises(RuntimeError, match=rf"lc_conv2d: {which} must be a CUDA tensor"):
        ops.lc_conv2d(*args)
    go = torch.zeros(2, 4, 4, 4, device=CUDA)
    if which != "bias":
        bw_args = {"input": (go, x, wc), "weight": (go, xc, w)}[which]
        with pytest.raises(RuntimeError, match=rf"_lc_conv2d_backward: {which} must be a CUDA tensor"):
            OPS._lc_conv2d_backward(*bw_args, [1, 1], [0, 0], [True, True, True])
    with pytest.raises(RuntimeError, match=r"_abs_tanh_backward: grad_output must be a CUDA tensor"):
        OPS._abs_tanh_backward(torch.zeros(3), torch.zeros(3, device=CUDA))
