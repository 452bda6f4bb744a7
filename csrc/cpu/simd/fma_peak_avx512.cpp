// FMA-throughput micro-benchmark for the 'avx512' CPU path (see fma_peak.h); compiled with only its own ISA flags.
#include "cpu/simd/fma_peak.h"

#define TCDCN_VEC_BYTES 64
#define TCDCN_NUM_VREGS 32

namespace tcdcn::cpu::avx512 {
#include "cpu/simd/vec.h"
#include "cpu/simd/fma_peak_body.h"
}  // namespace tcdcn::cpu::avx512
