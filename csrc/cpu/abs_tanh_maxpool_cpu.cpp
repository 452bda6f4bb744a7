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
// Layout: channels-last x (what lc_conv2d returns) is walked with the channels innermost (unit stride, vectorised
// by the compiler); any other x is made contiguous and walked with the columns innermost. The output and the
// gradient have x's layout, so a layer's backward hands lc_conv2d's backward the rows it reads without a copy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/kernel_table.h"
#include "lc_conv2d_shape.h"

namespace tcdcn {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per task

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

// x in the layout the kernels walk: channels-last as it is, anything else contiguous.
at::Tensor walk_layout(const at::Tensor& x) {
  if (is_channels_last(x)) return x;
  return x.contiguous();
}

struct Walk {
  int64_t N, C, H, W, OH, OW;
  bool cl;
  // element strides of x (and of the gradient) and of the output
  int64_t sN, sC, sH, sW, oN, oC, oH, oW;
};

Walk make_walk(const at::Tensor& x, const at::Tensor& out) {
  Walk w{x.size(0), x.size(1), x.size(2), x.size(3), x.size(2) / 2, x.size(3) / 2, is_channels_last(x),
         x.stride(0), x.stride(1), x.stride(2), x.stride(3), out.stride(0), out.stride(1), out.stride(2),
         out.stride(3)};
  return w;
}

at::Tensor abs_tanh_maxpool2d_cpu(const at::Tensor& x_in) {
  const char* op = "abs_tanh_maxpool2d";
  check_input(x_in, op);
  const at::Tensor x = walk_layout(x_in);
  const bool cl = is_channels_last(x);
  at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2},
                             x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                          : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const Walk w = make_walk(x, out);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "abs_tanh_maxpool2d", [&] {
    const auto& k = cpu::abs_tanh_kernels<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    if (w.cl) {
      // tasks: output rows (n, oh), each OW cells of C channels
      const int64_t rows = w.N * w.OH, row_len = w.OW * w.C;
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, row_len)), [&](int64_t r0,
                                                                                                    int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = r / w.OH, oh = r % w.OH;
          scalar_t* o = op_ + n * w.oN + oh * w.oH;
          for (int64_t ow = 0; ow < w.OW; ++ow) {
            const scalar_t* a = xp + n * w.sN + 2 * oh * w.sH + 2 * ow * w.sW;
            const scalar_t* cell[4] = {a, a + w.sW, a + w.sH, a + w.sH + w.sW};
            k.pool_max_abs(cell, o + ow * w.oW, w.C);
          }
          k.forward(o, o, row_len);  // tanh(max |x|) = |tanh(max |x|)|
        }
      });
    } else {
      // tasks: output planes' rows (n, c, oh), each OW cells; x contiguous, so a cell's columns are 2 apart
      const int64_t rows = w.N * w.C * w.OH;
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, w.OW)), [&](int64_t r0,
                                                                                               int64_t r1) {
        std::vector<scalar_t> scratch(4 * w.OW);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t oh = r % w.OH, nc = r / w.OH;
          const scalar_t* a = xp + nc * w.H * w.W + 2 * oh * w.W;
          scalar_t* o = op_ + nc * w.OH * w.OW + oh * w.OW;
          // a run of OW cells: the four corners as stride-2 rows, gathered into four contiguous rows first
          scalar_t* tmp = scratch.data();
          for (int64_t ow = 0; ow < w.OW; ++ow) {
            tmp[ow] = a[2 * ow];
            tmp[w.OW + ow] = a[2 * ow + 1];
            tmp[2 * w.OW + ow] = a[w.W + 2 * ow];
            tmp[3 * w.OW + ow] = a[w.W + 2 * ow + 1];
          }
          const scalar_t* cell[4] = {tmp, tmp + w.OW, tmp + 2 * w.OW, tmp + 3 * w.OW};
          k.pool_max_abs(cell, o, w.OW);
          k.forward(o, o, w.OW);
        }
      });
    }
  });
  return out;
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
  const at::Tensor x = walk_layout(x_in);
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor go = grad_output.contiguous(fmt);
  const at::Tensor out = out_in.contiguous(fmt);
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  const Walk w = make_walk(x, out);
  const bool odd_h = w.H % 2 != 0, odd_w = w.W % 2 != 0;
  // The row / column floor mode drops gets no gradient: 0, or NaN where x is NaN (0 times abs_tanh's derivative).
  const auto dropped = [](const at::Tensor& xs, at::Tensor gs) { gs.copy_(at::where(xs.isnan(), xs, 0)); };
  if (odd_h) dropped(x.narrow(2, w.H - 1, 1), gx.narrow(2, w.H - 1, 1));
  if (odd_w) dropped(x.narrow(3, w.W - 1, 1), gx.narrow(3, w.W - 1, 1));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "abs_tanh_maxpool2d", [&] {
    const auto& k = cpu::abs_tanh_kernels<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    const scalar_t* outp = out.const_data_ptr<scalar_t>();
    scalar_t* gp = gx.mutable_data_ptr<scalar_t>();
    if (w.cl) {
      const int64_t rows = w.N * w.OH;
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, 4 * w.OW * w.C)),
                       [&](int64_t r0, int64_t r1) {
                         for (int64_t r = r0; r < r1; ++r) {
                           const int64_t n = r / w.OH, oh = r % w.OH;
                           for (int64_t ow = 0; ow < w.OW; ++ow) {
                             const int64_t i = n * w.sN + 2 * oh * w.sH + 2 * ow * w.sW;
                             const int64_t o = n * w.oN + oh * w.oH + ow * w.oW;
                             const scalar_t* cell[4] = {xp + i, xp + i + w.sW, xp + i + w.sH, xp + i + w.sH + w.sW};
                             scalar_t* gcell[4] = {gp + i, gp + i + w.sW, gp + i + w.sH, gp + i + w.sH + w.sW};
                             k.pool_backward(cell, gop + o, outp + o, gcell, w.C);
                           }
                         }
                       });
    } else {
      const int64_t rows = w.N * w.C * w.OH;
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, 4 * w.OW)),
                       [&](int64_t r0, int64_t r1) {
                         std::vector<scalar_t> scratch(8 * w.OW);
                         for (int64_t r = r0; r < r1; ++r) {
                           const int64_t oh = r % w.OH, nc = r / w.OH;
                           const int64_t i0 = nc * w.H * w.W + 2 * oh * w.W, o0 = nc * w.OH * w.OW + oh * w.OW;
                           // the run's four corners gathered into contiguous rows, their gradients scattered back
                           scalar_t* t = scratch.data();
                           const int64_t corner[4] = {0, 1, w.W, w.W + 1};
                           for (int k4 = 0; k4 < 4; ++k4)
                             for (int64_t ow = 0; ow < w.OW; ++ow) t[k4 * w.OW + ow] = xp[i0 + corner[k4] + 2 * ow];
                           const scalar_t* cell[4] = {t, t + w.OW, t + 2 * w.OW, t + 3 * w.OW};
                           scalar_t* gcell[4] = {t + 4 * w.OW, t + 5 * w.OW, t + 6 * w.OW, t + 7 * w.OW};
                           k.pool_backward(cell, gop + o0, outp + o0, gcell, w.OW);
                           for (int k4 = 0; k4 < 4; ++k4)
                             for (int64_t ow = 0; ow < w.OW; ++ow) gp[i0 + corner[k4] + 2 * ow] = gcell[k4][ow];
                         }
                       });
    }
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CPU, m) {
  m.impl("abs_tanh_maxpool2d", &abs_tanh_maxpool2d_cpu);
  m.impl("_abs_tanh_maxpool2d_backward", &abs_tanh_maxpool2d_backward_cpu);
}

}  // namespace tcdcn
