// FMA-throughput micro-benchmark: the arithmetic ceiling one core reaches with the vector width of a CPU path.
// Torch-free; each fma_peak_{ref,avx2,avx512}.cpp instantiates fma_peak_body.h in its own ISA namespace.
#pragma once

#include <cstdint>

namespace tcdcn::cpu {

// Runs `iters` rounds of kChains independent fp32 multiply-add vector chains and returns a value that depends on
// all of them (so nothing is optimised away). Floating-point operations done: iters * kChains * lanes * 2.
#define TCDCN_DECLARE_PEAK(isa)                 \
  namespace isa {                               \
  float fma_peak(int64_t iters);                \
  extern const int fma_peak_lanes;              \
  extern const int fma_peak_chains;             \
  }
TCDCN_DECLARE_PEAK(ref)
TCDCN_DECLARE_PEAK(avx2)
TCDCN_DECLARE_PEAK(avx512)
#undef TCDCN_DECLARE_PEAK

}  // namespace tcdcn::cpu
