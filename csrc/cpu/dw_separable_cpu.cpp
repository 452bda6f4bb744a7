// CPU implementation of tcdcn_ext::dw_separable and tcdcn_ext::conv3x3_stride2_relu, the face detector's (YuNet's)
// convolutions: checks, the weights laid out for the kernels (pointwise transposed to [C_in, Cp], depthwise to
// [9, Cp], zero-padded to whole vectors), channels-last activations, and at::parallel_for over (image, row band).
// Inference only: the ops are registered without autograd support (tcdcn_ext/ops.py refuses gradients).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/kernel_table.h"

namespace tcdcn {
namespace {

// Rows per parallel task: enough work per task to amortise the ring start-up (two extra pointwise rows).
constexpr int64_t kRowsPerTask = 8;
// Multiply-adds a thread must get before a layer is split between threads: the detector's layers are small (tens
// of microseconds), and a parallel region costs more than that whenever the cores are busy (OpenMP workers spin
// and preempt each other: a 128x128 detection took 1.8 ms on one thread and 700 ms on two of a loaded 2-core
// machine with no minimum).
constexpr int64_t kMinTaskMacs = int64_t(4) << 20;

int64_t grain_for(int64_t macs_per_band) { return std::max<int64_t>(1, kMinTaskMacs / std::max<int64_t>(1, macs_per_band)); }

void check_common(const char* op, const at::Tensor& input, int64_t c_in) {
  TORCH_CHECK(input.device().is_cpu(), op, ": input must be a CPU tensor, got ", input.device());
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got ", input.dim(), "-D");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(input.size(1) == c_in, op, ": input has ", input.size(1), " channels but the weight expects ", c_in);
}

void check_param(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                 at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on ", input.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " must be ", input.scalar_type(),
              " like the input, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// The kernels' weight layout, packed with plain loops (a handful of ATen calls per layer would cost more than a small
// layer's arithmetic): w [C_out, K] (element (o, k) at o * so + k * sk) -> dst [K, Cp], zero columns beyond C_out;
// bias [C_out] (stride sb) -> dst [Cp].
template <typename T>
void pack_columns(const T* w, int64_t c_out, int64_t k, int64_t so, int64_t sk, int64_t cp, T* dst) {
  for (int64_t r = 0; r < k; ++r)
    for (int64_t o = 0; o < cp; ++o) dst[r * cp + o] = o < c_out ? w[o * so + r * sk] : T(0);
}

template <typename T>
void pack_bias(const T* b, int64_t c_out, int64_t sb, int64_t cp, T* dst) {
  for (int64_t o = 0; o < cp; ++o) dst[o] = o < c_out ? b[o * sb] : T(0);
}

// NCHW-shaped tensor -> its channels-last storage, contiguous [N, H, W, C].
at::Tensor nhwc(const at::Tensor& x) { return x.permute({0, 2, 3, 1}).contiguous(); }

at::Tensor dw_separable_cpu(const at::Tensor& input, const at::Tensor& pw_weight, const at::Tensor& pw_bias,
                            const at::Tensor& dw_weight, const at::Tensor& dw_bias,
                            const std::optional<at::Tensor>& up, bool relu, bool pool) {
  const char* op = "dw_separable";
  TORCH_CHECK(pw_weight.dim() == 2, op, ": pw_weight must be [C_out, C_in], got ", pw_weight.sizes());
  const int64_t c_out = pw_weight.size(0), c_in = pw_weight.size(1);
  check_common(op, input, c_in);
  check_param(op, "pw_weight", pw_weight, input, {c_out, c_in});
  check_param(op, "pw_bias", pw_bias, input, {c_out});
  check_param(op, "dw_weight", dw_weight, input, {c_out, 3, 3});
  check_param(op, "dw_bias", dw_bias, input, {c_out});
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  if (up.has_value()) {
    TORCH_CHECK(H % 2 == 0 && W % 2 == 0, op, ": with `up` the input's height and width must be even, got ", H,
                "x", W);
    check_param(op, "up", *up, input, {N, c_in, H / 2, W / 2});
  }
  TORCH_CHECK(c_out > 0 && c_in > 0, op, ": pw_weight must have at least one input and output channel, got ",
              pw_weight.sizes());
  const int64_t Ho = pool ? H / 2 : H, Wo = pool ? W / 2 : W;
  at::Tensor out = at::empty({N, c_out, Ho, Wo}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const int64_t cp = cpu::dws_channel_pad(c_out);
  const at::Tensor x = nhwc(input);
  const at::Tensor u = up.has_value() ? nhwc(*up) : at::Tensor();
  cpu::DwSepGeom g{N, H, W, c_in, c_out, cp, relu ? 1 : 0, pool ? 1 : 0};
  const int64_t bands = (Ho + kRowsPerTask - 1) / kRowsPerTask;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dw_separable", [&] {
    // packed: pw [C_in, Cp], pb [Cp], dw [9, Cp], db [Cp]
    std::vector<scalar_t> packed((c_in + 11) * cp);
    scalar_t* pw = packed.data();
    scalar_t* pb = pw + c_in * cp;
    scalar_t* dw = pb + cp;
    scalar_t* db = dw + 9 * cp;
    pack_columns(pw_weight.const_data_ptr<scalar_t>(), c_out, c_in, pw_weight.stride(0), pw_weight.stride(1), cp, pw);
    pack_bias(pw_bias.const_data_ptr<scalar_t>(), c_out, pw_bias.stride(0), cp, pb);
    for (int t = 0; t < 9; ++t) {  // dw_weight [C_out, 3, 3] -> row t = dy * 3 + dx
      const scalar_t* src = dw_weight.const_data_ptr<scalar_t>() + (t / 3) * dw_weight.stride(1) +
                            (t % 3) * dw_weight.stride(2);
      pack_columns(src, c_out, 1, dw_weight.stride(0), 0, cp, dw + t * cp);
    }
    pack_bias(dw_bias.const_data_ptr<scalar_t>(), c_out, dw_bias.stride(0), cp, db);
    const auto& k = cpu::dw_separable_kernels<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* up_p = u.defined() ? u.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();  // channels-last storage is [N, Ho, Wo, C_out]
    const int64_t band_macs = kRowsPerTask * (pool ? 2 : 1) * W * (c_in + 9) * cp;
    at::parallel_for(0, N * bands, grain_for(band_macs), [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> scratch(cpu::dws_block_scratch(W, c_in, cp));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / bands, r0 = (t % bands) * kRowsPerTask;
        const int64_t r1 = r0 + kRowsPerTask < Ho ? r0 + kRowsPerTask : Ho;
        k.block(g, xp, up_p, pw, pb, dw, db, op_, n, r0, r1, scratch.data());
      }
    });
  });
  return out;
}

at::Tensor conv3x3_stride2_relu_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
  const char* op = "conv3x3_stride2_relu";
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3, op,
              ": weight must be [C_out, C_in, 3, 3], got ", weight.sizes());
  const int64_t c_out = weight.size(0), c_in = weight.size(1);
  check_common(op, input, c_in);
  check_param(op, "weight", weight, input, {c_out, c_in, 3, 3});
  check_param(op, "bias", bias, input, {c_out});
  TORCH_CHECK(c_out > 0 && c_in > 0, op, ": weight must have at least one input and output channel, got ",
              weight.sizes());
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  const int64_t Ho = (H + 1) / 2, Wo = (W + 1) / 2;
  at::Tensor out = at::empty({N, c_out, Ho, Wo}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const int64_t cp = cpu::dws_channel_pad(c_out);
  const at::Tensor x = nhwc(input);
  cpu::DwSepGeom g{N, H, W, c_in, c_out, cp, 1, 0};
  const int64_t bands = (Ho + kRowsPerTask - 1) / kRowsPerTask;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv3x3_stride2_relu", [&] {
    // packed: w [9 * C_in, Cp] with row (kh * 3 + kw) * C_in + ci, then b [Cp]
    std::vector<scalar_t> packed((9 * c_in + 1) * cp);
    const scalar_t* wsrc = weight.const_data_ptr<scalar_t>();
    for (int64_t t = 0; t < 9; ++t)
      for (int64_t ci = 0; ci < c_in; ++ci)
        pack_columns(wsrc + ci * weight.stride(1) + (t / 3) * weight.stride(2) + (t % 3) * weight.stride(3), c_out,
                     1, weight.stride(0), 0, cp, packed.data() + (t * c_in + ci) * cp);
    pack_bias(bias.const_data_ptr<scalar_t>(), c_out, bias.stride(0), cp, packed.data() + 9 * c_in * cp);
    const auto& k = cpu::dw_separable_kernels<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * bands, grain_for(kRowsPerTask * Wo * 9 * c_in * cp), [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> scratch(Wo * cp);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / bands, r0 = (t % bands) * kRowsPerTask;
        const int64_t r1 = r0 + kRowsPerTask < Ho ? r0 + kRowsPerTask : Ho;
        k.stem(g, x.const_data_ptr<scalar_t>(), packed.data(), packed.data() + 9 * c_in * cp, op_, n, r0, r1,
               scratch.data());
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CPU, m) {
  m.impl("dw_separable", &dw_separable_cpu);
  m.impl("conv3x3_stride2_relu", &conv3x3_stride2_relu_cpu);
}

}  // namespace tcdcn
