"""fp32 FMA throughput of one core, the arithmetic ceiling that ``bench_bounds.py`` reports.

The micro-benchmark (``native/fma_peak.cpp``) is not part of ``tcdcn_ext._C``: it is compiled here on first use with
``torch.utils.cpp_extension.load`` (a C++ compiler and ninja needed; cached in torch's extensions folder, rebuilt only
when the source or the flags change), once per CPU path with that path's instruction-set flags (those of
``setup.py``'s ``SIMD_FLAGS``), and only for the paths this host runs (``tcdcn_ext.ops.cpu_isas_supported()``).
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Callable

from torch.utils import cpp_extension

from tcdcn_ext import ops

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")

# CPU path -> (compiler flags as setup.py's SIMD_FLAGS, vector bytes and registers as csrc/cpu/simd/*_<path>.cpp).
_PATHS = {
    "ref": ([], 0, 16),
    "avx2": (["-mavx2", "-mfma", "-mf16c"], 32, 16),
    "avx512": (["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma", "-mf16c"], 64, 32),
}
# Paths whose float arithmetic is another's (vnni and amx run the avx512 float kernels: cpu/kernel_table.cpp).
_FLOAT_PATH = {"vnni": "avx512", "amx": "avx512"}


@functools.lru_cache(maxsize=None)
def _module(path: str) -> ModuleType:
    flags, vec_bytes, vregs = _PATHS[path]
    return cpp_extension.load(
        name=f"tcdcn_fma_peak_{path}",
        sources=[os.path.join(HERE, "native", "fma_peak.cpp")],
        extra_cflags=["-O3", "-ffp-contract=fast", "-fno-math-errno", f"-DTCDCN_VEC_BYTES={vec_bytes}",
                      f"-DTCDCN_NUM_VREGS={vregs}", *flags],
        extra_include_paths=[CSRC],
        verbose=False,
    )


def peak_function(isa: str | None = None) -> Callable[[float], float]:
    """The native ``fma_peak_gflops(seconds)`` of CPU path `isa` (default: the active one, ``tcdcn_ext.ops.cpu_isa()``),
    built first if need be: fp32 GFLOP/s of independent vector FMA chains on the calling thread, best of the runs
    within `seconds`. It releases the GIL, so threads measure in parallel (get it before starting them)."""
    isa = isa or ops.cpu_isa()
    if isa not in ops.cpu_isas_supported():
        raise ValueError(f"fma_peak: this host cannot run the {isa!r} path (it runs {ops.cpu_isas_supported()})")
    return _module(_FLOAT_PATH.get(isa, isa)).fma_peak_gflops


def fma_peak_gflops(seconds: float = 0.2, isa: str | None = None) -> float:
    """``peak_function(isa)(seconds)``."""
    return peak_function(isa)(seconds)
