// |tanh| math shared by the abs_tanh kernels and the fused lc_conv2d epilogue. Include after vec.h.
namespace {

// ---------------------------------------------------------------------------------------------------------
// |tanh|.
// Scalar: libm. Vector float: |tanh(a)| = (1 - e) / (1 + e) with e = exp(-2|a|), exp by range reduction
// (2^n * p(r), |r| <= ln2/2, Taylor to r^7: relative error < 1e-8) and, below |a| = 1/16 where 1 - e cancels,
// the odd Taylor series of tanh to a^7 (error < 1e-12). Max abs error vs libm ~1e-7. NaN propagates,
// +-inf gives 1. Double always takes libm (it is the gradcheck path).

inline float abs_tanh_scalar(float x) { return __builtin_fabsf(__builtin_tanhf(x)); }
inline double abs_tanh_scalar(double x) { return __builtin_fabs(__builtin_tanh(x)); }

#if TCDCN_VEC_BYTES > 0
typedef float fvec __attribute__((vector_size(TCDCN_VEC_BYTES)));
typedef int ivec __attribute__((vector_size(TCDCN_VEC_BYTES)));

inline fvec abs_tanh_vec(fvec x) {
  const fvec a = (fvec)((ivec)x & 0x7fffffff);
  fvec t = -2.0f * a;
  t = t < -87.0f ? fvec{} - 87.0f : t;
  // n = round(t / ln2) via the 1.5 * 2^23 trick (|t / ln2| < 2^22 here).
  const fvec nf = (t * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // Cody-Waite: ln2 = 0.693359375 - 2.12194440e-4 (the first part exact in float).
  const fvec r = (t - nf * 0.693359375f) + nf * 2.12194440e-4f;
  fvec p = r * (1.0f / 5040.0f) + (1.0f / 720.0f);
  p = p * r + (1.0f / 120.0f);
  p = p * r + (1.0f / 24.0f);
  p = p * r + (1.0f / 6.0f);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const ivec n = __builtin_convertvector(nf, ivec);
  const fvec scale = (fvec)((n + 127) << 23);  // 2^n, n in [-126, 0]
  const fvec e = p * scale;
  const fvec big = (1.0f - e) / (1.0f + e);
  const fvec a2 = a * a;
  const fvec small = a * (1.0f + a2 * (-1.0f / 3.0f + a2 * (2.0f / 15.0f + a2 * (-17.0f / 315.0f))));
  return a < 0.0625f ? small : big;
}
#endif

template <typename T>
inline T sign_of(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
}

// Epilogue of the fused forward: |tanh| on one accumulator vector.
inline VT<double>::vec act_vec(VT<double>::vec v) {
  for (int i = 0; i < VT<double>::W; ++i) v[i] = abs_tanh_scalar(v[i]);
  return v;
}
#if TCDCN_VEC_BYTES > 0
inline fvec act_vec(fvec v) { return abs_tanh_vec(v); }
#else
inline VT<float>::vec act_vec(VT<float>::vec v) {
  v[0] = abs_tanh_scalar(v[0]);
  return v;
}
#endif

}  // namespace
