// Kernel bodies of the detector's convolutions (YuNet): the depthwise-separable block and the stride-2 stem. Each
// of dw_separable_{ref,avx2,avx512}.cpp defines TCDCN_VEC_BYTES / TCDCN_NUM_VREGS, includes vec.h and this file
// inside its own namespace (see lc_conv2d_body.h for why everything here has internal linkage).
//
// Layouts (tcdcn::cpu::DwSepGeom): activations channels-last [H, W, C] per image, contiguous. Weights come padded
// to Cp = dws_channel_pad(C_out) columns (zeros beyond C_out), so every channel group is whole vectors; only the
// final store is masked to C_out.
//
// Block, for the output rows [y0, y1) of one image:
//   z[y, x, :]   = pb + sum_ci in[y, x, ci] * pw[ci, :]          (pointwise; in = x + up2(up) when up is given)
//   out[y, x, :] = db + sum_{dy,dx} z[y+dy-1, x+dx-1, :] * dw[dy*3+dx, :]   (depthwise 3x3, z = 0 outside)
// then ReLU, then the 2x2 floor-mode max pooling when asked. Each pointwise row is computed once, into a ring of
// three rows with a zero column on each side, just before the first depthwise row that needs it: the whole block is
// one pass over its input, and the intermediate never leaves L1/L2.

