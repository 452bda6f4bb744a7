// lc_conv2d kernel bodies. Each of lc_conv2d_{ref,avx2,avx512}.cpp (and abs_tanh_*.cpp likewise) defines
// TCDCN_VEC_BYTES (vector register width in bytes, 0 = scalar) and TCDCN_NUM_VREGS, then includes vec.h, abs_tanh_math.h and this file
// inside its own namespace, so every instantiation here is compiled with exactly that file's ISA flags.
//
// Everything below has internal linkage (anonymous namespace) and calls no std:: template or inline library
// function: a weak symbol shared between TUs built with different -m flags could let the linker hand an
// AVX-512 copy to the scalar path (an ODR trap that crashes on older CPUs).
//
// Vectors are GCC/Clang vector extensions, so one source serves every width; loads and stores go through
// __builtin_memcpy (unaligned, no aliasing questions).

#include "cpu/simd/lc_epilogue.h"

namespace {

// ---------------------------------------------------------------------------------------------------------
// lc_conv2d forward. For one output location l the weights w[l] are a [K, C_out] matrix shared by every face,
// so the batch is a small GEMM [N, K] x [K, C_out]: a register tile of R faces x V channel vectors, with the
// input taps broadcast straight from the (strided) input through the precomputed in_off table (no im2col).
//
// The weight element type TW is T itself or, for T = float, uint16_t holding binary16 bits: each weight is
// widened to float as it is loaded (exact), and the sums stay in float. At N = 1 every weight is read once, so
// the forward streams weight bytes; half the bytes is what makes float16 storage faster there.

template <typename T>
inline typename VT<T>::vec wload(const T* p) {
  return vload<T>(p);
}
inline typename VT<float>::vec wload(const uint16_t* p) { return vload_f16(p); }
inline float wscalar(float w) { return w; }
inline double wscalar(double w) { return w; }
inline float wscalar(uint16_t w) { return f16_to_float(w); }

// Symmetric int8 weights (TW = int8_t, T = float): w = q * scale[l, co], scale per location and output channel.
// q is widened to float on load (sign-extend, then int -> float: exact), the sum over the taps runs on q, and the
// scale is applied once to the sum (out = sum * scale + bias): a quarter of the bytes of float32 weights for the
// batch-1 stream, and no rounding of the activations.
// (vpmovsxbd through its builtin: GCC 12 turns a generic __builtin_convertvector from 8-bit lanes into scalar code.)
inline typename VT<float>::vec wload(const int8_t* p) {
#if TCDCN_VEC_BYTES == 64 || TCDCN_VEC_BYTES == 32
  typedef char i8x16 __attribute__((vector_size(16)));
  typedef int32_t i32v __attribute__((vector_size(VT<float>::B)));
  i8x16 b = {};
  __builtin_memcpy(&b, p, VT<float>::W);  // W bytes: the low lanes
#if TCDCN_VEC_BYTES == 64
  const i32v i = __builtin_ia32_pmovsxbd512_mask(b, i32v{}, (unsigned short)0xffff);
#else
  const i32v i = __builtin_ia32_pmovsxbd256(b);
#endif
  return __builtin_convertvector(i, typename VT<float>::vec);
#elif TCDCN_VEC_BYTES > 0
#error "wload(int8_t): no sign extension for this TCDCN_VEC_BYTES"
#else
  return vbcast<float>(float(*p));
#endif
}
inline float wscalar(int8_t w) { return float(w); }

// Whether TW carries per-(location, channel) scales (int8 weights).
template <typename TW>
constexpr bool scaled_weight() {
  return sizeof(TW) == 1;
}

// A location's output before the epilogue: sum (+ bias), or sum * scale + bias for scaled weights. s: the scale
// vector (scaled weights only); b: the bias vector, or zero.
template <typename T, typename TW>
__attribute__((always_inline)) inline typename VT<T>::vec finish_sum(typename VT<T>::vec acc, const T* s,
                                                                    typename VT<T>::vec b) {
  if constexpr (scaled_weight<TW>())
    return acc * vload<T>(s) + b;
  else
    return acc + b;
}
template <typename T, typename TW>
inline T finish_sum_scalar(T acc, const T* s, T b) {
  if constexpr (scaled_weight<TW>())
    return acc * *s + b;
  else
    return acc + b;
}

template <typename T, typename TW, int R, int V>
inline void lc_fwd_tile(const tcdcn::cpu::LcGeom& g, const T* row0, const TW* wl, const T* stile,
                        const T* btile, T* out0, int64_t out_stride, Epilogue mode, int part) {
  typedef typename VT<T>::vec vec;
  constexpr int W = VT<T>::W;
  const int64_t K = g.K(), C = g.C_out;
  vec acc[R][V];
  for (int v = 0; v < V; ++v) {  // scaled weights: the bias comes after the scale
    const vec b = scaled_weight<TW>() ? vec{} : vload<T>(btile + v * W);
    for (int r = 0; r < R; ++r) acc[r][v] = b;
  }
  const int64_t* off = g.in_off;
  for (int64_t k = 0; k < K; ++k) {
    vec wv[V];
    for (int v = 0; v < V; ++v) wv[v] = wload(wl + k * C + v * W);
    // The R faces' taps, one face stride apart: a pointer walked down the tile rather than R row pointers,
    // which run out of general registers and reload from the stack for every broadcast.
    const T* p = row0 + off[k];
    for (int r = 0; r < R; ++r, p += g.in_sN) {
      const vec x = vbcast<T>(*p);
      for (int v = 0; v < V; ++v) acc[r][v] += x * wv[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      vec a = acc[r][v];
      if constexpr (scaled_weight<TW>()) a = finish_sum<T, TW>(a, stile + v * W, vload<T>(btile + v * W));
      store_out<T>(out0 + r * out_stride + v * W, a, mode, part);
    }
  }
}

// Tiles of up to R faces; the faces left over after the full tiles go as one smaller tile (each tile reads and
// widens its weights once: eight faces with R = 9 are one tile, not eight).
template <typename T, typename TW, int R, int V>
inline void lc_fwd_rows(const tcdcn::cpu::LcGeom& g, const T* in, int64_t base, const TW* wl, const T* stile,
                        const T* btile, T* out0, int64_t out_stride, int64_t n, Epilogue mode, int part) {
  lc_fwd_tile<T, TW, R, V>(g, in + n * g.in_sN + base, wl, stile, btile, out0 + n * out_stride, out_stride, mode,
                           part);
}

template <typename T, typename TW, int V>
inline void lc_fwd_faces(const tcdcn::cpu::LcGeom& g, const T* in, int64_t base, const TW* wl, const T* stile,
                         const T* btile, T* out0, int64_t out_stride, int64_t n0, int64_t n1, Epilogue mode, int part) {
  constexpr int R = rows_for(V);
  static_assert(R <= 12, "lc_fwd_faces: remainder tiles are dispatched up to 12 rows");
  int64_t n = n0;
  for (; n + R <= n1; n += R) lc_fwd_rows<T, TW, R, V>(g, in, base, wl, stile, btile, out0, out_stride, n, mode, part);
  switch (n1 - n) {  // 0 <= n1 - n < R
#define TCDCN_REM(r)                                                                                        \
  case r:                                                                                                   \
    if constexpr (r < R) lc_fwd_rows<T, TW, (r < R ? r : 1), V>(g, in, base, wl, stile, btile, out0, out_stride, n, mode, part); \
    break;
    TCDCN_REM(1) TCDCN_REM(2) TCDCN_REM(3) TCDCN_REM(4) TCDCN_REM(5) TCDCN_REM(6)
    TCDCN_REM(7) TCDCN_REM(8) TCDCN_REM(9) TCDCN_REM(10) TCDCN_REM(11)
#undef TCDCN_REM
    default: break;
  }
}

// Few faces (batch 1 latency, up to kSmallBatch faces): every weight is used once per face, so the layer streams
// its weights and the kernel's job is to keep up with that stream. One location at a time, for all R faces at once
// (each weight is loaded and widened once): its [K, C_out] block is read front to back (one sequential stream for
// the prefetchers, and only the input and weight pointers live, where a tile of several locations runs out of
// general registers and spills its pointers), with U partial sums over the taps (tap k goes to sum k mod U) so
// that R x U x V independent FMA chains hide the FMA latency.
constexpr int partial_sums_for(int r, int v) {
  const int u = (8 + r * v - 1) / (r * v);            // at least 8 chains
  const int cap = (TCDCN_NUM_VREGS - 1 - v) / (r * v);  // accumulators plus the weights and a broadcast register
  return u < cap ? u : (cap < 1 ? 1 : cap);
}

// The few-faces path prefetches the weight stream this far ahead into L1 (prefetcht0): with the L2 streamer
// alone the loads still wait on L3 (measured on a Xeon at batch 1: ~10% slower layers; 1-2 KiB ahead was best,
// and prefetchnta twice as slow). A location's block and the next are adjacent, so reading past the block is
// just the next location's weights (or, after the last, a harmless prefetch past the tensor).
constexpr int64_t kWeightPrefetchBytes = 2048;

// Channel vectors per pass of the few-faces path with R faces: up to 8 (a whole row of 64 (AVX2) or 128 (AVX-512)
// float channels, so that a weight row's cache lines are fetched in one pass rather than split between passes),
// fewer where R x V accumulators and V weights would not fit the register file.
constexpr int few_faces_max_v(int r) {
  const int v = (TCDCN_NUM_VREGS - 1) / (r + 1);
  return v > 8 ? 8 : (v < 1 ? 1 : v);
}

// acc[0] += acc[1] + ... + acc[N - 1], pairwise: log2(N) dependent adds rather than N - 1. A recursion on the
// constant N, so that every index is a constant and the partial sums stay in registers (a loop over a doubling
// step kept them in a stack array).
template <int N, int V, typename Vec>
inline void tree_sum(Vec (*acc)[V]) {
  if constexpr (N > 1) {
    constexpr int H = N / 2;
    for (int u = 0; u < H; ++u)
      for (int v = 0; v < V; ++v) acc[u][v] += acc[u + N - H][v];  // (odd N: the middle one waits a round)
    tree_sum<N - H, V>(acc);
  }
}

// One location of R faces: rows[r] is face r's window corner, dst[r * dst_stride] its output slot.
template <typename T, typename TW, int R, int V>
inline void lc_fwd_loc(const tcdcn::cpu::LcGeom& g, const T* const* rows, const TW* wl, const T* sl, const T* bl,
                       T* dst, int64_t dst_stride, Epilogue mode, int part) {
  typedef typename VT<T>::vec vec;
  constexpr int W = VT<T>::W;
  constexpr int U = partial_sums_for(R, V);
  const int64_t K = g.K(), C = g.C_out;
  const int64_t* off = g.in_off;
  vec acc[R][U][V];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < V; ++v) acc[r][u][v] = vec{};
  int64_t k = 0;
  for (; k + U <= K; k += U) {
    {  // (addresses as integers: the target may lie past the tensor, where a pointer may not point)
      const uintptr_t pf = reinterpret_cast<uintptr_t>(wl + k * C) + kWeightPrefetchBytes;
      const int64_t step_bytes = U * C * int64_t(sizeof(TW));
      for (int64_t b = 0; b < step_bytes; b += 64) __builtin_prefetch(reinterpret_cast<const void*>(pf + b), 0, 3);
    }
    for (int u = 0; u < U; ++u) {
      const TW* wk = wl + (k + u) * C;
      vec wv[V];
      for (int v = 0; v < V; ++v) wv[v] = wload(wk + v * W);
      const int64_t o = off[k + u];
      for (int r = 0; r < R; ++r) {
        const vec x = vbcast<T>(rows[r][o]);
        for (int v = 0; v < V; ++v) acc[r][u][v] += x * wv[v];
      }
    }
  }
  for (; k < K; ++k) {
    vec wv[V];
    for (int v = 0; v < V; ++v) wv[v] = wload(wl + k * C + v * W);
    const int64_t o = off[k];
    for (int r = 0; r < R; ++r) {
      const vec x = vbcast<T>(rows[r][o]);
      for (int v = 0; v < V; ++v) acc[r][0][v] += x * wv[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    tree_sum<U, V>(acc[r]);
    for (int v = 0; v < V; ++v) {
      const vec sum = finish_sum<T, TW>(acc[r][0][v], sl + v * W, bl ? vload<T>(bl + v * W) : vec{});
      store_out<T>(dst + r * dst_stride + v * W, sum, mode, part);
    }
  }
}

// Locations [l0, l1) of faces [n0, n0 + R), channels [c0, c0 + V*W). The output row and column are stepped rather
// than divided out of l (a few integer divisions per location cost as much as a small layer's arithmetic).
template <typename T, typename TW, int R, int V>
inline void lc_fwd_loc_range(const tcdcn::cpu::LcGeom& g, const T* in, const TW* w, const T* ws, const T* bias,
                             T* out, int64_t n0, int64_t l0, int64_t l1, int64_t c0, Epilogue mode) {
  const int64_t K = g.K(), C = g.C_out;
  const int64_t out_stride = out_slots(g, mode) * C;
  const bool pool = pooled(mode);
  const int64_t h_keep = pool ? 2 * (g.H_out / 2) : g.H_out, w_keep = pool ? 2 * (g.W_out / 2) : g.W_out;
  const T* in_n = in + n0 * g.in_sN;
  T* out_n = out + n0 * out_stride;
  int64_t i = l0 / g.W_out, j = l0 % g.W_out;
  for (int64_t l = l0; l < l1; ++l) {
    if (i < h_keep && j < w_keep) {  // else floor-mode pooling drops the location
      const T* rows[R];
      rows[0] = in_n + i * g.sH * g.in_sH + j * g.sW * g.in_sW;
      for (int r = 1; r < R; ++r) rows[r] = rows[r - 1] + g.in_sN;
      const int64_t slot = pool ? (i / 2) * (g.W_out / 2) + j / 2 : l;
      lc_fwd_loc<T, TW, R, V>(g, rows, w + l * K * C + c0, ws ? ws + l * C + c0 : nullptr,
                              bias ? bias + l * C + c0 : nullptr,
                              out_n + slot * C + c0, out_stride, mode, cell_part_at(i, j));
    }
    if (++j == g.W_out) {
      j = 0;
      ++i;
    }
  }
}

// The channel vectors of faces [n0, n0 + R) in passes of at most few_faces_max_v(R) vectors.
template <typename T, typename TW, int R>
void lc_fwd_few_faces(const tcdcn::cpu::LcGeom& g, const T* in, const TW* w, const T* ws, const T* bias, T* out,
                      int64_t n0, int64_t l0, int64_t l1, int64_t c_full, Epilogue mode) {
  constexpr int W = VT<T>::W;
  constexpr int VMax = few_faces_max_v(R);
  for (int64_t c0 = 0; c0 < c_full;) {
    const int64_t nv = (c_full - c0) / W;
    const int V = nv >= VMax ? VMax : int(nv);
    switch (V) {
#define TCDCN_V(v)                                                                                      \
  case v:                                                                                               \
    if constexpr (v <= VMax) lc_fwd_loc_range<T, TW, R, (v <= VMax ? v : 1)>(g, in, w, ws, bias, out, n0, l0, l1, c0, mode); \
    break;
      TCDCN_V(8) TCDCN_V(7) TCDCN_V(6) TCDCN_V(5) TCDCN_V(4) TCDCN_V(3) TCDCN_V(2)
#undef TCDCN_V
      default: lc_fwd_loc_range<T, TW, R, 1>(g, in, w, ws, bias, out, n0, l0, l1, c0, mode); break;
    }
    c0 += V * W;
  }
}

// Batches up to this size take the one-location-at-a-time path, all their faces at once.
constexpr int64_t kSmallBatch = 3;

template <typename T, typename TW>
void lc_forward_small_batch(const tcdcn::cpu::LcGeom& g, const T* in, const TW* w, const T* ws, const T* bias,
                            T* out, int64_t l0, int64_t l1, Epilogue mode) {
  constexpr int W = VT<T>::W;
  const int64_t K = g.K(), C = g.C_out;
  const int64_t c_full = (C / W) * W;
  static_assert(kSmallBatch == 3, "lc_forward_small_batch dispatches 1 to 3 faces");
  switch (g.N) {
    case 3: lc_fwd_few_faces<T, TW, 3>(g, in, w, ws, bias, out, 0, l0, l1, c_full, mode); break;
    case 2: lc_fwd_few_faces<T, TW, 2>(g, in, w, ws, bias, out, 0, l0, l1, c_full, mode); break;
    case 1: lc_fwd_few_faces<T, TW, 1>(g, in, w, ws, bias, out, 0, l0, l1, c_full, mode); break;
    default: break;
  }
  for (int64_t n = 0; n < g.N; ++n) {  // channels that do not fill a vector
    const T* in_n = in + n * g.in_sN;
    T* out_n = out + n * out_slots(g, mode) * C;
    for (int64_t l = l0; l < l1; ++l) {
      if (dropped_by_pool(g, l, mode)) continue;
      const T* row = in_n + g.in_base(l);
      const TW* wl = w + l * K * C;
      for (int64_t co = c_full; co < C; ++co) {
        T acc = T(0);
        for (int64_t k = 0; k < K; ++k) acc += row[g.in_off[k]] * wscalar(wl[k * C + co]);
        acc = finish_sum_scalar<T, TW>(acc, ws ? ws + l * C + co : nullptr, bias ? bias[l * C + co] : T(0));
        store_out_scalar<T>(out_n + out_slot(g, l, mode) * C + co, acc, mode, cell_part(g, l));
      }
    }
  }
}

// Faces per block: a multiple of every rows_for(V) (12, 9, 6, 3, 2), so blocks split into full tiles.
constexpr int64_t kFaceBlock = 36;
// Weights of a chunk of locations kept hot in L2 while every face block passes over them.
constexpr int64_t kWeightChunkBytes = 512 * 1024;

// Loop order: chunks of locations (weights stay in L2) > blocks of faces (their outputs are written as short
// contiguous runs, not one line per face per location) > location > channel tile > register tile of faces.
template <typename T, typename TW>
void lc_forward_scaled(const tcdcn::cpu::LcGeom& g, const T* in, const TW* w, const T* ws, const T* bias, T* out,
                       int64_t l0, int64_t l1, Epilogue mode) {
  constexpr int W = VT<T>::W;
  const int64_t K = g.K(), C = g.C_out, N = g.N;
  if (N <= kSmallBatch) {
    lc_forward_small_batch<T, TW>(g, in, w, ws, bias, out, l0, l1, mode);
    return;
  }
  const int64_t c_full = (C / W) * W;
  const int64_t out_stride = out_slots(g, mode) * C;
  const int64_t wl_bytes = K * C * int64_t(sizeof(TW));
  const int64_t chunk = wl_bytes >= kWeightChunkBytes ? 1 : kWeightChunkBytes / (wl_bytes > 0 ? wl_bytes : 1);
  const T zeros[4 * W] = {};
  for (int64_t lc0 = l0; lc0 < l1; lc0 += chunk) {
    const int64_t lc1 = lc0 + chunk < l1 ? lc0 + chunk : l1;
    for (int64_t nb = 0; nb < N; nb += kFaceBlock) {
      const int64_t ne = nb + kFaceBlock < N ? nb + kFaceBlock : N;
      for (int64_t l = lc0; l < lc1; ++l) {
        if (dropped_by_pool(g, l, mode)) continue;
        const TW* wl = w + l * K * C;
        const int64_t base = g.in_base(l);
        const int part = cell_part(g, l);
        for (int64_t c0 = 0; c0 < c_full;) {
          const int64_t nv = (c_full - c0) / W;
          const int V = nv >= 4 ? 4 : int(nv);
          const T* bt = bias ? bias + l * C + c0 : zeros;
          const T* st = ws ? ws + l * C + c0 : nullptr;
          T* o = out + out_slot(g, l, mode) * C + c0;
          switch (V) {
            case 4: lc_fwd_faces<T, TW, 4>(g, in, base, wl + c0, st, bt, o, out_stride, nb, ne, mode, part); break;
            case 3: lc_fwd_faces<T, TW, 3>(g, in, base, wl + c0, st, bt, o, out_stride, nb, ne, mode, part); break;
            case 2: lc_fwd_faces<T, TW, 2>(g, in, base, wl + c0, st, bt, o, out_stride, nb, ne, mode, part); break;
            default: lc_fwd_faces<T, TW, 1>(g, in, base, wl + c0, st, bt, o, out_stride, nb, ne, mode, part); break;
          }
          c0 += V * W;
        }
        for (int64_t co = c_full; co < C; ++co) {  // channels that do not fill a vector
          for (int64_t n = nb; n < ne; ++n) {
            const T* row = in + n * g.in_sN + base;
            T acc = T(0);
            for (int64_t k = 0; k < K; ++k) acc += row[g.in_off[k]] * wscalar(wl[k * C + co]);
            acc = finish_sum_scalar<T, TW>(acc, ws ? ws + l * C + co : nullptr, bias ? bias[l * C + co] : T(0));
            store_out_scalar<T>(out + n * out_stride + out_slot(g, l, mode) * C + co, acc, mode, part);
          }
        }
      }
    }
  }
}

// The forward of unscaled (float32, float64, binary16) and of scaled (int8, with [L, C_out] scales) weights.
template <typename T, typename TW>
void lc_forward(const tcdcn::cpu::LcGeom& g, const T* in, const TW* w, const T* bias, T* out, int64_t l0,
                int64_t l1, Epilogue mode) {
  lc_forward_scaled<T, TW>(g, in, w, nullptr, bias, out, l0, l1, mode);
}
inline void lc_forward_int8(const tcdcn::cpu::LcGeom& g, const float* in, const int8_t* w, const float* ws,
                            const float* bias, float* out, int64_t l0, int64_t l1, Epilogue mode) {
  lc_forward_scaled<float, int8_t>(g, in, w, ws, bias, out, l0, l1, mode);
}

// ---------------------------------------------------------------------------------------------------------
// Spatially shared convolution forward (conv_forward in kernels.h): one [K, C_pad] weight matrix for every
// location, so the weights stay in cache and the kernel is compute-bound: a register tile of R neighbouring
// locations of one output row x V channel vectors, each weight vector loaded (and widened) once per tile. The
// weight and bias columns are padded to C_pad (a multiple of every vector width) with zeros, so the channels that
// do not fill a vector take one more vector whose extra lanes are not stored.

template <typename T, typename TW, int R, int V>
inline void conv_fwd_tile(const tcdcn::cpu::LcGeom& g, const T* row0, int64_t row_step, const TW* w, int64_t cp,
                          const T* b, T* dst0, int64_t dst_step_even, int64_t dst_step_odd, int j0, int i, Epilogue mode,
                          int last_lanes) {
  typedef typename VT<T>::vec vec;
  constexpr int W = VT<T>::W;
  const int64_t K = g.K();
  const int64_t* off = g.in_off;
  vec acc[R][V];
  for (int v = 0; v < V; ++v) {
    const vec bv = b ? vload<T>(b + v * W) : vec{};
    for (int r = 0; r < R; ++r) acc[r][v] = bv;
  }
  for (int64_t k = 0; k < K; ++k) {
    vec wv[V];
    for (int v = 0; v < V; ++v) wv[v] = wload(w + k * cp + v * W);
    const int64_t o = off[k];
    for (int r = 0; r < R; ++r) {
      const vec x = vbcast<T>(row0[r * row_step + o]);
      for (int v = 0; v < V; ++v) acc[r][v] += x * wv[v];
    }
  }
  T* dst = dst0;
  for (int r = 0; r < R; ++r) {
    const int j = j0 + r;
    const int part = cell_part_at(i, j);
    for (int v = 0; v < V; ++v) store_out_n<T>(dst + v * W, acc[r][v], mode, part, v + 1 < V ? W : last_lanes);
    dst += (j & 1) ? dst_step_odd : dst_step_even;  // pooled: two locations per slot
  }
}

// Locations [j0, j0 + n) of output row i, channels [c0, c0 + V * W), n < = R (a dispatch on n).
template <typename T, typename TW, int R, int V>
inline void conv_fwd_span(const tcdcn::cpu::LcGeom& g, const T* row0, const TW* w, int64_t cp, const T* b, T* dst,
                          int64_t de, int64_t dod, int j0, int n, int i, Epilogue mode, int last_lanes) {
  const int64_t step = g.sW * g.in_sW;
  switch (n) {
#define TCDCN_SPAN(r)                                                                                          \
  case r:                                                                                                      \
    if constexpr (r <= R) conv_fwd_tile<T, TW, (r <= R ? r : 1), V>(g, row0, step, w, cp, b, dst, de, dod, j0, i, mode, last_lanes); \
    break;
    TCDCN_SPAN(1) TCDCN_SPAN(2) TCDCN_SPAN(3) TCDCN_SPAN(4) TCDCN_SPAN(5) TCDCN_SPAN(6)
    TCDCN_SPAN(7) TCDCN_SPAN(8) TCDCN_SPAN(9) TCDCN_SPAN(10) TCDCN_SPAN(11) TCDCN_SPAN(12)
#undef TCDCN_SPAN
    default: break;
  }
}

// Output channels per pass of conv_forward: up to 4 vectors (rows_for(4) locations per tile).
constexpr int kConvMaxV = 4;

template <typename T, typename TW, int V>
void conv_fwd_rows(const tcdcn::cpu::LcGeom& g, const T* in, const TW* w, const T* bias, T* out, int64_t l0,
                   int64_t l1, int64_t c0, Epilogue mode) {
  constexpr int W = VT<T>::W;
  constexpr int R = rows_for(V);
  const int64_t C = g.C_out, cp = conv_channel_pad(C);
  const bool pool = pooled(mode);
  const int64_t h_keep = pool ? 2 * (g.H_out / 2) : g.H_out, w_keep = pool ? 2 * (g.W_out / 2) : g.W_out;
  const int64_t out_stride = out_slots(g, mode) * C;
  const int last_lanes = int(C - (c0 + (V - 1) * W) < W ? C - (c0 + (V - 1) * W) : W);
  // Next output slot after location j: pooled, j even -> the same slot (j + 1 shares its cell), j odd -> next.
  const int64_t de = pool ? 0 : C, dod = C;
  for (int64_t n = 0; n < g.N; ++n) {
    const T* in_n = in + n * g.in_sN;
    T* out_n = out + n * out_stride;
    for (int64_t l = l0; l < l1;) {  // [l0, l1) in runs along output rows
      const int64_t i = l / g.W_out, js = l % g.W_out;
      const int64_t je = (l1 - i * g.W_out) < g.W_out ? (l1 - i * g.W_out) : g.W_out;
      l = i * g.W_out + je;
      if (i >= h_keep) continue;
      const int64_t jend = je < w_keep ? je : w_keep;
      for (int64_t j = js; j < jend; j += R) {
        const int cnt = int(jend - j < R ? jend - j : R);
        const T* row0 = in_n + i * g.sH * g.in_sH + j * g.sW * g.in_sW;
        const int64_t slot = pool ? (i / 2) * (g.W_out / 2) + j / 2 : i * g.W_out + j;
        conv_fwd_span<T, TW, R, V>(g, row0, w + c0, cp, bias ? bias + c0 : nullptr, out_n + slot * C + c0,
                                   de, dod, int(j), cnt, int(i), mode, last_lanes);
      }
    }
  }
}

template <typename T, typename TW>
void conv_forward(const tcdcn::cpu::LcGeom& g, const T* in, const TW* w, const T* bias, T* out, int64_t l0,
                  int64_t l1, Epilogue mode) {
  constexpr int W = VT<T>::W;
  const int64_t C = g.C_out;
  const int64_t nvec = (C + W - 1) / W;  // the last one may be partly padding
  for (int64_t v0 = 0; v0 < nvec;) {
    const int64_t left = nvec - v0;
    const int V = left >= kConvMaxV ? kConvMaxV : int(left);
    switch (V) {
      case 4: conv_fwd_rows<T, TW, 4>(g, in, w, bias, out, l0, l1, v0 * W, mode); break;
      case 3: conv_fwd_rows<T, TW, 3>(g, in, w, bias, out, l0, l1, v0 * W, mode); break;
      case 2: conv_fwd_rows<T, TW, 2>(g, in, w, bias, out, l0, l1, v0 * W, mode); break;
      default: conv_fwd_rows<T, TW, 1>(g, in, w, bias, out, l0, l1, v0 * W, mode); break;
    }
    v0 += V;
  }
}

// ---------------------------------------------------------------------------------------------------------
// lc_conv2d grad_weight (and grad_bias): per location, gw[l] = P_l^T go_l, a [K, N] x [N, C_out] product.
// Tile: R taps x V channel vectors, summed over faces. Each location is independent: callers split over l.

template <typename T, int R, int V>
inline void lc_bw_tile(const tcdcn::cpu::LcGeom& g, const T* in, int64_t base, const int64_t* off,
                       const T* go0, int64_t go_stride, T* gw0) {
  typedef typename VT<T>::vec vec;
  constexpr int W = VT<T>::W;
  const int64_t C = g.C_out;
  vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = vec{};
  for (int64_t n = 0; n < g.N; ++n) {
    const T* row = in + n * g.in_sN + base;
    const T* gr = go0 + n * go_stride;
    vec gv[V];
    for (int v = 0; v < V; ++v) gv[v] = vload<T>(gr + v * W);
    for (int r = 0; r < R; ++r) {
      const vec x = vbcast<T>(row[off[r]]);
      for (int v = 0; v < V; ++v) acc[r][v] += x * gv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) vstore<T>(gw0 + r * C + v * W, acc[r][v]);
}

template <typename T, int V>
inline void lc_bw_taps(const tcdcn::cpu::LcGeom& g, const T* in, int64_t base, const T* go0, int64_t go_stride,
                       T* gwl) {
  constexpr int R = rows_for(V);
  const int64_t K = g.K(), C = g.C_out;
  int64_t k = 0;
  for (; k + R <= K; k += R) lc_bw_tile<T, R, V>(g, in, base, g.in_off + k, go0, go_stride, gwl + k * C);
  for (; k < K; ++k) lc_bw_tile<T, 1, V>(g, in, base, g.in_off + k, go0, go_stride, gwl + k * C);
}

template <typename T>
void lc_backward_weight(const tcdcn::cpu::LcGeom& g, const T* in, const T* go, T* gw, T* gb, int64_t l0,
                        int64_t l1) {
  constexpr int W = VT<T>::W;
  const int64_t K = g.K(), C = g.C_out, L = g.L(), N = g.N;
  const int64_t c_full = (C / W) * W;
  const int64_t go_stride = L * C;
  for (int64_t l = l0; l < l1; ++l) {
    const int64_t base = g.in_base(l);
    if (gw != nullptr) {
      T* gwl = gw + l * K * C;
      for (int64_t c0 = 0; c0 < c_full;) {
        const int64_t nv = (c_full - c0) / W;
        const int V = nv >= 4 ? 4 : int(nv);
        const T* go0 = go + l * C + c0;
        switch (V) {
          case 4: lc_bw_taps<T, 4>(g, in, base, go0, go_stride, gwl + c0); break;
          case 3: lc_bw_taps<T, 3>(g, in, base, go0, go_stride, gwl + c0); break;
          case 2: lc_bw_taps<T, 2>(g, in, base, go0, go_stride, gwl + c0); break;
          default: lc_bw_taps<T, 1>(g, in, base, go0, go_stride, gwl + c0); break;
        }
        c0 += V * W;
      }
      for (int64_t co = c_full; co < C; ++co) {
        for (int64_t k = 0; k < K; ++k) {
          T acc = T(0);
          for (int64_t n = 0; n < N; ++n) acc += in[n * g.in_sN + base + g.in_off[k]] * go[n * go_stride + l * C + co];
          gwl[k * C + co] = acc;
        }
      }
    }
    if (gb != nullptr) {  // faces outer, channels inner: whole rows of go, not one element per line
      T* gbl = gb + l * C;
      for (int64_t co = 0; co < C; ++co) gbl[co] = T(0);
      for (int64_t n = 0; n < N; ++n) {
        const T* gr = go + n * go_stride + l * C;
        for (int64_t co = 0; co < C; ++co) gbl[co] += gr[co];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// lc_conv2d grad_input: per location, dP = go_l wt_l ([N, C_out] x [C_out, K']), then dP is added back onto the
// taps' input positions (col2im). The taps are ordered K' = (kh, kw, ci) and grad_input is channels-last, so
// each tap's C_in values are one contiguous run (vector adds rather than scalar scatter). Tile: R faces x V
// tap vectors, summed over channels. Faces are independent, so callers split over n and no two threads touch
// the same grad_input element (no atomics).

template <typename T>
inline void lc_bi_add(const tcdcn::cpu::LcGeom& g, T* dst, const T* src, int64_t k0, int64_t count) {
  const int64_t C_in = g.C_in;
  int64_t k = k0, i = 0;
  while (i < count) {
    const int64_t tap = k / C_in, ci = k - tap * C_in;
    const int64_t run = (C_in - ci) < (count - i) ? (C_in - ci) : (count - i);
    T* d = dst + g.gi_off[tap] + ci;
    const T* s = src + i;
    for (int64_t j = 0; j < run; ++j) d[j] += s[j];
    i += run;
    k += run;
  }
}

template <typename T, int R, int V>
inline void lc_bi_tile(const tcdcn::cpu::LcGeom& g, const T* go0, int64_t go_stride, const T* wtl, int64_t k0,
                       T* gi0, int64_t gi_stride) {
  typedef typename VT<T>::vec vec;
  constexpr int W = VT<T>::W;
  const int64_t C = g.C_out, K = g.K();
  vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = vec{};
  for (int64_t co = 0; co < C; ++co) {
    vec wv[V];
    for (int v = 0; v < V; ++v) wv[v] = vload<T>(wtl + co * K + k0 + v * W);
    for (int r = 0; r < R; ++r) {
      const vec x = vbcast<T>(go0[r * go_stride + co]);
      for (int v = 0; v < V; ++v) acc[r][v] += x * wv[v];
    }
  }
  T tmp[V * W];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) vstore<T>(tmp + v * W, acc[r][v]);
    lc_bi_add<T>(g, gi0 + r * gi_stride, tmp, k0, V * W);
  }
}

template <typename T, int V>
inline void lc_bi_faces(const tcdcn::cpu::LcGeom& g, const T* go_l, int64_t go_stride, const T* wtl, int64_t k0,
                        T* gi_l, int64_t gi_stride, int64_t n0, int64_t n1) {
  constexpr int R = rows_for(V);
  int64_t n = n0;
  for (; n + R <= n1; n += R)
    lc_bi_tile<T, R, V>(g, go_l + n * go_stride, go_stride, wtl, k0, gi_l + n * gi_stride, gi_stride);
  for (; n < n1; ++n)
    lc_bi_tile<T, 1, V>(g, go_l + n * go_stride, go_stride, wtl, k0, gi_l + n * gi_stride, gi_stride);
}

template <typename T>
void lc_backward_input(const tcdcn::cpu::LcGeom& g, const T* go, const T* wt, T* gi, int64_t n0, int64_t n1) {
  constexpr int W = VT<T>::W;
  const int64_t K = g.K(), C = g.C_out, L = g.L();
  const int64_t k_full = (K / W) * W;
  const int64_t go_stride = L * C;
  const int64_t gi_stride = g.C_in * g.H * g.W;
  for (int64_t nb = n0; nb < n1; nb += kFaceBlock) {
    const int64_t ne = nb + kFaceBlock < n1 ? nb + kFaceBlock : n1;
    for (int64_t l = 0; l < L; ++l) {
      const T* wtl = wt + l * C * K;
      const T* go_l = go + l * C;
      T* gi_l = gi + g.gi_base(l);
      for (int64_t k0 = 0; k0 < k_full;) {
        const int64_t nv = (k_full - k0) / W;
        const int V = nv >= 4 ? 4 : int(nv);
        switch (V) {
          case 4: lc_bi_faces<T, 4>(g, go_l, go_stride, wtl, k0, gi_l, gi_stride, nb, ne); break;
          case 3: lc_bi_faces<T, 3>(g, go_l, go_stride, wtl, k0, gi_l, gi_stride, nb, ne); break;
          case 2: lc_bi_faces<T, 2>(g, go_l, go_stride, wtl, k0, gi_l, gi_stride, nb, ne); break;
          default: lc_bi_faces<T, 1>(g, go_l, go_stride, wtl, k0, gi_l, gi_stride, nb, ne); break;
        }
        k0 += V * W;
      }
      for (int64_t k = k_full; k < K; ++k) {  // taps that do not fill a vector
        for (int64_t n = nb; n < ne; ++n) {
          T acc = T(0);
          for (int64_t co = 0; co < C; ++co) acc += go_l[n * go_stride + co] * wtl[co * K + k];
          lc_bi_add<T>(g, gi_l + n * gi_stride, &acc, k, 1);
        }
      }
    }
  }
}

}  // namespace

const LcKernels<float> lc_kernels_f32 = {&lc_forward<float, float>,     &lc_backward_weight<float>,
                                         &lc_backward_input<float>,    &lc_forward<float, uint16_t>,
                                         &conv_forward<float, float>,  &conv_forward<float, uint16_t>,
                                         &lc_forward_int8};
const LcKernels<double> lc_kernels_f64 = {&lc_forward<double, double>, &lc_backward_weight<double>,
                                          &lc_backward_input<double>, nullptr,
                                          &conv_forward<double, double>, nullptr,
                                          nullptr};
