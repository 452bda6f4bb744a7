"""The small native helpers of tcdcn_ext._C that benchmarks rely on, and the benchmarks' own native FMA micro-benchmark
(benchmarks/fma_peak.py, built at benchmark time: not part of _C)."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
from torch.utils import cpp_extension

from tcdcn_ext import _C, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fma_peak():
    """benchmarks/fma_peak.py (benchmarks/ is no package), or a skip where it cannot build its native code."""
    if shutil.which(os.environ.get("CXX", "c++")) is None or not cpp_extension.is_ninja_available():
        pytest.skip("benchmarks/fma_peak.py builds its micro-benchmark at run time: needs a C++ compiler and ninja")
    spec = importlib.util.spec_from_file_location("fma_peak", os.path.join(ROOT, "benchmarks", "fma_peak.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fma_peak_gflops_on_every_isa():
    fma_peak = _fma_peak()
    seen = {}
    for isa in ops.cpu_isas_supported():
        with ops.use_cpu_isa(isa):
            seen[isa] = fma_peak.fma_peak_gflops(0.02)
    assert all(v > 0.1 for v in seen.values()), seen
    if "avx512" in seen:  # wider vectors do more per cycle (very loose: shared machines are noisy)
        assert seen["avx512"] > 2 * seen["ref"], seen


def test_benchmark_only_code_is_not_in_the_extension():
    assert not hasattr(_C, "fma_peak_gflops")


def test_epilogue_codes_are_the_extensions():
    """ops.LC_EPILOGUES (what lc_conv2d_stack and the inference plan pass) holds the C++ enum's codes (epilogue.h),
    which _C exposes by name."""
    assert _C.EPILOGUES == ops.LC_EPILOGUES
    assert sorted(_C.EPILOGUES.values()) == list(range(len(_C.EPILOGUES)))


def test_built_with_the_thread_pool_torch_uses():
    """at::parallel_for in the kernels is a header template: built without OpenMP against an OpenMP torch, every
    op would silently run on one thread whatever torch.set_num_threads says."""
    import sys

    import torch

    if "OpenMP" in torch.__config__.parallel_info() and sys.platform.startswith("linux"):
        assert _C.with_openmp

