// The epilogues of the forward kernels, the codes of the lc_conv2d_stack op's `int[] epilogue` argument (and of
// _C.StackEngine's): what is done to a layer's sums before they are stored. The one definition in C++; Python sees
// the codes as tcdcn_ext._C.EPILOGUES ({name: code}, the names of tcdcn_ext.ops.LC_EPILOGUES).
//
// Torch-free: the per-ISA kernel files include it (through cpu/simd/kernels.h).
#pragma once

#include <cstdint>

namespace tcdcn {

// kPlain stores the sum, kAbsTanh |tanh(sum)|, kRelu relu(sum); kAbsTanhMaxPool and kReluMaxPool the same followed
// by a 2x2 max pooling (stride 2, floor mode; NaN propagates as in torch's max_pool2d).
enum Epilogue : int { kPlain = 0, kAbsTanh = 1, kAbsTanhMaxPool = 2, kRelu = 3, kReluMaxPool = 4 };

constexpr int kNumEpilogues = 5;

// Names of the codes, in code order: the keys of tcdcn_ext.ops.LC_EPILOGUES and _C.EPILOGUES.
constexpr const char* kEpilogueNames[kNumEpilogues] = {"none", "abs_tanh", "abs_tanh_maxpool2d", "relu",
                                                       "relu_maxpool2d"};

constexpr bool valid_epilogue(int64_t code) { return code >= 0 && code < kNumEpilogues; }

// Whether an epilogue ends with the 2x2 max pooling (its output is then [H_out / 2, W_out / 2], floor mode).
// For the torch-side code: the per-ISA kernels call only functions of internal linkage (cpu/simd/lc_conv2d_body.h
// says why) and keep their own copy, lc_epilogue.h's pooled().
constexpr bool pools(Epilogue e) { return e == kAbsTanhMaxPool || e == kReluMaxPool; }

}  // namespace tcdcn
