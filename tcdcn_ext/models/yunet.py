"""YuNet, the face detector bundled with the Aligner, as a module of this library.

YuNet (Shiqi Yu et al., "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence Research 2023; MIT
licence, Copyright (c) 2020 Shiqi Yu, text in ``weights/YUNET_LICENSE``) is a 53 k-parameter fully convolutional
network. Its weights ship inside the package (``weights/yunet.pt``, converted once from the OpenCV model zoo's ONNX
by ``scripts/convert_yunet.py``; batch-norm is already folded into the convolutions there).

Structure (:data:`YUNET_LAYERS`): a 3x3 stride-2 stem convolution, then "depthwise-separable" blocks, each a 1x1
(pointwise) convolution followed by a 3x3 depthwise convolution and a ReLU, with 2x2 max pooling between stages;
the stride-8, -16 and -32 features are merged top-down (nearest 2x upsampling + add, one block each) and a head
block per stride (pointwise to 16 channels, depthwise 3x3, no ReLU) gives, per feature-map cell (anchor point):

========  ======  ===================================================================
channels  name    meaning (``s`` = stride, ``(c, r)`` = the cell's column and row)
========  ======  ===================================================================
0         cls     face logit; score = sqrt(sigmoid(cls) * sigmoid(obj))
1         obj     objectness logit
2-5       bbox    centre ``((c + d0) s, (r + d1) s)``, size ``(exp(d2) s, exp(d3) s)``
6-15      kps     point ``k`` at ``((c + d[2k]) s, (r + d[2k+1]) s)``: right eye, left eye (the subject's),
                  nose tip, right and left mouth corner, i.e. image-left first for a frontal face
========  ======  ===================================================================

The input is a BGR image in 0..255 (no mean, no scaling), padded with zeros at the bottom and right to a multiple
of 32, as OpenCV's ``cv2.FaceDetectorYN`` feeds the same network; decoding and the NMS follow that detector's, which
is this module's test oracle.

The network runs on the library's depthwise-separable kernel (``tcdcn_ext.ops.dw_separable``: pointwise + depthwise
3x3 + bias + ReLU + optional 2x2 pooling in one pass over channels-last rows) when the native extension serves the
input, else on ``torch.nn.functional.conv2d`` (:meth:`YuNet.forward_reference`, the oracle of that kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["YUNET_LAYERS", "Block", "YuNet", "decode", "load_yunet", "nms"]

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "yunet.pt"

#: The strides of the three output levels.
STRIDES = (8, 16, 32)
#: Channels of a head's output (cls, obj, 4 box, 10 point numbers).
HEAD_CHANNELS = 16
#: Input sides must be multiples of this (three 2x2 poolings after a stride-2 stem, and the top-down merge).
DIVISOR = 32


@dataclass(frozen=True)
class Block:
    """One depthwise-separable block: ``pool(relu?(dw3x3(pw1x1(x) + b_pw) + b_dw))``."""

    name: str
    c_in: int
    c_out: int
    relu: bool = True
    pool: bool = False  # 2x2 max pooling after the block
    tap: bool = False  # the (unpooled) output feeds the neck


#: The backbone, in order; ``"stem"`` is the 3x3 stride-2 convolution (3 -> 16, ReLU) before them. The outputs of
#: ``b6`` (stride 8), ``b8`` (stride 16) and ``b11`` (stride 32) feed the neck (``tap``); the pooling after ``b6``
#: and ``b8`` is applied to that output, the neck takes the unpooled maps.
YUNET_LAYERS: tuple[Block, ...] = (
    Block("b0", 16, 16, pool=True),
    Block("b1", 16, 16), Block("b2", 16, 32), Block("b3", 32, 32), Block("b4", 32, 64, pool=True),
    Block("b5", 64, 64), Block("b6", 64, 64, pool=True, tap=True),
    Block("b7", 64, 64), Block("b8", 64, 64, pool=True, tap=True),
    Block("b9", 64, 64), Block("b10", 64, 64), Block("b11", 64, 64, tap=True),
)
#: Top-down neck: ``n16 = block(up(stride32) + stride16)``, ``n8 = block(up(n16) + stride8)``.
NECK: tuple[Block, ...] = (Block("n16", 64, 64), Block("n8", 64, 64))
#: Heads on the stride-8, -16 and -32 maps.
HEADS: tuple[Block, ...] = tuple(Block(f"h{s}", 64, HEAD_CHANNELS, relu=False) for s in STRIDES)


class YuNet(nn.Module):
    """The YuNet network. ``forward(x: Tensor[N, 3, H, W])`` (BGR, 0..255, ``H`` and ``W`` multiples of 32) returns
    the three head maps ``[Tensor[N, 16, H/s, W/s] for s in (8, 16, 32)]`` (raw: logits and offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem_weight = nn.Parameter(torch.zeros(16, 3, 3, 3))
        self.stem_bias = nn.Parameter(torch.zeros(16))
        for b in YUNET_LAYERS + NECK + HEADS:
            # pointwise [C_out, C_in] and depthwise [C_out, 3, 3] weights, biases [C_out]
            self.register_parameter(f"{b.name}_pw_weight", nn.Parameter(torch.zeros(b.c_out, b.c_in)))
            self.register_parameter(f"{b.name}_pw_bias", nn.Parameter(torch.zeros(b.c_out)))
            self.register_parameter(f"{b.name}_dw_weight", nn.Parameter(torch.zeros(b.c_out, 3, 3)))
            self.register_parameter(f"{b.name}_dw_bias", nn.Parameter(torch.zeros(b.c_out)))

    def block_params(self, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (getattr(self, f"{name}_pw_weight"), getattr(self, f"{name}_pw_bias"),
                getattr(self, f"{name}_dw_weight"), getattr(self, f"{name}_dw_bias"))

    @staticmethod
    def check_input(x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"YuNet input must be a Tensor[N, 3, H, W], got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"YuNet input must be [N, 3, H, W] (BGR), got shape {tuple(x.shape)}")
        if x.shape[2] % DIVISOR or x.shape[3] % DIVISOR or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"YuNet input height and width must be positive multiples of {DIVISOR} "
                             f"(pad the image), got {tuple(x.shape[2:])}")
        if not x.is_floating_point():
            raise TypeError(f"YuNet input must be floating point (BGR values 0..255), got {x.dtype}")

    def forward(self, x: Tensor) -> list[Tensor]:
        from ..ops import _reference
        from .. import ops

        self.check_input(x)
        return self._run(x, ops if ops.dw_separable_supported(x, self.stem_weight) else _reference)

    def forward_reference(self, x: Tensor) -> list[Tensor]:
        """The same network on the ops' pure-PyTorch twins (``torch.nn.functional`` convolutions): the oracle of the
        native path."""
        from ..ops import _reference

        self.check_input(x)
        return self._run(x, _reference)

    # The network's wiring, written once for both paths: ``impl`` is tcdcn_ext.ops or tcdcn_ext.ops._reference (the
    # same signatures).
    def _run(self, x: Tensor, impl: Any) -> list[Tensor]:
        def block(y: Tensor, b: Block, pool: bool, up: Tensor | None = None) -> Tensor:
            return impl.dw_separable(y, *self.block_params(b.name), up=up, relu=b.relu, pool=pool)

        y = impl.conv3x3_stride2_relu(x, self.stem_weight, self.stem_bias)
        taps = []
        for b in YUNET_LAYERS:
            y = block(y, b, pool=b.pool and not b.tap)
            if b.tap:
                taps.append(y)
                if b.pool:
                    y = F.max_pool2d(y, 2)
        c8, c16, c32 = taps
        n16 = block(c16, NECK[0], pool=False, up=c32)  # top-down: the block reads c16 + up2(c32)
        n8 = block(c8, NECK[1], pool=False, up=n16)
        return [block(m, h, pool=False) for m, h in zip((n8, n16, c32), HEADS)]


def load_yunet(path: str | Path | None = None) -> YuNet:
    """The shipped YuNet (sha256-checked against ``yunet.json``, read with ``weights_only=True``), eval mode."""
    from .weights import WeightsError, load_checked

    path = WEIGHTS if path is None else Path(path)
    state = load_checked(path, "YuNet weights")
    net = YuNet()
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit the YuNet module ({exc})") from exc
    net.requires_grad_(False)
    return net.eval()


# ----------------------------------------------------------------------------------------------------------------
# Decoding and non-maximum suppression


def decode(heads: list[Tensor], score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head maps of ONE image -> ``(scores [K], boxes [K, 4] (x0, y0, x1, y1), points [K, 5, 2])`` of the cells
    scoring at least ``score_threshold``, in the padded input's pixel coordinates (sorted by nothing)."""
    scores, boxes, points = [], [], []
    for m, s in zip(heads, STRIDES):
        m = m[0] if m.dim() == 4 else m
        h, w = m.shape[-2:]
        # numpy from here on: [h, w, 16] is a view of the channels-last head map (no torch op: a torch elementwise
        # op may enter a parallel region, which costs milliseconds on a busy machine)
        cells = m.detach().permute(1, 2, 0).cpu().numpy().reshape(h * w, HEAD_CHANNELS)
        with np.errstate(over="ignore"):  # exp overflow of a very negative logit: sigmoid 0, as it should be
            sc = np.sqrt(1.0 / (1.0 + np.exp(-cells[:, 0].astype(np.float64)))
                         / (1.0 + np.exp(-cells[:, 1].astype(np.float64))))
        keep = np.flatnonzero(sc >= score_threshold)
        if len(keep) == 0:
            continue
        d = cells[keep].astype(np.float64)  # [K, 16]
        col = (keep % w).astype(np.float64)
        row = (keep // w).astype(np.float64)
        cx, cy = (col + d[:, 2]) * s, (row + d[:, 3]) * s
        with np.errstate(over="ignore"):
            bw, bh = np.exp(d[:, 4]) * s, np.exp(d[:, 5]) * s
        x0, y0 = cx - bw / 2, cy - bh / 2
        boxes.append(np.stack([x0, y0, x0 + bw, y0 + bh], 1))
        px = (col[:, None] + d[:, 6:16:2]) * s
        py = (row[:, None] + d[:, 7:16:2]) * s
        points.append(np.stack([px, py], 2))
        scores.append(sc[keep])
    if not scores:
        return np.zeros(0), np.zeros((0, 4)), np.zeros((0, 5, 2))
    return np.concatenate(scores), np.concatenate(boxes), np.concatenate(points)


def nms(scores: np.ndarray, boxes: np.ndarray, iou_threshold: float, top_k: int = 5000) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best first. Boxes ``(x0, y0, x1, y1)``; a box is
    dropped when its IoU with a kept, better-scoring box exceeds ``iou_threshold``. Ties keep the earlier box."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    if len(order) == 0:
        return order
    b = boxes[order]
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-12)
    alive = np.ones(len(order), bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        alive[i + 1:] &= iou[i, i + 1:] <= iou_threshold
    return order[np.asarray(keep, np.int64)]
