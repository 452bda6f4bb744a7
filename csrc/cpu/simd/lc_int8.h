// Torch-free interface of the int8-weight kernels on AVX-512 VNNI (lc_conv2d_vnni.cpp, built with its own flags and
// called only when tcdcn::cpu::active_isa() is 'vnni' or better).
//
// A locally connected layer with symmetric int8 weights q (w = q * ws[l, co]) runs on integer dot products: its
// input is first quantised per face to int16 (x = xq * xs[n], |xq| <= qmax, round to nearest), then
// vpdpwssd sums pairs of int16 x int16 products (q widened to int16 in registers) into exact int32 sums, and each sum
// becomes out = float(sum) * (ws[l, co] * xs[n]) + bias[l, co], then the epilogue (as LcKernels::forward).
// The int16 rounding of the activations is at most xs / 2 = max|x| / (2 qmax) per value (qmax >= 2^13 for every
// TCDCN layer), far below the weights' own rounding (max|w| / 254 per filter).
//
// Taps come in pairs adjacent in memory: the input is channels-last [N, H, W, C_in] (int16), so the taps of one
// kernel row are one run of kW * C_in elements, taken two at a time; when the run is odd, its last pair's second
// element is the next one in memory (the weight there is zero; the caller leaves two readable elements after the
// last face).
#pragma once

#include <cstdint>

#include "epilogue.h"

namespace tcdcn::cpu {

struct LcPairGeom {
  int64_t N, H, W, C_in;       // the int16 input [N, H, W, C_in], contiguous
  int64_t H_out, W_out, C_out;  // C_out a multiple of 16
  int64_t P;                   // tap pairs per location
  const int64_t* pair_off;     // [P]: element offset of pair p from a window's top-left corner
};

// Pairs of a kH x kW kernel over C_in channels: ceil(kW * C_in / 2) per kernel row.
constexpr int64_t lc_pairs_per_row(int64_t kW, int64_t C_in) { return (kW * C_in + 1) / 2; }

// The largest |xq| for which every sum of 2P products with |q| <= 127 fits an int32.
constexpr int64_t lc_pair_qmax(int64_t P) {
  const int64_t q = ((int64_t(1) << 31) - 1) / (127 * 2 * (P > 0 ? P : 1));
  return q < 32767 ? q : 32767;
}

namespace vnni {
// xq[n, :] = round(x[n, :] / xs[n]) with xs[n] = max_i |x[n, i]| / qmax (1 where the row is all zeros, NaN where it
// holds a NaN or an infinity, so that the layer's outputs of that face come out NaN); x: N rows of `count` floats,
// row n at x + n * x_sN; xq: N contiguous rows of `count`.
void quantize_rows(const float* x, int64_t x_sN, int64_t N, int64_t count, int64_t qmax, int16_t* xq, float* xs);
// Locations [l0, l1) of every face (with a pooling epilogue: whole pairs of output rows, as LcKernels::forward).
// w: [L, P, C_out, 2] int8 (pair p's two taps interleaved per channel); ws: [L, C_out]; bias: [L, C_out] or null;
// out: [N, out slots, C_out] float as LcKernels::forward writes it.
void lc_forward_pairs(const LcPairGeom& g, const int16_t* xq, const float* xs, const int8_t* w, const float* ws,
                      const float* bias, float* out, int64_t l0, int64_t l1, Epilogue epilogue);
}  // namespace vnni

}  // namespace tcdcn::cpu
