"""The operators against the pure-PyTorch reference: values, gradients, opcheck, ISAs, layouts, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import cpu_and_cuda

import tcdcn_ext
from tcdcn_ext import _reference as ref
from tcdcn_ext import ops
from tcdcn_ext.nn import AbsTanh, LocallyConnected2d

# (C_in, H, W, k, C_out, stride, padding): the four TCDCN layers, then odd shapes (tails, stride, padding).
TCDCN_SHAPES = [(1, 40, 40, 5, 16, 1, 0), (16, 18, 18, 3, 48, 1, 0), (48, 8, 8, 3, 64, 1, 0), (64, 3, 3, 2, 64, 1, 0)]
ODD_SHAPES = [(3, 7, 9, 3, 5, 1, 0), (2, 9, 8, 3, 17, 2, 1), (5, 6, 6, 2, 33, 1, 2), (1, 1, 1, 1, 1, 1, 0)]


def make(shape, n, dtype=torch.float32, device="cpu", bias=True, requires_grad=False):
    c_in, h, w, k, c_out, s, p = shape
    ho, wo = ops.lc_output_size((h, w), k, s, p)
    x = torch.randn(n, c_in, h, w, dtype=dtype, device=device)
    wt = torch.randn(ho, wo, c_in, k, k, c_out, dtype=dtype, device=device) / (c_in * k * k) ** 0.5
    b = torch.randn(c_out, ho, wo, dtype=dtype, device=device) if bias else None
    if requires_grad:
        for t in (x, wt, b):
            if t is not None:
                t.requires_grad_(True)
    return x, wt, b, (s, s), (p, p)


def tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", TCDCN_SHAPES + ODD_SHAPES)
@pytest.mark.parametrize("n", [1, 13])
def test_lc_conv2d_forward_backward_match_reference(device, dtype, shape, n):
    x, w, b, s, p = make(shape, n, dtype, device, requires_grad=True)
    out = ops.lc_conv2d(x, w, b, s, p)
    expected = ref.lc_conv2d(x, w, b, s, p)
    torch.testing.assert_close(out, expected, **tol(dtype))
    g = torch.randn_like(expected)
    got = torch.autograd.grad(out, (x, w, b), g)
    want = torch.autograd.grad(expected, (x, w, b), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, **tol(dtype))


# Output channels that give 1, 3, 4, 7 and 8 vectors of 16 (AVX-512) or 8 (AVX2) lanes and tails after them:
# with every batch size from 1 to 13 they take each few-faces width (1 to 3 faces at once) and each face-tile
# remainder of the batched path.
@pytest.mark.parametrize("isa", ops.cpu_isas_supported())
@pytest.mark.parametrize("wdtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("c_out", [16, 48, 64, 100, 128, 21])
def test_every_batch_size_matches_reference(isa, wdtype, c_out):
    dtype = torch.float64 if wdtype == torch.float64 else torch.float32
    shape = (2, 6, 7, 2, c_out, 1, 0)
    with ops.use_cpu_isa(isa), torch.no_grad():
        for n in range(1, 14):
            x, w, b, s, p = make(shape, n, dtype)
            w = w.to(wdtype)
            for op, oracle in ((ops.lc_conv2d, ref.lc_conv2d),
                               (ops.lc_conv2d_abs_tanh_maxpool2d, ref.lc_conv2d_abs_tanh_maxpool2d)):
                torch.testing.assert_close(op(x, w, b, s, p), oracle(x, w, b, s, p), **tol(dtype),
                                           msg=lambda m: f"N={n}, {op.__name__}: {m}")


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_lc_conv2d_without_bias_and_partial_grads(device):
    x, w, _, s, p = make(ODD_SHAPES[1], 4, torch.float64, device, bias=False)
    w.requires_grad_(True)  # input does not need a gradient: only grad_weight is computed
    out = ops.lc_conv2d(x, w, None, s, p)
    (gw,) = torch.autograd.grad(out.sum(), (w,))
    w2 = w.detach().clone().requires_grad_(True)
    (gw2,) = torch.autograd.grad(ref.lc_conv2d(x, w2, None, s, p).sum(), (w2,))
    torch.testing.assert_close(gw, gw2)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(2, 5, 6, 3, 3, 1, 0), (2, 6, 5, 2, 4, 2, 1)])
def test_lc_conv2d_gradcheck(device, shape):
    x, w, b, s, p = make(shape, 2, torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ops.lc_conv2d(*a, s, p), (x, w, b))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_abs_tanh_matches_reference_and_gradcheck(device):
    x = torch.randn(1000, device=device) * 4
    x[:5] = torch.tensor([0.0, 1e-8, -1e-3, 30.0, -90.0])
    torch.testing.assert_close(ops.abs_tanh(x), ref.abs_tanh(x), rtol=1e-6, atol=2e-7)
    xd = torch.randn(3, 7, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(ops.abs_tanh, (xd,))
    # The derivative at exactly 0 is taken as 0, like autograd's abs().
    z = torch.zeros(3, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(ops.abs_tanh(z).sum(), (z,))
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_abs_tanh_nan_inf_and_layouts(device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0], device=device)
    y = ops.abs_tanh(x)
    assert torch.isnan(y[0]) and y[1] == 1 and y[2] == 1 and y[3] == 0
    cl = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    out = ops.abs_tanh(cl)
    assert out.stride() == cl.stride()
    torch.testing.assert_close(out, ref.abs_tanh(cl))
    nc = torch.randn(6, 8, device=device)[:, ::2]  # non-contiguous, not dense
    torch.testing.assert_close(ops.abs_tanh(nc), ref.abs_tanh(nc))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_fused_forward_matches_and_refuses_grad(device):
    x, w, b, s, p = make(TCDCN_SHAPES[1], 3, device=device)
    with torch.no_grad():
        torch.testing.assert_close(ops.lc_conv2d_abs_tanh(x, w, b, s, p), ref.lc_conv2d_abs_tanh(x, w, b, s, p),
                                   rtol=1e-4, atol=1e-4)
    w.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.lc_conv2d_abs_tanh(x, w, b, s, p)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    x, w, b, s, p = make(ODD_SHAPES[1], 3, torch.float64, device, requires_grad=True)
    torch.library.opcheck(torch.ops.tcdcn_ext.lc_conv2d.default, (x, w, b, list(s), list(p)))
    torch.library.opcheck(torch.ops.tcdcn_ext.lc_conv2d.default, (x, w, None, list(s), list(p)))
    with torch.no_grad():
        torch.library.opcheck(torch.ops.tcdcn_ext.lc_conv2d_abs_tanh.default,
                              (x.detach(), w.detach(), b.detach(), list(s), list(p)),
                              test_utils=("test_schema", "test_faketensor"))
    g = torch.randn(3, 17, 5, 4, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.tcdcn_ext._lc_conv2d_backward.default,
                          (g, x.detach(), w.detach(), list(s), list(p), [True, False, True]),
                          test_utils=("test_schema", "test_faketensor"))
    xa = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.tcdcn_ext.abs_tanh.default, (xa,))
    torch.library.opcheck(torch.ops.tcdcn_ext._abs_tanh_backward.default,
                          (torch.randn(4, 5, dtype=torch.float64, device=device), xa.detach()),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("isa", ops.cpu_isas_supported())
@pytest.mark.parametrize("shape", TCDCN_SHAPES + ODD_SHAPES)
def test_every_cpu_isa_matches_ref_path(isa, shape):
    x, w, b, s, p = make(shape, 14, requires_grad=True)
    with ops.use_cpu_isa("ref"):
        want_out = ops.lc_conv2d(x, w, b, s, p)
        g = torch.randn_like(want_out)
        want = torch.autograd.grad(want_out, (x, w, b), g)
        want_act = ops.abs_tanh(want_out.detach())
    with ops.use_cpu_isa(isa):
        assert ops.cpu_isa() == isa
        out = ops.lc_conv2d(x, w, b, s, p)
        got = torch.autograd.grad(out, (x, w, b), g)
        act = ops.abs_tanh(want_out.detach())
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(act, want_act, rtol=1e-6, atol=2e-7)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_unsupported_isa_is_refused():
    with pytest.raises(ValueError, match="expected one of"):
        ops.set_cpu_isa("sse9")


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_and_channels_last_inputs(device):
    x, w, b, s, p = make(TCDCN_SHAPES[1], 5, device=device)
    big = torch.randn(5, 32, 18, 18, device=device)
    x_nc = big[:, ::2]  # channel stride 2
    x_cl = x.to(memory_format=torch.channels_last)
    for xi in (x_nc, x_cl, x.transpose(2, 3)):
        torch.testing.assert_close(ops.lc_conv2d(xi, w, b, s, p), ref.lc_conv2d(xi, w, b, s, p), rtol=1e-4,
                                   atol=1e-4)
    w_nc = ops.lc_weight_to_natural(w).permute(0, 1, 3, 4, 5, 2)  # same values, non-contiguous
    torch.testing.assert_close(ops.lc_conv2d(x, w_nc, b), ops.lc_conv2d(x, w, b))
    # overlapping strides (an expanded batch)
    xe = x[:1].expand(4, -1, -1, -1)
    torch.testing.assert_close(ops.lc_conv2d(xe, w, b), ref.lc_conv2d(xe.contiguous(), w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_empty_batch(device):
    x, w, b, s, p = make(TCDCN_SHAPES[2], 0, device=device, requires_grad=True)
    out = ops.lc_conv2d(x, w, b)
    assert out.shape == (0, 64, 6, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.count_nonzero(w.grad) == 0 and torch.count_nonzero(b.grad) == 0
    assert ops.abs_tanh(torch.empty(0, 3, device=device)).shape == (0, 3)


def test_weight_layout_round_trip():
    natural = torch.randn(4, 5, 6, 3, 2, 2)
    w = ops.lc_weight_from_natural(natural)
    assert w.shape == (4, 5, 3, 2, 2, 6) and w.is_contiguous()
    assert torch.equal(ops.lc_weight_to_natural(w), natural)
    x = torch.randn(2, 3, 5, 6)
    # natural layout semantics: out[n, co, i, j] = sum natural[i, j, co, ci, a, b] * x[n, ci, i + a, j + b]
    out = torch.einsum("ijzcab,ncijab->nzij", natural, x.unfold(2, 2, 1).unfold(3, 2, 1))
    torch.testing.assert_close(ops.lc_conv2d(x, w), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda: (torch.randn(2, 3, 8), torch.randn(6, 6, 3, 3, 3, 4), None), "input must be 4-D"),
        (lambda: (torch.randn(2, 3, 8, 8), torch.randn(6, 6, 3, 3, 4), None), "weight must be 6-D"),
        (lambda: (torch.randn(2, 2, 8, 8), torch.randn(6, 6, 3, 3, 3, 4), None), "C_in = 3"),
        (lambda: (torch.randn(2, 3, 9, 8), torch.randn(6, 6, 3, 3, 3, 4), None), "gives 7x6"),
        (lambda: (torch.randn(2, 3, 8, 8), torch.randn(6, 6, 3, 3, 3, 4), torch.randn(4, 6)), "bias must be"),
        (lambda: (torch.randn(2, 3, 8, 8).half(), torch.randn(6, 6, 3, 3, 3, 4).half(), None), "float32 or float64"),
        (lambda: (torch.randn(2, 3, 8, 8), torch.randn(6, 6, 3, 3, 3, 4).double(), None), "does not match input"),
        (lambda: (torch.randn(2, 3, 2, 2), torch.randn(1, 1, 3, 3, 3, 4), None), "smaller than"),
    ],
)
def test_clear_errors(args, message):
    with pytest.raises(RuntimeError, match=message):
        ops.lc_conv2d(*args())


def test_abs_tanh_rejects_integers():
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.abs_tanh(torch.arange(3))


def test_modules_and_compile():
    torch.manual_seed(0)
    net = torch.nn.Sequential(LocallyConnected2d(1, 4, 3, (8, 8)), AbsTanh(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 2))
    assert net[0].weight.shape == (6, 6, 1, 3, 3, 4) and net[0].bias.shape == (4, 6, 6)
    x = torch.randn(3, 1, 8, 8)
    eager = net(x)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), eager)
    compiled(x).sum().backward()
    assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()
    with pytest.raises(ValueError, match="no output location"):
        LocallyConnected2d(1, 4, 9, (8, 8))


def test_build_metadata():
    assert tcdcn_ext._C.torch_version == torch.__version__.split("+")[0]
    assert ops.cpu_isa() in ops.cpu_isas_supported()


def test_no_two_sources_share_a_stem():
    root = Path(__file__).resolve().parents[1] / "csrc"
    stems: dict[str, Path] = {}
    for f in sorted(root.rglob("*")):
        if f.suffix in (".cpp", ".cu", ".c", ".cc"):
            assert f.stem not in stems, f"{f} and {stems[f.stem]} share the stem {f.stem!r}"
            stems[f.stem] = f
    assert len(stems) >= 8


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_zero_input_channels_gives_bias_and_its_gradient(device):
    x = torch.randn(3, 0, 5, 5, device=device)
    w = torch.randn(3, 3, 0, 3, 3, 4, device=device)
    b = torch.randn(4, 3, 3, device=device, requires_grad=True)
    out = ops.lc_conv2d(x, w, b)
    torch.testing.assert_close(out, b.detach().expand(3, -1, -1, -1))
    (gb,) = torch.autograd.grad(out, (b,), torch.ones_like(out))
    torch.testing.assert_close(gb, torch.full_like(gb, 3.0))


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(0, 5), c_in=st.integers(0, 5), c_out=st.integers(1, 20), h=st.integers(1, 9),
       w=st.integers(1, 9), k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2),
       bias=st.booleans(), channels_last=st.booleans(), isa=st.sampled_from(ops.cpu_isas_supported()))
def test_lc_conv2d_property_random_shapes(n, c_in, c_out, h, w, k, s, p, bias, channels_last, isa):
    """Any geometry either matches the reference (values and gradients) or raises a clear error."""
    x = torch.randn(n, c_in, h, w, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ho, wo = ops.lc_output_size((h, w), k, s, p)
    if ho < 1 or wo < 1:
        wt = torch.randn(1, 1, c_in, k, k, c_out, dtype=torch.float64)
        with pytest.raises(RuntimeError, match="smaller than|gives"):
            ops.lc_conv2d(x, wt, None, s, p)
        return
    wt = torch.randn(ho, wo, c_in, k, k, c_out, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, ho, wo, dtype=torch.float64, requires_grad=True) if bias else None
    x.requires_grad_(True)
    with ops.use_cpu_isa(isa):
        out = ops.lc_conv2d(x, wt, b, s, p)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, [t for t in (x, wt, b) if t is not None], g, allow_unused=True)
    want_out = ref.lc_conv2d(x, wt, b, s, p)
    want = torch.autograd.grad(want_out, [t for t in (x, wt, b) if t is not None], g, allow_unused=True)
    torch.testing.assert_close(out, want_out)
    for a, e in zip(got, want):
        if e is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, e)


def _face_images():
    g = torch.Generator().manual_seed(5)
    rgb = torch.randint(0, 256, (60, 80, 3), dtype=torch.uint8, generator=g)
    rgba = torch.randint(0, 256, (50, 40, 4), dtype=torch.uint8, generator=g)
    grey = torch.randint(0, 256, (30, 30), dtype=torch.uint8, generator=g)
    return [rgb, rgba, grey, rgb.permute(1, 0, 2)]  # the last one non-contiguous


FACE_BOXES = torch.tensor([[10.0, 5.0, 50.0, 45.0], [-12.5, -3.0, 20.25, 30.0], [3.0, 4.0, 27.0, 29.0],
                           [0.0, 0.0, 60.0, 80.0], [70.0, 50.0, 120.0, 90.0]], dtype=torch.float64)


@pytest.mark.parametrize("order", ["rgb", "bgr"])
@pytest.mark.parametrize("standardise", [True, False])
def test_face_patches_matches_reference(order, standardise):
    images = _face_images()
    index = torch.tensor([0, 1, 2, 3, 0])
    got = ops.face_patches(images, index, FACE_BOXES, 40, order, standardise)
    want = ref.face_patches(images, index, FACE_BOXES, 40, 1 if order == "bgr" else 0, standardise)
    assert got.shape == (5, 1, 40, 40) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4 if standardise else 1e-3)
    assert ops.face_patches(images, index[:0], FACE_BOXES[:0], 40).shape == (0, 1, 40, 40)


def test_face_patches_matches_the_training_warp():
    """Same pixels as tcdcn_ext.data.make_inputs (OpenCV's warpAffine, the function training used)."""
    from tcdcn_ext import data

    images = _face_images()[:1]
    boxes = FACE_BOXES[[0, 1, 4]]
    got = ops.face_patches(images, torch.zeros(3, dtype=torch.int64), boxes, 40)
    want = torch.from_numpy(data.make_inputs([images[0].numpy()] * 3, boxes.numpy(), 40))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_face_patches_errors():
    images = _face_images()
    with pytest.raises(RuntimeError, match="uint8"):
        ops.face_patches([images[0].float()], torch.zeros(1, dtype=torch.int64), FACE_BOXES[:1], 40)
    with pytest.raises(RuntimeError, match="out of range"):
        ops.face_patches(images[:1], torch.tensor([3]), FACE_BOXES[:1], 40)
    with pytest.raises(RuntimeError, match=r"boxes must be \[F, 4\]"):
        ops.face_patches(images[:1], torch.tensor([0]), FACE_BOXES[:1, :3], 40)
    with pytest.raises(RuntimeError, match="not finite"):
        ops.face_patches(images[:1], torch.tensor([0]), torch.tensor([[0.0, 0.0, float("nan"), 5.0]]), 40)
    with pytest.raises(ValueError, match="channel_order"):
        ops.face_patches(images[:1], torch.tensor([0]), FACE_BOXES[:1], 40, "hsv")
    torch.library.opcheck(torch.ops.tcdcn_ext.face_patches.default,
                          (images[:2], torch.tensor([0, 1]), FACE_BOXES[:2], 8, 0, True),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("n", [1, 2, 5, 40])
@pytest.mark.parametrize("shape", TCDCN_SHAPES[:3] + [(3, 9, 9, 2, 5, 1, 0), (2, 9, 8, 3, 17, 2, 1)])
def test_fused_maxpool_matches_reference(n, shape):
    x, w, b, s, p = make(shape, n)
    for isa in ops.cpu_isas_supported():
        with ops.use_cpu_isa(isa), torch.no_grad():
            got = ops.lc_conv2d_abs_tanh_maxpool2d(x, w, b, s, p)
            want = ref.lc_conv2d_abs_tanh_maxpool2d(x, w, b, s, p)
            assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("half", [False, True])
def test_fused_maxpool_on_several_threads(n, half):
    """Each thread gets whole pairs of output rows, so every 2x2 cell is started and finished by one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        for shape in [(48, 8, 8, 3, 64, 1, 0), (3, 16, 13, 2, 17, 1, 0), (2, 30, 30, 3, 16, 1, 0)]:
            x, w, b, s, p = make(shape, n)
            w = w.half() if half else w
            with torch.no_grad():
                for _ in range(5):
                    torch.testing.assert_close(ops.lc_conv2d_abs_tanh_maxpool2d(x, w, b, s, p),
                                               ref.lc_conv2d_abs_tanh_maxpool2d(x, w, b, s, p), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_fused_maxpool_nan_refuses_grad_and_opcheck():
    x, w, b, s, p = make(ODD_SHAPES[0], 2)
    x[0, 0, 2, 2] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(ops.lc_conv2d_abs_tanh_maxpool2d(x, w, b),
                                   ref.lc_conv2d_abs_tanh_maxpool2d(x, w, b), equal_nan=True, rtol=1e-5, atol=1e-5)
    w.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.lc_conv2d_abs_tanh_maxpool2d(x, w, b)
    with torch.no_grad():
        torch.library.opcheck(torch.ops.tcdcn_ext.lc_conv2d_abs_tanh_maxpool2d.default,
                              (x, w.detach(), b, [1, 1], [0, 0]), test_utils=("test_schema", "test_faketensor"))


def test_model_inference_path_equals_training_path():
    from tcdcn_ext.model import TCDCN

    m = TCDCN().eval()
    x = torch.randn(5, 1, 40, 40)
    train_path = m(x)  # grad enabled: the unfused ops
    with torch.inference_mode():
        fused = m(x)  # lc_conv2d + |tanh| + max pooling fused
    for k in train_path:
        torch.testing.assert_close(fused[k], train_path[k].detach(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# abs_tanh_maxpool2d: the trainable |tanh| + 2x2 max pooling (the CPU training path of pooled layers)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64, 16, 36, 36), (7, 48, 16, 16), (3, 64, 6, 6), (2, 5, 7, 9), (1, 1, 2, 3),
                                   (0, 4, 4, 4), (3, 17, 5, 2)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_abs_tanh_maxpool2d_matches_reference_on_every_isa(device, dtype, shape, channels_last):
    x = torch.randn(shape, dtype=dtype, device=device) * 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, dtype=dtype, device=device)
    xr = x.detach().clone().requires_grad_(True)
    want = ref.abs_tanh_maxpool2d(xr)
    (want_g,) = torch.autograd.grad(want, (xr,), g)
    for isa in (ops.cpu_isas_supported() if device == "cpu" else [None]):
        with (ops.use_cpu_isa(isa) if isa else torch.no_grad()):
            xx = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
            y = ops.abs_tanh_maxpool2d(xx)
            (gx,) = torch.autograd.grad(y, (xx,), g) if y.numel() else (torch.zeros_like(xx),)
        torch.testing.assert_close(y, want.detach(), **tol(dtype))
        torch.testing.assert_close(gx, want_g, **tol(dtype))
        cl = channels_last and shape[1] > 1 and x.numel() > 0
        assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        assert gx.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_abs_tanh_maxpool2d_gradcheck_and_opcheck(device):
    for shape, cl in [((2, 3, 6, 5), True), ((2, 3, 7, 5), False), ((1, 16, 4, 4), True)]:
        x = torch.randn(shape, dtype=torch.float64, device=device)
        x = x.contiguous(memory_format=torch.channels_last) if cl else x
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(ops.abs_tanh_maxpool2d, (x,))
        x32 = x.detach().float().requires_grad_(True)
        torch.library.opcheck(torch.ops.tcdcn_ext.abs_tanh_maxpool2d.default, (x32,))
        y = ops.abs_tanh_maxpool2d(x32.detach())
        torch.library.opcheck(torch.ops.tcdcn_ext._abs_tanh_maxpool2d_backward.default,
                              (torch.randn_like(y), x32.detach(), y), test_utils=("test_schema", "test_faketensor"))


def test_abs_tanh_maxpool2d_nan_ties_and_zero():
    nan = float("nan")
    # ties in |x| go to the first; a NaN wins and propagates; |tanh|'(0) = 0; NaN inputs that lose get NaN gradients
    x = torch.tensor([[[[0.5, -0.5], [0.25, 0.5]], [[1.0, nan], [nan, 2.0]], [[0.0, 0.0], [0.0, 0.0]]]],
                     requires_grad=True)
    y = ops.abs_tanh_maxpool2d(x)
    xr = x.detach().clone().requires_grad_(True)
    yr = ref.abs_tanh_maxpool2d(xr)
    torch.testing.assert_close(y, yr, equal_nan=True)
    g = torch.ones_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(yr, xr, g)[0], equal_nan=True)


@pytest.mark.parametrize("bad, message", [
    (torch.randn(2, 3, 1, 5), "at least 2x2"),
    (torch.randn(3, 4, 4), "4-D"),
    (torch.randn(1, 1, 4, 4).half(), "float32 or float64"),
    (torch.zeros(1, 1, 4, 4, dtype=torch.int32), "float32 or float64"),
])
def test_abs_tanh_maxpool2d_clear_errors(bad, message):
    with pytest.raises(RuntimeError, match=message):
        ops.abs_tanh_maxpool2d(bad)
    with pytest.raises(RuntimeError, match="grad_output and out must be"):
        torch.ops.tcdcn_ext._abs_tanh_maxpool2d_backward(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 4, 4),
                                                         torch.randn(1, 1, 2, 2))


def test_lc_conv2d_grad_input_is_channels_last():
    """The backward hands the layer below channels-last rows (what its own backward reads) on every path."""
    for shape in (TCDCN_SHAPES[1], ODD_SHAPES[1]):
        x, w, b, s, p = make(shape, 3, requires_grad=True)
        gi = torch.autograd.grad(ops.lc_conv2d(x, w, b, s, p).sum(), x)[0]
        assert gi.is_contiguous(memory_format=torch.channels_last)
        xr = x.detach().clone().requires_grad_(True)
        torch.testing.assert_close(gi, torch.autograd.grad(ref.lc_conv2d(xr, w, b, s, p).sum(), xr)[0], **tol(x.dtype))


def test_model_training_path_equals_the_modules():
    """TCDCN's training forward (abs_tanh_maxpool2d after each pooled layer) and its gradients equal the modules
    run one by one (self.conv: LocallyConnected2d, AbsTanh, MaxPool2d)."""
    from tcdcn_ext.models import TCDCN

    torch.manual_seed(0)
    m = TCDCN().train()
    x = torch.randn(6, 1, 40, 40)
    fused = m(x)
    loss = sum(v.square().sum() for v in fused.values())
    grads = torch.autograd.grad(loss, list(m.parameters()))
    h = m.conv(x)
    f = m.drop(m.act(m.fc(h.flatten(1))))
    plain = {"landmarks": m.landmark_head(f).view(-1, m.num_points, 2), **{t: hd(f) for t, hd in m.aux_heads.items()}}
    loss_p = sum(v.square().sum() for v in plain.values())
    grads_p = torch.autograd.grad(loss_p, list(m.parameters()))
    for k in fused:
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_p):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_abs_tanh_maxpool2d_under_compile():
    """torch.compile(fullgraph=True) traces the op and its backward through the fake kernels; same values."""
    fn = torch.compile(lambda t: ops.abs_tanh_maxpool2d(t).square().sum(), fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 16, 8, 6).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x), x)
    xr = x.detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad(ref.abs_tanh_maxpool2d(xr).square().sum(), xr)
    torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-6)
