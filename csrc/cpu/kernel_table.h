// Picks the kernel table of the active CPU ISA (cpu/isa.h). Torch-free.
#pragma once

#include "cpu/isa.h"
#include "cpu/simd/kernels.h"

namespace tcdcn::cpu {

template <typename T>
const LcKernels<T>& lc_kernels();
template <typename T>
const AbsTanhKernels<T>& abs_tanh_kernels();
template <typename T>
const DwSepKernels<T>& dw_separable_kernels();

}  // namespace tcdcn::cpu
