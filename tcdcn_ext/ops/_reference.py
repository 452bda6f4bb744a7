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

__all__ = ["abs_tanh", "abs_tanh_maxpool2d", "conv3x3_stride2_relu", "dw_separable", "face_patches", "lc_conv2d", "lc_conv2d_abs_tanh", "lc_conv2d_abs_tanh_maxpool2d",
           "lc_conv2d_stack", "shift_average"]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def lc_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = (1, 1),
    padding: int | Sequence[int] = (0, 0),
) -> Tensor:
    """Locally connected convolution by ``F.unfold`` + ``einsum`` (weight ``[H_out, W_out, C_in, kH, kW, C_out]``).

    A float16 weight with a float32 input is widened to float32 first, as the CPU op does."""
    if weight.dtype == torch.float16 and input.dtype == torch.float32:
        weight = weight.float()
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


def abs_tanh_maxpool2d(x: Tensor) -> Tensor:
    """``max_pool2d(|tanh(x)|, 2)`` (kernel 2, stride 2, floor mode), each cell's value taken at its first maximum
    of ``|x|`` (max_pool2d's rule, NaN included, applied to ``|x|``): the same values, and the gradient goes where
    the op sends it also when two inputs' ``|tanh|`` round to the same float (``|tanh|`` increases with ``|x|``)."""
    _, idx = F.max_pool2d(x.detach().abs(), 2, return_indices=True)
    return abs_tanh(x).flatten(2).gather(2, idx.flatten(2)).view(idx.shape)


def lc_conv2d_abs_tanh(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = (1, 1),
    padding: int | Sequence[int] = (0, 0),
) -> Tensor:
    """``abs_tanh(lc_conv2d(...))``."""
    return abs_tanh(lc_conv2d(input, weight, bias, stride, padding))


def lc_conv2d_abs_tanh_maxpool2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = (1, 1),
    padding: int | Sequence[int] = (0, 0),
) -> Tensor:
    """``max_pool2d(abs_tanh(lc_conv2d(...)), 2)``."""
    return F.max_pool2d(lc_conv2d_abs_tanh(input, weight, bias, stride, padding), 2)


def lc_conv2d_stack(
    input: Tensor,
    weight: Sequence[Tensor],
    bias: Sequence[Tensor | None],
    epilogue: Sequence[str],
) -> Tensor:
    """The layers in turn: ``lc_conv2d`` (6-D weight) or ``conv2d`` (4-D weight), stride 1, no padding, then per
    ``epilogue[i]`` nothing (``"none"``), ``abs_tanh`` or ``relu``, and ``max_pool2d(2)`` for the ``_maxpool2d``
    ones."""
    h = input
    for w, b, e in zip(weight, bias, epilogue):
        h = F.conv2d(h, w.to(h.dtype), b) if w.dim() == 4 else lc_conv2d(h, w, b)
        if e.startswith("abs_tanh"):
            h = abs_tanh(h)
        elif e.startswith("relu"):
            h = torch.relu(h)
        if e.endswith("_maxpool2d"):
            h = F.max_pool2d(h, 2)
    return h


def face_patches(
    images: Sequence[Tensor],
    image_index: Tensor,
    boxes: Tensor,
    size: int,
    channel_order: int = 0,
    standardise: bool = True,
) -> Tensor:
    """Face ``f``'s box of ``images[image_index[f]]`` (uint8 ``[H, W]`` or ``[H, W, 1|3|4]``) as a ``size x size``
    grey patch: input pixel ``(i, j)`` samples image point ``(x0 + (j + 0.5) w / size, y0 + (i + 0.5) h / size)``
    (pixel-centre coordinates) bilinearly, 0 outside the image; grey = 0.299 R + 0.587 G + 0.114 B
    (``channel_order`` 1: BGR). Optionally standardised per patch (zero mean, unit std + 1e-6). ``[F, 1, S, S]``."""
    patches = []
    for f in range(boxes.shape[0]):
        im = images[int(image_index[f])].float()
        if im.dim() == 3 and im.shape[2] >= 3:
            r, g, b = (im[..., 2], im[..., 1], im[..., 0]) if channel_order == 1 else (im[..., 0], im[..., 1], im[..., 2])
            grey = 0.299 * r + 0.587 * g + 0.114 * b
        else:
            grey = im.reshape(im.shape[0], im.shape[1])
        h, w = grey.shape
        padded = F.pad(grey, (1, 1, 1, 1))  # a zero ring: taps outside the image read 0
        x0, y0, x1, y1 = (float(v) for v in boxes[f].double())
        steps = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        xs, ys = x0 + steps * (x1 - x0), y0 + steps * (y1 - y0)
        fx, fy = xs.floor(), ys.floor()
        ax, ay = (xs - fx).float(), (ys - fy).float()
        cx = (fx.long()[None, :] + torch.tensor([[0], [1]])).clamp(-1, w) + 1  # [2, S] padded column of each tap
        cy = (fy.long()[None, :] + torch.tensor([[0], [1]])).clamp(-1, h) + 1
        wx = torch.stack([1 - ax, ax])
        wy = torch.stack([1 - ay, ay])
        v = torch.zeros(size, size)
        for dy in range(2):
            for dx in range(2):
                v += wy[dy][:, None] * wx[dx][None, :] * padded[cy[dy]][:, cx[dx]]
        if standardise:
            v64 = v.double()
            v = ((v64 - v64.mean()) / (v64.std(unbiased=False) + 1e-6)).float()
        patches.append(v)
    if not patches:
        return torch.empty(0, 1, size, size)
    return torch.stack(patches)[:, None]


