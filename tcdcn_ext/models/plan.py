"""The CPU inference plan of a TCDCN: its :meth:`~tcdcn_ext.models.tcdcn.TCDCN.stack_layers` compiled into one
native call (:class:`tcdcn_ext._C.StackEngine`), and that call as a dispatcher op for compiled graphs
(``tcdcn_ext::inference_engine``).

:func:`build_plan` stores the weights as :meth:`TCDCN.set_inference_weights` says (float32, float16 or int8 copies)
in one buffer on transparent huge pages, in the order the engine reads them, and watches the parameters they came
from (:class:`tcdcn_ext._C.TensorWatch`) so the model rebuilds the plan when they change.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import _C
from ..ops.quantize import dequantize_lc_weight, quantize_lc_weight
from .layers import Epilogue, Layer

if TYPE_CHECKING:
    from .tcdcn import TCDCN

__all__ = ["InferencePlan", "StackLayer", "build_plan", "register_engine", "stored_weight"]


@dataclass
class StackLayer:
    """One layer of the description (:mod:`tcdcn_ext.models.layers`) with its tensors as
    :func:`tcdcn_ext.ops.lc_conv2d_stack` takes them: the weight (6-D locally connected, 4-D shared) and bias."""

    layer: Layer
    weight: Tensor
    bias: Tensor | None
    int8: bool = False  # the native plan runs it with int8 weights (TCDCN.set_inference_weights("int8"))

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def epilogue(self) -> Epilogue:
        return self.layer.epilogue

    @property
    def shared(self) -> bool:
        return self.layer.shared


@dataclass
class InferencePlan:
    """What :func:`build_plan` made: lc_conv2d_stack's arguments for the whole network (empty where the
    architecture is not covered), and a watch on the parameters they were made from."""

    sources: _C.TensorWatch
    weights: list[Tensor]
    biases: list[Tensor | None]
    epilogues: list[int]
    features_end: int  # the layers [0, features_end) give the shared feature; the last one is the heads
    head_names: list[str]  # the output columns of the heads layer, in blocks of head_sizes
    head_sizes: list[int]
    engine: "_C.StackEngine | None"  # all of the above, checked once, in one native call (None: empty plan)
    scales: list[Tensor | None] = field(default_factory=list)  # per layer: the int8 weight's scales, or None
    _op_weights: list[Tensor] | None = None

    def op_weights(self) -> list[Tensor]:
        """The weights for the ops that take no int8 weights (lc_conv2d_stack for features(), shift_average): in
        place of an int8 one, the values it stands for (``q * scale``) as float16 (a rounding of 2^-11 relative,
        far below the int8 one, at float16's read cost; float32 beyond float16's range; made on first use); the
        others as they are."""
        if self._op_weights is None:
            out = []
            for w, s in zip(self.weights, self.scales or [None] * len(self.weights)):
                if s is not None:
                    w = dequantize_lc_weight(w, s)
                    half = w.half()
                    w = half if bool(half.isfinite().all()) else w
                out.append(w)
            self._op_weights = out
        return self._op_weights


def stored_weight(mode: str, name: str, w: Tensor) -> Tensor:
    """``w`` (float32, the op's layout, contiguous) stored as :meth:`TCDCN.set_inference_weights` ``mode`` says
    (for a layer it does not quantise)."""
    if mode == "int8":  # (the layers it does not quantise)
        mode = "auto"
    if mode == "float32":
        return w
    half = w.half()
    if mode == "auto" and not torch.equal(half.float(), w):
        return w
    if mode == "float16" and bool((half.isinf() & w.isfinite()).any()):
        raise ValueError(f"set_inference_weights('float16'): {name} has weights beyond float16's range "
                         f"(max |w| = {w.abs().max().item():.4g} > 65504)")
    return half


def build_plan(model: "TCDCN") -> InferencePlan:
    """The whole forward as one native call (:class:`tcdcn_ext._C.StackEngine`, the layers of
    :meth:`TCDCN.stack_layers` run as :func:`tcdcn_ext.ops.lc_conv2d_stack` does; CPU, float32).

    Weights as :meth:`TCDCN.set_inference_weights` says; biases of locally connected layers laid out channels-last
    (same shape and values, the layout the kernels read, so that the op does not transpose them on every call).
    All of them are copies, in one buffer in the order the op reads them, on transparent huge pages where the
    OS gives them (:func:`_packed`). An architecture the op does not cover (stride or padding, a pooling of
    another kind, float64 parameters) gets an empty plan and keeps the per-module path.
    """
    heads = model.named_heads()
    sources = [t for m in [*model.conv, model.fc, *(h for _, h in heads)] for t in m.parameters(recurse=False)]
    plan = InferencePlan(_C.TensorWatch(sources), [], [], [], 0, [], [], None)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in sources):
        return plan
    layers = model.stack_layers()
    if layers is None:
        return plan
    weights, biases, epilogues, scales = [], [], [], []
    for layer in layers:
        scale = None
        if layer.int8:
            w, scale = quantize_lc_weight(layer.weight)
        else:
            w = stored_weight(model.inference_weights, layer.name, layer.weight.contiguous())
        # A shared convolution reads its (cached) weights at every location: widening float16 on each load
        # would cost more than the bytes save, so it keeps float32 values (float16-rounded ones when so set).
        weights.append(w.float() if layer.shared else w)
        scales.append(scale)
        biases.append(layer.bias)
        epilogues.append(int(layer.epilogue))

    # One buffer: each layer's bias (locally connected: as [H, W, C], a channels-last [C, H, W] in memory), then
    # its weight.
    def hwc(b):
        return b.permute(1, 2, 0) if b.dim() == 3 else b

    order = [t for w, b, s in zip(weights, biases, scales)
             for t in ([] if b is None else [hwc(b)]) + ([] if s is None else [s]) + [w]]
    copies = iter(_packed(order))
    for i, b in enumerate(biases):
        if b is not None:
            biases[i] = next(copies).permute(2, 0, 1) if b.dim() == 3 else next(copies)
        if scales[i] is not None:
            scales[i] = next(copies)
        weights[i] = next(copies)
    head_sizes = [h.out_features for _, h in heads]
    example = torch.empty(0, 1, model.input_size, model.input_size)
    engine = _C.StackEngine(weights, biases, epilogues, example, head_sizes, sources,
                            [name for name, _ in heads], [model.num_points, 2],
                            [name != "landmarks" for name, _ in heads], scales)
    return InferencePlan(plan.sources, weights, biases, epilogues, len(weights) - 1,
                         [name for name, _ in heads], head_sizes, engine, scales)


def _packed(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Contiguous copies of the tensors, one after another (64-byte aligned) in one buffer on transparent huge
    pages where the OS gives them: a batch-1 forward then streams one run of memory through a few TLB entries,
    rather than ~1700 4 KiB pages whose entries evict everything else's (measured: ~7% of the forward)."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += -(-n // 64) * 64
    buf = _C.empty_huge_pages(total)
    out = []
    for t, off, n in zip(tensors, offsets, sizes):
        dst = buf[off:off + n].view(t.dtype).view(t.shape)
        dst.copy_(t)
        out.append(dst)
    return out


# ----------------------------------------------------------------------------------------------------------------
# tcdcn_ext::inference_engine: the plan as a dispatcher op (what a compiled forward calls)

# The models that tcdcn_ext::inference_engine serves, by key (a counter: a key is never reused, unlike id()).
_ENGINES: "weakref.WeakValueDictionary[int, TCDCN]" = weakref.WeakValueDictionary()
_ENGINE_KEYS = itertools.count(1)


def register_engine(model: "TCDCN") -> int:
    """A new key under which ``tcdcn_ext::inference_engine`` serves ``model`` (held weakly)."""
    key = next(_ENGINE_KEYS)
    _ENGINES[key] = model
    return key


# Defined with the low-level torch.library API rather than torch.library.custom_op: the dispatcher then calls the
# kernel directly, without custom_op's Python layers (~20 us of a 0.3 ms batch-1 forward run on cold caches).
torch.library.define("tcdcn_ext::inference_engine", "(Tensor x, int engine, int width) -> Tensor")


@torch.library.impl("tcdcn_ext::inference_engine", "CPU")
def _inference_engine(x: Tensor, engine: int, width: int) -> Tensor:
    """``tcdcn_ext::inference_engine(x, engine, width)``: the CPU inference path of the TCDCN registered under
    ``engine`` as a dispatcher op (what a compiled forward calls, :meth:`TCDCN._traced_forward`): every head's output
    side by side, Tensor[N, width] (:meth:`TCDCN.forward_stacked`), from the native engine (its plan checked against
    the parameters and rebuilt when they changed) or, where it does not serve x, the per-module path. Inference
    only (no autograd kernel). The schema is defined here rather than in csrc/tcdcn_ext.cpp because the kernel is
    this Python function."""
    model = _ENGINES.get(engine)
    if model is None:
        raise RuntimeError(f"tcdcn_ext::inference_engine: no TCDCN model is registered under key {engine} (the "
                           "model of this compiled graph was freed)")
    if torch.is_grad_enabled():
        with torch.no_grad():
            y = model.forward_stacked(x)
    else:
        y = model.forward_stacked(x)
    if y.shape[1] != width:
        raise RuntimeError(f"tcdcn_ext::inference_engine: the model gives {y.shape[1]} columns, the graph expects "
                           f"{width} (its heads changed after compilation; compile again)")
    return y


@torch.library.register_fake("tcdcn_ext::inference_engine")
def _inference_engine_fake(x, engine, width):
    torch._check(x.dim() == 4, lambda: f"inference_engine: x must be 4-D, got {x.dim()}-D")
    return x.new_empty((x.shape[0], width))
