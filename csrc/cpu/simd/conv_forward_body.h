// Spatially shared convolution forward (LcKernels::conv_forward, conv_forward_half_weight), with its epilogue.
// Included inside an ISA namespace by lc_conv2d_body.h (after vec.h, abs_tanh_math.h, lc_epilogue.h and the
// pieces before it there); no include guard on purpose: each ISA namespace gets its own copy, compiled with that
// file's flags (lc_conv2d_body.h says why).

namespace {

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

}  // namespace
