// Batched int8-weight locally connected forward on AMX bf16 tiles (the 'amx' CPU path; interface and numerics in
// lc_amx.h). This file includes no torch header and is compiled with only its own ISA flags (setup.py:
// SIMD_FLAGS, "_amx.cpp"); it is called only when tcdcn::cpu::active_isa() is 'amx', which the ISA detection
// grants only after the kernel allowed this process the tile data state (arch_prctl(ARCH_REQ_XCOMP_PERM)).
//
// Per location the batch is a [N, K] x [K, C_out] product. The float kernels hold a register tile of faces x
// channel vectors and broadcast one input tap at a time; here one tdpbf16ps multiplies a 16 x 32 block of the
// gathered windows by a 32 x 16 block of weights (8192 multiply-adds), with 2 x 2 accumulator tiles (32 faces x
// 32 channels) per pass over K.
#include <immintrin.h>

#include "cpu/simd/kernels.h"
#include "cpu/simd/lc_amx.h"

#define TCDCN_VEC_BYTES 64
#define TCDCN_NUM_VREGS 32

namespace tcdcn::cpu::amx {
#include "cpu/simd/vec.h"
#include "cpu/simd/abs_tanh_math.h"
#include "cpu/simd/lc_epilogue.h"

namespace {

// Tile registers: 0-3 accumulators (faces block f, channels block c at 2 f + c), 4-5 windows, 6-7 weights.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;  // 16 floats, or 32 bfloat16 (16 pairs)
    c.rows[t] = 16;
  }
  _tile_loadconfig(&c);
}

// Face n's window at location (i, j) as the first K taps of a bfloat16 row, (kh, kw, ci) order (the zeros after
// K are written once per call).
inline void gather_row(const LcAmxGeom& g, const float* face, int64_t i, int64_t j, uint16_t* row) {
  const int64_t run = g.kW * g.C_in;
  int64_t k = 0;
  for (int64_t kh = 0; kh < g.kH; ++kh) {
    const float* src = face + ((i + kh) * g.W + j) * g.C_in;
    for (int64_t e = 0; e < run; e += 16) {
      const int n = run - e >= 16 ? 16 : int(run - e);
      const __mmask16 m = n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + e));
      _mm256_mask_storeu_epi16(row + k + e, m, reinterpret_cast<const __m256i&>(h));
    }
    k += run;
  }
}

// One pass over K for faces [f0, f0 + 16 FB) x channels [c0, c0 + 16 CB) of location l; a: the gathered rows,
// bl: the location's weights; the sums go to cbuf [32][32] floats.
template <int FB, int CB>
inline void tile_pass(const LcAmxGeom& g, const uint16_t* a, int64_t f0, const uint16_t* bl, int64_t c0,
                      float* cbuf) {
  const int64_t a_stride = g.K_pad * 2, b_stride = g.C_out * 4;  // bytes per row
  _tile_zero(0);
  if (CB > 1) _tile_zero(1);
  if (FB > 1) _tile_zero(2);
  if (FB > 1 && CB > 1) _tile_zero(3);
  for (int64_t k = 0; k < g.K_pad; k += 32) {
    const uint16_t* bk = bl + (k / 2) * g.C_out * 2 + c0 * 2;
    _tile_loadd(4, a + f0 * g.K_pad + k, a_stride);
    _tile_loadd(6, bk, b_stride);
    if (CB > 1) _tile_loadd(7, bk + 32, b_stride);
    _tile_dpbf16ps(0, 4, 6);
    if (CB > 1) _tile_dpbf16ps(1, 4, 7);
    if (FB > 1) {
      _tile_loadd(5, a + (f0 + 16) * g.K_pad + k, a_stride);
      _tile_dpbf16ps(2, 5, 6);
      if (CB > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, cbuf, 128);
  if (CB > 1) _tile_stored(1, cbuf + 16, 128);
  if (FB > 1) _tile_stored(2, cbuf + 16 * 32, 128);
  if (FB > 1 && CB > 1) _tile_stored(3, cbuf + 16 * 32 + 16, 128);
}

}  // namespace

void lc_forward_int8_tiles(const LcAmxGeom& g, const float* in, const uint16_t* b, const float* ws,
                           const float* bias, float* out, int64_t l0, int64_t l1, Epilogue mode, uint16_t* a) {
  const int64_t C = g.C_out, N = g.N, n_pad = (N + 15) / 16 * 16;
  const bool pool = pooled(mode);
  const int64_t slots = pool ? (g.H_out / 2) * (g.W_out / 2) : g.H_out * g.W_out;
  const int64_t out_stride = slots * C;
  const int64_t h_keep = pool ? 2 * (g.H_out / 2) : g.H_out, w_keep = pool ? 2 * (g.W_out / 2) : g.W_out;
  // a: this call's windows, [n_pad, K_pad] bfloat16 (the padding faces zero); cbuf: the accumulators' spill.
  alignas(64) float cbuf[32 * 32];
  const int64_t K = g.kH * g.kW * g.C_in;
  for (int64_t n = 0; n < n_pad; ++n)
    for (int64_t k = n < N ? K : 0; k < g.K_pad; ++k) a[n * g.K_pad + k] = 0;
  configure_tiles();
  int64_t i = l0 / g.W_out, j = l0 % g.W_out;
  for (int64_t l = l0; l < l1; ++l) {
    if (i < h_keep && j < w_keep) {  // else floor-mode pooling drops the location
      for (int64_t n = 0; n < N; ++n) gather_row(g, in + n * g.in_sN, i, j, a + n * g.K_pad);
      const int64_t slot = pool ? (i / 2) * (g.W_out / 2) + j / 2 : l;
      const int part = cell_part_at(i, j);
      const uint16_t* bl = b + l * g.K_pad * C;
      for (int64_t f0 = 0; f0 < n_pad; f0 += 32) {
        const int fb = n_pad - f0 >= 32 ? 2 : 1;
        for (int64_t c0 = 0; c0 < C; c0 += 32) {
          const int cb = C - c0 >= 32 ? 2 : 1;
          if (fb == 2 && cb == 2) tile_pass<2, 2>(g, a, f0, bl, c0, cbuf);
          else if (fb == 2) tile_pass<2, 1>(g, a, f0, bl, c0, cbuf);
          else if (cb == 2) tile_pass<1, 2>(g, a, f0, bl, c0, cbuf);
          else tile_pass<1, 1>(g, a, f0, bl, c0, cbuf);
          const int64_t nf = (f0 + 16 * fb < N ? f0 + 16 * fb : N) - f0;
          for (int64_t r = 0; r < nf; ++r) {
            for (int v = 0; v < cb; ++v) {
              const int64_t c = c0 + 16 * v;
              const __m512 s = _mm512_loadu_ps(ws + l * C + c);
              const __m512 bv = bias ? _mm512_loadu_ps(bias + l * C + c) : _mm512_setzero_ps();
              const __m512 y = _mm512_fmadd_ps(_mm512_loadu_ps(cbuf + r * 32 + 16 * v), s, bv);
              store_out<float>(out + (f0 + r) * out_stride + slot * C + c, static_cast<VT<float>::vec>(y), mode,
                               part);
            }
          }
        }
      }
    }
    if (++j == g.W_out) {
      j = 0;
      ++i;
    }
  }
  _tile_release();
}

}  // namespace tcdcn::cpu::amx
