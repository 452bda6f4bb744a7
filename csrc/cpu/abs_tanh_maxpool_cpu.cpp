// CPU implementation of tcdcn_ext::abs_tanh_maxpool2d / _abs_tanh_maxpool2d_backward: max_pool2d(|tanh(x)|, 2)
// (kernel 2, stride 2, floor mode) in one pass, with a gradient: the trainable form of the activation + pooling
// that the inference path fuses into lc_conv2d's epilogue.
//
// |tanh| is increasing in |x|, so a cell's pooled value is tanh(max |x|) over its four inputs: one tanh per output
// (a quarter of abs_tanh's), taken by the active ISA's abs_tanh kernel. The backward needs x (the cell's argmax and
// its sign) and the output (d|tanh(x)|/dx = sign(x) * (1 - out^2) at the argmax) and no tanh at all. The argmax is
// the first of the cell's four inputs in (row, column) order that holds the maximum of |x|, a NaN replacing any
// input before it, as in ATen's max_pool2d; sign(0) = 0, as in _abs_tanh_backward; the other inputs get 0, or NaN
// where they are NaN (what abs_tanh's backward after max_pool2d's gives).
//
// Layout: the kernels walk channels-last x (what lc_conv2d returns) with the channels innermost, one output row
// (OW cells of C channels) a task. Any other x is walked as a channels-last copy, and its output and gradient are
// handed back contiguous: the output and the gradient have x's layout, so a layer's backward hands lc_conv2d's
// backward the rows it reads without a copy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/kernel_table.h"
#include "lc_conv2d_shape.h"

namespace tcdcn {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per task

// Whether x has channels-last strides that differ from contiguous ones (with C == 1 the two address memory alike).
bool is_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && x.size(1) > 1 && x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         !x.is_contiguous();
}

void check_input(const at::Tensor& x, const char* op) {
  check_floating(x, op, "x");
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got ", x.dim(), "-D (shape ", x.sizes(), ")");
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, op, ": x must be at least 2x2 for 2x2 pooling, got shape ",
              x.sizes());
}

// The layout x's output and gradient are returned in (abs_tanh_maxpool2d's contract, mirrored by its fake kernel).
at::MemoryFormat result_format(const at::Tensor& x) {
  return is_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Runs fn(x_offset, out_offset) over the output rows of channels-last [N, C, H, W] x, in parallel: x_offset is
// the element offset of the row's first cell's top-left input, out_offset that of its first output; cell ow's four
// inputs are at x_offset + 2 * ow * C + {0, C, W * C, W * C + C}. work: elements a row touches (the task size).
template <typename F>
void for_output_rows(int64_t N, int64_t C, int64_t H, int64_t W, int64_t work, const F& fn) {
  const int64_t OH = H / 2, OW = W / 2;
  at::parallel_for(0, N * OH, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      fn((n * H + 2 * oh) * W * C, (n * OH + oh) * OW * C);
    }
  });
}

at::Tensor abs_tanh_maxpool2d_cpu(const at::Tensor& x_in) {
  check_input(x_in, "abs_tanh_maxpool2d");
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OW = W / 2;
  at::Tensor out = at::empty({N, C, H / 2, OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out.contiguous(result_format(x_in));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "abs_tanh_maxpool2d", [&] {
    const auto& k = cpu::abs_tanh_kernels<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for_output_rows(N, C, H, W, OW * C, [&](int64_t xi, int64_t oi) {
      for (int64_t ow = 0; ow < OW; ++ow) {
        const scalar_t* a = xp + xi + 2 * ow * C;
        const scalar_t* cell[4] = {a, a + C, a + W * C, a + W * C + C};
        k.pool_max_abs(cell, op + oi + ow * C, C);
      }
      k.forward(op + oi, op + oi, OW * C);  // tanh(max |x|) = |tanh(max |x|)|
    });
  });
  return out.contiguous(result_format(x_in));
}

at::Tensor abs_tanh_maxpool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& x_in,
                                           const at::Tensor& out_in) {
  const char* op = "_abs_tanh_maxpool2d_backward";
  check_input(x_in, op);
  const std::vector<int64_t> pooled = {x_in.size(0), x_in.size(1), x_in.size(2) / 2, x_in.size(3) / 2};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(pooled) && out_in.sizes() == at::IntArrayRef(pooled), op,
              ": grad_output and out must be ", at::IntArrayRef(pooled), " for x of shape ", x_in.sizes(),
              ", got ", grad_output.sizes(), " and ", out_in.sizes());
  TORCH_CHECK(grad_output.scalar_type() == x_in.scalar_type() && out_in.scalar_type() == x_in.scalar_type() &&
                  grad_output.device() == x_in.device() && out_in.device() == x_in.device(),
              op, ": grad_output, x and out must share dtype and device, got ", grad_output.scalar_type(), ", ",
              x_in.scalar_type(), ", ", out_in.scalar_type());
  constexpr auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(cl), go = grad_output.contiguous(cl), out = out_in.contiguous(cl);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OW = W / 2;
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(cl));
  if (gx.numel() == 0) return gx.contiguous(result_format(x_in));
  // The row / column floor mode drops gets no gradient: 0, or NaN where x is NaN (0 times abs_tanh's derivative).
  const auto dropped = [](const at::Tensor& xs, at::Tensor gs) { gs.copy_(at::where(xs.isnan(), xs, 0)); };
  if (H % 2 != 0) dropped(x.narrow(2, H - 1, 1), gx.narrow(2, H - 1, 1));
  if (W % 2 != 0) dropped(x.narrow(3, W - 1, 1), gx.narrow(3, W - 1, 1));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "abs_tanh_maxpool2d", [&] {
    const auto& k = cpu::abs_tanh_kernels<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    const scalar_t* outp = out.const_data_ptr<scalar_t>();
    scalar_t* gp = gx.mutable_data_ptr<scalar_t>();
    for_output_rows(N, C, H, W, 4 * OW * C, [&](int64_t xi, int64_t oi) {
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t i = xi + 2 * ow * C, o = oi + ow * C;
        const scalar_t* cell[4] = {xp + i, xp + i + C, xp + i + W * C, xp + i + W * C + C};
        scalar_t* gcell[4] = {gp + i, gp + i + C, gp + i + W * C, gp + i + W * C + C};
        k.pool_backward(cell, gop + o, outp + o, gcell, C);
      }
    });
  });
  return gx.contiguous(result_format(x_in));
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CPU, m) {
  m.impl("abs_tanh_maxpool2d", &abs_tanh_maxpool2d_cpu);
  m.impl("_abs_tanh_maxpool2d_backward", &abs_tanh_maxpool2d_backward_cpu);
}

}  // namespace tcdcn
