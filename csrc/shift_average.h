// tcdcn_ext::shift_average (TCDCN-Averaged): the device-independent part of the op, shared by the CPU
// (cpu/shift_average_cpu.cpp) and CUDA (cuda/shift_average_cuda.cu) registrations. Each device supplies the
// memory-bound kernels below (and the CPU its direct convolution for spatially shared layers and its locally
// connected fc and heads); the other convolutions go through tcdcn_ext's own ops (locally connected layers) or
// at::conv2d, dispatched on the crop's device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

namespace tcdcn {

// One shift: window top-left (oy, ox) in the crop, and its offset (dx, dy) from the centred window.
struct ShiftWindow {
  int64_t oy, ox, dx, dy;
};

struct ShiftAverageKernels {
  // crop [N, 1, Hc, Wc] (any strides) -> [N * K, 1, S, S] contiguous, face-major: row n * K + k is face n's
  // S x S window at (win[k].oy, win[k].ox).
  at::Tensor (*windows)(const at::Tensor& crop, const std::vector<ShiftWindow>& win, int64_t S);
  // 2x2 max pooling (stride 2) of the h x w cells whose top-left corner is (y0 + 2i, x0 + 2j) in map [N, C, H, W]
  // (any strides) -> [N, C, h, w] in the map's memory format; NaN propagates as in max_pool2d.
  at::Tensor (*pool2x2)(const at::Tensor& map, int64_t y0, int64_t x0, int64_t h, int64_t w);
  // heads [N, K, D] contiguous (the first 2P columns are the landmark head's (u, v) pairs in the window frame)
  // -> landmarks [N, P, 2]: (1 / K) sum_k (u_k, v_k) + (shift_u, shift_v), summed in double, where the caller
  // passes the mean shift in window units, (mean_k dx_k / S, mean_k dy_k / S).
  at::Tensor (*unshift_average)(const at::Tensor& heads, double shift_u, double shift_v, int64_t P);
  // A spatially shared convolution (stride 1, unpadded; weight [C_out, C_in, k, k], bias [C_out]) and its
  // activation (|tanh| or relu), prepared once per layer: the returned function applies it to x [N, C_in, H, W]
  // (any strides, any H and W the kernel fits). Null: at::conv2d and the activation op.
  std::function<at::Tensor(const at::Tensor&)> (*conv_act)(const at::Tensor& weight, const at::Tensor& bias,
                                                           bool abs_tanh) = nullptr;
  // fc (then the activation) and the heads with their weights in the locally connected layout, fc_weight
  // [1, 1, C, s, s, F] and head_weight [1, 1, F, 1, 1, D] (checked by the caller; float16 allowed with a float32
  // map), biases [F] or [F, 1, 1] and [D] or [D, 1, 1], on the maps [M, C, s, s] as they lie -> heads [M, D].
  // Null: the device takes only the [F, C * s * s] and [D, F] layout (at::addmm).
  at::Tensor (*lc_heads)(const at::Tensor& maps, const at::Tensor& fc_weight, const at::Tensor& fc_bias,
                         const at::Tensor& head_weight, const at::Tensor& head_bias, bool abs_tanh) = nullptr;
  // The device's tcdcn_ext::lc_conv2d ops take float16 weights with a float32 input, and it has
  // tcdcn_ext::lc_conv2d_abs_tanh_maxpool2d (|tanh| and the 2x2 pooling fused into the layer's pass).
  bool lc_half_weights = false;
  bool lc_fused_pool = false;
};

// The output of ShiftAverageKernels::pool2x2 (checked cells, [N, C, h, w] in the map's memory format), shared by
// the devices' implementations.
at::Tensor pool2x2_output(const at::Tensor& map, int64_t y0, int64_t x0, int64_t h, int64_t w);

std::tuple<at::Tensor, at::Tensor> shift_average_forward(
    const ShiftAverageKernels& kernels, const at::Tensor& crop, at::IntArrayRef shifts, int64_t window,
    at::TensorList conv_weight, at::TensorList conv_bias, at::IntArrayRef pool_after, bool shared_conv,
    const std::string& activation, const at::Tensor& fc_weight, const at::Tensor& fc_bias,
    const at::Tensor& head_weight, const at::Tensor& head_bias, int64_t num_points);

}  // namespace tcdcn
