// The pieces of the forward kernel bodies that both use (lc_forward_body.h, conv_forward_body.h): the weights'
// widening loads (float32, float64, binary16, int8) and the sums of scaled weights.
// Included inside an ISA namespace by lc_conv2d_body.h (after vec.h, abs_tanh_math.h, lc_epilogue.h and the
// pieces before it there); no include guard on purpose: each ISA namespace gets its own copy, compiled with that
// file's flags (lc_conv2d_body.h says why).

namespace {

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

}  // namespace
