// CUDA implementation of tcdcn_ext::abs_tanh / _abs_tanh_backward: elementwise over the storage of a dense
// tensor, so any dense layout (e.g. the channels-last output of lc_conv2d) is kept, exactly as on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "abs_tanh_layout.h"

namespace tcdcn {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) abs_tanh_forward_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                    int64_t n) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    y[i] = cuda::abs_tanh_dev(x[i]);
  }
}

// d|tanh x|/dx = sign(x) (1 - tanh^2 x), with sign(0) = 0 (and sign(NaN) = 0, so NaN * 0 -> NaN propagates
// through 1 - t*t as on the CPU).
template <typename T>
__global__ void __launch_bounds__(kThreads) abs_tanh_backward_kernel(const T* __restrict__ go,
                                                                     const T* __restrict__ x, T* __restrict__ gi,
                                                                     int64_t n) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const T v = x[i];
    const T t = cuda::tanh_dev(v);
    const T s = v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0));
    gi[i] = go[i] * s * (T(1) - t * t);
  }
}

at::Tensor abs_tanh_cuda(const at::Tensor& x_in) {
  check_floating(x_in, "abs_tanh", "x");
  cuda::check_cuda(x_in, "abs_tanh", "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = abs_tanh_dense_input(x_in);
  at::Tensor y = at::empty_like(x);  // same strides as x: both are walked as flat storage
  const int64_t n = x.numel();
  if (n == 0) return y;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned int blocks = cuda::elementwise_blocks(n, kThreads);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "abs_tanh_cuda", [&] {
    abs_tanh_forward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(x.const_data_ptr<scalar_t>(),
                                                                         y.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor abs_tanh_backward_cuda(const at::Tensor& grad_output, const at::Tensor& x_in) {
  const char* op = "_abs_tanh_backward";
  cuda::check_cuda(x_in, op, "x");
  cuda::check_cuda(grad_output, op, "grad_output");
  cuda::check_same_device(grad_output, x_in, op, "grad_output");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto inputs = abs_tanh_backward_inputs(grad_output, x_in);
  const at::Tensor& go = inputs.first;
  const at::Tensor& x = inputs.second;
  at::Tensor gi = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return gi;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned int blocks = cuda::elementwise_blocks(n, kThreads);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "abs_tanh_backward_cuda", [&] {
    abs_tanh_backward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        go.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gi.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gi;
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CUDA, m) {
  m.impl("abs_tanh", &abs_tanh_cuda);
  m.impl("_abs_tanh_backward", &abs_tanh_backward_cuda);
}

}  // namespace tcdcn
