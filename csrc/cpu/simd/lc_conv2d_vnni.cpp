// int8-weight locally connected forward on AVX-512 VNNI (the 'vnni' CPU path; interface and numerics in
// lc_int8.h). This file includes no torch header and is compiled with only its own ISA flags (setup.py:
// SIMD_FLAGS, "_vnni.cpp"); it is called only when tcdcn::cpu::active_isa() is 'vnni' or better.
//
// At batch 1 the forward streams its weights once, and with float arithmetic an int8 weight costs three vector
// instructions per 16 (sign-extend, int -> float, FMA): more than the memory needs. Here 32 int8 weights (16
// channels x a pair of taps) cost two: one vpmovsxbw and one vpdpwssd, which adds both pair products into the
// channel's int32 sum. The float conversion and the scales are paid once per output, not per weight.
#include <immintrin.h>

#include "cpu/simd/kernels.h"
#include "cpu/simd/lc_int8.h"

#define TCDCN_VEC_BYTES 64
#define TCDCN_NUM_VREGS 32

namespace tcdcn::cpu::vnni {
#include "cpu/simd/vec.h"
#include "cpu/simd/abs_tanh_math.h"
#include "cpu/simd/lc_epilogue.h"

namespace {

// As the float few-faces path (lc_forward_body.h): prefetch the weight stream this far ahead into L1.
constexpr int64_t kPairPrefetchBytes = 2048;
// Faces per register tile.
constexpr int kMaxFaces = 4;

// Partial sums per accumulator (pair p goes to sum p mod U): at least ~10 independent vpdpwssd chains (latency 5,
// up to 2 per cycle), within the 32 registers with the V weight vectors and a broadcast.
constexpr int pair_partial_sums(int r, int v) {
  const int u = (10 + r * v - 1) / (r * v);
  const int cap = (TCDCN_NUM_VREGS - 1 - v) / (r * v);
  return u < cap ? u : (cap < 1 ? 1 : cap);
}

inline __m512i bcast_pair(const int16_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, sizeof(v));  // two int16 taps, the first in the low half
  return _mm512_set1_epi32(v);
}

// One location, R faces (rows[r]: face r's window corner in the int16 input), V vectors of 16 channels.
template <int R, int V>
inline void pair_loc(const LcPairGeom& g, const int16_t* const* rows, const float* xs, const int8_t* wl,
                     const float* sl, const float* bl, float* dst, int64_t dst_stride, Epilogue mode, int part) {
  constexpr int U = pair_partial_sums(R, V);
  const int64_t P = g.P, row_bytes = 2 * g.C_out;  // a pair's weights: C_out channels x 2 taps
  const int64_t* off = g.pair_off;
  __m512i acc[R][U][V];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < V; ++v) acc[r][u][v] = _mm512_setzero_si512();
  int64_t p = 0;
  for (; p + U <= P; p += U) {
    {  // (addresses as integers: the target may lie past the weights, where a pointer may not point)
      const uintptr_t pf = reinterpret_cast<uintptr_t>(wl + p * row_bytes) + kPairPrefetchBytes;
      for (int64_t b = 0; b < U * row_bytes; b += 64) __builtin_prefetch(reinterpret_cast<const void*>(pf + b), 0, 3);
    }
    for (int u = 0; u < U; ++u) {
      const int8_t* wp = wl + (p + u) * row_bytes;
      __m512i wv[V];
      for (int v = 0; v < V; ++v)
        wv[v] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32 * v)));
      const int64_t o = off[p + u];
      for (int r = 0; r < R; ++r) {
        const __m512i x = bcast_pair(rows[r] + o);
        for (int v = 0; v < V; ++v) acc[r][u][v] = _mm512_dpwssd_epi32(acc[r][u][v], x, wv[v]);
      }
    }
  }
  for (; p < P; ++p) {
    const int8_t* wp = wl + p * row_bytes;
    __m512i wv[V];
    for (int v = 0; v < V; ++v)
      wv[v] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32 * v)));
    for (int r = 0; r < R; ++r) {
      const __m512i x = bcast_pair(rows[r] + off[p]);
      for (int v = 0; v < V; ++v) acc[r][0][v] = _mm512_dpwssd_epi32(acc[r][0][v], x, wv[v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      __m512i s = acc[r][0][v];
      for (int u = 1; u < U; ++u) s = _mm512_add_epi32(s, acc[r][u][v]);  // exact: every partial sum fits int32
      const __m512 scale = _mm512_mul_ps(_mm512_loadu_ps(sl + 16 * v), _mm512_set1_ps(xs[r]));
      const __m512 b = bl ? _mm512_loadu_ps(bl + 16 * v) : _mm512_setzero_ps();
      const __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, b);
      store_out<float>(dst + r * dst_stride + 16 * v, static_cast<VT<float>::vec>(y), mode, part);
    }
  }
}

