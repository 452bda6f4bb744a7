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
