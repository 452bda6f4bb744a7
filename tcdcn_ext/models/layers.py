"""The one description of a TCDCN network: a short typed list of layers, made from a :class:`TCDCNConfig` by
:func:`describe`. Every runnable form of the network is derived from it:

* the training modules (:class:`tcdcn_ext.models.tcdcn.TCDCN`'s ``conv``, ``fc`` and heads);
* the layers of the inference stack (:meth:`TCDCN.stack_layers`: this list with the parameters, read by the
  native plan and engine, the traced forward, the ONNX export, and the CUDA graph through the forward);
* the arguments of the averaged op (:func:`shift_average_args`, :func:`tcdcn_ext.ops.shift_average`).

Each convolutional layer is locally connected (``"lc"``, unshared filters, the paper's) or spatially shared
(``"conv"``), stride 1 and no padding, followed by the activation and optionally a 2x2 stride-2 max pooling: its
:class:`~tcdcn_ext.ops.Epilogue`. The fully connected layer (``"fc"``) is a locally connected layer whose one
window is the whole last map; the heads (``"heads"``), stacked, are one more on the ``1 x 1`` feature map, with no
epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..ops.epilogue import Epilogue

if TYPE_CHECKING:
    from .tcdcn import TCDCNConfig

__all__ = ["Epilogue", "Layer", "LayerKind", "describe", "shift_average_args"]

#: ``"lc"`` locally connected conv, ``"conv"`` spatially shared conv, ``"fc"`` the shared feature, ``"heads"`` all
#: heads stacked.
LayerKind = Literal["lc", "conv", "fc", "heads"]


@dataclass(frozen=True)
class Layer:
    """One layer: ``in_channels`` maps of ``in_size x in_size`` -> ``out_channels`` maps of ``out_size x out_size``
    through a ``kernel x kernel`` window (stride 1, no padding), then the :attr:`epilogue`."""

    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    kernel: int
    in_size: int
    epilogue: Epilogue
    outputs: tuple[tuple[str, int], ...] = ()  # "heads": each head's name and width, in the order of the columns

    @property
    def conv_size(self) -> int:
        """The side of the maps before the pooling."""
        return self.in_size - self.kernel + 1

    @property
    def out_size(self) -> int:
        """The side of the maps the layer gives (after its pooling, if any)."""
        return self.conv_size // 2 if self.epilogue.pooled else self.conv_size

    @property
    def shared(self) -> bool:
        """Whether the filters are shared over the locations (an ordinary convolution)."""
        return self.kind == "conv"

    @property
    def convolutional(self) -> bool:
        """One of the convolutional layers (``"lc"`` or ``"conv"``), not the fc or the heads."""
        return self.kind in ("lc", "conv")


def describe(config: "TCDCNConfig") -> tuple[Layer, ...]:
    """The layers of the network ``config`` describes, input to output: the convolutional layers, the fc, the heads
    (the landmarks' ``2 * num_points`` columns, then each auxiliary task's). ``ValueError`` when the input is too
    small for the kernels."""
    size, c_in = config.input_size, 1
    out: list[Layer] = []
    for i, (c_out, k, pool) in enumerate(zip(config.channels, config.kernels, config.pool_after)):
        layer = Layer(f"conv{i}", "conv" if config.shared_conv else "lc", c_in, c_out, k, size,
                      Epilogue.of(config.activation, pool))
        if layer.conv_size < 1:
            raise ValueError(f"TCDCN: input size {config.input_size} is too small for kernels {config.kernels}")
        out.append(layer)
        size, c_in = layer.out_size, c_out
    out.append(Layer("fc", "fc", c_in, config.feature_dim, size, size, Epilogue.of(config.activation)))
    heads = (("landmarks", 2 * config.num_points),) + tuple(config.aux_tasks.items())
    out.append(Layer("heads", "heads", config.feature_dim, sum(n for _, n in heads), 1, 1, Epilogue.PLAIN, heads))
    return tuple(out)


def shift_average_args(layers: tuple[Layer, ...]) -> dict[str, object]:
    """The architecture arguments of :func:`tcdcn_ext.ops.shift_average` (``window``, ``pool_after``,
    ``shared_conv``, ``activation``, ``num_points``) for a network's layers."""
    conv = [layer for layer in layers if layer.convolutional]
    heads = layers[-1]
    return {"window": conv[0].in_size, "pool_after": [layer.epilogue.pooled for layer in conv],
            "shared_conv": any(layer.shared for layer in conv), "activation": conv[0].epilogue.activation,
            "num_points": dict(heads.outputs)["landmarks"] // 2}
