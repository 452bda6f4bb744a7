"""The TCDCN network (Zhang, Luo, Loy, Tang, ECCV 2014) and the loader of the shipped weights.

Architecture (paper Fig. 2 / Sec. 3): a grey face, per-image normalised (zero mean, unit std), of
``input_size`` x ``input_size`` pixels (paper: 40) -> four convolutional layers with |tanh| activations and 2x2
max pooling after the first three -> a fully connected shared feature with |tanh| -> one linear head per task:

* ``landmarks``: ``2 * num_points`` numbers (paper: 5 points, least squares),
* auxiliary tasks (paper: head pose 5 classes, gender, glasses, smiling 2 classes each, softmax).

From the paper: the 40x40 grey input, four conv layers with *unshared* (locally connected) filters, |tanh|, max
pooling, the FC shared feature, the 5 landmarks and the four auxiliary tasks with their class counts.
Choices made here (the paper's figure gives no exact numbers): 16@5x5, 48@3x3, 64@3x3, 64@2x2 maps and a
100-wide feature (the sizes public re-implementations use), Glorot initialisation, pooling after layers 1-3
only, and a learned offset initialised to the training set's mean shape for the landmark head.
``shared_conv=True`` swaps the locally connected layers for ordinary convolutions (the paper's 68-point
transfer variant).

Landmark frame: the model sees the face box resampled to ``S x S`` and predicts each point in the box's
normalised frame ``(u, v)``, with ``x = x0 + u (x1 - x0)``, ``y = y0 + v (y1 - y0)`` for a box
``(x0, y0, x1, y1)`` in pixel-centre coordinates; input pixel ``i`` has its centre at ``u = (i + 0.5) / S``
(:func:`tcdcn_ext.data.box_to_input_matrix`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _C, ops
from .checkpoint import UnsafeFileError, atomic_torch_save, atomic_write_text, load_tensors
from .quantize import dequantize_lc_weight, quantize_lc_weight
from .nn import AbsTanh, LocallyConnected2d

__all__ = ["AUX_TASKS_5PT", "CudaGraphForward", "TCDCN", "TCDCNConfig", "InferenceWeights", "WeightsError",
           "load_model", "save_weights", "shipped_models"]

#: The paper's auxiliary tasks and their class counts (MTFL codes, see the data README).
AUX_TASKS_5PT: dict[str, int] = {"pose": 5, "gender": 2, "glasses": 2, "smile": 2}

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_SHIPPED = {"5pt": "tcdcn_5pt", "68pt": "tcdcn_68pt"}
# The inference weight storage a shipped model loads with (TCDCN.set_inference_weights), where not "auto": int8 for
# the 5-point model, whose test-set error and attribute accuracies it keeps within the bars of issue 17 (measured
# with tcdcn-eval, MODEL_CARD.md). The 68-point model has no locally connected conv layers to quantise.
_SHIPPED_INFERENCE_WEIGHTS = {"5pt": "int8"}


#: Storage of the weights on the one-op CPU inference path (:meth:`TCDCN.set_inference_weights`).
InferenceWeights = Literal["auto", "float32", "float16", "int8"]
_INFERENCE_WEIGHTS = ("auto", "float32", "float16", "int8")

#: Activation modules selectable by ``TCDCNConfig.activation``.
_ACTIVATIONS: dict[str, type[nn.Module]] = {"abs_tanh": AbsTanh, "relu": nn.ReLU}


class WeightsError(RuntimeError):
    """A weights file is missing, truncated, tampered with (checksum mismatch) or not a TCDCN checkpoint."""


@dataclass
class TCDCNConfig:
    input_size: int = 40
    num_points: int = 5
    channels: tuple[int, ...] = (16, 48, 64, 64)
    kernels: tuple[int, ...] = (5, 3, 3, 2)
    pool_after: tuple[bool, ...] = (True, True, True, False)
    feature_dim: int = 100
    shared_conv: bool = False
    aux_tasks: dict[str, int] = field(default_factory=lambda: dict(AUX_TASKS_5PT))
    dropout: float = 0.0
    activation: str = "abs_tanh"  # "abs_tanh" (the paper) | "relu" (the authors' released 68-point model)
    box_scale: float = 1.0  # the network sees the given box enlarged by this factor about its centre (see preprocess)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.kernels = tuple(int(k) for k in self.kernels)
        self.pool_after = tuple(bool(p) for p in self.pool_after)
        if not (len(self.channels) == len(self.kernels) == len(self.pool_after)):
            raise ValueError(f"TCDCNConfig: channels {self.channels}, kernels {self.kernels} and pool_after "
                             f"{self.pool_after} must have the same length")
        self.aux_tasks = {str(k): int(v) for k, v in dict(self.aux_tasks).items()}
        self.activation = str(self.activation)
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"TCDCNConfig: activation {self.activation!r} is not one of {sorted(_ACTIVATIONS)}")
        self.box_scale = float(self.box_scale)
        if not self.box_scale > 0:
            raise ValueError(f"TCDCNConfig: box_scale must be > 0, got {self.box_scale}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"], d["kernels"], d["pool_after"] = list(self.channels), list(self.kernels), list(self.pool_after)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TCDCNConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TCDCNConfig: unknown fields {sorted(unknown)}")
        return cls(**dict(d))


class TCDCN(nn.Module):
    """The tasks-constrained deep convolutional network.

    ``forward(x)`` takes Tensor[N, 1, S, S] (see :meth:`preprocess`) and returns a dict with
    ``"landmarks"``: Tensor[N, P, 2] in the box-normalised frame (module docstring), and one Tensor[N, classes]
    of logits per auxiliary task (``"pose"``, ``"gender"``, ``"glasses"``, ``"smile"`` for the 5-point model).
    """

    def __init__(self, config: TCDCNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TCDCNConfig()
        size, c_in = config.input_size, 1
        layers: list[nn.Module] = []
        for c_out, k, pool in zip(config.channels, config.kernels, config.pool_after):
            if config.shared_conv:
                layers.append(nn.Conv2d(c_in, c_out, k))
            else:
                layers.append(LocallyConnected2d(c_in, c_out, k, (size, size)))
            layers.append(_ACTIVATIONS[config.activation]())
            size = size - k + 1
            if size < 1:
                raise ValueError(f"TCDCN: input size {config.input_size} is too small for kernels {config.kernels}")
            if pool:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self.flat_dim = c_in * size * size
        self.fc = nn.Linear(self.flat_dim, config.feature_dim)
        self.act = _ACTIVATIONS[config.activation]()
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.landmark_head = nn.Linear(config.feature_dim, 2 * config.num_points)
        self.aux_heads = nn.ModuleDict({t: nn.Linear(config.feature_dim, n) for t, n in config.aux_tasks.items()})
        nn.init.zeros_(self.landmark_head.weight)
        with torch.no_grad():  # start from the mean face: points spread over the box's centre area
            self.landmark_head.bias.copy_(torch.full((2 * config.num_points,), 0.5))
        self._inference_weights: str = "auto"
        self._plan: _InferencePlan | None = None  # the one-op CPU inference path's tensors, built on first use
        self._engine_key = _register_engine(self)  # this model's handle in tcdcn_ext::inference_engine

    @property
    def num_points(self) -> int:
        return self.config.num_points

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def set_inference_weights(self, dtype: InferenceWeights) -> "TCDCN":
        """How the one-op CPU inference path (:meth:`_build_plan`) stores its weights; returns ``self``.

        That path (eval mode, no gradients, float32 on the CPU) reads every weight once per batch; at batch 1
        the read is most of the forward's time, and float16 storage halves it. The kernels widen each float16
        weight to float32 in registers and sum in float32 (``tcdcn_ext.ops``).

        * ``"auto"`` (default): a layer gets a float16 copy of its weights when every one is exactly a float16
          value, else float32 ones. The results are then those of float32 storage; the shipped models, stored as
          float16, qualify.
        * ``"float16"``: float16 copies always (weights rounded to float16: relative error <= 2^-11 each).
          Raises ``ValueError`` if a weight is beyond float16's range (65504).
        * ``"float32"``: float32 weights.
        * ``"int8"``: the locally connected conv layers get symmetric int8 weights with a float32 scale per output
          location and channel (:mod:`tcdcn_ext.quantize`; the kernels widen them in registers, sum in float32
          and scale the sum), the other layers as ``"auto"``. A quarter of float32's bytes: the batch-1 forward
          reads half of float16's. Changes the results slightly (the model cards give the accuracy); opt-in.

        Spatially shared convolutions (the 68-point model) always keep float32 copies (of the float16-rounded
        values under ``"float16"``): each weight is read at every location from cache, where widening it on every
        load would cost more than half the bytes saves.

        Training, the autograd path, float64, CUDA and architectures the path does not cover use the parameters
        as they are. The copies follow the parameters: they are rebuilt after the model was in training mode, and
        when a parameter changes in place (an optimizer step, ``load_state_dict``), gets new storage or is moved or
        converted (``.to()``, ``.float()``). Fused optimizers (``fused=True``) change parameters without bumping
        their version counters: step them in training mode (as usual), or call this method again afterwards; do
        the same after replacing a parameter object of a layer directly.
        """
        if dtype not in _INFERENCE_WEIGHTS:
            raise ValueError(f"set_inference_weights: dtype must be one of {_INFERENCE_WEIGHTS}, got {dtype!r}")
        self._inference_weights = dtype
        self._plan = None
        return self

    @property
    def inference_weights(self) -> str:
        """The storage mode set by :meth:`set_inference_weights`."""
        return self._inference_weights

    def train(self, mode: bool = True) -> "TCDCN":
        # Entering training mode drops the inference copies: fused optimizer steps (torch.optim.Adam(fused=True),
        # what tcdcn-train uses) update the parameters in place without bumping their version counters, so the
        # watch alone would miss them.
        if mode:
            self._plan = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._plan = None  # .to(), .float(), .cuda(), ...: the parameters get new storage
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        self._plan = None  # assign=True replaces the parameter objects
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plan"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._engine_key = _register_engine(self)  # a copy (copy, deepcopy, pickle) is another engine
        self.__dict__.setdefault("_inference_weights", "auto")
        self.__dict__.setdefault("_plan", None)

    def _inference_plan(self, x: Tensor) -> "_InferencePlan | None":
        """The one-op inference path's plan when it serves this input (the caller has checked eval mode and no
        gradients), else None."""
        if x.dtype != torch.float32 or not x.is_cpu:
            return None
        if _tracing():
            return None  # tracing can neither run the watch nor build a plan (forward(): _traced_forward)
        plan = self._plan
        # (An empty plan depends only on the architecture and the parameters' dtype and device, whose changes
        # go through _apply: no need to check its sources.)
        if plan is None or (plan.weights and plan.sources.changed()):
            # Normal tensors even when called under inference_mode, so that the plan serves outside it too.
            with torch.inference_mode(False), torch.no_grad():
                plan = self._plan = self._build_plan()
        return plan if plan.weights else None

    def _inference_weight(self, name: str, w: Tensor) -> Tensor:
        """``w`` (float32, the op's layout, contiguous) as :meth:`set_inference_weights` says."""
        mode = self._inference_weights
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

    def _heads(self) -> list[tuple[str, nn.Linear]]:
        """The heads by name, in the order of the stacked output: the landmarks, then ``config.aux_tasks``."""
        return [("landmarks", self.landmark_head)] + list(self.aux_heads.items())

    def _stack_layers(self) -> "list[_StackLayer] | None":
        """The network as :func:`tcdcn_ext.ops.lc_conv2d_stack` layers, read from the parameters (detached; the
        conv layers' weights as they are, the fc and the heads relaid out): the one description of the inference
        graph that the native plan (:meth:`_build_plan`), the traced forward (:meth:`_traced_forward`) and the
        ONNX export (:mod:`tcdcn_ext.export`) all read.

        * each convolutional layer (locally connected, or spatially shared with stride 1 and no padding) with its
          activation (|tanh| or ReLU) and the 2x2 max pooling after it (when there is one) as its epilogue;
        * the fc layer and its activation: a locally connected layer whose single window is the whole last map
          (weight ``[1, 1, C, s, s, F]`` from the fc's ``[F, C * s * s]``, input flattened as ``(c, y, x)``);
        * every head, stacked in :meth:`_heads` order: one more such layer, on the ``1 x 1`` feature map, with
          no epilogue.

        None where the architecture is not covered (stride or padding, a pooling of another kind, another
        activation). Traceable: no data-dependent control flow.
        """
        act = {AbsTanh: 1, nn.ReLU: 3}.get(type(self.act))  # the epilogue codes; + 1: with 2x2 max pooling
        if act is None:
            return None
        layers = list(self.conv)
        out: list[_StackLayer] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            if not (isinstance(layer, (LocallyConnected2d, nn.Conv2d)) and i + 1 < len(layers)
                    and type(layers[i + 1]) is type(self.act) and _plain_conv(layer)):
                return None
            nxt = layers[i + 2] if i + 2 < len(layers) else None
            pool = isinstance(nxt, nn.MaxPool2d)
            if pool and not _is_plain_2x2(nxt):
                return None
            shared = isinstance(layer, nn.Conv2d)
            out.append(_StackLayer(f"conv[{i}]", layer.weight.detach(),
                                   None if layer.bias is None else layer.bias.detach(), act + 1 if pool else act,
                                   shared, self._inference_weights == "int8" and not shared))
            i += 3 if pool else 2
        c = self.config.channels[-1]
        s = math.isqrt(self.flat_dim // c)  # the last map is c x s x s
        fc_w = self.fc.weight.detach().reshape(1, 1, -1, c, s, s)  # natural [H_out, W_out, C_out, C_in, kH, kW]
        out.append(_StackLayer("fc", ops.lc_weight_from_natural(fc_w), self.fc.bias.detach().reshape(-1, 1, 1),
                               act, False))
        heads = [h for _, h in self._heads()]
        head_w = torch.cat([h.weight.detach() for h in heads]).reshape(1, 1, -1, self.config.feature_dim, 1, 1)
        out.append(_StackLayer("heads", ops.lc_weight_from_natural(head_w),
                               torch.cat([h.bias.detach() for h in heads]).reshape(-1, 1, 1), 0, False))
        return out

    def _build_plan(self) -> "_InferencePlan":
        """The whole forward as one native call (:class:`tcdcn_ext._C.StackEngine`, the layers of
        :meth:`_stack_layers` run as :func:`tcdcn_ext.ops.lc_conv2d_stack` does; CPU, float32).

        Weights as :meth:`set_inference_weights` says; biases of locally connected layers laid out channels-last
        (same shape and values, the layout the kernels read, so that the op does not transpose them on every call).
        All of them are copies, in one buffer in the order the op reads them, on transparent huge pages where the
        OS gives them (:func:`_packed`). An architecture the op does not cover (stride or padding, a pooling of
        another kind, float64 parameters) gets an empty plan and keeps the per-module path.
        """
        heads = self._heads()
        sources = [t for m in [*self.conv, self.fc, *(h for _, h in heads)] for t in m.parameters(recurse=False)]
        plan = _InferencePlan(_C.TensorWatch(sources), [], [], [], 0, [], [], None)
        if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in sources):
            return plan
        layers = self._stack_layers()
        if layers is None:
            return plan
        weights, biases, epilogues, scales = [], [], [], []
        for layer in layers:
            scale = None
            if layer.int8:
                w, scale = quantize_lc_weight(layer.weight)
            else:
                w = self._inference_weight(layer.name, layer.weight.contiguous())
            # A shared convolution reads its (cached) weights at every location: widening float16 on each load
            # would cost more than the bytes save, so it keeps float32 values (float16-rounded ones when so set).
            weights.append(w.float() if layer.shared else w)
            scales.append(scale)
            biases.append(layer.bias)
            epilogues.append(layer.epilogue)
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
        example = torch.empty(0, 1, self.config.input_size, self.config.input_size)
        engine = _C.StackEngine(weights, biases, epilogues, example, head_sizes, sources,
                                [name for name, _ in heads], [self.config.num_points, 2],
                                [name != "landmarks" for name, _ in heads], scales)
        return _InferencePlan(plan.sources, weights, biases, epilogues, len(weights) - 1,
                              [name for name, _ in heads], head_sizes, engine, scales)

    def set_mean_shape(self, uv: np.ndarray | Tensor) -> None:
        """Initialise the landmark head's offset to a mean shape ``[P, 2]`` in the box frame."""
        uv = torch.as_tensor(np.asarray(uv, dtype=np.float32)).reshape(-1)
        with torch.no_grad():
            self.landmark_head.bias.copy_(uv)

    def features(self, x: Tensor) -> Tensor:
        """The shared feature, Tensor[N, feature_dim]."""
        self._check_input(x)
        if torch.is_grad_enabled() or self.training:
            h = self.conv(x)
        else:
            plan = self._inference_plan(x)
            if plan is not None:
                n = plan.features_end  # the layers up to the fc's; [N, F, 1, 1] channels-last: flatten is a view
                return _LC_STACK(x, plan.op_weights()[:n], plan.biases[:n], plan.epilogues[:n]).flatten(1)
            h = self._conv_inference(x)
        return self.drop(self.act(self.fc(h.flatten(1))))

    def _check_input(self, x: Tensor) -> None:
        s = self.config.input_size
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"TCDCN: expected input Tensor[N, 1, {s}, {s}], got shape {tuple(x.shape)}")

    def _conv_inference(self, h: Tensor) -> Tensor:
        """The conv stack with each locally connected layer, its |tanh| and (on the CPU) the 2x2 max pooling after
        it fused into one op (no grad). (CPU float32 inference is one op for the whole network: _build_plan.)"""
        layers = list(self.conv)
        i = 0
        while i < len(layers):
            layer = layers[i]
            if (isinstance(layer, LocallyConnected2d) and i + 1 < len(layers)
                    and isinstance(layers[i + 1], AbsTanh)):
                nxt = layers[i + 2] if i + 2 < len(layers) else None
                if h.device.type == "cpu" and isinstance(nxt, nn.MaxPool2d) and _is_plain_2x2(nxt):
                    h = ops.lc_conv2d_abs_tanh_maxpool2d(h, layer.weight, layer.bias, layer.stride, layer.padding)
                    i += 3
                    continue
                h = ops.lc_conv2d_abs_tanh(h, layer.weight, layer.bias, layer.stride, layer.padding)
                i += 2
            else:
                h = layer(h)
                i += 1
        return h

    def _planned(self, x: Tensor, what: str) -> Any:
        """The CPU inference path's ``what`` (an engine method: ``"outputs"``, forward()'s dict; ``"stacked"`` or
        ``"probabilities"``, ``[N, D]``) for x, the caller having checked eval mode and no gradients; None where the
        path does not serve x (the module path then names what is wrong with it)."""
        if _tracing():
            return None  # the engine is no dispatcher op: the callers' fallbacks go through forward()
        plan = self._inference_plan(x)  # (re)built when missing or stale
        return None if plan is None else getattr(plan.engine, what)(x)

    def _forward_stacked(self, x: Tensor) -> Tensor:
        """Inference (eval mode, no gradients): every head's output side by side, ``[N, D]``: the landmarks' ``2P``
        columns (``(u, v)`` pairs) first, then each auxiliary task's logits in ``config.aux_tasks`` order. One call
        and no per-head tensors on the CPU inference path (what the Aligner reads at batch 1)."""
        if not (torch.is_grad_enabled() or self.training):
            y = self._planned(x, "stacked")
            if y is not None:
                return y
        out = self(x)
        return torch.cat([out["landmarks"].flatten(1)] + [out[t] for t in self.aux_heads], dim=1)

    def _forward_probabilities(self, x: Tensor) -> Tensor:
        """:meth:`_forward_stacked` with each auxiliary task's logits turned into class probabilities (softmax per
        task): ``[N, D]``, the landmarks' ``2P`` columns, then each task's probabilities. On the CPU inference path
        the softmax is part of the native call (what the Aligner reads at batch 1)."""
        if not (torch.is_grad_enabled() or self.training):
            y = self._planned(x, "probabilities")
            if y is not None:
                return y
        y = self._forward_stacked(x)
        sizes = [2 * self.num_points] + list(self.config.aux_tasks.values())
        parts = y.split(sizes, dim=1)
        return torch.cat([parts[0]] + [p.softmax(dim=1) for p in parts[1:]], dim=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if not (torch.is_grad_enabled() or self.training):
            if _tracing():
                out = self._traced_forward(x)
                if out is not None:
                    return out
            else:
                # The CPU inference path: one native call returns the dict (batch 1 spends ~0.25 ms streaming
                # weights; every Python step after it runs on caches that stream evicted, so there are few).
                plan = self._plan
                out = plan.engine.outputs(x) if plan is not None and plan.engine is not None else None
                if out is None:
                    out = self._planned(x, "outputs")
                if out is not None:
                    return out
        elif torch.compiler.is_exporting() and not self.training:  # export's graph is for inference
            out = self._traced_forward(x)
            if out is not None:
                return out
        f = self.features(x)
        out = {"landmarks": self.landmark_head(f).view(-1, self.config.num_points, 2)}
        for task, head in self.aux_heads.items():
            out[task] = head(f)
        return out

    def _traced_forward(self, x: Tensor) -> dict[str, Tensor] | None:
        """forward() in eval mode under torch.compile (without gradients) or torch.export: the graph holds one
        registered op with a fake kernel (the native engine of the eager path is a Python-side object, which tracing
        cannot enter), then views of its ``[N, D]`` output.

        * torch.compile: ``tcdcn_ext::inference_engine`` (:func:`_inference_engine`), the eager inference path as an
          op: at run time it checks the parameters' watch, rebuilds the plan when they changed, and runs the native
          engine, so a compiled model follows its parameters as the eager one does.
        * torch.export: ``tcdcn_ext::lc_conv2d_stack`` on the parameters (float32; fc and heads relaid out in the
          graph, :meth:`_stack_layers`): the exported program's state is the model's own, and it runs wherever this
          package is installed.

        None where the stack does not cover the model or the input, and under torch.jit.trace (whose tracer takes
        no ``Tensor?[]`` argument): the module path then runs, on the per-layer ops (the engine would be recorded as
        constant outputs).
        """
        if torch.jit.is_tracing():
            return None
        self._check_input(x)
        heads = self._heads()
        sizes = [h.out_features for _, h in heads]
        compiling = torch.compiler.is_compiling() and not torch.compiler.is_exporting()
        if compiling and x.is_cpu and x.dtype == torch.float32:
            # (No look at the parameters here: each one read would be a guard checked on every compiled call.)
            y = torch.ops.tcdcn_ext.inference_engine(x, self._engine_key, sum(sizes))
        else:
            layers = self._stack_layers() if x.is_cpu and x.dtype in (torch.float32, torch.float64) else None
            if layers is None or any(t.dtype != x.dtype or not t.is_cpu for t in self.parameters()):
                return None
            y = _LC_STACK(x, [layer.weight for layer in layers], [layer.bias for layer in layers],
                          [layer.epilogue for layer in layers]).flatten(1)  # [N, D, 1, 1] channels-last -> [N, D]
        out = dict(zip([name for name, _ in heads], y.split(sizes, dim=1)))
        out["landmarks"] = out["landmarks"].view(-1, self.config.num_points, 2)
        return out

    # -- pre/post-processing -----------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[np.ndarray] | np.ndarray, boxes: np.ndarray | Sequence) -> Tensor:
        """(RGB uint8 image(s) ``HxWx3`` or grey ``HxW``, face box(es) ``(x0, y0, x1, y1)``) -> Tensor[N, 1, S, S].

        The box (enlarged by ``config.box_scale`` about its centre, :meth:`input_boxes`; 1 = as given) is resampled
        to ``S x S`` grey pixels (bilinear, black outside the image) and normalised per image to zero mean and unit
        standard deviation.
        """
        from . import data  # OpenCV is imported only when images are processed

        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8:
            images = [images]
        boxes = self.input_boxes(boxes)
        if len(images) != len(boxes):
            raise ValueError(f"preprocess: {len(images)} images but {len(boxes)} boxes")
        return torch.from_numpy(data.make_inputs(list(images), boxes, self.config.input_size))

    def input_boxes(self, boxes: np.ndarray | Sequence) -> np.ndarray:
        """The boxes the network actually sees for the given face boxes ``[N, 4]``: each enlarged by
        ``config.box_scale`` about its centre (the identity, as float32, when ``box_scale == 1``)."""
        from .data import scale_boxes

        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        s = self.config.box_scale
        return b if s == 1.0 else scale_boxes(b, s).astype(np.float32)

    def to_given_frame(self, uv: Tensor) -> Tensor:
        """Network output (frame of the enlarged box, :meth:`input_boxes`) -> frame of the given box:
        ``u = 0.5 + (u_net - 0.5) * box_scale`` (returned unchanged when ``box_scale == 1``)."""
        s = self.config.box_scale
        return uv if s == 1.0 else (uv - 0.5) * s + 0.5

    @torch.inference_mode()
    def predict(self, x: Tensor, batch_size: int = 1024, mirror_average: bool = False) -> dict[str, Tensor]:
        """Forward in eval mode, in batches: landmarks (box frame) and aux-task probabilities (softmax).

        The landmarks are in the frame of the box given to :meth:`preprocess` (for ``box_scale != 1`` the raw
        ``forward`` output, in the enlarged box's frame, is mapped back with :meth:`to_given_frame`).

        ``mirror_average``: also run the horizontally mirrored input and average the two predictions (the mirror
        maps ``u -> 1 - u`` exactly, left/right points are swapped back and the pose bins reversed).
        """
        was_training = self.training
        self.eval()
        try:
            outs: dict[str, list[Tensor]] = {}
            for i in range(0, max(len(x), 1), batch_size):
                xb = x[i:i + batch_size]
                o = {k: (v if k == "landmarks" else F.softmax(v, dim=1)) for k, v in self(xb).items()}
                if mirror_average:
                    o = self._average_with_mirror(o, xb)
                o["landmarks"] = self.to_given_frame(o["landmarks"])
                for k, v in o.items():
                    outs.setdefault(k, []).append(v)
            return {k: torch.cat(v) for k, v in outs.items()}
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def predict_shift_average(self, crop: Tensor, shifts) -> dict[str, Tensor]:
        """TCDCN-Averaged on crops with a margin: the network on every shifted ``S x S`` window of each crop,
        un-shifted and averaged, in one :func:`tcdcn_ext.ops.shift_average` call (eval mode, no gradients).

        Args:
            crop: Tensor[N, 1, S + 2m, S + 2m] standardised crops (:func:`tcdcn_ext.averaging.shift_crops`).
            shifts: ``[K, 2]`` whole-pixel ``(dx, dy)`` window shifts, ``|dx|, |dy| <= m``.

        Returns:
            like :meth:`predict`: ``"landmarks"`` [N, P, 2] in the frame of the given box of the centred window
            (the mean over shifts of each window's prediction moved back by its shift) and, per auxiliary task,
            the mean over shifts of the softmax probabilities.
        """
        layers = [m for m in self.conv if isinstance(m, (nn.Conv2d, LocallyConnected2d))]
        if any(tuple(m.stride) != (1, 1) or tuple(m.padding) != (0, 0) for m in layers):
            raise ValueError("predict_shift_average: conv layers must have stride 1 and no padding")
        tasks = list(self.aux_heads)
        n = len(layers)
        plan = None if self.training else self._inference_plan(crop)
        if plan is not None:
            # The CPU inference copies (float16 where exact): the conv layers, then the fc and the stacked heads in
            # the locally connected layout, which the op runs on its lc kernels straight from the feature maps.
            weights, biases = plan.op_weights(), plan.biases
            fc_w, fc_b, head_w, head_b = weights[n], biases[n], weights[n + 1], biases[n + 1]
            weights, biases = weights[:n], biases[:n]
        else:
            weights, biases = [m.weight for m in layers], [m.bias for m in layers]
            fc_w, fc_b = self.fc.weight, self.fc.bias
            head_w = torch.cat([self.landmark_head.weight] + [self.aux_heads[t].weight for t in tasks])
            head_b = torch.cat([self.landmark_head.bias] + [self.aux_heads[t].bias for t in tasks])
        lm, heads = ops.shift_average(
            crop, shifts, self.config.input_size, weights, biases, self.config.pool_after, self.config.shared_conv,
            self.config.activation, fc_w, fc_b, head_w, head_b, self.num_points)
        out = {"landmarks": self.to_given_frame(lm)}
        if tasks:  # softmax per task, then one mean over the shifts for all of them
            sizes = [self.config.aux_tasks[t] for t in tasks]
            parts = heads[:, :, 2 * self.num_points:].split(sizes, dim=2)
            probs = torch.cat([p.softmax(dim=2) for p in parts], dim=2).mean(dim=1)
            out.update(zip(tasks, probs.split(sizes, dim=1)))
        return out

    def _average_with_mirror(self, o: dict[str, Tensor], xb: Tensor) -> dict[str, Tensor]:
        from .data import MIRROR_5, MIRROR_68, POSE_MIRROR

        perm = {5: MIRROR_5, 68: MIRROR_68}.get(self.num_points)
        if perm is None:
            raise ValueError(f"mirror averaging needs a left/right permutation for {self.num_points} points")
        m = {k: (v if k == "landmarks" else F.softmax(v, dim=1)) for k, v in self(xb.flip(-1)).items()}
        lm = m["landmarks"][:, list(perm)].clone()
        lm[..., 0] = 1.0 - lm[..., 0]
        res = {"landmarks": 0.5 * (o["landmarks"] + lm)}
        for k, v in o.items():
            if k != "landmarks":
                mv = m[k][:, list(POSE_MIRROR)] if k == "pose" else m[k]
                res[k] = 0.5 * (v + mv)
        return res


class CudaGraphForward:
    """A TCDCN forward of a fixed batch size captured once in a CUDA graph and replayed per call.

    Small-batch inference on a GPU is bound by kernel launches (a dozen per forward), not arithmetic; one graph
    replay launches them all at once. The model must be on a CUDA device; its weights are read at replay time, so
    later in-place weight updates are seen, but replacing parameters or moving the model needs a new capture.

    ``forward(x)`` copies ``x`` (Tensor[batch_size, 1, S, S], any device) into the graph's static input, replays,
    and returns ``{"landmarks", aux logits...}`` as fresh tensors (clones of the static outputs, so results stay
    valid after the next replay). Not thread-safe: one replay at a time per instance.
    """

    def __init__(self, model: TCDCN, batch_size: int = 1, warmup: int = 3) -> None:
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CudaGraphForward needs a model on a CUDA device, got {device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size, self.device = model.eval(), int(batch_size), device
        s = model.input_size
        self.static_in = torch.zeros(self.batch_size, 1, s, s, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(max(1, warmup)):  # lazy initialisation (cuBLAS handles, allocator pools) off-graph
                model(self.static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.static_out = model(self.static_in)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        if tuple(x.shape) != tuple(self.static_in.shape):
            raise ValueError(f"CudaGraphForward was captured for input {tuple(self.static_in.shape)}, got "
                             f"{tuple(x.shape)}")
        with torch.inference_mode():
            self.static_in.copy_(x, non_blocking=True)
            self.graph.replay()
            return {k: v.clone() for k, v in self.static_out.items()}


# Called directly on the inference path, which needs none of the Python wrapper's argument handling.
_LC_STACK = torch.ops.tcdcn_ext.lc_conv2d_stack.default

def _tracing() -> bool:
    """Whether a forward is being traced (torch.compile, torch.export, torch.jit.trace)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


# The models that tcdcn_ext::inference_engine serves, by key (a counter: a key is never reused, unlike id()).
_ENGINES: "weakref.WeakValueDictionary[int, TCDCN]" = weakref.WeakValueDictionary()
_ENGINE_KEYS = itertools.count(1)


def _register_engine(model: TCDCN) -> int:
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
    side by side, Tensor[N, width] (:meth:`TCDCN._forward_stacked`), from the native engine (its plan checked against
    the parameters and rebuilt when they changed) or, where it does not serve x, the per-module path. Inference
    only (no autograd kernel). The schema is defined here rather than in csrc/tcdcn_ext.cpp because the kernel is
    this Python function."""
    model = _ENGINES.get(engine)
    if model is None:
        raise RuntimeError(f"tcdcn_ext::inference_engine: no TCDCN model is registered under key {engine} (the "
                           "model of this compiled graph was freed)")
    if torch.is_grad_enabled():
        with torch.no_grad():
            y = model._forward_stacked(x)
    else:
        y = model._forward_stacked(x)
    if y.shape[1] != width:
        raise RuntimeError(f"tcdcn_ext::inference_engine: the model gives {y.shape[1]} columns, the graph expects "
                           f"{width} (its heads changed after compilation; compile again)")
    return y


@torch.library.register_fake("tcdcn_ext::inference_engine")
def _inference_engine_fake(x, engine, width):
    torch._check(x.dim() == 4, lambda: f"inference_engine: x must be 4-D, got {x.dim()}-D")
    return x.new_empty((x.shape[0], width))


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


@dataclass
class _StackLayer:
    """One layer of :meth:`TCDCN._stack_layers`: lc_conv2d_stack's weight (6-D locally connected or 4-D shared),
    bias and epilogue code, with a name for messages."""

    name: str
    weight: Tensor
    bias: Tensor | None
    epilogue: int
    shared: bool
    int8: bool = False  # the native plan runs it with int8 weights (TCDCN.set_inference_weights("int8"))


@dataclass
class _InferencePlan:
    """What :meth:`TCDCN._build_plan` made: lc_conv2d_stack's arguments for the whole network (empty where the
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


def _plain_conv(layer: nn.Module) -> bool:
    """Stride 1, no padding (and for nn.Conv2d: no dilation, one group, zero padding mode): what the one-call
    inference path implements."""
    if isinstance(layer, LocallyConnected2d):
        return tuple(layer.stride) == (1, 1) and tuple(layer.padding) == (0, 0)
    return (tuple(layer.stride) == (1, 1) and tuple(layer.padding) == (0, 0) and tuple(layer.dilation) == (1, 1)
            and layer.groups == 1 and layer.padding_mode == "zeros")


def _is_plain_2x2(pool: nn.MaxPool2d) -> bool:
    """A 2x2, stride-2, unpadded, floor-mode max pooling (what the fused op implements)."""
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (pair(pool.kernel_size) == (2, 2) and pair(pool.stride) == (2, 2) and pair(pool.padding) == (0, 0)
            and pair(pool.dilation) == (1, 1) and not pool.ceil_mode and not pool.return_indices)


# ----------------------------------------------------------------------------------------------------------------
# Weights


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checked_record(path: Path) -> dict[str, Any]:
    """The ``.json`` record beside a weights file, after checking the file's sha256 against it; :class:`WeightsError`
    naming the file when the record is missing or unreadable or the checksum differs."""
    record_path = path.with_suffix(".json")
    if not record_path.exists():
        raise WeightsError(f"{record_path} (the checksum record of {path.name}) is missing")
    try:
        record = json.loads(record_path.read_text())
        expected = record["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{record_path} is not a valid weights record: {exc}") from exc
    actual = _sha256(path)
    if actual != expected:
        raise WeightsError(f"{path}: sha256 {actual} does not match {expected} recorded in {record_path.name}; "
                           "the file is truncated or was modified")
    return record


def save_weights(model: TCDCN, path: str | os.PathLike, meta: Mapping[str, Any] | None = None,
                 half: bool = True) -> dict[str, Any]:
    """Write ``path`` (``.pt``: config + state dict, fp16 storage when ``half``) and ``path.json`` with its
    sha256, the config and ``meta``. Returns the JSON record. Both files are written atomically (temp + fsync +
    rename + folder fsync, :func:`tcdcn_ext.checkpoint.atomic_write`)."""
    path = Path(path)
    state = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    blob = {"format": "tcdcn_ext/1", "config": model.config.to_dict(), "state_dict": state}
    atomic_torch_save(blob, path)
    record = {"file": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size,
              "config": model.config.to_dict(), "meta": dict(meta or {})}
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True, default=str))
    return record


def shipped_models() -> dict[str, Path]:
    """Names of the weights inside the package (``"5pt"``, ``"68pt"``) that are present, with their paths."""
    return {name: WEIGHTS_DIR / f"{stem}.pt" for name, stem in _SHIPPED.items()
            if (WEIGHTS_DIR / f"{stem}.pt").exists()}


def load_model(name_or_path: str | os.PathLike = "5pt", device: str | torch.device = "cpu",
               verify: bool = True) -> TCDCN:
    """Load a TCDCN model: ``"5pt"`` / ``"68pt"`` (shipped inside the package, offline) or a ``.pt`` path.

    The file's sha256 is checked against the ``.json`` record beside it (when present; always for shipped
    weights) before it is read, and it is read with ``torch.load(weights_only=True)``
    (:func:`tcdcn_ext.checkpoint.load_tensors`: a file with pickled code is refused, never run). The record's
    ``config``, when it has one, must describe the architecture the ``.pt`` carries: a record that says one thing
    while the file builds another is refused rather than silently ignored. Raises :class:`WeightsError` naming the
    file on any problem. The model is returned in eval mode, float32; the shipped 5-point model with int8 inference
    weights (``set_inference_weights("int8")``: its model card gives the accuracy; ``.set_inference_weights("auto")``
    restores the float16 storage).
    """
    key = str(name_or_path)
    if key in _SHIPPED:
        path = WEIGHTS_DIR / f"{_SHIPPED[key]}.pt"
        if not path.exists():
            raise WeightsError(f"the shipped model {key!r} is not in this installation ({path} is missing)")
        must_verify = True
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist (shipped models: {sorted(_SHIPPED)})")
        must_verify = False
    record: dict[str, Any] | None = None
    if verify and (must_verify or path.with_suffix(".json").exists()):
        record = checked_record(path)
    try:
        blob = load_tensors(path, "weights file")
    except UnsafeFileError as exc:
        raise WeightsError(str(exc)) from exc
    except Exception as exc:  # torch raises several types for corrupt archives
        raise WeightsError(f"{path}: cannot be read as a weights file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise WeightsError(f"{path}: not a tcdcn_ext weights file (expected keys 'config' and 'state_dict')")
    state = blob["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: 'state_dict' must map parameter names to tensors")
    try:
        config = TCDCNConfig.from_dict(blob["config"])
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: its recorded architecture is not a TCDCNConfig ({exc})") from exc
    if record is not None and "config" in record:
        record_path = path.with_suffix(".json")
        try:
            described = TCDCNConfig.from_dict(record["config"]).to_dict()
        except (ValueError, TypeError) as exc:
            raise WeightsError(f"{record_path}: its 'config' is not a TCDCNConfig ({exc})") from exc
        if described != config.to_dict():
            diff = sorted(k for k, v in config.to_dict().items() if described.get(k) != v)
            raise WeightsError(f"{record_path} describes another model than {path.name} holds (fields {diff} "
                               "differ): the record belongs to other weights or was edited")
    try:
        model = TCDCN(config)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    except (ValueError, RuntimeError, TypeError) as exc:
        raise WeightsError(f"{path}: weights do not fit the recorded architecture ({exc})") from exc
    model = model.to(device).eval()
    if key in _SHIPPED:
        model.set_inference_weights(_SHIPPED_INFERENCE_WEIGHTS.get(key, "auto"))
    return model
