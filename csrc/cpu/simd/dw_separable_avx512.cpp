// dw_separable (detector) kernels for the 'avx512' CPU path. This file includes no torch header and is compiled with only its
// own ISA flags (setup.py: SIMD_FLAGS); it is called only when tcdcn::cpu::active_isa() selects 'avx512'.
#include "cpu/simd/kernels.h"

#define TCDCN_VEC_BYTES 64
#define TCDCN_NUM_VREGS 32

namespace tcdcn::cpu::avx512 {
#include "cpu/simd/vec.h"
#include "cpu/simd/dw_separable_body.h"
}  // namespace tcdcn::cpu::avx512
