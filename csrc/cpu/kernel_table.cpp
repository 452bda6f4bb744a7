#include "cpu/kernel_table.h"

namespace tcdcn::cpu {

#if TCDCN_HAVE_X86_SIMD
#define TCDCN_PICK(table)                          \
  switch (active_isa()) {                          \
    case Isa::amx:    /* their float kernels */    \
    case Isa::vnni:                                \
    case Isa::avx512: return avx512::table;        \
    case Isa::avx2: return avx2::table;            \
    case Isa::ref: break;                          \
  }                                                \
  return ref::table
#else
#define TCDCN_PICK(table) return ref::table
#endif

template <>
const LcKernels<float>& lc_kernels<float>() { TCDCN_PICK(lc_kernels_f32); }
template <>
const LcKernels<double>& lc_kernels<double>() { TCDCN_PICK(lc_kernels_f64); }
template <>
const AbsTanhKernels<float>& abs_tanh_kernels<float>() { TCDCN_PICK(abs_tanh_kernels_f32); }
template <>
const AbsTanhKernels<double>& abs_tanh_kernels<double>() { TCDCN_PICK(abs_tanh_kernels_f64); }
template <>
const DwSepKernels<float>& dw_separable_kernels<float>() { TCDCN_PICK(dw_separable_kernels_f32); }
template <>
const DwSepKernels<double>& dw_separable_kernels<double>() { TCDCN_PICK(dw_separable_kernels_f64); }

#undef TCDCN_PICK

}  // namespace tcdcn::cpu
