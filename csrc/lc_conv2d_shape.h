// Argument checks and output geometry of lc_conv2d, shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>
#include <optional>
#include <c10/util/irange.h>

#include <cstdint>

namespace tcdcn {

struct LcShape {
  int64_t N, C_in, H, W, C_out, H_out, W_out, kH, kW, sH, sW, pH, pW;
  int64_t L() const { return H_out * W_out; }
  int64_t K() const { return C_in * kH * kW; }
};

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

// Validates every argument of lc_conv2d and returns the geometry. Messages name the argument and the
// expected shape, dtype or device. half_weight_ok: the caller (the CPU forward ops) also takes a float16 weight
// with a float32 input (and float32 bias).
inline LcShape lc_conv2d_shape(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, const char* op = "lc_conv2d", bool half_weight_ok = false) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C_in, H, W], got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 6, op, ": weight must be 6-D [H_out, W_out, C_in, kH, kW, C_out], got shape ",
              weight.sizes(), " (convert a natural [H_out, W_out, C_out, C_in, kH, kW] weight with ",
              "tcdcn_ext.ops.lc_weight_from_natural)");
  check_floating(input, op, "input");
  const bool half_weight = weight.scalar_type() == at::kHalf;
  TORCH_CHECK(weight.scalar_type() == input.scalar_type() ||
                  (half_weight_ok && half_weight && input.scalar_type() == at::kFloat),
              op, ": weight dtype ", weight.scalar_type(), " does not match input dtype ", input.scalar_type(),
              !half_weight       ? ""
              : half_weight_ok   ? " (a float16 weight needs a float32 input)"
                                 : " (float16 weights are taken only by the CPU forward ops, with a float32 input; "
                                   "not by CUDA or the backward)");
  TORCH_CHECK(weight.device() == input.device(), op, ": weight is on ", weight.device(), " but input is on ",
              input.device());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2, op, ": stride and padding must have 2 entries, got ",
              stride, " and ", padding);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  // Bounded so that H + 2 * padding cannot overflow (and a padded input stays allocatable).
  TORCH_CHECK(padding[0] <= (int64_t(1) << 31) && padding[1] <= (int64_t(1) << 31), op,
              ": padding must be <= 2^31, got ", padding);
  LcShape s{};
  s.N = input.size(0);
  s.C_in = input.size(1);
  s.H = input.size(2);
  s.W = input.size(3);
  s.H_out = weight.size(0);
  s.W_out = weight.size(1);
  s.kH = weight.size(3);
  s.kW = weight.size(4);
  s.C_out = weight.size(5);
  s.sH = stride[0];
  s.sW = stride[1];
  s.pH = padding[0];
  s.pW = padding[1];
  TORCH_CHECK(weight.size(2) == s.C_in, op, ": weight has C_in = ", weight.size(2), " (dim 2 of ", weight.sizes(),
              ") but input has ", s.C_in, " channels (shape ", input.sizes(), ")");
  TORCH_CHECK(s.kH >= 1 && s.kW >= 1, op, ": kernel size must be >= 1, got ", s.kH, "x", s.kW);
  const int64_t Hp = s.H + 2 * s.pH, Wp = s.W + 2 * s.pW;
  TORCH_CHECK(Hp >= s.kH && Wp >= s.kW, op, ": input ", s.H, "x", s.W, " with padding ", padding,
              " is smaller than the ", s.kH, "x", s.kW, " kernel");
  const int64_t H_exp = (Hp - s.kH) / s.sH + 1, W_exp = (Wp - s.kW) / s.sW + 1;
  TORCH_CHECK(s.H_out == H_exp && s.W_out == W_exp, op, ": weight is for a ", s.H_out, "x", s.W_out,
              " output, but a ", s.H, "x", s.W, " input with kernel ", s.kH, "x", s.kW, ", stride ", stride,
              " and padding ", padding, " gives ", H_exp, "x", W_exp);
  if (bias.has_value() && bias->defined()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 3 && b.size(0) == s.C_out && b.size(1) == s.H_out && b.size(2) == s.W_out, op,
                ": bias must be [C_out, H_out, W_out] = [", s.C_out, ", ", s.H_out, ", ", s.W_out, "], got shape ",
                b.sizes());
    TORCH_CHECK(b.scalar_type() == input.scalar_type(), op, ": bias dtype ", b.scalar_type(),
                " does not match input dtype ", input.scalar_type());
    TORCH_CHECK(b.device() == input.device(), op, ": bias is on ", b.device(), " but input is on ", input.device());
  }
  return s;
}

}  // namespace tcdcn
