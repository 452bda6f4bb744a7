// Argument checks and memory layout of abs_tanh / _abs_tanh_backward, shared by the CPU and CUDA implementations
// (and mirrored by the fake kernels in tcdcn_ext/ops.py): both walk their tensors as flat storage, so the inputs
// are made dense, and for the backward given the same strides as each other.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

#include "lc_conv2d_shape.h"

namespace tcdcn {

// x itself when it is non-overlapping and dense (any layout, e.g. channels-last, is kept), else a contiguous copy.
inline at::Tensor abs_tanh_dense_input(const at::Tensor& x) {
  check_floating(x, "abs_tanh", "x");
  return x.is_non_overlapping_and_dense() ? x : x.contiguous();
}

// Checks (grad_output, x) and returns them with one shared dense layout: x's when x is dense and grad_output
// has its strides, otherwise both contiguous.
inline std::pair<at::Tensor, at::Tensor> abs_tanh_backward_inputs(const at::Tensor& grad_output,
                                                                  const at::Tensor& x) {
  const char* op = "_abs_tanh_backward";
  check_floating(x, op, "x");
  TORCH_CHECK(grad_output.sizes() == x.sizes(), op, ": grad_output shape ", grad_output.sizes(),
              " does not match x shape ", x.sizes());
  TORCH_CHECK(grad_output.scalar_type() == x.scalar_type(), op, ": grad_output dtype ", grad_output.scalar_type(),
              " does not match x dtype ", x.scalar_type());
  if (x.is_non_overlapping_and_dense() && grad_output.strides() == x.strides()) return {grad_output, x};
  return {grad_output.contiguous(), x.contiguous()};
}

}  // namespace tcdcn
