"""lc_conv2d_stack: several fused locally connected layers in one call must equal the per-layer ops in turn."""

from __future__ import annotations

import pytest
import torch

from tcdcn_ext import _reference as ref
from tcdcn_ext import ops

EPILOGUE_OPS = {"none": ops.lc_conv2d, "abs_tanh": ops.lc_conv2d_abs_tanh,
                "abs_tanh_maxpool2d": ops.lc_conv2d_abs_tanh_maxpool2d}


def make_stack(c_in, size, layers, half, bias=True):
    """layers: (k, C_out, epilogue) per layer; half: per layer, whether its weight is float16."""
    weights, biases, epilogues = [], [], []
    for (k, c_out, epilogue), h in zip(layers, half):
        size = size - k + 1
        w = torch.randn(size, size, c_in, k, k, c_out) / (c_in * k * k) ** 0.5
        weights.append(w.half() if h else w)
        biases.append(torch.randn(c_out, size, size) if bias else None)
        epilogues.append(epilogue)
        if epilogue == "abs_tanh_maxpool2d":
            size //= 2
        c_in = c_out
    return weights, biases, epilogues


def in_turn(x, weights, biases, epilogues):
    for w, b, e in zip(weights, biases, epilogues):
        x = EPILOGUE_OPS[e](x, w, b)
    return x


# The 5-point TCDCN (four layers, fc as a 1x1-output layer, the heads as a plain one), and odd channel counts.
TCDCN_LAYERS = [(5, 16, "abs_tanh_maxpool2d"), (3, 48, "abs_tanh_maxpool2d"), (3, 64, "abs_tanh_maxpool2d"),
                (2, 64, "abs_tanh"), (2, 100, "abs_tanh"), (1, 21, "none")]
ODD_LAYERS = [(3, 5, "abs_tanh_maxpool2d"), (2, 17, "none"), (2, 33, "abs_tanh")]


@pytest.mark.parametrize("isa", ops.cpu_isas_supported())
@pytest.mark.parametrize("n", [1, 2, 3, 40])
@pytest.mark.parametrize("half", ["all", "none", "mixed"])
def test_equals_the_ops_in_turn(isa, n, half):
    for c_in, size, layers in ((1, 40, TCDCN_LAYERS), (3, 12, ODD_LAYERS)):
        flags = [half == "all" or (half == "mixed" and i % 2 == 0) for i in range(len(layers))]
        weights, biases, epilogues = make_stack(c_in, size, layers, flags, bias=half != "mixed")
        x = torch.randn(n, c_in, size, size)
        with ops.use_cpu_isa(isa), torch.no_grad():
            got = ops.lc_conv2d_stack(x, weights, biases, epilogues)
            want = in_turn(x, weights, biases, epilogues)
        assert got.shape == want.shape and got.stride() == want.stride()
        assert torch.equal(got, want)
        torch.testing.assert_close(got, ref.lc_conv2d_stack(x, weights, biases, epilogues), rtol=1e-4, atol=1e-4)


def test_float64():
    weights, biases, epilogues = make_stack(3, 12, ODD_LAYERS, [False] * 3)
    weights, biases = [w.double() for w in weights], [b.double() for b in biases]
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(ops.lc_conv2d_stack(x, weights, biases, epilogues), in_turn(x, weights, biases, epilogues))


def test_errors_name_the_layer():
    weights, biases, epilogues = make_stack(3, 12, ODD_LAYERS, [True, False, False])
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="layer 1: weight has C_in = 17"):
            ops.lc_conv2d_stack(x, [weights[0], weights[2]], [biases[0], biases[2]], ["abs_tanh"] * 2)
        with pytest.raises(RuntimeError, match=r"layer 0: weight dtype Half .*a float16 weight needs a float32"):
            ops.lc_conv2d_stack(x.double(), weights[:1], biases[:1], epilogues[:1])
        with pytest.raises(RuntimeError, match="epilogue must be 0"):
            torch.ops.tcdcn_ext.lc_conv2d_stack(x, weights, biases, [2, 0, 5])
        with pytest.raises(RuntimeError, match="same, non-zero number of layers"):
            torch.ops.tcdcn_ext.lc_conv2d_stack(x, weights, biases[:2], [2, 0, 1])
        with pytest.raises(RuntimeError, match="same, non-zero number of layers"):
            torch.ops.tcdcn_ext.lc_conv2d_stack(x, [], [], [])
        with pytest.raises(ValueError, match="epilogue must be one of"):
            ops.lc_conv2d_stack(x, weights, biases, ["abs_tanh", "tanh", "none"])
        with pytest.raises(ValueError, match="3 weights but 2 epilogues"):
            ops.lc_conv2d_stack(x, weights, biases, epilogues[:2])
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.lc_conv2d_stack(x, [weights[0], weights[1].requires_grad_(True)], biases[:2], epilogues[:2])


def test_empty_batch_and_opcheck():
    weights, biases, epilogues = make_stack(3, 12, ODD_LAYERS, [True, False, True])
    codes = [ops.LC_EPILOGUES[e] for e in epilogues]
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        assert ops.lc_conv2d_stack(x[:0], weights, biases, epilogues).shape == (0, 33, 3, 3)
    torch.library.opcheck(torch.ops.tcdcn_ext.lc_conv2d_stack.default, (x, weights, biases, codes))
    torch.library.opcheck(torch.ops.tcdcn_ext.lc_conv2d_stack.default, (x[:1], weights, [None] * 3, codes))


