// CPU implementation of tcdcn_ext::lc_conv2d / lc_conv2d_abs_tanh(_maxpool2d) / lc_conv2d_stack /
// _lc_conv2d_backward: argument checks, layout, threading (at::parallel_for over output locations or faces);
// the arithmetic is in cpu/simd/, lc_conv2d_stack's plan in lc_stack_plan.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cpu/kernel_table.h"
#include "cpu/lc_conv2d_cpu.h"
#include "cpu/lc_stack_plan.h"
#include "epilogue.h"
#include "lc_conv2d_shape.h"

namespace tcdcn {

namespace cpu {

// (tap_offsets and bias_hwc: lc_conv2d_cpu.h)
void tap_offsets(int64_t C_in, int64_t kH, int64_t kW, int64_t sC, int64_t sH, int64_t sW, std::vector<int64_t>& off) {
  off.resize(C_in * kH * kW);
  for (int64_t ci = 0, k = 0; ci < C_in; ++ci)
    for (int64_t kh = 0; kh < kH; ++kh)
      for (int64_t kw = 0; kw < kW; ++kw, ++k) off[k] = ci * sC + kh * sH + kw * sW;
}

at::Tensor bias_hwc(const at::Tensor& b, int64_t C_out, int64_t H_out, int64_t W_out) {
  const bool hwc = (C_out == 1 || b.stride(0) == 1) && (W_out == 1 || b.stride(2) == C_out) &&
                   (H_out == 1 || b.stride(1) == W_out * C_out);
  return hwc ? b : b.permute({1, 2, 0}).contiguous().permute({2, 0, 1});
}

}  // namespace cpu

namespace {

using cpu::LcGeom;
using cpu::bias_hwc;
using cpu::for_location_ranges;
using cpu::grain_for;
using cpu::tap_offsets;

at::Tensor pad_input(const at::Tensor& input, const LcShape& s) {
  if (s.pH == 0 && s.pW == 0) return input;
  return at::constant_pad_nd(input, {s.pW, s.pW, s.pH, s.pH}, 0);
}

// Geometry for the kernels; `off` and `gi_off` own the tap-offset tables that `g` points to.
LcGeom make_geom(const LcShape& s, const at::Tensor& x, std::vector<int64_t>& off, std::vector<int64_t>& gi_off) {
  LcGeom g{};
  g.N = s.N;
  g.C_in = s.C_in;
  g.H = x.size(2);
  g.W = x.size(3);
  g.C_out = s.C_out;
  g.H_out = s.H_out;
  g.W_out = s.W_out;
  g.kH = s.kH;
  g.kW = s.kW;
  g.sH = s.sH;
  g.sW = s.sW;
  g.in_sN = x.stride(0);
  g.in_sC = x.stride(1);
  g.in_sH = x.stride(2);
  g.in_sW = x.stride(3);
  tap_offsets(s.C_in, s.kH, s.kW, g.in_sC, g.in_sH, g.in_sW, off);
  gi_off.resize(s.kH * s.kW);
  for (int64_t kh = 0, t = 0; kh < s.kH; ++kh)
    for (int64_t kw = 0; kw < s.kW; ++kw, ++t) gi_off[t] = (kh * g.W + kw) * s.C_in;
  g.in_off = off.data();
  g.gi_off = gi_off.data();
  return g;
}

template <typename F>
void for_location_ranges(const LcShape& s, Epilogue epilogue, const F& fn) {
  for_location_ranges(s.H_out, s.W_out, s.N * s.K() * s.C_out, epilogue, fn);
}

// epilogue: kPlain, kAbsTanh or kAbsTanhMaxPool (see cpu/simd/kernels.h). A float16 weight (with
// float32 input and bias) is widened in the kernels' registers: float32 sums, float32 output.
at::Tensor forward_impl(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, Epilogue epilogue, const char* op) {
  const LcShape s = lc_conv2d_shape(input, weight, bias, stride, padding, op, /*half_weight_ok=*/true);
  TORCH_CHECK(input.device().is_cpu(), op, ": the CPU kernel got input on ", input.device());
  const bool pool = pools(epilogue);
  const auto cl = input.options().memory_format(at::MemoryFormat::ChannelsLast);
  // Channels-last output: the kernels write [N, H_out, W_out, C_out] rows of C_out without a transpose (and the
  // pooled epilogue needs no zero fill: kernels.h).
  at::Tensor out = pool ? at::empty({s.N, s.C_out, s.H_out / 2, s.W_out / 2}, cl)
                        : at::empty({s.N, s.C_out, s.H_out, s.W_out}, cl);
  if (out.numel() == 0) return out;
  const at::Tensor x = pad_input(input, s);
  const at::Tensor w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias_hwc(*bias, s.C_out, s.H_out, s.W_out) : at::Tensor();
  std::vector<int64_t> off, gi_off;
  const LcGeom g = make_geom(s, x, off, gi_off);
  if (weight.scalar_type() == at::kHalf) {  // input is float32 (lc_conv2d_shape)
    const auto& k = cpu::lc_kernels<float>();
    const float* xp = x.const_data_ptr<float>();
    // at::Half is the binary16 bit pattern in a uint16_t; the kernels take the bits.
    static_assert(sizeof(at::Half) == sizeof(uint16_t), "at::Half must be 16 bits");
    const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::Half>());
    const float* bp = has_bias ? b.const_data_ptr<float>() : nullptr;
    float* op_ = out.mutable_data_ptr<float>();
    for_location_ranges(s, epilogue, [&](int64_t l0, int64_t l1) {
      k.forward_half_weight(g, xp, wp, bp, op_, l0, l1, epilogue);
    });
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lc_conv2d", [&] {
    const auto& k = cpu::lc_kernels<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    for_location_ranges(s, epilogue, [&](int64_t l0, int64_t l1) {
      k.forward(g, xp, wp, bp, op_, l0, l1, epilogue);
    });
  });
  return out;
}

