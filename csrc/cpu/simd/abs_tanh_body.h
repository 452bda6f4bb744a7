// abs_tanh kernel bodies; included by abs_tanh_{ref,avx2,avx512}.cpp after vec.h and abs_tanh_math.h.
namespace {

void abs_tanh_f32(const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if TCDCN_VEC_BYTES > 0
  constexpr int W = VT<float>::W;
  for (; i + W <= n; i += W) vstore<float>(y + i, abs_tanh_vec(vload<float>(x + i)));
#endif
  for (; i < n; ++i) y[i] = abs_tanh_scalar(x[i]);
}

void abs_tanh_f64(const double* x, double* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = abs_tanh_scalar(x[i]);
}

void abs_tanh_backward_f32(const float* go, const float* x, float* gi, int64_t n) {
  int64_t i = 0;
#if TCDCN_VEC_BYTES > 0
  constexpr int W = VT<float>::W;
  for (; i + W <= n; i += W) {
    const fvec xv = vload<float>(x + i);
    const fvec y = abs_tanh_vec(xv);
    const fvec s = xv > 0.0f ? fvec{} + 1.0f : (xv < 0.0f ? fvec{} - 1.0f : fvec{});
    vstore<float>(gi + i, vload<float>(go + i) * s * (1.0f - y * y));
  }
#endif
  for (; i < n; ++i) {
    const float y = abs_tanh_scalar(x[i]);
    gi[i] = go[i] * sign_of(x[i]) * (1.0f - y * y);
  }
}

void abs_tanh_backward_f64(const double* go, const double* x, double* gi, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double y = abs_tanh_scalar(x[i]);
    gi[i] = go[i] * sign_of(x[i]) * (1.0 - y * y);
  }
}

// abs_tanh_maxpool2d's rows (AbsTanhKernels::pool_max_abs / pool_backward). Branch-free selects on whole vectors;
// "takes" is the pooling rule (v > m or v is NaN), so the first maximum wins and NaN propagates.
template <typename V>
inline V vabs(V v) {
  return v < V{} ? -v : v;
}

template <typename V>
inline auto pool_takes(V v, V m) {
  return (v > m) | (v != v);
}

template <typename T>
void pool_max_abs(const T* const* x, T* m, int64_t n) {
  int64_t i = 0;
#if TCDCN_VEC_BYTES > 0
  typedef typename VT<T>::vec vec;
  constexpr int W = VT<T>::W;
  for (; i + W <= n; i += W) {
    vec best = vabs(vload<T>(x[0] + i));
    for (int k = 1; k < 4; ++k) {
      const vec v = vabs(vload<T>(x[k] + i));
      best = pool_takes(v, best) ? v : best;
    }
    vstore<T>(m + i, best);
  }
#endif
  for (; i < n; ++i) {
    T best = x[0][i] < T(0) ? -x[0][i] : x[0][i];
    for (int k = 1; k < 4; ++k) {
      const T v = x[k][i] < T(0) ? -x[k][i] : x[k][i];
      best = (v > best || v != v) ? v : best;
    }
    m[i] = best;
  }
}

template <typename T>
void pool_backward(const T* const* x, const T* go, const T* out, T* const* g, int64_t n) {
  int64_t i = 0;
#if TCDCN_VEC_BYTES > 0
  typedef typename VT<T>::vec vec;
  constexpr int W = VT<T>::W;
  for (; i + W <= n; i += W) {
    vec xs[4];
    for (int k = 0; k < 4; ++k) xs[k] = vload<T>(x[k] + i);
    vec best = vabs(xs[0]), picked = xs[0];
    // won[k]: the lanes where input k is the argmax so far; a later input that takes a lane takes it from all.
    using mask = decltype(best != best);
    const mask none = (best != best) & (best == best);  // all false
    mask won[4] = {~none, none, none, none};
    for (int k = 1; k < 4; ++k) {
      const vec v = vabs(xs[k]);
      const auto takes = pool_takes(v, best);
      best = takes ? v : best;
      picked = takes ? xs[k] : picked;
      for (int j = 0; j < k; ++j) won[j] &= ~takes;
      won[k] = takes;
    }
    const vec o = vload<T>(out + i);
    const vec zero{};
    const vec sgn = picked > zero ? zero + T(1) : (picked < zero ? zero - T(1) : zero);
    const vec gv = vload<T>(go + i) * sgn * (T(1) - o * o);
    // the argmax gets gv; the others 0, or NaN where x is NaN (0 * d|tanh|/dx at NaN, as abs_tanh's backward
    // after the pooling's)
    for (int k = 0; k < 4; ++k) vstore<T>(g[k] + i, won[k] ? gv : (xs[k] != xs[k] ? xs[k] : zero));
  }
#endif
  for (; i < n; ++i) {
    T best = x[0][i] < T(0) ? -x[0][i] : x[0][i];
    int arg = 0;
    for (int k = 1; k < 4; ++k) {
      const T v = x[k][i] < T(0) ? -x[k][i] : x[k][i];
      if (v > best || v != v) {
        best = v;
        arg = k;
      }
    }
    const T gv = go[i] * sign_of(x[arg][i]) * (T(1) - out[i] * out[i]);
    for (int k = 0; k < 4; ++k) g[k][i] = k == arg ? gv : (x[k][i] != x[k][i] ? x[k][i] : T(0));
  }
}

}  // namespace

const AbsTanhKernels<float> abs_tanh_kernels_f32 = {&abs_tanh_f32, &abs_tanh_backward_f32, &pool_max_abs<float>,
                                                    &pool_backward<float>};
const AbsTanhKernels<double> abs_tanh_kernels_f64 = {&abs_tanh_f64, &abs_tanh_backward_f64, &pool_max_abs<double>,
                                                     &pool_backward<double>};
