"""tcdcn_ext: TCDCN facial landmark detection (Zhang et al., ECCV 2014) with AVX and CUDA kernels.

Quick use::

    from tcdcn_ext import Aligner
    faces = Aligner()("photo.jpg")

The compiled extension ``tcdcn_ext._C`` is loaded first; it registers the operators under
``torch.ops.tcdcn_ext`` and must have been built against the torch that imports it.
"""

from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.tcdcn_ext.*)
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        f"tcdcn_ext: the compiled extension tcdcn_ext._C could not be loaded ({exc}). Install torch first, then "
        "build this package against it with `pip install --no-build-isolation .` (see README.md)."
    ) from exc


def _check_torch_version() -> None:
    built = _C.torch_version
    running = torch.__version__.split("+")[0]
    if built != running:
        raise ImportError(
            f"tcdcn_ext was built against torch {built} but torch {running} is installed; rebuild it with "
            "`pip install --no-build-isolation --force-reinstall .` so the extension matches the running torch."
        )


_check_torch_version()

from . import _legacy, ops  # noqa: E402
from .models import TCDCN, TCDCNConfig, WeightsError, load_model  # noqa: E402
from .ops.nn import AbsTanh, LocallyConnected2d  # noqa: E402
from .ops import abs_tanh, cpu_isa, lc_conv2d, lc_conv2d_abs_tanh  # noqa: E402

__version__ = "0.1.0"

_legacy.install()  # the flat package's module paths (tcdcn_ext.model, tcdcn_ext.aligner, ...) keep working

# The Aligner and its result types import OpenCV and the detector: loaded on first use, so that `import tcdcn_ext`
# (the operators alone) needs only torch.
_LAZY = {"Aligner": "inference.aligner", "Face": "inference.results", "Attribute": "inference.results",
         "ImageError": "inference.images"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tcdcn_ext' has no attribute {name!r}")


__all__ = [
    "AbsTanh",
    "Aligner",
    "Attribute",
    "Face",
    "ImageError",
    "LocallyConnected2d",
    "TCDCN",
    "TCDCNConfig",
    "WeightsError",
    "abs_tanh",
    "cpu_isa",
    "lc_conv2d",
    "lc_conv2d_abs_tanh",
    "load_model",
    "ops",
    "__version__",
]
