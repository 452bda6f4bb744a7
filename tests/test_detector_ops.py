"""The face detector's convolutions (dw_separable, conv3x3_stride2_relu) against their pure-PyTorch twins, on every
CPU ISA, and the YuNet module's native path against its F.conv2d path."""

from __future__ import annotations

import pytest
import torch

from tcdcn_ext import _reference as ref
from tcdcn_ext import ops
from tcdcn_ext.yunet import YuNet, load_yunet

TOL = {torch.float32: dict(atol=2e-4, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def _block_args(n, c_in, c_out, h, w, dtype, with_up=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x = r(n, c_in, h, w)
    up = r(n, c_in, h // 2, w // 2) if with_up else None
    return x, r(c_out, c_in) / c_in ** 0.5, r(c_out), r(c_out, 3, 3) / 3, r(c_out), up


@pytest.mark.parametrize("isa", ops.cpu_isas_supported())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c_in,c_out", [(16, 16), (16, 32), (64, 64), (3, 1), (17, 20), (1, 4), (64, 16), (33, 70)])
@pytest.mark.parametrize("relu,pool", [(True, False), (False, False), (True, True)])
def test_dw_separable_matches_reference(isa, dtype, c_in, c_out, relu, pool):
    for n, h, w in ((1, 9, 13), (2, 8, 6), (1, 1, 1), (1, 3, 2), (1, 21, 18)):
        if pool and min(h, w) < 2:
            continue  # torch's max_pool2d refuses an empty output; the op returns [N, C, 0, 0]
        x, pw, pb, dw, db, _ = _block_args(n, c_in, c_out, h, w, dtype)
        with ops.use_cpu_isa(isa), torch.no_grad():
            got = ops.dw_separable(x, pw, pb, dw, db, relu=relu, pool=pool)
        want = ref.dw_separable(x, pw, pb, dw, db, relu=relu, pool=pool)
        assert got.shape == want.shape
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{isa} n{n} {h}x{w}: {m}")


@pytest.mark.parametrize("isa", ops.cpu_isas_supported())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dw_separable_with_top_down_input(isa, dtype):
    for c_in, c_out, h, w in ((64, 64, 8, 10), (5, 19, 2, 2), (16, 16, 30, 40)):
        x, pw, pb, dw, db, up = _block_args(2, c_in, c_out, h, w, dtype, with_up=True)
        with ops.use_cpu_isa(isa), torch.no_grad():
            got = ops.dw_separable(x, pw, pb, dw, db, up=up, relu=True)
        torch.testing.assert_close(got, ref.dw_separable(x, pw, pb, dw, db, up=up, relu=True), **TOL[dtype])


@pytest.mark.parametrize("isa", ops.cpu_isas_supported())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv3x3_stride2_relu_matches_reference(isa, dtype):
    g = torch.Generator().manual_seed(1)
    for n, c_in, c_out, h, w in ((1, 3, 16, 64, 96), (2, 3, 16, 7, 5), (1, 1, 3, 1, 1), (1, 4, 40, 10, 33)):
        x = torch.randn(n, c_in, h, w, generator=g, dtype=dtype) * 50
        wt = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=dtype) / 5
        b = torch.randn(c_out, generator=g, dtype=dtype)
        with ops.use_cpu_isa(isa), torch.no_grad():
            got = ops.conv3x3_stride2_relu(x, wt, b)
        want = ref.conv3x3_stride2_relu(x, wt, b)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=2e-3 if dtype == torch.float32 else 1e-9, rtol=1e-4)


def test_strided_and_channels_last_inputs():
    x, pw, pb, dw, db, up = _block_args(2, 16, 32, 12, 14, torch.float32, with_up=True)
    want = ref.dw_separable(x, pw, pb, dw, db, up=up, pool=True)
    with torch.no_grad():
        cl = ops.dw_separable(x.contiguous(memory_format=torch.channels_last), pw, pb, dw, db, up=up, pool=True)
        wide = torch.randn(2, 16, 12, 28)[..., ::2]  # a non-contiguous view
        got_wide = ops.dw_separable(wide, pw.t().contiguous().t(), pb, dw, db)
    torch.testing.assert_close(cl, want, **TOL[torch.float32])
    torch.testing.assert_close(got_wide, ref.dw_separable(wide, pw, pb, dw, db), **TOL[torch.float32])


def test_nan_propagates_through_relu_and_pooling():
    x, pw, pb, dw, db, _ = _block_args(1, 4, 4, 6, 6, torch.float32)
    x[0, :, 2, 3] = float("nan")
    with torch.no_grad():
        got = ops.dw_separable(x, pw, pb, dw, db, pool=True)
    want = ref.dw_separable(x, pw, pb, dw, db, pool=True)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()


def test_empty_batch_and_opcheck():
    x, pw, pb, dw, db, up = _block_args(0, 8, 16, 4, 4, torch.float32, with_up=True)
    with torch.no_grad():
        assert ops.dw_separable(x, pw, pb, dw, db, up=up, pool=True).shape == (0, 16, 2, 2)
    x, pw, pb, dw, db, up = _block_args(2, 8, 16, 6, 8, torch.float32, with_up=True)
    torch.library.opcheck(torch.ops.tcdcn_ext.dw_separable, (x, pw, pb, dw, db, up, True, True))
    torch.library.opcheck(torch.ops.tcdcn_ext.dw_separable, (x, pw, pb, dw, db, None, False, False))
    wt, b = torch.randn(16, 3, 3, 3), torch.randn(16)
    torch.library.opcheck(torch.ops.tcdcn_ext.conv3x3_stride2_relu, (torch.randn(1, 3, 9, 10), wt, b))


def test_bad_arguments_are_named():
    x, pw, pb, dw, db, _ = _block_args(1, 8, 16, 4, 4, torch.float32)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="input has 8 channels but the weight expects 9"):
            ops.dw_separable(x, torch.zeros(16, 9), pb, dw, db)
        with pytest.raises(RuntimeError, match="dw_weight must have shape"):
            ops.dw_separable(x, pw, pb, dw[:, :2], db)
        with pytest.raises(RuntimeError, match="pw_bias must be Double like the input|pw_bias must be"):
            ops.dw_separable(x.double(), pw.double(), pb, dw.double(), db.double())
        with pytest.raises(RuntimeError, match="input must be float32 or float64"):
            ops.dw_separable(x.half(), pw.half(), pb.half(), dw.half(), db.half())
        with pytest.raises(RuntimeError, match="up must have shape"):
            ops.dw_separable(x, pw, pb, dw, db, up=torch.zeros(1, 8, 3, 2))
        with pytest.raises(RuntimeError, match="input must be 4-D"):
            ops.conv3x3_stride2_relu(torch.zeros(3, 8, 8), torch.zeros(4, 3, 3, 3), torch.zeros(4))
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.dw_separable(x, pw.requires_grad_(), pb, dw, db)


def test_yunet_native_path_matches_functional_path():
    net = load_yunet()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 96, 160, generator=g) * 255
    with torch.inference_mode():
        assert ops.dw_separable_supported(x, net.stem_weight)
        got = net(x)
        want = net.forward_reference(x)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-4)


def test_yunet_input_checks():
    net = YuNet()
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.zeros(1, 3, 30, 64))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        net(torch.zeros(1, 1, 32, 32))
    with pytest.raises(TypeError, match="floating point"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