# Spatially shared layers (4-D weights) and relu: the 68-point TCDCN's convolutions (20 channels: one vector and a
# masked tail of 4 on AVX-512), and odd shapes (channel tails, unpooled odd maps, 1x1 kernels).
SHARED_LAYERS = [(5, 20, "relu_maxpool2d"), (5, 48, "relu_maxpool2d"), (3, 64, "relu_maxpool2d"), (3, 80, "relu")]
ODD_SHARED = [(3, 5, "abs_tanh_maxpool2d"), (1, 17, "relu"), (2, 33, "none"), (2, 7, "relu_maxpool2d")]


def make_shared(c_in, size, layers, dtype, half):
    weights, biases, epilogues = [], [], []
    for i, (k, c_out, epilogue) in enumerate(layers):
        w = torch.randn(c_out, c_in, k, k, dtype=dtype) / (c_in * k * k) ** 0.5
        weights.append(w.half() if half and i % 2 == 0 else w)
        biases.append(torch.randn(c_out, dtype=dtype) if i != 1 else None)
        epilogues.append(epilogue)
        c_in = c_out
    return weights, biases, epilogues


@pytest.mark.parametrize("isa", ops.cpu_isas_supported())
@pytest.mark.parametrize("n", [1, 2, 5, 13])
@pytest.mark.parametrize("dtype, half", [(torch.float32, False), (torch.float32, True), (torch.float64, False)],
                         ids=["float32", "float16_weights", "float64"])
def test_shared_and_relu_layers_match_reference(isa, n, dtype, half):
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    for c_in, size, layers in ((1, 60, SHARED_LAYERS), (3, 15, ODD_SHARED)):
        weights, biases, epilogues = make_shared(c_in, size, layers, dtype, half)
        x = torch.randn(n, c_in, size, size, dtype=dtype)
        with ops.use_cpu_isa(isa), torch.no_grad():
            got = ops.lc_conv2d_stack(x, weights, biases, epilogues)
            want = ref.lc_conv2d_stack(x, weights, biases, epilogues)
        assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want, **tol)
    # mixed: a shared layer, a locally connected one, then the fc as a locally connected 1x1-output layer
    x = torch.randn(n, 1, 12, 12, dtype=dtype)
    w0, b0 = torch.randn(6, 1, 3, 3, dtype=dtype), torch.randn(6, dtype=dtype)
    w1, b1 = torch.randn(3, 3, 6, 3, 3, 8, dtype=dtype) / 7, torch.randn(8, 3, 3, dtype=dtype)
    w2 = torch.randn(1, 1, 8, 3, 3, 5, dtype=dtype) / 8
    args = ([w0, w1, w2], [b0, b1, None], ["relu_maxpool2d", "abs_tanh", "none"])
    with ops.use_cpu_isa(isa), torch.no_grad():
        torch.testing.assert_close(ops.lc_conv2d_stack(x, *args), ref.lc_conv2d_stack(x, *args), **tol)


def test_shared_layer_errors_and_opcheck():
    weights, biases, epilogues = make_shared(3, 15, ODD_SHARED, torch.float32, False)
    x = torch.randn(2, 3, 15, 15)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"layer 1: weight \[C_out, C_in, kH, kW\] = \[17, 4, 1, 1\] has C_in = 4"):
            ops.lc_conv2d_stack(x, [weights[0], torch.randn(17, 4, 1, 1)], biases[:2], epilogues[:2])
        with pytest.raises(RuntimeError, match=r"layer 0: bias must be \[C_out\] = \[5\]"):
            ops.lc_conv2d_stack(x, weights[:1], [torch.randn(4)], epilogues[:1])
        with pytest.raises(RuntimeError, match="layer 0: the 16x16 kernel does not fit the 15x15 input"):
            ops.lc_conv2d_stack(x, [torch.randn(5, 3, 16, 16)], [None], ["relu"])
        with pytest.raises(RuntimeError, match="layer 0: weight dtype Double does not match input dtype Float"):
            ops.lc_conv2d_stack(x, [weights[0].double()], [None], ["relu"])
        with pytest.raises(RuntimeError, match="epilogue must be 0 .* or 4"):
            torch.ops.tcdcn_ext.lc_conv2d_stack(x, weights[:1], biases[:1], [5])
    codes = [ops.LC_EPILOGUES[e] for e in epilogues]
    torch.library.opcheck(torch.ops.tcdcn_ext.lc_conv2d_stack.default, (x, weights, biases, codes))


def test_shared_weight_layouts_follow_their_sources():
    """The op remembers each shared weight's layout: an in-place change, new storage, a resize or a new tensor at
    the same values must all give the current weights' result (inference tensors are never remembered)."""
    x = torch.randn(2, 3, 9, 9)

    def check(w, b):
        torch.testing.assert_close(ops.lc_conv2d_stack(x, [w], [b], ["relu"]),
                                   ref.lc_conv2d_stack(x, [w], [b], ["relu"]))

    w, b = torch.randn(20, 3, 3, 3), torch.randn(20)
    with torch.no_grad():
        check(w, b)
        w.mul_(-2)  # in place: a new version
        check(w, b)
        w.set_(torch.randn(20, 3, 3, 3))  # new storage
        check(w, b)
        w.resize_(24, 3, 3, 3).normal_()  # new shape, and a channel count with another padding
        check(w, torch.randn(24))
        for _ in range(40):  # more weights than the cache holds, freed and allocated again
            check(torch.randn(20, 3, 3, 3), b)
    with torch.inference_mode():
        wi = torch.randn(20, 3, 3, 3)
        check(wi, b)
        wi.mul_(-2)  # an inference tensor has no version counter
        check(wi, b)
