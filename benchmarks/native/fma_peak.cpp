// FMA-throughput micro-benchmark: fp32 GFLOP/s of independent vector FMA chains on the calling thread, the
// arithmetic ceiling of one core that benchmarks/bench_bounds.py reports. Not part of tcdcn_ext._C: fma_peak.py
// builds this file at benchmark time (torch.utils.cpp_extension.load, cached), once per CPU path with that path's
// instruction-set flags and TCDCN_VEC_BYTES / TCDCN_NUM_VREGS (the vector width of csrc/cpu/simd/vec.h), and loads
// only the paths this host can run.
#include <pybind11/pybind11.h>

#include <chrono>
#include <cstdint>

#ifndef TCDCN_VEC_BYTES
#error "build with -DTCDCN_VEC_BYTES=<bytes> -DTCDCN_NUM_VREGS=<registers> (benchmarks/fma_peak.py does)"
#endif

namespace tcdcn_fma_peak {
#include "cpu/simd/vec.h"
#include "fma_peak_body.h"

namespace {
volatile float g_sink;  // keeps the loops' results alive
}  // namespace

// fp32 GFLOP/s of fma_peak's chains on the calling thread, best of the runs within about `seconds`.
double fma_peak_gflops(double seconds) {
  using clock = std::chrono::steady_clock;
  int64_t iters = 1 << 16;
  double best = 0.0, spent = 0.0;
  while (spent < seconds) {
    const auto t0 = clock::now();
    g_sink = fma_peak(iters);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    spent += dt;
    if (dt < 1e-3) {  // too short to time: grow
      iters *= 4;
      continue;
    }
    const double gflops = double(iters) * fma_peak_chains * fma_peak_lanes * 2.0 / dt / 1e9;
    if (gflops > best) best = gflops;
  }
  return best;
}

}  // namespace tcdcn_fma_peak

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fma_peak_gflops", &tcdcn_fma_peak::fma_peak_gflops, pybind11::arg("seconds") = 0.2,
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "fp32 GFLOP/s of independent vector FMA chains on the calling thread, best of the runs within `seconds`: "
        "the arithmetic ceiling of one core. Releases the GIL, so threads measure in parallel.");
  m.attr("lanes") = tcdcn_fma_peak::fma_peak_lanes;
}
