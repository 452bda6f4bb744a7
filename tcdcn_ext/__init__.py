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

from . import ops  # noqa: E402
from .nn import AbsTanh, LocallyConnected2d  # noqa: E402
from .ops import abs_tanh, cpu_isa, lc_conv2d, lc_conv2d_abs_tanh  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AbsTanh",
    "LocallyConnected2d",
    "abs_tanh",
    "cpu_isa",
    "lc_conv2d",
    "lc_conv2d_abs_tanh",
    "ops",
    "__version__",
]
