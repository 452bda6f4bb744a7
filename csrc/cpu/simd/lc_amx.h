// Torch-free interface of the batched int8-weight kernel on AMX (lc_conv2d_amx.cpp, built with its own flags and
// called only when tcdcn::cpu::active_isa() is 'amx').
//
// A locally connected layer with symmetric int8 weights q (w = q * ws[l, co], lc_int8.h) at a batch of faces: per
// location, the faces' windows are gathered as bfloat16 rows A [N, K] (round to nearest even: 8 significant bits per
// activation), q is held as bfloat16 B [K, C_out] (exact: |q| <= 127), and AMX tiles sum A B in float32
// (tdpbf16ps); then out = sum * ws[l, co] + bias[l, co] and the epilogue, as LcKernels::forward.
#pragma once

#include <cstdint>

#include "epilogue.h"

namespace tcdcn::cpu {

struct LcAmxGeom {
  int64_t N, H, W, C_in;          // float input [N, H, W, C_in] channels-last rows, face n at n * in_sN
  int64_t in_sN;
  int64_t H_out, W_out, C_out;    // C_out a multiple of 16
  int64_t kH, kW;
  int64_t K_pad;                  // kH * kW * C_in rounded up to a multiple of 32
};

// The taps in (kh, kw, ci) order (a kernel row is one run of kW * C_in channels-last floats), padded to a multiple
// of 32, the tile depth.
constexpr int64_t lc_amx_k_pad(int64_t K) { return (K + 31) / 32 * 32; }

inline int64_t lc_amx_scratch(const LcAmxGeom& g) { return (g.N + 15) / 16 * 16 * g.K_pad; }

namespace amx {
// Locations [l0, l1) of every face (a pooling epilogue: whole pairs of output rows). b: [L, K_pad / 2, C_out, 2]
// bfloat16 bits (tap pairs interleaved per channel: the tiles' VNNI layout), the zero padding taps included; ws:
// [L, C_out]; bias: [L, C_out] or null; out as LcKernels::forward writes it; a: the caller's scratch for the
// gathered windows, lc_amx_scratch(g) bfloat16 values, 64-byte aligned.
void lc_forward_int8_tiles(const LcAmxGeom& g, const float* in, const uint16_t* b, const float* ws,
                           const float* bias, float* out, int64_t l0, int64_t l1, Epilogue epilogue, uint16_t* a);
}  // namespace amx

}  // namespace tcdcn::cpu
