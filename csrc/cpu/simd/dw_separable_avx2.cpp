// dw_separable (detector) kernels for the 'avx2' CPU path. This file includes no torch header and is compiled with only its
// own ISA flags (setup.py: SIMD_FLAGS); it is called only when tcdcn::cpu::active_isa() selects 'avx2'.
#include "cpu/simd/kernels.h"

#define TCDCN_VEC_BYTES 32
#define TCDCN_NUM_VREGS 16

namespace tcdcn::cpu::avx2 {
#include "cpu/simd/vec.h"
#include "cpu/simd/dw_separable_body.h"
}  // namespace tcdcn::cpu::avx2
