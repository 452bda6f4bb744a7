// CUDA registration of tcdcn_ext::shift_average: the window gather and the un-shift average as kernels (the
// schedule and the network are in shift_average.cpp; the layers run on the lc_conv2d CUDA kernels / cuDNN).
// Window offsets travel as kernel arguments (no host-to-device copy), so the op can be captured in a CUDA graph.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "shift_average.h"

namespace tcdcn {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxWindowsPerLaunch = 32;

struct WindowChunk {
  int64_t k0, count;                  // windows [k0, k0 + count) of K
  int64_t oy[kMaxWindowsPerLaunch], ox[kMaxWindowsPerLaunch];
};

template <typename T>
__global__ void __launch_bounds__(kThreads) windows_kernel(const T* __restrict__ crop, T* __restrict__ out,
                                                           const WindowChunk c, int64_t N, int64_t K, int64_t S,
                                                           int64_t sN, int64_t sH, int64_t sW) {
  const int64_t total = N * c.count * S * S;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t x = i % S, y = (i / S) % S, j = (i / (S * S)) % c.count, n = i / (S * S * c.count);
    const int64_t k = c.k0 + j;
    out[((n * K + k) * S + y) * S + x] = crop[n * sN + (c.oy[j] + y) * sH + (c.ox[j] + x) * sW];
  }
}

at::Tensor windows_cuda(const at::Tensor& crop, const std::vector<ShiftWindow>& win, int64_t S) {
  const c10::cuda::CUDAGuard guard(crop.device());
  const int64_t N = crop.size(0), K = int64_t(win.size());
  at::Tensor out = at::empty({N * K, 1, S, S}, crop.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int64_t k0 = 0; k0 < K; k0 += kMaxWindowsPerLaunch) {
    WindowChunk c{};
    c.k0 = k0;
    c.count = std::min<int64_t>(kMaxWindowsPerLaunch, K - k0);
    for (int64_t j = 0; j < c.count; ++j) {
      c.oy[j] = win[k0 + j].oy;
      c.ox[j] = win[k0 + j].ox;
    }
    const int64_t total = N * c.count * S * S;
    if (total == 0) continue;
    AT_DISPATCH_FLOATING_TYPES(crop.scalar_type(), "shift_average_windows_cuda", [&] {
      windows_kernel<scalar_t><<<cuda::elementwise_blocks(total, kThreads), kThreads, 0, stream>>>(
          crop.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), c, N, K, S, crop.stride(0),
          crop.stride(2), crop.stride(3));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return out;
}

// 2x2 max pooling of the cells at (y0 + 2i, x0 + 2j); output contiguous NCHW or channels-last like the map.
template <typename T>
__device__ __forceinline__ T max_nan(T a, T b) {
  return (a != a || a > b) ? a : b;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pool2x2_kernel(const T* __restrict__ map, T* __restrict__ out,
                                                           int64_t N, int64_t C, int64_t h, int64_t w, int64_t y0,
                                                           int64_t x0, int64_t sN, int64_t sC, int64_t sH, int64_t sW,
                                                           int64_t oN, int64_t oC, int64_t oH, int64_t oW,
                                                           bool channels_inner) {
  const int64_t total = N * C * h * w;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    int64_t n, c, y, x;
    if (channels_inner) {  // consecutive threads read consecutive channels of a channels-last map
      c = i % C;
      x = (i / C) % w;
      y = (i / (C * w)) % h;
      n = i / (C * w * h);
    } else {
      x = i % w;
      y = (i / w) % h;
      c = (i / (w * h)) % C;
      n = i / (w * h * C);
    }
    const T* a = map + n * sN + c * sC + (y0 + 2 * y) * sH + (x0 + 2 * x) * sW;
    out[n * oN + c * oC + y * oH + x * oW] = max_nan(max_nan(a[0], a[sW]), max_nan(a[sH], a[sH + sW]));
  }
}

at::Tensor pool2x2_cuda(const at::Tensor& map, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  const c10::cuda::CUDAGuard guard(map.device());
  const int64_t N = map.size(0), C = map.size(1);
  at::Tensor out = pool2x2_output(map, y0, x0, h, w);
  const bool cl = map.stride(1) == 1 && C > 1;  // pool2x2_output made out channels-last too
  const int64_t total = out.numel();
  if (total == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(map.scalar_type(), "shift_average_pool2x2_cuda", [&] {
    pool2x2_kernel<scalar_t><<<cuda::elementwise_blocks(total, kThreads), kThreads, 0, stream>>>(
        map.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, C, h, w, y0, x0, map.stride(0),
        map.stride(1), map.stride(2), map.stride(3), out.stride(0), out.stride(1), out.stride(2), out.stride(3), cl);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// out[n, j] = mean_k heads[n, k, j] + the mean shift of j's axis (window units), summed in double; j < 2P.
template <typename T>
__global__ void __launch_bounds__(kThreads) unshift_average_kernel(const T* __restrict__ heads, T* __restrict__ out,
                                                                   int64_t N, int64_t K, int64_t D, int64_t P,
                                                                   double shift_u, double shift_v) {
  const int64_t total = N * 2 * P;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t j = i % (2 * P), n = i / (2 * P);
    double acc = 0;
    for (int64_t k = 0; k < K; ++k) acc += double(heads[(n * K + k) * D + j]);
    out[i] = T(acc / double(K) + ((j & 1) ? shift_v : shift_u));
  }
}

at::Tensor unshift_average_cuda(const at::Tensor& heads, double shift_u, double shift_v, int64_t P) {
  const c10::cuda::CUDAGuard guard(heads.device());
  const int64_t N = heads.size(0), K = heads.size(1), D = heads.size(2);
  at::Tensor out = at::empty({N, P, 2}, heads.options());
  const int64_t total = N * 2 * P;
  if (total == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(heads.scalar_type(), "shift_average_unshift_cuda", [&] {
    unshift_average_kernel<scalar_t><<<cuda::elementwise_blocks(total, kThreads), kThreads, 0, stream>>>(
        heads.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, K, D, P, shift_u, shift_v);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

constexpr ShiftAverageKernels kCudaKernels{&windows_cuda, &pool2x2_cuda, &unshift_average_cuda};

std::tuple<at::Tensor, at::Tensor> shift_average_cuda(const at::Tensor& crop, at::IntArrayRef shifts, int64_t window,
                                                      at::TensorList conv_weight, at::TensorList conv_bias,
                                                      at::IntArrayRef pool_after, bool shared_conv,
                                                      c10::string_view activation, const at::Tensor& fc_weight,
                                                      const at::Tensor& fc_bias, const at::Tensor& head_weight,
                                                      const at::Tensor& head_bias, int64_t num_points) {
  cuda::check_cuda(crop, "shift_average", "crop");
  const c10::cuda::CUDAGuard guard(crop.device());
  return shift_average_forward(kCudaKernels, crop, shifts, window, conv_weight, conv_bias, pool_after, shared_conv,
                               std::string(activation), fc_weight, fc_bias, head_weight, head_bias, num_points);
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CUDA, m) { m.impl("shift_average", &shift_average_cuda); }

}  // namespace tcdcn
