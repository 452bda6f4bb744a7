// lc_conv2d grad_input (LcKernels::backward_input); its face blocks are the forward's (kFaceBlock, lc_forward_body.h).
// Included inside an ISA namespace by lc_conv2d_body.h (after vec.h, abs_tanh_math.h, lc_epilogue.h and the
// pieces before it there); no include guard on purpose: each ISA namespace gets its own copy, compiled with that
// file's flags (lc_conv2d_body.h says why).

namespace {

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
  if (g.C_in % W == 0) {  // a vector of taps never straddles two kernel positions: add it where it goes
    for (int v = 0; v < V; ++v) {
      const int64_t k = k0 + v * W, tap = k / g.C_in;
      const int64_t at = g.gi_off[tap] + (k - tap * g.C_in);
      for (int r = 0; r < R; ++r) {
        T* d = gi0 + r * gi_stride + at;
        vstore<T>(d, vload<T>(d) + acc[r][v]);
      }
    }
    return;
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

#if TCDCN_VEC_BYTES == 64
template <typename T>
struct IntOf;
template <>
struct IntOf<float> {
  typedef int32_t type;
};
template <>
struct IntOf<double> {
  typedef int64_t type;
};

// One step of an in-register W x W transpose: rows a (top) and b (bottom, D rows below) swap their off-diagonal
// D-lane blocks. Applied for D = W/2, ..., 1 to every row pair it names, the rows become the columns.
template <typename T, int D>
inline void lc_swap_blocks(typename VT<T>::vec& a, typename VT<T>::vec& b) {
  constexpr int W = VT<T>::W;
  typedef typename VT<T>::vec vec;
  typedef typename IntOf<T>::type mask __attribute__((vector_size(VT<T>::B)));
  mask top, bottom;
  for (int j = 0; j < W; ++j) {
    top[j] = (j & D) ? W + j - D : j;
    bottom[j] = (j & D) ? W + j : j + D;
  }
  const vec na = __builtin_shuffle(a, b, top), nb = __builtin_shuffle(a, b, bottom);
  a = na;
  b = nb;
}

template <typename T, int D>
inline void lc_transpose_stage(typename VT<T>::vec* r) {
  constexpr int W = VT<T>::W;
  for (int i = 0; i < W; ++i)
    if ((i & D) == 0) lc_swap_blocks<T, D>(r[i], r[i + D]);
  if constexpr (D > 1) lc_transpose_stage<T, D / 2>(r);
}
#endif

// One location's weights [C_in, T, C_out] (T = kH * kW taps) as [C_out, T, C_in]: W x W blocks through registers
// where both channel counts fill whole vectors on AVX-512, element by element otherwise.
template <typename T>
void lc_transpose_taps(const T* a, T* b, int64_t Ci, int64_t Tn, int64_t Co) {
#if TCDCN_VEC_BYTES == 64
  constexpr int W = VT<T>::W;
  typedef typename VT<T>::vec vec;
  if (Ci % W == 0 && Co % W == 0) {
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t ci0 = 0; ci0 < Ci; ci0 += W)
        for (int64_t co0 = 0; co0 < Co; co0 += W) {
          vec r[W];
          for (int i = 0; i < W; ++i) r[i] = vload<T>(a + ((ci0 + i) * Tn + t) * Co + co0);
          lc_transpose_stage<T, W / 2>(r);
          for (int j = 0; j < W; ++j) vstore<T>(b + ((co0 + j) * Tn + t) * Ci + ci0, r[j]);
        }
    return;
  }
#endif
  for (int64_t ci = 0; ci < Ci; ++ci)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t co = 0; co < Co; ++co) b[(co * Tn + t) * Ci + ci] = a[(ci * Tn + t) * Co + co];
}

template <typename T>
void lc_backward_input(const tcdcn::cpu::LcGeom& g, const T* go, const T* w, T* gi, int64_t n0, int64_t n1,
                       T* wt_l) {
  constexpr int W = VT<T>::W;
  const int64_t K = g.K(), C = g.C_out, L = g.L();
  const int64_t k_full = (K / W) * W;
  const int64_t go_stride = L * C;
  const int64_t gi_stride = g.C_in * g.H * g.W;
  // Locations outer: each location's weights are read from memory and transposed once per call, then serve every
  // face of [n0, n1) from L1 (its go rows and grad_input windows are small next to them).
  for (int64_t l = 0; l < L; ++l) {
    lc_transpose_taps<T>(w + l * K * C, wt_l, g.C_in, g.kH * g.kW, C);
    const T* wtl = wt_l;
    const T* go_l = go + l * C;
    T* gi_l = gi + g.gi_base(l);
    for (int64_t nb = n0; nb < n1; nb += kFaceBlock) {
      const int64_t ne = nb + kFaceBlock < n1 ? nb + kFaceBlock : n1;
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
