// lc_conv2d grad_weight and grad_bias (LcKernels::backward_weight).
// Included inside an ISA namespace by lc_conv2d_body.h (after vec.h, abs_tanh_math.h, lc_epilogue.h and the
// pieces before it there); no include guard on purpose: each ISA namespace gets its own copy, compiled with that
// file's flags (lc_conv2d_body.h says why).

namespace {

// lc_conv2d grad_weight (and grad_bias): per location, gw[l] = P_l^T go_l, a [K, N] x [N, C_out] product.
// Tile: R taps x V channel vectors, summed over faces. Each location is independent: callers split over l.

template <typename T, int R, int V>
inline void lc_bw_tile(const tcdcn::cpu::LcGeom& g, const T* in, int64_t base, const int64_t* off,
                       const int64_t* rows, const T* go0, int64_t go_stride, T* gw0) {
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
    for (int v = 0; v < V; ++v) vstore<T>(gw0 + rows[r] * C + v * W, acc[r][v]);
}

// Taps in the input's memory order (order[j]: the weight row of the j-th; off[j]: its offset): a tile's R taps
// are then neighbours in memory (with channels-last input, R channels of one pixel: one or two cache lines a face
// instead of R), and each tile writes its rows where the weight layout has them.
template <typename T, int V>
inline void lc_bw_taps(const tcdcn::cpu::LcGeom& g, const T* in, int64_t base, const int64_t* off,
                       const int64_t* order, const T* go0, int64_t go_stride, T* gwl) {
  constexpr int R = rows_for(V);
  const int64_t K = g.K();
  int64_t k = 0;
  for (; k + R <= K; k += R) lc_bw_tile<T, R, V>(g, in, base, off + k, order + k, go0, go_stride, gwl);
  for (; k < K; ++k) lc_bw_tile<T, 1, V>(g, in, base, off + k, order + k, go0, go_stride, gwl);
}

template <typename T>
void lc_backward_weight(const tcdcn::cpu::LcGeom& g, const T* in, const T* go, T* gw, T* gb, int64_t l0,
                        int64_t l1, const int64_t* order, const int64_t* order_off) {
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
          case 4: lc_bw_taps<T, 4>(g, in, base, order_off, order, go0, go_stride, gwl + c0); break;
          case 3: lc_bw_taps<T, 3>(g, in, base, order_off, order, go0, go_stride, gwl + c0); break;
          case 2: lc_bw_taps<T, 2>(g, in, base, order_off, order, go0, go_stride, gwl + c0); break;
          default: lc_bw_taps<T, 1>(g, in, base, order_off, order, go0, go_stride, gwl + c0); break;
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

}  // namespace
