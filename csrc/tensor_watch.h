// TensorWatch: remembers tensors and tells whether one of them has been modified in place or given new storage
// since (tcdcn_ext._C.TensorWatch, and the parameter check of cpu/stack_engine.h). Device-independent.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace tcdcn {

// Remembers tensors and their (version counter, storage address); changed() tells whether one of them has been
// modified in place or given new storage since. Inference tensors (made under torch.inference_mode) have no
// version counter: only their storage is watched.
class TensorWatch {
 public:
  explicit TensorWatch(std::vector<at::Tensor> tensors);
  bool changed() const;

 private:
  static std::pair<int64_t, const void*> stamp_of(const at::Tensor& t);
  std::vector<at::Tensor> tensors_;
  std::vector<std::pair<int64_t, const void*>> stamp_;
};

}  // namespace tcdcn
