// Vector helpers shared by the per-ISA kernel files (see lc_conv2d_body.h for how they are compiled).
// Included inside an ISA-specific namespace after TCDCN_VEC_BYTES / TCDCN_NUM_VREGS are defined.
// No include guard on purpose: each ISA namespace gets its own copy.
#ifndef TCDCN_VEC_BYTES
#error "define TCDCN_VEC_BYTES before including vec.h (each per-ISA translation unit does)"
#endif

namespace {

template <typename T>
struct VT {
  static constexpr int B = TCDCN_VEC_BYTES > 0 ? TCDCN_VEC_BYTES : int(sizeof(T));
  static constexpr int W = B / int(sizeof(T));
  typedef T vec __attribute__((vector_size(B)));
};

template <typename T>
inline typename VT<T>::vec vload(const T* p) {
  typename VT<T>::vec v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void vstore(T* p, typename VT<T>::vec v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// The first n lanes (0 < n <= W) of a vector, loaded (the others zero) or stored (the others left untouched),
// with the ISA's masked moves: no access past lane n, and no scalar copies that a following vector load would have
// to wait for (a store-forwarding stall).
template <typename T>
inline typename VT<T>::vec vload_n(const T* p, int n) {
  typedef typename VT<T>::vec vec;
#if TCDCN_VEC_BYTES == 64
  const unsigned m = (n >= VT<T>::W) ? ~0u : ((1u << n) - 1u);
  if constexpr (sizeof(T) == 4)
    return __builtin_ia32_loadups512_mask(p, vec{}, (unsigned short)m);
  else
    return __builtin_ia32_loadupd512_mask(p, vec{}, (unsigned char)m);
#elif TCDCN_VEC_BYTES == 32
  typedef int32_t i32x8 __attribute__((vector_size(32)));
  typedef int64_t i64x4 __attribute__((vector_size(32)));
  if constexpr (sizeof(T) == 4) {
    const i32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    return __builtin_ia32_maskloadps256(reinterpret_cast<const vec*>(p), lane < n);
  } else {
    const i64x4 lane = {0, 1, 2, 3};
    return __builtin_ia32_maskloadpd256(reinterpret_cast<const vec*>(p), lane < int64_t(n));
  }
#else
  (void)n;
  return vload<T>(p);  // one lane
#endif
}

template <typename T>
inline void vstore_n(T* p, typename VT<T>::vec v, int n) {
  typedef typename VT<T>::vec vec;
#if TCDCN_VEC_BYTES == 64
  const unsigned m = (n >= VT<T>::W) ? ~0u : ((1u << n) - 1u);
  if constexpr (sizeof(T) == 4)
    __builtin_ia32_storeups512_mask(p, v, (unsigned short)m);
  else
    __builtin_ia32_storeupd512_mask(p, v, (unsigned char)m);
#elif TCDCN_VEC_BYTES == 32
  typedef int32_t i32x8 __attribute__((vector_size(32)));
  typedef int64_t i64x4 __attribute__((vector_size(32)));
  if constexpr (sizeof(T) == 4) {
    const i32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    __builtin_ia32_maskstoreps256(reinterpret_cast<vec*>(p), lane < n, v);
  } else {
    const i64x4 lane = {0, 1, 2, 3};
    __builtin_ia32_maskstorepd256(reinterpret_cast<vec*>(p), lane < int64_t(n), v);
  }
#else
  (void)n;
  vstore<T>(p, v);
#endif
}

// Broadcast. Written as `x - 0` because that is an IEEE identity (even for -0 and NaN) which compilers fold into
// a single vbroadcast, from memory when x is a load; `0 + x` is not (0 + -0 = +0) and costs a scalar add on an
// FMA port before every broadcast, and an element-wise fill loop compiles to masked inserts.
template <typename T>
inline typename VT<T>::vec vbcast(T x) {
  return x - typename VT<T>::vec{};
}

// IEEE binary16 bits -> float. Exact (every half is a float), in software: the scalar 'ref' path and channel
// tails use it. Subnormal halves are m * 2^-24 with m < 2^10, a product float holds exactly; NaNs come out quiet,
// as F16C's vcvtph2ps makes them.
inline float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t bits;
  if (e == 0x1f) {
    bits = sign | 0x7f800000u | (m << 13) | (m ? 0x00400000u : 0u);
  } else if (e != 0) {
    bits = sign | ((e + 112u) << 23) | (m << 13);  // rebias the exponent: 127 - 15
  } else {
    const float f = float(m) * 5.9604644775390625e-8f;  // 2^-24
    __builtin_memcpy(&bits, &f, sizeof(bits));
    bits |= sign;
  }
  float out;
  __builtin_memcpy(&out, &bits, sizeof(out));
  return out;
}

// One binary16 value -> float: F16C where the ISA has it (channel tails of the vector paths), else software.
inline float f16_to_float(uint16_t h) {
#if TCDCN_VEC_BYTES > 0
  typedef short h8 __attribute__((vector_size(16)));
  const h8 v = {short(h), 0, 0, 0, 0, 0, 0, 0};
  return __builtin_ia32_vcvtph2ps(v)[0];
#else
  return f16_bits_to_float(h);
#endif
}

// W float32 lanes from W consecutive binary16 values: F16C's vcvtph2ps (the ymm form for AVX2, AVX-512F's zmm
// form), called as compiler builtins (GCC 12 does not vectorise a _Float16 -> float conversion by itself).
inline typename VT<float>::vec vload_f16(const uint16_t* p) {
#if TCDCN_VEC_BYTES == 64
  typedef short h16 __attribute__((vector_size(32)));
  h16 h;
  __builtin_memcpy(&h, p, sizeof(h));
  // all 16 lanes (mask 0xffff), rounding mode 4 = the current one (the conversion is exact anyway)
  return __builtin_ia32_vcvtph2ps512_mask(h, typename VT<float>::vec{}, (unsigned short)0xffff, 4);
#elif TCDCN_VEC_BYTES == 32
  typedef short h8 __attribute__((vector_size(16)));
  h8 h;
  __builtin_memcpy(&h, p, sizeof(h));
  return __builtin_ia32_vcvtph2ps256(h);
#elif TCDCN_VEC_BYTES == 0
  return vbcast<float>(f16_bits_to_float(*p));
#else
#error "vload_f16: no float16 conversion for this TCDCN_VEC_BYTES"
#endif
}

// Rows of faces held in registers for a tile of V vectors of output channels: accumulators R*V plus V weight
// vectors plus a broadcast must fit the register file.
constexpr int rows_for(int v) {
  const int r = (TCDCN_NUM_VREGS - 2 - v) / v;
  return r > 12 ? 12 : (r < 1 ? 1 : r);
}

}  // namespace
