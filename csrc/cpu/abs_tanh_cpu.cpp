// CPU implementation of tcdcn_ext::abs_tanh / _abs_tanh_backward: elementwise over the storage of a dense
// tensor (any dense layout, e.g. channels-last, is kept), threaded with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/kernel_table.h"
#include "abs_tanh_layout.h"

namespace tcdcn {
namespace {

constexpr int64_t kGrain = 1 << 14;

at::Tensor abs_tanh_cpu(const at::Tensor& x_in) {
  const at::Tensor x = abs_tanh_dense_input(x_in);
  at::Tensor y = at::empty_like(x);  // same strides as x: both are walked as flat storage
  const int64_t n = x.numel();
  if (n == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "abs_tanh", [&] {
    const auto& k = cpu::abs_tanh_kernels<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) { k.forward(xp + i0, yp + i0, i1 - i0); });
  });
  return y;
}

at::Tensor abs_tanh_backward_cpu(const at::Tensor& grad_output, const at::Tensor& x_in) {
  const auto inputs = abs_tanh_backward_inputs(grad_output, x_in);
  const at::Tensor& go = inputs.first;
  const at::Tensor& x = inputs.second;
  at::Tensor gi = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return gi;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "_abs_tanh_backward", [&] {
    const auto& k = cpu::abs_tanh_kernels<scalar_t>();
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gip = gi.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) { k.backward(gop + i0, xp + i0, gip + i0, i1 - i0); });
  });
  return gi;
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CPU, m) {
  m.impl("abs_tanh", &abs_tanh_cpu);
  m.impl("_abs_tanh_backward", &abs_tanh_backward_cpu);
}

}  // namespace tcdcn
