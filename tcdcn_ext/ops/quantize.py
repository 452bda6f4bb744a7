"""Symmetric int8 quantisation of locally connected weights, for the batch-1 CPU inference path.

A locally connected weight ``w`` (``Tensor[H_out, W_out, C_in, kH, kW, C_out]``, the op layout) becomes
``q = round(w / s)`` in ``[-127, 127]`` (int8) with one float32 scale per output location and channel,
``s[h, w, c] = max |w[h, w, :, :, :, c]| / 127`` (``Tensor[H_out, W_out, C_out]``; 1 where that filter is all
zeros). The kernels sum ``input * q`` in float32 and scale the sum once (``out = sum * s + bias``), so the result
equals float32 inference with the weights :func:`dequantize_lc_weight` gives, up to the order of the float32 sums.

At batch 1 the forward reads every weight once: a quarter of float32's bytes, half of float16's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["dequantize_lc_weight", "int8_digest", "quantize_lc_weight"]

#: The largest |q|: symmetric, so -128 is never used (and -q is always representable).
QMAX = 127


def quantize_lc_weight(w: Tensor) -> tuple[Tensor, Tensor]:
    """``(q, scale)``: int8 ``Tensor[H_out, W_out, C_in, kH, kW, C_out]`` and float32 ``Tensor[H_out, W_out,
    C_out]`` with ``w ~= q * scale[:, :, None, None, None, :]`` (error <= scale / 2 per weight). Deterministic: the
    same float32 values give the same bits (the shipped 5-point model's record pins the sha256 of
    its int8 form, :func:`int8_digest`)."""
    if w.dim() != 6:
        raise ValueError(f"quantize_lc_weight: weight must be 6-D [H_out, W_out, C_in, kH, kW, C_out], got shape "
                         f"{tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"quantize_lc_weight: weight must be floating point, got {w.dtype}")
    w = w.detach().float()
    if not bool(w.isfinite().all()):
        raise ValueError("quantize_lc_weight: weight has non-finite values")
    amax = w.abs().amax(dim=(2, 3, 4))  # [H_out, W_out, C_out]
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(w / scale[:, :, None, None, None, :]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize_lc_weight(q: Tensor, scale: Tensor) -> Tensor:
    """float32 ``q * scale`` in the weight's layout: the weights int8 inference computes with."""
    return q.float() * scale[:, :, None, None, None, :]


def int8_digest(weights: Sequence[Tensor]) -> str:
    """sha256 of the int8 form of locally connected weights, in order: each layer's ``q`` bytes then its ``scale``
    bytes (little-endian float32) from :func:`quantize_lc_weight`. The shipped 5-point model's record
    (``weights/tcdcn_5pt.json``, ``"int8"``) carries it, so the int8 weights a deployment computes are checked to be
    the ones its model card measured."""
    h = hashlib.sha256()
    for w in weights:
        q, scale = quantize_lc_weight(w)
        h.update(q.numpy().tobytes())
        h.update(scale.numpy().astype("<f4").tobytes())
    return h.hexdigest()
