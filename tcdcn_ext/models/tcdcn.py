"""The TCDCN network (Zhang, Luo, Loy, Tang, ECCV 2014): its configuration and the module, built from the layer
description (:mod:`tcdcn_ext.models.layers`), with its inference paths. Weights I/O: :mod:`tcdcn_ext.models.weights`.

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
(:func:`tcdcn_ext.inference.boxes.box_to_input_matrix`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops.nn import AbsTanh, LocallyConnected2d
from .layers import Layer, describe, shift_average_args
from .plan import InferencePlan, StackLayer, build_plan, register_engine

__all__ = ["AUX_TASKS_5PT", "TCDCN", "TCDCNConfig", "InferenceWeights"]

#: The paper's auxiliary tasks and their class counts (MTFL codes, see the data README).
AUX_TASKS_5PT: dict[str, int] = {"pose": 5, "gender": 2, "glasses": 2, "smile": 2}


#: Storage of the weights on the one-op CPU inference path (:meth:`TCDCN.set_inference_weights`).
InferenceWeights = Literal["auto", "float32", "float16", "int8"]
_INFERENCE_WEIGHTS = ("auto", "float32", "float16", "int8")

#: Activation modules selectable by ``TCDCNConfig.activation``.
_ACTIVATIONS: dict[str, type[nn.Module]] = {"abs_tanh": AbsTanh, "relu": nn.ReLU}


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
        #: The layer description (:mod:`tcdcn_ext.models.layers`) that the modules below and every other runnable
        #: form of the network are made from.
        self.layers: tuple[Layer, ...] = describe(config)
        activation = _ACTIVATIONS[config.activation]
        modules: list[nn.Module] = []
        for layer in self.layers:
            if not layer.convolutional:
                continue
            if layer.shared:
                modules.append(nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel))
            else:
                modules.append(LocallyConnected2d(layer.in_channels, layer.out_channels, layer.kernel,
                                                  (layer.in_size, layer.in_size)))
            modules.append(activation())
            if layer.epilogue.pooled:
                modules.append(nn.MaxPool2d(2))
        self.conv = nn.Sequential(*modules)
        fc, heads = self.layers[-2], dict(self.layers[-1].outputs)
        self.flat_dim = fc.in_channels * fc.kernel * fc.kernel
        self.fc = nn.Linear(self.flat_dim, fc.out_channels)
        self.act = activation()
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.landmark_head = nn.Linear(fc.out_channels, heads["landmarks"])
        self.aux_heads = nn.ModuleDict({t: nn.Linear(fc.out_channels, heads[t]) for t in config.aux_tasks})
        nn.init.zeros_(self.landmark_head.weight)
        with torch.no_grad():  # start from the mean face: points spread over the box's centre area
            self.landmark_head.bias.copy_(torch.full((2 * config.num_points,), 0.5))
        self._inference_weights: str = "auto"
        self._plan: InferencePlan | None = None  # the one-op CPU inference path's tensors, built on first use
        self._engine_key = register_engine(self)  # this model's handle in tcdcn_ext::inference_engine

    @property
    def num_points(self) -> int:
        return self.config.num_points

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def set_inference_weights(self, dtype: InferenceWeights) -> "TCDCN":
        """How the one-op CPU inference path (:func:`~tcdcn_ext.models.plan.build_plan`) stores its weights; returns
        ``self``.

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
          location and channel (:mod:`tcdcn_ext.ops.quantize`; the kernels widen them in registers, sum in float32
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
        self._engine_key = register_engine(self)  # a copy (copy, deepcopy, pickle) is another engine
        self.__dict__.setdefault("layers", describe(self.config))  # (pickled before the description existed)
        self.__dict__.setdefault("_inference_weights", "auto")
        self.__dict__.setdefault("_plan", None)

    def _inference_plan(self, x: Tensor) -> "InferencePlan | None":
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
                plan = self._plan = build_plan(self)
        return plan if plan.weights else None

    def named_heads(self) -> list[tuple[str, nn.Linear]]:
        """The heads by name, in the order of the stacked output (the description's ``"heads"`` layer): the
        landmarks, then ``config.aux_tasks``."""
        return [("landmarks", self.landmark_head)] + list(self.aux_heads.items())

    def _conv_modules(self) -> list[tuple[Layer, list[nn.Module]]] | None:
        """Each convolutional layer of the description with its modules in ``self.conv`` (the conv, the activation,
        the pooling when the epilogue has one); None where the modules are no longer what the description says
        (replaced after construction by another kind, a stride or padding, another pooling or activation)."""
        modules, out, pos = list(self.conv), [], 0
        activation = {AbsTanh: "abs_tanh", nn.ReLU: "relu"}.get(type(self.act))
        for layer in self.layers:
            if not layer.convolutional:
                continue
            group = modules[pos:pos + (3 if layer.epilogue.pooled else 2)]
            pos += len(group)
            kind = nn.Conv2d if layer.shared else LocallyConnected2d
            if (len(group) < 2 or type(group[0]) is not kind or not _plain_conv(group[0])
                    or type(group[1]) is not type(self.act) or layer.epilogue.activation != activation
                    or (layer.epilogue.pooled and not (len(group) == 3 and isinstance(group[2], nn.MaxPool2d)
                                                        and _is_plain_2x2(group[2])))):
                return None
            out.append((layer, group))
        return out if pos == len(modules) else None

    def stack_layers(self) -> list[StackLayer] | None:
        """The description's layers with their tensors as :func:`tcdcn_ext.ops.lc_conv2d_stack` takes them, read from
        the parameters (detached; the conv layers' weights as they are, the fc and the heads relaid out): what the
        native plan (:func:`tcdcn_ext.models.plan.build_plan`), the traced forward (:meth:`_traced_forward`) and
        the ONNX export (:mod:`tcdcn_ext.models.export`) all read.

        * each convolutional layer with its epilogue (activation and optional 2x2 max pooling);
        * the fc layer and its activation: a locally connected layer whose single window is the whole last map
          (weight ``[1, 1, C, s, s, F]`` from the fc's ``[F, C * s * s]``, input flattened as ``(c, y, x)``);
        * every head, stacked in :meth:`named_heads` order: one more such layer, on the ``1 x 1`` feature map, with
          no epilogue.

        None where the modules no longer match the description (:meth:`_conv_modules`). Traceable: no
        data-dependent control flow.
        """
        conv = self._conv_modules()
        if conv is None:
            return None
        int8 = self._inference_weights == "int8"
        out = [StackLayer(layer, m.weight.detach(), None if m.bias is None else m.bias.detach(),
                          int8 and not layer.shared) for layer, (m, *_) in conv]
        fc, heads = self.layers[-2], self.layers[-1]
        fc_w = self.fc.weight.detach().reshape(1, 1, -1, fc.in_channels, fc.kernel, fc.kernel)  # [H, W, F, C, k, k]
        out.append(StackLayer(fc, ops.lc_weight_from_natural(fc_w), self.fc.bias.detach().reshape(-1, 1, 1)))
        modules = [h for _, h in self.named_heads()]
        head_w = torch.cat([h.weight.detach() for h in modules]).reshape(1, 1, -1, heads.in_channels, 1, 1)
        out.append(StackLayer(heads, ops.lc_weight_from_natural(head_w),
                              torch.cat([h.bias.detach() for h in modules]).reshape(-1, 1, 1)))
        return out

    def set_mean_shape(self, uv: np.ndarray | Tensor) -> None:
        """Initialise the landmark head's offset to a mean shape ``[P, 2]`` in the box frame."""
        uv = torch.as_tensor(np.asarray(uv, dtype=np.float32)).reshape(-1)
        with torch.no_grad():
            self.landmark_head.bias.copy_(uv)

    def features(self, x: Tensor) -> Tensor:
        """The shared feature, Tensor[N, feature_dim]."""
        self._check_input(x)
        if torch.is_grad_enabled() or self.training:
            h = self._conv_training(x)
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

    def _conv_training(self, h: Tensor) -> Tensor:
        """The conv stack with gradients: each pooled |tanh| layer's activation and 2x2 max pooling as one op
        (:func:`tcdcn_ext.ops.abs_tanh_maxpool2d`: one tanh per pooled output, and its backward hands the
        locally connected layer's backward channels-last rows without a copy); the modules one by one where the
        stack is no longer what the description says."""
        conv = self._conv_modules()
        if conv is None:
            return self.conv(h)
        for layer, (m, *after) in conv:
            h = m(h)
            if layer.epilogue.activation == "abs_tanh" and layer.epilogue.pooled:
                h = ops.abs_tanh_maxpool2d(h)
                continue
            for a in after:
                h = a(h)
        return h

    def _conv_inference(self, h: Tensor) -> Tensor:
        """The conv stack with each locally connected layer, its |tanh| and (on the CPU) the 2x2 max pooling after
        it fused into one op (no grad). (CPU float32 inference is one op for the whole network: the plan.)"""
        conv = self._conv_modules()
        if conv is None:
            return self.conv(h)
        for layer, (m, *after) in conv:
            if layer.kind == "lc" and layer.epilogue.activation == "abs_tanh":
                if layer.epilogue.pooled and h.device.type == "cpu":
                    h = ops.lc_conv2d_abs_tanh_maxpool2d(h, m.weight, m.bias, m.stride, m.padding)
                    continue
                h = ops.lc_conv2d_abs_tanh(h, m.weight, m.bias, m.stride, m.padding)
                after = after[1:]
            else:
                h = m(h)
            for a in after:
                h = a(h)
        return h

    def _planned(self, x: Tensor, what: str) -> Any:
        """The CPU inference path's ``what`` (an engine method: ``"outputs"``, forward()'s dict; ``"stacked"`` or
        ``"probabilities"``, ``[N, D]``) for x, the caller having checked eval mode and no gradients; None where the
        path does not serve x (the module path then names what is wrong with it)."""
        if _tracing():
            return None  # the engine is no dispatcher op: the callers' fallbacks go through forward()
        plan = self._inference_plan(x)  # (re)built when missing or stale
        return None if plan is None else getattr(plan.engine, what)(x)

    def forward_stacked(self, x: Tensor) -> Tensor:
        """Inference (eval mode, no gradients): every head's output side by side, ``[N, D]``: the landmarks' ``2P``
        columns (``(u, v)`` pairs) first, then each auxiliary task's logits in ``config.aux_tasks`` order. One call
        and no per-head tensors on the CPU inference path (what the Aligner reads at batch 1)."""
        if not (torch.is_grad_enabled() or self.training):
            y = self._planned(x, "stacked")
            if y is not None:
                return y
        out = self(x)
        return torch.cat([out["landmarks"].flatten(1)] + [out[t] for t in self.aux_heads], dim=1)

    def forward_probabilities(self, x: Tensor) -> Tensor:
        """:meth:`forward_stacked` with each auxiliary task's logits turned into class probabilities (softmax per
        task): ``[N, D]``, the landmarks' ``2P`` columns, then each task's probabilities. On the CPU inference path
        the softmax is part of the native call (what the Aligner reads at batch 1)."""
        if not (torch.is_grad_enabled() or self.training):
            y = self._planned(x, "probabilities")
            if y is not None:
                return y
        y = self.forward_stacked(x)
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
          graph, :meth:`stack_layers`): the exported program's state is the model's own, and it runs wherever this
          package is installed.

        None where the stack does not cover the model or the input, and under torch.jit.trace (whose tracer takes
        no ``Tensor?[]`` argument): the module path then runs, on the per-layer ops (the engine would be recorded as
        constant outputs).
        """
        if torch.jit.is_tracing():
            return None
        self._check_input(x)
        heads = self.named_heads()
        sizes = [h.out_features for _, h in heads]
        compiling = torch.compiler.is_compiling() and not torch.compiler.is_exporting()
        if compiling and x.is_cpu and x.dtype == torch.float32:
            # (No look at the parameters here: each one read would be a guard checked on every compiled call.)
            y = torch.ops.tcdcn_ext.inference_engine(x, self._engine_key, sum(sizes))
        else:
            layers = self.stack_layers() if x.is_cpu and x.dtype in (torch.float32, torch.float64) else None
            if layers is None or any(t.dtype != x.dtype or not t.is_cpu for t in self.parameters()):
                return None
            y = _LC_STACK(x, [layer.weight for layer in layers], [layer.bias for layer in layers],
                          [int(layer.epilogue) for layer in layers]).flatten(1)  # [N, D, 1, 1] channels-last -> [N, D]
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
        from ..inference.preprocess import make_inputs  # OpenCV is imported only when images are processed

        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8:
            images = [images]
        boxes = self.input_boxes(boxes)
        if len(images) != len(boxes):
            raise ValueError(f"preprocess: {len(images)} images but {len(boxes)} boxes")
        return torch.from_numpy(make_inputs(list(images), boxes, self.config.input_size))

    def input_boxes(self, boxes: np.ndarray | Sequence) -> np.ndarray:
        """The boxes the network actually sees for the given face boxes ``[N, 4]``: each enlarged by
        ``config.box_scale`` about its centre (the identity, as float32, when ``box_scale == 1``)."""
        from ..inference.boxes import scale_boxes

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
            crop: Tensor[N, 1, S + 2m, S + 2m] standardised crops (:func:`tcdcn_ext.inference.averaging.shift_crops`).
            shifts: ``[K, 2]`` whole-pixel ``(dx, dy)`` window shifts, ``|dx|, |dy| <= m``.

        Returns:
            like :meth:`predict`: ``"landmarks"`` [N, P, 2] in the frame of the given box of the centred window
            (the mean over shifts of each window's prediction moved back by its shift) and, per auxiliary task,
            the mean over shifts of the softmax probabilities.
        """
        conv = self._conv_modules()
        if conv is None:
            raise ValueError("predict_shift_average: the model's conv layers are no longer those of its description "
                             "(conv layers must have stride 1 and no padding, each with the activation and "
                             "optionally a 2x2 max pooling)")
        tasks = list(self.aux_heads)
        n = len(conv)
        plan = None if self.training else self._inference_plan(crop)
        if plan is not None:
            # The CPU inference copies (float16 where exact): the conv layers, then the fc and the stacked heads in
            # the locally connected layout, which the op runs on its lc kernels straight from the feature maps.
            weights, biases = plan.op_weights(), plan.biases
            fc_w, fc_b, head_w, head_b = weights[n], biases[n], weights[n + 1], biases[n + 1]
            weights, biases = weights[:n], biases[:n]
        else:
            weights, biases = [m.weight for _, (m, *_) in conv], [m.bias for _, (m, *_) in conv]
            heads = [h for _, h in self.named_heads()]
            fc_w, fc_b = self.fc.weight, self.fc.bias
            head_w, head_b = torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads])
        lm, heads = ops.shift_average(crop, shifts, conv_weight=weights, conv_bias=biases, fc_weight=fc_w,
                                      fc_bias=fc_b, head_weight=head_w, head_bias=head_b,
                                      **shift_average_args(self.layers))
        out = {"landmarks": self.to_given_frame(lm)}
        if tasks:  # softmax per task, then one mean over the shifts for all of them
            sizes = [self.config.aux_tasks[t] for t in tasks]
            parts = heads[:, :, 2 * self.num_points:].split(sizes, dim=2)
            probs = torch.cat([p.softmax(dim=2) for p in parts], dim=2).mean(dim=1)
            out.update(zip(tasks, probs.split(sizes, dim=1)))
        return out

    def _average_with_mirror(self, o: dict[str, Tensor], xb: Tensor) -> dict[str, Tensor]:
        from .landmarks import MIRROR_5, MIRROR_68, POSE_MIRROR

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


# Called directly on the inference path, which needs none of the Python wrapper's argument handling.
_LC_STACK = torch.ops.tcdcn_ext.lc_conv2d_stack.default

def _tracing() -> bool:
    """Whether a forward is being traced (torch.compile, torch.export, torch.jit.trace)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


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