template <int R>
inline void pair_faces(const LcPairGeom& g, const int16_t* const* rows, const float* xs, const int8_t* wl,
                       const float* sl, const float* bl, float* dst, int64_t dst_stride, Epilogue mode, int part) {
  for (int64_t c0 = 0; c0 < g.C_out;) {
    const int64_t left = (g.C_out - c0) / 16;
    const int V = left >= 4 ? 4 : int(left);
    const float* b = bl ? bl + c0 : nullptr;
    switch (V) {
      case 4: pair_loc<R, 4>(g, rows, xs, wl + 2 * c0, sl + c0, b, dst + c0, dst_stride, mode, part); break;
      case 3: pair_loc<R, 3>(g, rows, xs, wl + 2 * c0, sl + c0, b, dst + c0, dst_stride, mode, part); break;
      case 2: pair_loc<R, 2>(g, rows, xs, wl + 2 * c0, sl + c0, b, dst + c0, dst_stride, mode, part); break;
      default: pair_loc<R, 1>(g, rows, xs, wl + 2 * c0, sl + c0, b, dst + c0, dst_stride, mode, part); break;
    }
    c0 += 16 * V;
  }
}

}  // namespace

void quantize_rows(const float* x, int64_t x_sN, int64_t N, int64_t count, int64_t qmax, int16_t* xq, float* xs) {
  for (int64_t n = 0; n < N; ++n) {
    const float* row = x + n * x_sN;
    int16_t* q = xq + n * count;
    __m512 amax = _mm512_setzero_ps();
    __mmask16 bad = 0;  // lanes that saw a NaN or an infinity (x - x is NaN exactly there)
    for (int64_t i = 0; i < count; i += 16) {
      const __mmask16 m = count - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (count - i)) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(m, row + i);
      amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
      bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    }
    const float top = _mm512_reduce_max_ps(amax);
    if (bad != 0 || top == 0.0f) {
      xs[n] = bad != 0 ? __builtin_nanf("") : 1.0f;
      for (int64_t i = 0; i < count; ++i) q[i] = 0;
      continue;
    }
    xs[n] = top / float(qmax);
    const __m512 inv = _mm512_set1_ps(float(qmax) / top);
    for (int64_t i = 0; i < count; i += 16) {
      const __mmask16 m = count - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (count - i)) - 1u);
      const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + i), inv));  // to nearest
      _mm256_mask_storeu_epi16(q + i, m, _mm512_cvtsepi32_epi16(v));
    }
  }
}

void lc_forward_pairs(const LcPairGeom& g, const int16_t* xq, const float* xs, const int8_t* w, const float* ws,
                      const float* bias, float* out, int64_t l0, int64_t l1, Epilogue mode) {
  const int64_t C = g.C_out, P = g.P;
  const bool pool = pooled(mode);
  const int64_t slots = pool ? (g.H_out / 2) * (g.W_out / 2) : g.H_out * g.W_out;
  const int64_t out_stride = slots * C, face = g.H * g.W * g.C_in;
  const int64_t h_keep = pool ? 2 * (g.H_out / 2) : g.H_out, w_keep = pool ? 2 * (g.W_out / 2) : g.W_out;
  int64_t i = l0 / g.W_out, j = l0 % g.W_out;
  for (int64_t l = l0; l < l1; ++l) {
    if (i < h_keep && j < w_keep) {  // else floor-mode pooling drops the location
      const int64_t slot = pool ? (i / 2) * (g.W_out / 2) + j / 2 : l;
      const int64_t base = (i * g.W + j) * g.C_in;
      const int8_t* wl = w + l * P * 2 * C;
      const float* sl = ws + l * C;
      const float* bl = bias ? bias + l * C : nullptr;
      const int part = cell_part_at(i, j);
      for (int64_t n0 = 0; n0 < g.N; n0 += kMaxFaces) {
        const int R = g.N - n0 >= kMaxFaces ? kMaxFaces : int(g.N - n0);
        const int16_t* rows[kMaxFaces];
        for (int r = 0; r < R; ++r) rows[r] = xq + (n0 + r) * face + base;
        float* dst = out + n0 * out_stride + slot * C;
        switch (R) {
          case 4: pair_faces<4>(g, rows, xs + n0, wl, sl, bl, dst, out_stride, mode, part); break;
          case 3: pair_faces<3>(g, rows, xs + n0, wl, sl, bl, dst, out_stride, mode, part); break;
          case 2: pair_faces<2>(g, rows, xs + n0, wl, sl, bl, dst, out_stride, mode, part); break;
          default: pair_faces<1>(g, rows, xs + n0, wl, sl, bl, dst, out_stride, mode, part); break;
        }
      }
    }
    if (++j == g.W_out) {
      j = 0;
      ++i;
    }
  }
}

}  // namespace tcdcn::cpu::vnni
