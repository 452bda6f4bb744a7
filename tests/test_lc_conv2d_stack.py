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
            torch.ops.tcdcn_ext.lc_conv2d_stack(x, weights, biases, [2, 0, 3])
        with pytest.raises(RuntimeError, match="same, non-zero number of layers"):
            torch.ops.tcdcn_ext.lc_conv2d_stack(x, weights, biases[:2], [2, 0, 1])
        with pytest.raises(RuntimeError, match="same, non-zero number of layers"):
            torch.ops.tcdcn_ext.lc_conv2d_stack(x, [], [], [])
        with pytest.raises(ValueError, match="epilogue must be one of"):
            ops.lc_conv2d_stack(x, weights, biases, ["abs_tanh", "relu", "none"])
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
