"""Deployment: ONNX export of TCDCN models in standard operators, and the ``tcdcn-export`` command.

The three ways to deploy a model (README, "Deploy"):

* ``torch.compile(model, fullgraph=True)`` and ``torch.export.export(model, (x,))`` take the model as it is: in eval
  mode its forward traces to one ``tcdcn_ext::lc_conv2d_stack`` call (a dispatcher op with a fake kernel), see
  :meth:`tcdcn_ext.models.tcdcn.TCDCN._traced_forward`. Those graphs need this package at run time.
* :func:`to_onnx` writes a graph of standard ONNX operators only, for runtimes without this package (onnxruntime):
  :func:`portable_module` rewrites the model's inference graph (:meth:`TCDCN.stack_layers`, the description the
  native inference plan reads too) in plain PyTorch ops, each locally connected layer decomposed into shifted
  slices of the input and one batched matrix product over the output locations (the ``unfold`` + ``einsum`` of
  :func:`tcdcn_ext.ops._reference.lc_conv2d`, written with operators every ONNX runtime has), then exports that with
  ``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript's ATen-to-ONNX library; needs ``onnx`` and
  ``onnxscript``: ``pip install "tcdcn_ext[onnx]"``).

TCDCN-Averaged: :func:`portable_module` with ``shifts`` gives the averaged network (the windows cut from the crop
with a margin, run as one batch, un-shifted and averaged), which :func:`to_onnx` exports like the plain one; its
outputs are those of :meth:`TCDCN.predict_shift_average` (landmarks in the given box's frame, class probabilities).

Every exported graph carries the parameters in float32: :meth:`TCDCN.set_inference_weights` (float16 or int8 weight
storage, the shipped 5-point model's int8 default) is a setting of the native CPU engine, where it buys speed; an
exported graph computes what the model does under ``set_inference_weights("auto")``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Epilogue
from .tcdcn import TCDCN

__all__ = ["AveragedPortableTCDCN", "PortableTCDCN", "check_onnx", "portable_module", "to_onnx"]

#: The lowest ONNX opset :func:`to_onnx` writes (the dynamo exporter's default in torch 2.13).
MIN_OPSET = 18


def _lc_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: tuple[int, int],
               out_size: tuple[int, int]) -> Tensor:
    """A stride-1 unpadded locally connected layer in standard ops: ``weight`` is ``[L, K, C_out]`` (``L`` output
    locations row-major, ``K = C_in * kH * kW`` taps in the op's ``(ci, a, b)`` order), ``bias`` ``[C_out, H_out,
    W_out]``. The batch dimension is never named, so it stays dynamic in an exported graph."""
    (kh, kw), (h_out, w_out) = kernel, out_size
    if h_out == 1 and w_out == 1 and x.shape[2] == kh and x.shape[3] == kw:
        cols = x.flatten(1)[None]  # a single window that is the whole map (the fc, the heads): [1, N, K]
    else:
        # taps[n, ci, a * kW + b, i, j] = x[n, ci, i + a, j + b]: the unfold of _reference.lc_conv2d, as slices
        taps = torch.stack([x[:, :, a:a + h_out, b:b + w_out] for a in range(kh) for b in range(kw)], dim=2)
        cols = taps.flatten(1, 2).flatten(2).permute(2, 0, 1)  # [L, N, K]
    out = torch.matmul(cols, weight).permute(1, 2, 0).unflatten(2, (h_out, w_out))  # [N, C_out, H_out, W_out]
    return out if bias is None else out + bias


class PortableTCDCN(nn.Module):
    """A TCDCN's eval-mode forward in standard PyTorch operators (no ``tcdcn_ext`` op): what :func:`to_onnx` exports.

    ``forward(x)``: Tensor[N, 1, S, S] -> ``(landmarks [N, P, 2], logits of each auxiliary task [N, classes]...)`` in
    ``output_names`` order, the values of ``TCDCN.forward`` (float32 weights: the model's parameters as they are).
    """

    def __init__(self, model: TCDCN) -> None:
        super().__init__()
        layers = model.stack_layers()
        if layers is None:
            raise ValueError("portable_module: the model's architecture is not one the export covers (conv layers "
                             "with stride 1 and no padding, each followed by the activation and optionally a 2x2 "
                             "max pooling; |tanh| or ReLU)")
        self.input_size = model.input_size
        self.num_points = model.num_points
        self.output_names = [name for name, _ in model.named_heads()]
        self.head_sizes = [head.out_features for _, head in model.named_heads()]
        self.kinds: list[tuple[str, tuple[int, int], tuple[int, int], Epilogue]] = []
        for i, layer in enumerate(layers):
            w = layer.weight.detach().float()
            if layer.shared:
                kernel, out_size = (w.shape[2], w.shape[3]), (0, 0)
            else:  # [H_out, W_out, C_in, kH, kW, C_out] -> [L, K, C_out]
                kernel, out_size = (w.shape[3], w.shape[4]), (w.shape[0], w.shape[1])
                w = w.reshape(w.shape[0] * w.shape[1], -1, w.shape[5])
            self.register_buffer(f"weight{i}", w.contiguous().clone())
            self.register_buffer(f"bias{i}", None if layer.bias is None else layer.bias.detach().float().clone())
            self.kinds.append(("conv" if layer.shared else "lc", kernel, out_size, layer.epilogue))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        h = x
        for i, (kind, kernel, out_size, epilogue) in enumerate(self.kinds):
            w, b = getattr(self, f"weight{i}"), getattr(self, f"bias{i}")
            h = F.conv2d(h, w, b) if kind == "conv" else _lc_matmul(h, w, b, kernel, out_size)
            if epilogue.activation == "abs_tanh":
                h = torch.tanh(h).abs()
            elif epilogue.activation == "relu":
                h = torch.relu(h)
            if epilogue.pooled:
                h = F.max_pool2d(h, 2)
        parts = list(h.flatten(1).split(self.head_sizes, dim=1))
        parts[0] = parts[0].unflatten(1, (self.num_points, 2))
        return tuple(parts)


class AveragedPortableTCDCN(nn.Module):
    """TCDCN-Averaged in standard operators: :meth:`TCDCN.predict_shift_average` for fixed ``shifts``.

    ``forward(crop)``: Tensor[N, 1, S + 2m, S + 2m] (:func:`tcdcn_ext.inference.averaging.shift_crops`) -> ``(landmarks
    [N, P, 2] in the given box's frame, probabilities of each auxiliary task [N, classes]...)``: the network on the
    ``K`` shifted windows (one batch of ``K * N``), each window's landmarks moved back by its shift, softmax per
    window, means over the shifts.
    """

    def __init__(self, model: TCDCN, shifts, margin: int | None = None) -> None:
        super().__init__()
        from ..ops import as_shift_array

        self.net = PortableTCDCN(model)
        self.output_names = self.net.output_names
        pairs = as_shift_array(shifts)
        self.shifts = [(int(dx), int(dy)) for dx, dy in pairs]
        need = int(abs(pairs).max())
        self.margin = need if margin is None else int(margin)
        if self.margin < need:
            raise ValueError(f"AveragedPortableTCDCN: margin {self.margin} is smaller than the largest shift {need}")
        s = model.input_size
        self.register_buffer("shift_uv", torch.tensor(self.shifts, dtype=torch.float32) / s)  # [K, 2]
        self.box_scale = model.config.box_scale

    def forward(self, crop: Tensor) -> tuple[Tensor, ...]:
        s, m, k = self.net.input_size, self.margin, len(self.shifts)
        windows = torch.cat([crop[:, :, m + dy:m + dy + s, m + dx:m + dx + s] for dx, dy in self.shifts])  # [K*N,...]
        outs = self.net(windows)
        lm = outs[0].unflatten(0, (k, -1)) + self.shift_uv[:, None, None, :]  # [K, N, P, 2], un-shifted
        lm = lm.mean(dim=0)
        if self.box_scale != 1.0:  # TCDCN.to_given_frame
            lm = (lm - 0.5) * self.box_scale + 0.5
        probs = [o.softmax(dim=1).unflatten(0, (k, -1)).mean(dim=0) for o in outs[1:]]
        return (lm, *probs)


def portable_module(model: TCDCN, shifts=None) -> nn.Module:
    """The model's eval-mode forward (``shifts=None``: :class:`PortableTCDCN`) or TCDCN-Averaged over ``shifts``
    (:class:`AveragedPortableTCDCN`) in standard PyTorch operators, on the CPU in float32 (copies of the parameters;
    the model itself, and its mode, are left as they are)."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("portable_module: move the model to the CPU first (model.cpu())")
    return (PortableTCDCN(model) if shifts is None else AveragedPortableTCDCN(model, shifts)).eval()


def to_onnx(model: TCDCN, path: str | os.PathLike, *, shifts=None, opset: int = MIN_OPSET) -> Path:
    """Write ``model`` (eval-mode forward; TCDCN-Averaged over ``shifts`` when given) to ``path`` as an ONNX graph of
    standard operators (domain ``ai.onnx`` only), with a dynamic batch dimension. Returns the path.

    Inputs: ``input`` float32 ``[N, 1, S, S]`` (averaged: ``crop`` ``[N, 1, S + 2m, S + 2m]`` with ``m`` the largest
    shift). Outputs: ``landmarks`` ``[N, P, 2]`` (box frame), then one per auxiliary task (``config.aux_tasks``
    order): logits, or for the averaged model probabilities, as :meth:`TCDCN.predict_shift_average` gives them.

    Needs ``onnx`` and ``onnxscript`` (``pip install "tcdcn_ext[onnx]"``); raises ImportError naming them otherwise.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"to_onnx: opset must be >= {MIN_OPSET}, got {opset}")
    missing = [name for name in ("onnx", "onnxscript") if not _importable(name)]
    if missing:
        raise ImportError(f"to_onnx needs {' and '.join(missing)}: pip install \"tcdcn_ext[onnx]\" (or "
                          f"pip install {' '.join(missing)})")
    module = portable_module(model, shifts)
    size = model.input_size + (0 if shifts is None else 2 * module.margin)
    example = torch.zeros(2, 1, size, size)
    batch = torch.export.Dim("batch", min=1)
    input_name = "input" if shifts is None else "crop"
    path = Path(path)
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, input_names=[input_name],
                                    output_names=list(module.output_names), dynamic_shapes=({0: batch},),
                                    external_data=False, verbose=False)
    program.save(str(path))
    return path


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def check_onnx(model: TCDCN, path: str | os.PathLike, shifts=None, batch: int = 4) -> float:
    """Largest absolute difference between onnxruntime's landmarks for the graph at ``path`` and the native
    model's (plain forward, or :meth:`TCDCN.predict_shift_average`) on random standardised inputs."""
    import onnxruntime as ort

    from ..ops import as_shift_array

    s = model.input_size
    m = 0 if shifts is None else int(abs(as_shift_array(shifts)).max())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, s + 2 * m, s + 2 * m, generator=g)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    was_training = model.training
    try:
        with torch.inference_mode():
            model.eval()
            want = model(x) if shifts is None else model.predict_shift_average(x, shifts)
    finally:
        model.train(was_training)
    return float((torch.from_numpy(got) - want["landmarks"]).abs().max())
