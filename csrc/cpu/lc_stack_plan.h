// A stack of convolutional layers (each stride 1, unpadded, with its epilogue) checked once for one input shape
// and then run any number of times: what the tcdcn_ext::lc_conv2d_stack op does on each call, and what TCDCN's CPU
// inference path keeps (through tcdcn_ext._C.StackEngine) so that a batch-1 forward pays for the kernels and one
// allocation, not for the argument checks, the dispatcher and per-layer temporaries (together ~40 us per call, a
// seventh of the 5-point forward).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "epilogue.h"

namespace tcdcn::cpu {

class LcStackPlan {
 public:
  // weight[i]: locally connected [H_out, W_out, C_in, kH, kW, C_out] with bias[i] [C_out, H_out, W_out] or none,
  // or a spatially shared convolution [C_out, C_in, kH, kW] with bias[i] [C_out] or none; of the input's dtype, or
  // float16 with a float32 input. epilogue[i]: an Epilogue code (epilogue.h).
  // `input` gives the dtype, device and shape [N, C, H, W] the plan serves (only its metadata is read; N is free).
  // Errors name `op` and the layer. Keeps references to the weights (and channels-last copies of biases that are
  // not laid out so already).
  // scale (empty, or one entry per layer): a locally connected layer may also have an int8 weight (symmetric
  // quantisation, float32 input), with scale[i] its float32 [H_out, W_out, C_out] scales: weight = q * scale.
  LcStackPlan(const std::vector<at::Tensor>& weight, const std::vector<std::optional<at::Tensor>>& bias,
              at::IntArrayRef epilogue, const at::Tensor& input, const char* op,
              const std::vector<std::optional<at::Tensor>>& scale = {});

  // The same layers, for inputs of x's height and width (x's channels and dtype must be the plan's): every layer
  // must be a spatially shared one, whose prepared weights are reused as they are (no re-layout).
  LcStackPlan for_input(const at::Tensor& x, const char* op) const;

  // Whether run() takes x: the plan's dtype, CPU, [N, C, H, W] of its C, H, W (any N, any strides).
  bool serves(const at::Tensor& x) const;
  // The stack's output for x (serves(x) must hold): [N, C_out, H_out, W_out] of the last layer, channels-last.
  at::Tensor run(const at::Tensor& x) const;
  // The last layer's output: channels, height, width.
  int64_t out_channels() const { return layers_.back().C_out; }
  int64_t out_height() const { return layers_.back().out_h(); }
  int64_t out_width() const { return layers_.back().out_w(); }

 private:
  struct Layer {
    // Locally connected: weight as given, bias undefined or [H_out, W_out, C_out] memory. Shared (a 4-D weight):
    // weight [K, C_pad] and bias [C_pad], as conv_forward reads them (cpu/simd/kernels.h).
    at::Tensor weight, bias;
    at::Tensor scale;  // int8 weights: float32 [H_out, W_out, C_out] contiguous; else undefined
    // int8 weights on a host with the vnni path (and C_out a multiple of 16): the weight as the integer kernels read
    // it ([L, P, C_out, 2], cpu/simd/lc_int8.h) and the pairs' offsets in the int16 channels-last input.
    at::Tensor pair_weight;
    std::vector<int64_t> pair_off;
    // int8 weights on a host with the amx path (C_out a multiple of 16): q as bfloat16 in the tiles' layout
    // ([L, K_pad / 2, C_out, 2], cpu/simd/lc_amx.h), for batches of at least kTileMinFaces faces.
    at::Tensor tile_weight;
    void set_pairs();
    bool shared;
    Epilogue epilogue;
    int64_t C_in, H, W, C_out, H_out, W_out, kH, kW;
    std::vector<int64_t> off;  // the kernels' in_off table (kernels.h) for the input this layer reads
    void set_offsets(bool first);  // off for this geometry (the first layer: an NCHW input)
    int64_t out_h() const { return pools(epilogue) ? H_out / 2 : H_out; }
    int64_t out_w() const { return pools(epilogue) ? W_out / 2 : W_out; }
    int64_t out_numel() const { return C_out * out_h() * out_w(); }
  };
  std::vector<Layer> layers_;
  at::ScalarType dtype_;
  int64_t C_, H_, W_;
};

}  // namespace tcdcn::cpu
