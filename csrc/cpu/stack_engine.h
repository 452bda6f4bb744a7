// StackEngine: TCDCN's CPU inference path (tcdcn_ext/model.py) as one object, an LcStackPlan of the whole network
// plus the checks and the output blocks around it. Python reaches it as tcdcn_ext._C.StackEngine (the binding in
// tcdcn_ext.cpp makes a not-served call None and releases the GIL around every call).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cpu/lc_stack_plan.h"
#include "tensor_watch.h"

namespace tcdcn::cpu {

// An LcStackPlan of the whole network (the last layer the stacked heads, a 1 x 1 map), the heads' column counts
// (`split`; and their names, the landmark block's shape, which blocks are class logits), and a TensorWatch on the
// parameters the plan's weights were made from (`sources`). Every call (stacked, probabilities, heads, outputs)
// returns nullopt where the plan does not serve x (dtype, device, shape) or the parameters changed since (the
// caller then rebuilds it or takes the module path, which names what is wrong).
class StackEngine {
 public:
  // weight, bias, epilogue, scale: the layers, as LcStackPlan takes them; example: an input the plan serves.
  // names (empty, or one per block), first_shape (empty, or the first block's shape without the batch dimension),
  // softmax (empty, or one flag per block; float32 only).
  StackEngine(const std::vector<at::Tensor>& weight, const std::vector<std::optional<at::Tensor>>& bias,
              const std::vector<int64_t>& epilogue, const at::Tensor& example, std::vector<int64_t> split,
              std::vector<at::Tensor> sources, std::vector<std::string> names, std::vector<int64_t> first_shape,
              std::vector<bool> softmax, const std::vector<std::optional<at::Tensor>>& scale = {});

  // [N, D]: the last layer's output.
  std::optional<at::Tensor> stacked(const at::Tensor& x) const;
  // stacked() with each block flagged in `softmax` turned into probabilities (softmax over its columns, per row).
  std::optional<at::Tensor> probabilities(const at::Tensor& x) const;
  // The output split into [N, split[i]] blocks.
  std::optional<std::vector<at::Tensor>> heads(const at::Tensor& x) const;
  // heads() with the first block viewed as [N, *first_shape]: block i is names()[i].
  std::optional<std::vector<at::Tensor>> outputs(const at::Tensor& x) const;
  const std::vector<std::string>& names() const { return names_; }

 private:
  bool usable(const at::Tensor& x) const { return plan_.serves(x) && !watch_.changed(); }
  // Column blocks of y ([N, D]), contiguous like per-head products (a single row already is).
  std::vector<at::Tensor> split(const at::Tensor& y) const;
  // [N, D]: the last layer's [N, D, 1, 1] output.
  at::Tensor run(const at::Tensor& x) const;

  LcStackPlan plan_;
  std::vector<int64_t> split_;
  TensorWatch watch_;
  std::vector<std::string> names_;
  std::vector<int64_t> first_shape_;
  std::vector<bool> softmax_;
};

}  // namespace tcdcn::cpu
