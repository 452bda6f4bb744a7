"""``nn.Module`` front ends of the tcdcn_ext operators."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import ops

__all__ = ["AbsTanh", "LocallyConnected2d"]


class LocallyConnected2d(nn.Module):
    """Locally connected 2-D layer: a convolution whose filters are not shared between output locations.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: int or (kH, kW).
        input_size: (H, W) of the input: unshared weights exist per output location, so the size is fixed.
        stride, padding: int or pair.
        bias: add a learned bias per output location and channel.

    Parameters:
        weight: Tensor[H_out, W_out, C_in, kH, kW, C_out] (the op's layout; see :mod:`tcdcn_ext.ops`).
        bias: Tensor[C_out, H_out, W_out] or None.

    Shape: input Tensor[N, C_in, H, W] -> output Tensor[N, C_out, H_out, W_out].

    Initialisation: Glorot/Xavier uniform over each location's filter bank (fan_in = C_in*kH*kW,
    fan_out = C_out*kH*kW), the classic choice for tanh-like activations; bias zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        input_size: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = tuple(ops.as_pair(kernel_size, "kernel_size"))
        self.input_size = tuple(ops.as_pair(input_size, "input_size"))
        self.stride = tuple(ops.as_pair(stride, "stride"))
        self.padding = tuple(ops.as_pair(padding, "padding"))
        h_out, w_out = ops.lc_output_size(self.input_size, self.kernel_size, self.stride, self.padding)
        if h_out < 1 or w_out < 1 or min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(
                f"LocallyConnected2d: kernel {self.kernel_size}, stride {self.stride}, padding {self.padding} on a "
                f"{self.input_size} input gives no output location"
            )
        self.output_size = (h_out, w_out)
        kh, kw = self.kernel_size
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(h_out, w_out, in_channels, kh, kw, out_channels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, h_out, w_out, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        kh, kw = self.kernel_size
        fan_in, fan_out = self.in_channels * kh * kw, self.out_channels * kh * kw
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return ops.lc_conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"input_size={self.input_size}, output_size={self.output_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


class AbsTanh(nn.Module):
    """``|tanh(x)|`` elementwise (:func:`tcdcn_ext.ops.abs_tanh`); any shape."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.abs_tanh(x)
