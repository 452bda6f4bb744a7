// lc_conv2d kernel bodies and the kernel tables they fill (LcKernels, kernels.h). Each of
// lc_conv2d_{ref,avx2,avx512}.cpp (and abs_tanh_*.cpp likewise) defines TCDCN_VEC_BYTES (vector register width in
// bytes, 0 = scalar) and TCDCN_NUM_VREGS, then includes vec.h, abs_tanh_math.h and this file inside its own
// namespace, so every instantiation here is compiled with exactly that file's ISA flags. The bodies, by what they
// compute:
//   lc_common_body.h           weight loads (float32, float64, binary16, int8) and scaled sums
//   lc_forward_body.h          the locally connected forward (and the face block grad_input shares)
//   conv_forward_body.h        the spatially shared convolution forward
//   lc_backward_weight_body.h  grad_weight and grad_bias
//   lc_backward_input_body.h   grad_input
// and lc_epilogue.h the forwards' epilogues (also the int8 kernels', lc_conv2d_vnni.cpp and lc_conv2d_amx.cpp).
//
// Everything they hold has internal linkage (anonymous namespace) and calls no std:: template or inline library
// function: a weak symbol shared between TUs built with different -m flags could let the linker hand an
// AVX-512 copy to the scalar path (an ODR trap that crashes on older CPUs).
//
// Vectors are GCC/Clang vector extensions, so one source serves every width; loads and stores go through
// __builtin_memcpy (unaligned, no aliasing questions).

#include "cpu/simd/lc_epilogue.h"
#include "cpu/simd/lc_common_body.h"
#include "cpu/simd/lc_forward_body.h"
#include "cpu/simd/conv_forward_body.h"
#include "cpu/simd/lc_backward_weight_body.h"
#include "cpu/simd/lc_backward_input_body.h"

const LcKernels<float> lc_kernels_f32 = {&lc_forward<float, float>,     &lc_backward_weight<float>,
                                         &lc_backward_input<float>,    &lc_forward<float, uint16_t>,
                                         &conv_forward<float, float>,  &conv_forward<float, uint16_t>,
                                         &lc_forward_int8};
const LcKernels<double> lc_kernels_f64 = {&lc_forward<double, double>, &lc_backward_weight<double>,
                                          &lc_backward_input<double>, nullptr,
                                          &conv_forward<double, double>, nullptr,
                                          nullptr};