namespace {

template <typename V>
inline V dws_relu(V v) {
  return ((v > 0) | (v != v)) ? v : V{};  // NaN stays NaN, as torch.relu
}

template <typename V>
inline V dws_max(V a, V b) {
  return ((a > b) | (a != a)) ? a : b;  // NaN propagates, as torch's max_pool2d
}

// Every accumulator of a P-pixel x G-vector tile set to the bias.
template <typename T, int G, int P>
__attribute__((always_inline)) inline void dws_init_bias(typename VT<T>::vec (&acc)[P][G], const T* b) {
  constexpr int L = VT<T>::W;
  for (int g = 0; g < G; ++g) {
    const typename VT<T>::vec bv = vload<T>(b + g * L);
    for (int p = 0; p < P; ++p) acc[p][g] = bv;
  }
}

// Pointwise convolution of P consecutive pixels for G channel vectors: dst[p, c] = b[c] + sum_ci src[p, ci] w[ci, c]
// (w, b, dst already offset to the group's first channel; row strides cin for src, cp for w and dst).
template <typename T, int G, int P>
__attribute__((always_inline)) inline void dws_pw_tile(const T* src, int64_t cin, const T* w, const T* b, int64_t cp,
                                                       T* dst) {
  typedef typename VT<T>::vec vec;
  constexpr int L = VT<T>::W;
  vec acc[P][G];
  dws_init_bias<T, G, P>(acc, b);
  for (int64_t ci = 0; ci < cin; ++ci) {
    vec wv[G];
    for (int g = 0; g < G; ++g) wv[g] = vload<T>(w + ci * cp + g * L);
    for (int p = 0; p < P; ++p) {
      const vec xv = vbcast<T>(src[p * cin + ci]);
      for (int g = 0; g < G; ++g) acc[p][g] += xv * wv[g];
    }
  }
  for (int p = 0; p < P; ++p)
    for (int g = 0; g < G; ++g) vstore<T>(dst + p * cp + g * L, acc[p][g]);
}

// Pixels per register tile for G channel vectors: G*P accumulators + G weights + a broadcast in the register file.
constexpr int dws_pixels_for(int g) {
  const int p = (TCDCN_NUM_VREGS - 1 - g) / g;
  return p > 8 ? 8 : (p < 1 ? 1 : p);
}

template <typename T, int G>
inline void dws_pw_row_group(const T* src, int64_t width, int64_t cin, const T* w, const T* b, int64_t cp, T* dst) {
  constexpr int P = dws_pixels_for(G);
  int64_t x = 0;
  for (; x + P <= width; x += P) dws_pw_tile<T, G, P>(src + x * cin, cin, w, b, cp, dst + x * cp);
  for (; x < width; ++x) dws_pw_tile<T, G, 1>(src + x * cin, cin, w, b, cp, dst + x * cp);
}

// One pointwise row: every channel group of up to 4 vectors.
template <typename T>
inline void dws_pw_row(const T* src, int64_t width, int64_t cin, const T* w, const T* b, int64_t cp, T* dst) {
  constexpr int L = VT<T>::W;
  const int64_t nv = cp / L;
  int64_t v = 0;
  for (; v + 4 <= nv; v += 4) dws_pw_row_group<T, 4>(src, width, cin, w + v * L, b + v * L, cp, dst + v * L);
  switch (nv - v) {
    case 3: dws_pw_row_group<T, 3>(src, width, cin, w + v * L, b + v * L, cp, dst + v * L); break;
    case 2: dws_pw_row_group<T, 2>(src, width, cin, w + v * L, b + v * L, cp, dst + v * L); break;
    case 1: dws_pw_row_group<T, 1>(src, width, cin, w + v * L, b + v * L, cp, dst + v * L); break;
    default: break;
  }
}

// Depthwise 3x3 of one row: rows r0, r1, r2 (the ring rows y-1, y, y+1, each with a zero column at index 0 and
// W + 1; a row outside the image is all zeros) -> dst[x, c] for x < width, Cp columns.
template <typename T>
inline void dws_dw_row(const T* r0, const T* r1, const T* r2, int64_t width, const T* dw, const T* db, int64_t cp,
                       bool relu, T* dst) {
  typedef typename VT<T>::vec vec;
  constexpr int L = VT<T>::W;
  for (int64_t c = 0; c < cp; c += L) {
    vec k[9];
    for (int t = 0; t < 9; ++t) k[t] = vload<T>(dw + t * cp + c);
    const vec bv = vload<T>(db + c);
    const T* rows[3] = {r0 + c, r1 + c, r2 + c};
    for (int64_t x = 0; x < width; ++x) {
      vec acc = bv;
      for (int dy = 0; dy < 3; ++dy) {
        const T* p = rows[dy] + x * cp;  // ring column x is image column x - 1
        acc += vload<T>(p) * k[dy * 3 + 0];
        acc += vload<T>(p + cp) * k[dy * 3 + 1];
        acc += vload<T>(p + 2 * cp) * k[dy * 3 + 2];
      }
      vstore<T>(dst + x * cp + c, relu ? dws_relu(acc) : acc);
    }
  }
}

// The first n channels of each of `width` pixels: padded rows (Cp) -> the output's rows (C_out).
template <typename T>
inline void dws_store_row(const T* src, int64_t width, int64_t cp, int64_t cout, T* dst) {
  constexpr int L = VT<T>::W;
  for (int64_t x = 0; x < width; ++x) {
    int64_t c = 0;
    for (; c + L <= cout; c += L) vstore<T>(dst + x * cout + c, vload<T>(src + x * cp + c));
    if (c < cout) vstore_n<T>(dst + x * cout + c, vload<T>(src + x * cp + c), int(cout - c));
  }
}

template <typename T>
void dw_separable_kernel(const tcdcn::cpu::DwSepGeom& g, const T* in, const T* up, const T* pw, const T* pb,
                         const T* dw, const T* db, T* out, int64_t n, int64_t r0, int64_t r1, T* scratch) {
  typedef typename VT<T>::vec vec;
  constexpr int L = VT<T>::W;
  const int64_t H = g.H, W = g.W, cin = g.C_in, cout = g.C_out, cp = g.Cp;
  const int64_t ring_stride = (W + 2) * cp;
  // scratch: 3 ring rows + 1 zero row (W + 2 columns each) + 2 depthwise rows (W) + the summed input row (W x cin)
  T* ring = scratch;
  T* zero = ring + 3 * ring_stride;
  T* dwrow[2] = {zero + ring_stride, zero + ring_stride + W * cp};
  T* sum_in = dwrow[1] + W * cp;
  for (int64_t i = 0; i < ring_stride; ++i) zero[i] = T(0);
  for (int s = 0; s < 3; ++s) {  // the zero border columns of the ring rows
    for (int64_t c = 0; c < cp; ++c) {
      ring[s * ring_stride + c] = T(0);
      ring[s * ring_stride + (W + 1) * cp + c] = T(0);
    }
  }
  const T* img = in + n * H * W * cin;
  const T* up_img = up ? up + n * (H / 2) * (W / 2) * cin : nullptr;
  int64_t next_row = -1;  // the next pointwise row to compute
  auto pw_row_ptr = [&](int64_t y) -> const T* {
    if (y < 0 || y >= H) return zero;
    return ring + (y % 3) * ring_stride;
  };
  auto ensure = [&](int64_t y) {  // pointwise rows up to y (clamped to the image) are in the ring
    if (y >= H) y = H - 1;
    if (next_row < 0) next_row = y - 2 < 0 ? 0 : y - 2;
    for (; next_row <= y; ++next_row) {
      const T* src = img + next_row * W * cin;
      if (up_img) {  // in = x + nearest 2x upsampling of up (the neck's top-down merge)
        const T* u = up_img + (next_row / 2) * (W / 2) * cin;
        for (int64_t x = 0; x < W; ++x)
          for (int64_t ci = 0; ci < cin; ++ci) sum_in[x * cin + ci] = src[x * cin + ci] + u[(x / 2) * cin + ci];
        src = sum_in;
      }
      dws_pw_row<T>(src, W, cin, pw, pb, cp, ring + (next_row % 3) * ring_stride + cp);
    }
  };
  const bool relu = g.relu != 0;
  if (!g.pool) {
    T* o = out + n * H * W * cout;
    for (int64_t y = r0; y < r1; ++y) {
      ensure(y + 1);
      dws_dw_row<T>(pw_row_ptr(y - 1), pw_row_ptr(y), pw_row_ptr(y + 1), W, dw, db, cp, relu, dwrow[0]);
      dws_store_row<T>(dwrow[0], W, cp, cout, o + y * W * cout);
    }
    return;
  }
  const int64_t Ho = H / 2, Wo = W / 2;
  T* o = out + n * Ho * Wo * cout;
  for (int64_t yo = r0; yo < r1; ++yo) {
    for (int h = 0; h < 2; ++h) {
      const int64_t y = 2 * yo + h;
      ensure(y + 1);
      dws_dw_row<T>(pw_row_ptr(y - 1), pw_row_ptr(y), pw_row_ptr(y + 1), W, dw, db, cp, relu, dwrow[h]);
    }
    // 2x2 max into dwrow[0]'s first Wo pixels (pixel xo reads 2xo, 2xo+1 >= xo: in-place is safe left to right)
    for (int64_t xo = 0; xo < Wo; ++xo) {
      for (int64_t c = 0; c < cp; c += L) {
        const vec a = dws_max(vload<T>(dwrow[0] + 2 * xo * cp + c), vload<T>(dwrow[0] + (2 * xo + 1) * cp + c));
        const vec b = dws_max(vload<T>(dwrow[1] + 2 * xo * cp + c), vload<T>(dwrow[1] + (2 * xo + 1) * cp + c));
        vstore<T>(dwrow[0] + xo * cp + c, dws_max(a, b));
      }
    }
    dws_store_row<T>(dwrow[0], Wo, cp, cout, o + yo * Wo * cout);
  }
}

// Stem: 3x3 stride-2 convolution with zero padding 1 and ReLU, C_in (small) -> C_out channels, output rows
// [r0, r1) of image n. w: [9 * C_in, Cp] with k = (kh * 3 + kw) * C_in + ci; out [Ho, Wo, C_out] per image.
// kInterior: every tap of the P pixels is inside the image (no bounds checks compiled in).
template <typename T, int G, int P, bool kInterior>
__attribute__((always_inline)) inline void stem_tile(const T* img, int64_t H, int64_t W, int64_t cin, int64_t iy0,
                                                     int64_t ix0, const T* w, const T* b, int64_t cp, T* dst) {
  typedef typename VT<T>::vec vec;
  constexpr int L = VT<T>::W;
  vec acc[P][G];
  dws_init_bias<T, G, P>(acc, b);
  for (int kh = 0; kh < 3; ++kh) {
    const int64_t iy = iy0 + kh;
    if (!kInterior && (iy < 0 || iy >= H)) continue;
    for (int kw = 0; kw < 3; ++kw) {
      for (int64_t ci = 0; ci < cin; ++ci) {
        const T* wk = w + ((kh * 3 + kw) * cin + ci) * cp;
        vec wv[G];
        for (int g = 0; g < G; ++g) wv[g] = vload<T>(wk + g * L);
        for (int p = 0; p < P; ++p) {
          const int64_t ix = ix0 + 2 * p + kw;
          if (!kInterior && (ix < 0 || ix >= W)) continue;
          const vec xv = vbcast<T>(img[(iy * W + ix) * cin + ci]);
          for (int g = 0; g < G; ++g) acc[p][g] += xv * wv[g];
        }
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int g = 0; g < G; ++g) vstore<T>(dst + p * cp + g * L, dws_relu(acc[p][g]));
}

template <typename T, int G>
inline void stem_row_group(const T* img, int64_t H, int64_t W, int64_t cin, int64_t oy, int64_t Wo, const T* w,
                           const T* b, int64_t cp, T* dst) {
  constexpr int P = dws_pixels_for(G);
  const int64_t iy0 = 2 * oy - 1;
  const bool rows_in = iy0 >= 0 && iy0 + 2 < H;
  int64_t ox = 0;
  // output column 0 reads input column -1: the first tile goes through the bounds-checked path, as do the last
  // columns (reading 2 ox + 1 >= W) and rows touching the top or bottom border.
  for (; ox < Wo; ) {
    const int64_t ix0 = 2 * ox - 1;
    if (ox + P <= Wo && rows_in && ix0 >= 0 && ix0 + 2 * (P - 1) + 2 < W) {
      stem_tile<T, G, P, true>(img, H, W, cin, iy0, ix0, w, b, cp, dst + ox * cp);
      ox += P;
    } else {
      stem_tile<T, G, 1, false>(img, H, W, cin, iy0, ix0, w, b, cp, dst + ox * cp);
      ox += 1;
    }
  }
}

template <typename T>
void stem_kernel(const tcdcn::cpu::DwSepGeom& g, const T* in, const T* w, const T* b, T* out, int64_t n, int64_t r0,
                 int64_t r1, T* scratch) {
  constexpr int L = VT<T>::W;
  const int64_t H = g.H, W = g.W, cin = g.C_in, cout = g.C_out, cp = g.Cp;
  const int64_t Ho = (H + 1) / 2, Wo = (W + 1) / 2;
  const T* img = in + n * H * W * cin;
  T* o = out + n * Ho * Wo * cout;
  const int64_t nv = cp / L;
  for (int64_t oy = r0; oy < r1; ++oy) {
    int64_t v = 0;
    for (; v + 4 <= nv; v += 4) stem_row_group<T, 4>(img, H, W, cin, oy, Wo, w + v * L, b + v * L, cp, scratch + v * L);
    switch (nv - v) {
      case 3: stem_row_group<T, 3>(img, H, W, cin, oy, Wo, w + v * L, b + v * L, cp, scratch + v * L); break;
      case 2: stem_row_group<T, 2>(img, H, W, cin, oy, Wo, w + v * L, b + v * L, cp, scratch + v * L); break;
      case 1: stem_row_group<T, 1>(img, H, W, cin, oy, Wo, w + v * L, b + v * L, cp, scratch + v * L); break;
      default: break;
    }
    dws_store_row<T>(scratch, Wo, cp, cout, o + oy * Wo * cout);
  }
}

}  // namespace

extern const tcdcn::cpu::DwSepKernels<float> dw_separable_kernels_f32 = {&dw_separable_kernel<float>,
                                                                         &stem_kernel<float>};
extern const tcdcn::cpu::DwSepKernels<double> dw_separable_kernels_f64 = {&dw_separable_kernel<double>,
                                                                          &stem_kernel<double>};