def shift_average(
    crop: Tensor, shifts: Sequence[int], window: int, conv_weight: Sequence[Tensor], conv_bias: Sequence[Tensor],
    pool_after: Sequence[int], shared_conv: bool, activation: str, fc_weight: Tensor, fc_bias: Tensor,
    head_weight: Tensor, head_bias: Tensor, num_points: int,
) -> tuple[Tensor, Tensor]:
    """``tcdcn_ext::shift_average`` the plain way (same arguments, ``shifts`` flat ``[dx0, dy0, ...]``): every
    shifted window cut out and run through the whole network on its own, then un-shifted and averaged."""
    import torch.nn.functional as F

    act = abs_tanh if activation == "abs_tanh" else torch.relu
    if fc_weight.dim() == 6:  # the locally connected layout [1, 1, C, s, s, F] / [1, 1, F, 1, 1, D] -> [F, C*s*s]
        fc_weight = fc_weight.to(crop.dtype).permute(5, 2, 3, 4, 0, 1).reshape(fc_weight.shape[5], -1)
        head_weight = head_weight.to(crop.dtype).reshape(head_weight.shape[2], -1).t()
        fc_bias, head_bias = fc_bias.reshape(-1), head_bias.reshape(-1)
    my, mx = (crop.shape[2] - window) // 2, (crop.shape[3] - window) // 2
    pairs = [(int(shifts[i]), int(shifts[i + 1])) for i in range(0, len(shifts), 2)]
    heads = []
    for dx, dy in pairs:
        h = crop[:, :, my + dy:my + dy + window, mx + dx:mx + dx + window]
        for w, b, pool in zip(conv_weight, conv_bias, pool_after):
            h = act(F.conv2d(h, w, b) if shared_conv else lc_conv2d(h, w, b))
            if pool:
                h = F.max_pool2d(h, 2)
        f = act(F.linear(h.flatten(1), fc_weight, fc_bias))
        heads.append(F.linear(f, head_weight, head_bias))
    out = torch.stack(heads, dim=1)  # [N, K, D]
    uv = out[:, :, :2 * num_points].reshape(out.shape[0], len(pairs), num_points, 2)
    shift = torch.tensor(pairs, dtype=out.dtype, device=out.device) / window  # [K, 2]
    return (uv + shift[None, :, None, :]).mean(dim=1), out


def dw_separable(input: Tensor, pw_weight: Tensor, pw_bias: Tensor, dw_weight: Tensor, dw_bias: Tensor,
                 up: Tensor | None = None, relu: bool = True, pool: bool = False) -> Tensor:
    """The depthwise-separable block with ``F.conv2d``: 1x1 conv of ``input (+ nearest 2x up)``, depthwise 3x3
    (padding 1), then ReLU and 2x2 max pooling when asked."""
    if up is not None:
        input = input + up.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    z = F.conv2d(input, pw_weight[:, :, None, None], pw_bias)
    y = F.conv2d(z, dw_weight[:, None], dw_bias, padding=1, groups=dw_weight.shape[0])
    if relu:
        y = F.relu(y)
    return F.max_pool2d(y, 2) if pool else y


def conv3x3_stride2_relu(input: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``relu(conv2d(input, weight, bias, stride=2, padding=1))``."""
    return F.relu(F.conv2d(input, weight, bias, stride=2, padding=1))
