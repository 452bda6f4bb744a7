"""Pure-PyTorch versions of every tcdcn_ext operator.

These are the oracle the tests compare the C++/CUDA kernels against (values and gradients, through ordinary
autograd) and the "plain PyTorch" baseline of the benchmarks. They accept the same arguments as the ops in
:mod:`tcdcn_ext.ops` and use the same weight layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["lc_conv2d", "lc_conv2d_abs_tanh", "abs_tanh"]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def lc_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = (1, 1),
    padding: int | Sequence[int] = (0, 0),
) -> Tensor:
    """Locally connected convolution by ``F.unfold`` + ``einsum`` (weight ``[H_out, W_out, C_in, kH, kW, C_out]``)."""
    h_out, w_out, c_in, kh, kw, c_out = weight.shape
    n = input.shape[0]
    if n == 0 or c_in == 0:  # F.unfold refuses empty inputs; the sum over no taps is the bias alone
        out = input.new_zeros(n, c_out, h_out, w_out) + (0 * weight.sum())
        return out + bias if bias is not None else out
    # cols[n, k, l] with k = (ci * kH + kh) * kW + kw: the same tap order as the op's weight layout.
    cols = F.unfold(input, (kh, kw), padding=_pair(padding), stride=_pair(stride))
    out = torch.einsum("nkl,lkc->ncl", cols, weight.reshape(h_out * w_out, c_in * kh * kw, c_out))
    out = out.reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias
    return out


def abs_tanh(x: Tensor) -> Tensor:
    """``|tanh(x)|``; autograd gives the gradient ``sign(x) * (1 - tanh(x)^2)``, 0 at ``x == 0``."""
    return torch.tanh(x).abs()


def lc_conv2d_abs_tanh(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = (1, 1),
    padding: int | Sequence[int] = (0, 0),
) -> Tensor:
    """``abs_tanh(lc_conv2d(...))``."""
    return abs_tanh(lc_conv2d(input, weight, bias, stride, padding))