at::Tensor lc_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         at::IntArrayRef stride, at::IntArrayRef padding) {
  return forward_impl(input, weight, bias, stride, padding, kPlain, "lc_conv2d");
}

at::Tensor lc_conv2d_abs_tanh_cpu(const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding) {
  return forward_impl(input, weight, bias, stride, padding, kAbsTanh, "lc_conv2d_abs_tanh");
}

at::Tensor lc_conv2d_abs_tanh_maxpool2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                            at::IntArrayRef padding) {
  return forward_impl(input, weight, bias, stride, padding, kAbsTanhMaxPool, "lc_conv2d_abs_tanh_maxpool2d");
}

at::Tensor lc_conv2d_stack_cpu(const at::Tensor& input, at::TensorList weight,
                               const c10::List<std::optional<at::Tensor>>& bias, at::IntArrayRef epilogue) {
  TORCH_CHECK(input.device().is_cpu(), "lc_conv2d_stack: the CPU kernel got input on ", input.device());
  std::vector<std::optional<at::Tensor>> b;
  b.reserve(bias.size());
  for (size_t i = 0; i < bias.size(); ++i) b.push_back(bias.get(i));
  return cpu::LcStackPlan(weight.vec(), b, epilogue, input, "lc_conv2d_stack").run(input);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lc_conv2d_backward_cpu(const at::Tensor& grad_output,
                                                                      const at::Tensor& input,
                                                                      const at::Tensor& weight, at::IntArrayRef stride,
                                                                      at::IntArrayRef padding,
                                                                      std::array<bool, 3> output_mask) {
  const char* op = "_lc_conv2d_backward";
  const LcShape s = lc_conv2d_shape(input, weight, std::nullopt, stride, padding, op);
  TORCH_CHECK(input.device().is_cpu(), op, ": the CPU kernel got input on ", input.device());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == s.N && grad_output.size(1) == s.C_out &&
                  grad_output.size(2) == s.H_out && grad_output.size(3) == s.W_out,
              op, ": grad_output must be [", s.N, ", ", s.C_out, ", ", s.H_out, ", ", s.W_out, "], got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(), op,
              ": grad_output must match input's dtype and device, got ", grad_output.scalar_type(), " on ",
              grad_output.device());
  const auto opts = input.options();
  at::Tensor gi = at::empty({0}, opts);
  at::Tensor gw = output_mask[1] ? at::empty(weight.sizes(), opts) : at::empty({0}, opts);
  // Computed as [H_out, W_out, C_out] (a location's channels contiguous), returned as [C_out, H_out, W_out].
  at::Tensor gb_lc = output_mask[2] ? at::empty({s.H_out, s.W_out, s.C_out}, opts) : at::empty({0}, opts);
  if (s.N == 0 || s.C_out == 0 || s.K() == 0) {
    if (output_mask[0]) gi = at::zeros(input.sizes(), opts.memory_format(at::MemoryFormat::ChannelsLast));
    if (output_mask[1]) gw.zero_();
    // With no taps (C_in == 0) the output is the bias alone, so grad_bias is still the sum over faces.
    at::Tensor gb = output_mask[2] ? grad_output.sum(0).contiguous() : gb_lc;
    return {gi, gw, gb};
  }
  const at::Tensor x = pad_input(input, s);
  // [N, L, C_out] rows: the layout every kernel reads grad_output in.
  const at::Tensor go = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  std::vector<int64_t> off, gi_off;
  const LcGeom g = make_geom(s, x, off, gi_off);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lc_conv2d", [&] {
    const auto& k = cpu::lc_kernels<scalar_t>();
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    if (output_mask[1] || output_mask[2]) {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* gwp = output_mask[1] ? gw.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gbp = output_mask[2] ? gb_lc.mutable_data_ptr<scalar_t>() : nullptr;
      // The taps by their input offsets (stable): channels-last input puts a pixel's channels side by side.
      std::vector<int64_t> order(static_cast<size_t>(s.K())), order_off(static_cast<size_t>(s.K()));
      for (int64_t j = 0; j < s.K(); ++j) order[j] = j;
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return off[a] < off[b]; });
      for (int64_t j = 0; j < s.K(); ++j) order_off[j] = off[order[j]];
      at::parallel_for(0, s.L(), grain_for(s.N * s.K() * s.C_out), [&](int64_t l0, int64_t l1) {
        k.backward_weight(g, xp, gop, gwp, gbp, l0, l1, order.data(), order_off.data());
      });
    }
    if (output_mask[0]) {
      // grad_input channels-last: the taps' gradients are added back as contiguous runs of C_in, each
      // location's weights transposed to [C_out, kH, kW, C_in] in a buffer of the thread's own while in cache (see
      // cpu/simd/lc_backward_input_body.h; a separate permute + contiguous pass over the 6-D weight cost ~1.8 ms
      // a step for the 5-point layer 2, more than the products).
      const at::Tensor w = weight.contiguous();
      at::Tensor gi_cl = at::zeros({s.N, g.H, g.W, s.C_in}, opts);
      const scalar_t* wp = w.const_data_ptr<scalar_t>();
      scalar_t* gip = gi_cl.mutable_data_ptr<scalar_t>();
      // Threads split the faces: each writes its own faces' rows of grad_input (neighbouring locations' windows
      // overlap). Splitting the locations instead, with a grad_input buffer per thread summed afterwards, reads
      // every weight once rather than once per thread, but measured no faster at N = 64 (the weights come from L3).
      at::parallel_for(0, s.N, grain_for(s.L() * s.K() * s.C_out), [&](int64_t n0, int64_t n1) {
        std::vector<scalar_t> scratch(static_cast<size_t>(s.K() * s.C_out));
        k.backward_input(g, gop, wp, gip, n0, n1, scratch.data());
      });
      // [N, C_in, H, W] with channels-last strides: a view of the buffer when unpadded, else the inner part.
      gi = gi_cl.permute({0, 3, 1, 2}).narrow(2, s.pH, s.H).narrow(3, s.pW, s.W);
      if (s.pH != 0 || s.pW != 0) gi = gi.contiguous(at::MemoryFormat::ChannelsLast);
    }
  });
  at::Tensor gb = output_mask[2] ? gb_lc.permute({2, 0, 1}).contiguous() : gb_lc;
  return {gi, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CPU, m) {
  m.impl("lc_conv2d", &lc_conv2d_cpu);
  m.impl("lc_conv2d_abs_tanh", &lc_conv2d_abs_tanh_cpu);
  m.impl("lc_conv2d_abs_tanh_maxpool2d", &lc_conv2d_abs_tanh_maxpool2d_cpu);
  m.impl("lc_conv2d_stack", &lc_conv2d_stack_cpu);
  m.impl("_lc_conv2d_backward", &lc_conv2d_backward_cpu);
}

}  // namespace tcdcn
