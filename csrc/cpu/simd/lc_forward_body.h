// lc_conv2d forward (LcKernels::forward, forward_half_weight, forward_int8_weight): the locally connected layer,
// float32 / float64 / binary16 / int8 weights, with its epilogue (lc_epilogue.h).
// Included inside an ISA namespace by lc_conv2d_body.h (after vec.h, abs_tanh_math.h, lc_epilogue.h and the
// pieces before it there); no include guard on purpose: each ISA namespace gets its own copy, compiled with that
// file's flags (lc_conv2d_body.h says why).

namespace {

// lc_conv2d forward. For one output location l the weights w[l] are a [K, C_out] matrix shared by every face,
// so the batch is a small GEMM [N, K] x [K, C_out]: a register tile of R faces x V channel vectors, with the
// input taps broadcast straight from the (strided) input through the precomputed in_off table (no im2col).

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

// Faces per block: a multiple of every rows_for(V) (12, 9, 6, 3, 2), so blocks split into full tiles (also the
// grad_input kernel's blocks, lc_backward_input_body.h). Declared where it was before lc_conv2d_body.h was split:
// declared earlier (in lc_common_body.h), it changed GCC 12's register allocation in the avx512 kernels with some
// flags; here every lc_conv2d_*.o has the instructions it had before the split.
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

}  // namespace
