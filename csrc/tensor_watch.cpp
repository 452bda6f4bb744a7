#include "tensor_watch.h"

namespace tcdcn {

TensorWatch::TensorWatch(std::vector<at::Tensor> tensors) : tensors_(std::move(tensors)) {
  for (const at::Tensor& t : tensors_) stamp_.push_back(stamp_of(t));
}

bool TensorWatch::changed() const {
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (stamp_of(tensors_[i]) != stamp_[i]) return true;
  return false;
}

std::pair<int64_t, const void*> TensorWatch::stamp_of(const at::Tensor& t) {
  return {t.is_inference() ? 0 : int64_t(t._version()), t.has_storage() ? t.const_data_ptr() : nullptr};
}

}  // namespace tcdcn
