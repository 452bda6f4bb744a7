// Helpers shared by the CUDA kernels of tcdcn_ext (csrc/cuda/*.cu): device checks, launch geometry and the
// |tanh| math used by both the abs_tanh kernels and the fused lc_conv2d epilogue.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

namespace tcdcn::cuda {

// Clear message for a tensor that the CUDA kernel cannot take (a CPU tensor reaching the CUDA dispatch key
// through a mixed-device call, e.g. input on CUDA and weight on CPU).
inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor (the CUDA kernel was called), got a tensor on ",
              t.device(), "; move every argument to the same CUDA device");
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but input is on ", ref.device());
}

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Largest gridDim.y / gridDim.z; kernels loop when they need more tiles along those axes.
constexpr int64_t kMaxGridYZ = 65535;

inline int multiprocessor_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// Blocks for a grid-stride elementwise loop: enough to fill the GPU a few times over, no more.
inline unsigned int elementwise_blocks(int64_t n, int threads) {
  const int64_t cap = int64_t(multiprocessor_count()) * 8;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(ceil_div(n, threads), cap)));
}

// |tanh(x)|. float goes through tanhf (max error ~2 ulp), not the fast __tanhf approximation: the result
// feeds the next layer and the gradient, and must agree with the CPU kernels to ~1e-6.
__device__ __forceinline__ float abs_tanh_dev(float x) { return fabsf(tanhf(x)); }
__device__ __forceinline__ double abs_tanh_dev(double x) { return fabs(tanh(x)); }
__device__ __forceinline__ float tanh_dev(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_dev(double x) { return tanh(x); }

}  // namespace tcdcn::cuda
