"""The epilogue codes of the convolution kernels: what a layer does to its sums before it stores them.

The one Python mirror of the C++ ``enum Epilogue`` (``csrc/epilogue.h``, seen by Python as ``_C.EPILOGUES``:
``kPlain = 0, kAbsTanh = 1, kAbsTanhMaxPool = 2, kRelu = 3, kReluMaxPool = 4``). :func:`tcdcn_ext.ops.lc_conv2d_stack`
takes them by name (:data:`tcdcn_ext.ops.LC_EPILOGUES`), the native op and the inference engine by value; the
network's layer description (:mod:`tcdcn_ext.models.layers`) gives every layer one.
"""

from __future__ import annotations

import enum

__all__ = ["Epilogue"]


class Epilogue(enum.IntEnum):
    """A layer's activation and whether a 2x2 stride-2 max pooling follows it (values: the C++ enum's)."""

    PLAIN = 0  # the sum as it is
    ABS_TANH = 1  # |tanh(sum)|
    ABS_TANH_MAXPOOL = 2  # |tanh(sum)|, then 2x2 max pooling
    RELU = 3  # max(sum, 0)
    RELU_MAXPOOL = 4  # max(sum, 0), then 2x2 max pooling

    @classmethod
    def of(cls, activation: str | None, pool: bool = False) -> "Epilogue":
        """The epilogue of ``activation`` (``"abs_tanh"``, ``"relu"`` or None) with or without the pooling."""
        base = {None: cls.PLAIN, "none": cls.PLAIN, "abs_tanh": cls.ABS_TANH, "relu": cls.RELU}.get(activation)
        if base is None:
            raise ValueError(f"Epilogue.of: activation must be 'abs_tanh', 'relu' or None, got {activation!r}")
        if not pool:
            return base
        if base is cls.PLAIN:
            raise ValueError("Epilogue.of: the kernels pool only after an activation")
        return cls(base + 1)

    @property
    def activation(self) -> str | None:
        """``"abs_tanh"``, ``"relu"`` or None."""
        return {0: None, 1: "abs_tanh", 2: "abs_tanh", 3: "relu", 4: "relu"}[int(self)]

    @property
    def pooled(self) -> bool:
        """Whether a 2x2 stride-2 max pooling follows the activation."""
        return self in (Epilogue.ABS_TANH_MAXPOOL, Epilogue.RELU_MAXPOOL)

    @property
    def key(self) -> str:
        """The name :func:`tcdcn_ext.ops.lc_conv2d_stack` takes (a key of :data:`tcdcn_ext.ops.LC_EPILOGUES`)."""
        name = self.activation or "none"
        return f"{name}_maxpool2d" if self.pooled else name
