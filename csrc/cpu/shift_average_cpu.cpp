// CPU registration of tcdcn_ext::shift_average: the window gather, the pooling and the un-shift average, and the
// layers that run on tcdcn_ext's own CPU kernels through an LcStackPlan (the direct convolution for spatially
// shared layers, and fc + heads in the locally connected layout). The schedule and the rest of the network are in
// shift_average.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "cpu/lc_stack_plan.h"
#include "epilogue.h"
#include "shift_average.h"

namespace tcdcn {
namespace {

at::Tensor windows_cpu(const at::Tensor& crop, const std::vector<ShiftWindow>& win, int64_t S) {
  const int64_t N = crop.size(0), K = int64_t(win.size());
  at::Tensor out = at::empty({N * K, 1, S, S}, crop.options());
  AT_DISPATCH_FLOATING_TYPES(crop.scalar_type(), "shift_average_windows", [&] {
    const scalar_t* src = crop.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t sN = crop.stride(0), sH = crop.stride(2), sW = crop.stride(3);
    at::parallel_for(0, N * K, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const ShiftWindow& w = win[i % K];
        const scalar_t* s = src + (i / K) * sN + w.oy * sH + w.ox * sW;
        scalar_t* d = dst + i * S * S;
        for (int64_t y = 0; y < S; ++y, d += S, s += sH) {
          if (sW == 1) {
            std::memcpy(d, s, size_t(S) * sizeof(scalar_t));
          } else {
            for (int64_t x = 0; x < S; ++x) d[x] = s[x * sW];
          }
        }
      }
    });
  });
  return out;
}

template <typename T>
inline T max_nan(T a, T b) {
  return (a != a || a > b) ? a : b;  // NaN wins, as in max_pool2d
}

at::Tensor pool2x2_cpu(const at::Tensor& map, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  const int64_t N = map.size(0), C = map.size(1);
  at::Tensor out = pool2x2_output(map, y0, x0, h, w);
  const bool cl = map.stride(1) == 1 && C > 1;  // pool2x2_output made out channels-last too
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(map.scalar_type(), "shift_average_pool2x2", [&] {
    const scalar_t* src = map.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t sN = map.stride(0), sC = map.stride(1), sH = map.stride(2), sW = map.stride(3);
    const int64_t oN = out.stride(0), oC = out.stride(1), oH = out.stride(2), oW = out.stride(3);
    at::parallel_for(0, N * h, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, C * w)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / h, y = r % h;
        const scalar_t* row = src + n * sN + (y0 + 2 * y) * sH + x0 * sW;
        scalar_t* o = dst + n * oN + y * oH;
        if (cl) {  // channels innermost: four contiguous runs of C per output pixel
          for (int64_t x = 0; x < w; ++x) {
            const scalar_t* a = row + 2 * x * sW;
            const scalar_t* b = a + sH;
            scalar_t* d = o + x * oW;
            for (int64_t c = 0; c < C; ++c)
              d[c] = max_nan(max_nan(a[c], a[c + sW]), max_nan(b[c], b[c + sW]));
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* a = row + c * sC;
            const scalar_t* b = a + sH;
            scalar_t* d = o + c * oC;
            for (int64_t x = 0; x < w; ++x)
              d[x * oW] = max_nan(max_nan(a[2 * x * sW], a[(2 * x + 1) * sW]),
                                  max_nan(b[2 * x * sW], b[(2 * x + 1) * sW]));
          }
        }
      }
    });
  });
  return out;
}

at::Tensor unshift_average_cpu(const at::Tensor& heads, double shift_u, double shift_v, int64_t P) {
  const int64_t N = heads.size(0), K = heads.size(1), D = heads.size(2);
  at::Tensor out = at::empty({N, P, 2}, heads.options());
  AT_DISPATCH_FLOATING_TYPES(heads.scalar_type(), "shift_average_unshift", [&] {
    const scalar_t* h = heads.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = 0; j < 2 * P; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += double(h[(n * K + k) * D + j]);
        o[n * 2 * P + j] = scalar_t(acc / double(K) + ((j & 1) ? shift_v : shift_u));
      }
    }
  });
  return out;
}

// The shared convolutions on tcdcn_ext's direct convolution kernel (a one-layer LcStackPlan; cpu/simd/kernels.h,
// conv_forward) with the activation fused: register-tiled and cache-resident, several times faster than
// at::conv2d on these small maps at batch 1.
// The weights are laid out once per layer (a plan for the smallest input the kernel fits), then each region runs
// on that plan re-sized to it.
std::function<at::Tensor(const at::Tensor&)> conv_act_cpu(const at::Tensor& weight, const at::Tensor& bias,
                                                          bool abs_tanh) {
  const int64_t epilogue = abs_tanh ? kAbsTanh : kRelu;
  const at::Tensor probe = at::empty_strided({0, weight.size(1), weight.size(2), weight.size(3)}, {0, 0, 0, 0},
                                             bias.options());
  auto plan = std::make_shared<const cpu::LcStackPlan>(std::vector<at::Tensor>{weight},
                                                       std::vector<std::optional<at::Tensor>>{bias},
                                                       at::IntArrayRef(&epilogue, 1), probe, "shift_average");
  return [plan](const at::Tensor& x) { return plan->for_input(x, "shift_average").run(x); };
}

// fc (with its activation) and the heads, given in the locally connected layout [1, 1, C, s, s, F] and
// [1, 1, F, 1, 1, D], as a two-layer LcStackPlan on the maps [M, C, s, s] as they lie: heads [M, D].
at::Tensor lc_heads_cpu(const at::Tensor& maps, const at::Tensor& fc_weight, const at::Tensor& fc_bias,
                        const at::Tensor& head_weight, const at::Tensor& head_bias, bool abs_tanh) {
  const int64_t F = fc_weight.size(5), D = head_weight.size(5);
  const int64_t epilogue[2] = {abs_tanh ? kAbsTanh : kRelu, kPlain};
  const cpu::LcStackPlan plan({fc_weight, head_weight}, {fc_bias.view({F, 1, 1}), head_bias.view({D, 1, 1})},
                              epilogue, maps, "shift_average");
  return plan.run(maps).view({maps.size(0), D});
}

constexpr ShiftAverageKernels kCpuKernels{&windows_cpu, &pool2x2_cpu, &unshift_average_cpu, &conv_act_cpu,
                                          &lc_heads_cpu, /*lc_half_weights=*/true, /*lc_fused_pool=*/true};

std::tuple<at::Tensor, at::Tensor> shift_average_cpu(const at::Tensor& crop, at::IntArrayRef shifts, int64_t window,
                                                     at::TensorList conv_weight, at::TensorList conv_bias,
                                                     at::IntArrayRef pool_after, bool shared_conv,
                                                     c10::string_view activation, const at::Tensor& fc_weight,
                                                     const at::Tensor& fc_bias, const at::Tensor& head_weight,
                                                     const at::Tensor& head_bias, int64_t num_points) {
  return shift_average_forward(kCpuKernels, crop, shifts, window, conv_weight, conv_bias, pool_after, shared_conv,
                               std::string(activation), fc_weight, fc_bias, head_weight, head_bias, num_points);
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CPU, m) { m.impl("shift_average", &shift_average_cpu); }

}  // namespace tcdcn
