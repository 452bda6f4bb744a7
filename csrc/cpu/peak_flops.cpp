// Times the per-ISA FMA loops of cpu/simd/fma_peak_*.cpp on the calling thread.
#include "cpu/peak_flops.h"

#include <chrono>

#include "cpu/isa.h"
#include "cpu/simd/fma_peak.h"

namespace tcdcn::cpu {
namespace {

struct PeakFns {
  float (*run)(int64_t);
  int lanes, chains;
};

PeakFns active_peak() {
#if TCDCN_HAVE_X86_SIMD
  switch (active_isa()) {
    case Isa::avx512: return {&avx512::fma_peak, avx512::fma_peak_lanes, avx512::fma_peak_chains};
    case Isa::avx2: return {&avx2::fma_peak, avx2::fma_peak_lanes, avx2::fma_peak_chains};
    case Isa::ref: break;
  }
#endif
  return {&ref::fma_peak, ref::fma_peak_lanes, ref::fma_peak_chains};
}

volatile float g_sink;  // keeps the loops' results alive

}  // namespace

double fma_peak_gflops(double seconds) {
  using clock = std::chrono::steady_clock;
  const PeakFns f = active_peak();
  int64_t iters = 1 << 16;
  double best = 0.0, spent = 0.0;
  while (spent < seconds) {
    const auto t0 = clock::now();
    g_sink = f.run(iters);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    spent += dt;
    if (dt < 1e-3) {  // too short to time: grow
      iters *= 4;
      continue;
    }
    const double gflops = double(iters) * f.chains * f.lanes * 2.0 / dt / 1e9;
    if (gflops > best) best = gflops;
  }
  return best;
}

}  // namespace tcdcn::cpu
