"""The small native helpers of tcdcn_ext._C that benchmarks rely on."""

from __future__ import annotations

from tcdcn_ext import _C, ops


def test_fma_peak_gflops_on_every_isa():
    seen = {}
    for isa in ops.cpu_isas_supported():
        with ops.use_cpu_isa(isa):
            seen[isa] = _C.fma_peak_gflops(0.02)
    assert all(v > 0.1 for v in seen.values()), seen
    if "avx512" in seen:  # wider vectors do more per cycle (very loose: shared machines are noisy)
        assert seen["avx512"] > 2 * seen["ref"], seen


def test_built_with_the_thread_pool_torch_uses():
    """at::parallel_for in the kernels is a header template: built without OpenMP against an OpenMP torch, every
    op would silently run on one thread whatever torch.set_num_threads says."""
    import sys

    import torch

    if "OpenMP" in torch.__config__.parallel_info() and sys.platform.startswith("linux"):
        assert _C.with_openmp


def test_epilogue_codes_are_the_extensions():
    """ops.LC_EPILOGUES (what lc_conv2d_stack and the inference plan pass) holds the C++ enum's codes (epilogue.h),
    which _C exposes by name."""
    assert _C.EPILOGUES == ops.LC_EPILOGUES
    assert sorted(_C.EPILOGUES.values()) == list(range(len(_C.EPILOGUES)))
