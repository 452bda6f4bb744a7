// Pieces of the CPU lc_conv2d shared by its ops (lc_conv2d_cpu.cpp) and the layer-stack plan (lc_stack_plan.cpp):
// the threading of the forward kernels over output locations, the kernels' tap-offset tables and the bias layout.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "epilogue.h"

namespace tcdcn::cpu {

// Smallest chunk of work (multiply-adds) worth a thread.
constexpr int64_t kMinWorkPerTask = 1 << 15;

inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(1, work_per_item));
}

// Runs fn(l0, l1) over the H_out x W_out output locations in parallel; work: multiply-adds per location. With the
// pooling epilogue each task gets whole pairs of output rows: a 2x2 cell is then written by one thread only, and
// finished by its last location (kernels.h).
template <typename F>
void for_location_ranges(int64_t H_out, int64_t W_out, int64_t work, Epilogue epilogue, const F& fn) {
  const int64_t L = H_out * W_out;
  if (!pools(epilogue)) {
    at::parallel_for(0, L, grain_for(work), fn);
    return;
  }
  const int64_t pair = 2 * W_out;
  at::parallel_for(0, (H_out + 1) / 2, grain_for(work * pair), [&](int64_t p0, int64_t p1) {
    fn(p0 * pair, std::min(p1 * pair, L));
  });
}

// The kernels' in_off table for an input with element strides (sC, sH, sW): tap k = (ci * kH + kh) * kW + kw.
void tap_offsets(int64_t C_in, int64_t kH, int64_t kW, int64_t sC, int64_t sH, int64_t sW, std::vector<int64_t>& off);

// A locally connected bias [C_out, H_out, W_out] with [H_out, W_out, C_out] memory, so that a location's channels
// are one vector load: the bias itself when it is laid out so already (channels-last strides; TCDCN's inference
// path keeps its biases so, and at batch 1 even a copy costs), else a copy.
at::Tensor bias_hwc(const at::Tensor& b, int64_t C_out, int64_t H_out, int64_t W_out);

}  // namespace tcdcn::cpu
