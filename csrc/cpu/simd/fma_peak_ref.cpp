// FMA-throughput micro-benchmark for the 'ref' CPU path (see fma_peak.h); compiled with only its own ISA flags.
#include "cpu/simd/fma_peak.h"

#define TCDCN_VEC_BYTES 0
#define TCDCN_NUM_VREGS 16

namespace tcdcn::cpu::ref {
#include "cpu/simd/vec.h"
#include "cpu/simd/fma_peak_body.h"
}  // namespace tcdcn::cpu::ref
