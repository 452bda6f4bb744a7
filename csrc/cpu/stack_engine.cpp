#include "cpu/stack_engine.h"

#include <ATen/ATen.h>

#include <cmath>
#include <utility>

namespace tcdcn::cpu {

StackEngine::StackEngine(const std::vector<at::Tensor>& weight, const std::vector<std::optional<at::Tensor>>& bias,
                         const std::vector<int64_t>& epilogue, const at::Tensor& example, std::vector<int64_t> split,
                         std::vector<at::Tensor> sources, std::vector<std::string> names,
                         std::vector<int64_t> first_shape, std::vector<bool> softmax,
                         const std::vector<std::optional<at::Tensor>>& scale)
    : plan_(weight, bias, epilogue, example, "StackEngine", scale),
      split_(std::move(split)),
      watch_(std::move(sources)),
      names_(std::move(names)),
      first_shape_(std::move(first_shape)),
      softmax_(std::move(softmax)) {
  TORCH_CHECK(softmax_.empty() || softmax_.size() == split_.size(), "StackEngine: ", softmax_.size(),
              " softmax flags for ", split_.size(), " split blocks");
  TORCH_CHECK(softmax_.empty() || example.scalar_type() == at::kFloat, "StackEngine: softmax blocks need float32");
  TORCH_CHECK(names_.empty() || names_.size() == split_.size(), "StackEngine: ", names_.size(), " names for ",
              split_.size(), " split blocks");
  int64_t first = 1;
  for (int64_t d : first_shape_) first *= d;
  TORCH_CHECK(first_shape_.empty() || (!split_.empty() && first == split_[0]), "StackEngine: first_shape ",
              at::IntArrayRef(first_shape_), " does not hold the first block's ", split_.empty() ? 0 : split_[0],
              " columns");
  int64_t total = 0;
  for (int64_t n : split_) {
    TORCH_CHECK(n >= 0, "StackEngine: split sizes must be >= 0, got ", n);
    total += n;
  }
  TORCH_CHECK(total == plan_.out_channels(), "StackEngine: split sizes add up to ", total, " but the last layer has ",
              plan_.out_channels(), " output channels");
  TORCH_CHECK(plan_.out_height() == 1 && plan_.out_width() == 1, "StackEngine: the last layer must give a 1 x 1 ",
              "map, got ", plan_.out_height(), " x ", plan_.out_width());
}

std::optional<at::Tensor> StackEngine::stacked(const at::Tensor& x) const {
  if (!usable(x)) return std::nullopt;
  return run(x);
}

std::optional<at::Tensor> StackEngine::probabilities(const at::Tensor& x) const {
  TORCH_CHECK(softmax_.size() == split_.size(), "StackEngine.probabilities: the engine was made without softmax "
              "flags");
  if (!usable(x)) return std::nullopt;
  at::Tensor y = run(x);
  float* p = y.mutable_data_ptr<float>();  // [N, D] contiguous (run's view of a [N, D, 1, 1] output)
  const int64_t N = y.size(0), D = y.size(1);
  for (int64_t n = 0; n < N; ++n) {
    float* row = p + n * D;
    int64_t c = 0;
    for (size_t b = 0; b < split_.size(); c += split_[b], ++b) {
      if (!softmax_[b] || split_[b] == 0) continue;
      float* z = row + c;
      float top = z[0];
      for (int64_t i = 1; i < split_[b]; ++i) top = z[i] > top || z[i] != z[i] ? z[i] : top;  // NaN wins
      float total = 0.f;
      for (int64_t i = 0; i < split_[b]; ++i) total += (z[i] = std::exp(z[i] - top));
      for (int64_t i = 0; i < split_[b]; ++i) z[i] /= total;
    }
  }
  return y;
}

std::optional<std::vector<at::Tensor>> StackEngine::heads(const at::Tensor& x) const {
  if (!usable(x)) return std::nullopt;
  return split(run(x));
}

std::optional<std::vector<at::Tensor>> StackEngine::outputs(const at::Tensor& x) const {
  TORCH_CHECK(names_.size() == split_.size(), "StackEngine.outputs: the engine was made without names");
  if (!usable(x)) return std::nullopt;
  std::vector<at::Tensor> parts = split(run(x));
  if (!first_shape_.empty()) {
    std::vector<int64_t> shape{parts[0].size(0)};
    shape.insert(shape.end(), first_shape_.begin(), first_shape_.end());
    parts[0] = parts[0].view(shape);
  }
  return parts;
}

std::vector<at::Tensor> StackEngine::split(const at::Tensor& y) const {
  std::vector<at::Tensor> parts = y.split_with_sizes(split_, 1);
  if (y.size(0) > 1)
    for (at::Tensor& p : parts) p = p.contiguous();
  return parts;
}

at::Tensor StackEngine::run(const at::Tensor& x) const {
  const at::Tensor y = plan_.run(x);
  return y.view({y.size(0), y.size(1)});
}

}  // namespace tcdcn::cpu
