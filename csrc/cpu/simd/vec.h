// Vector helpers shared by the per-ISA kernel files (see lc_conv2d_body.h for how they are compiled).
// Included inside an ISA-specific namespace after TCDCN_VEC_BYTES / TCDCN_NUM_VREGS are defined.
// No include guard on purpose: each ISA namespace gets its own copy.
#ifndef TCDCN_VEC_BYTES
#error "define TCDCN_VEC_BYTES before including kernel_body.h"
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

// Broadcast. Written as `x - 0` because that is an IEEE identity (even for -0 and NaN) which compilers fold into
// a single vbroadcast, from memory when x is a load; `0 + x` is not (0 + -0 = +0) and costs a scalar add on an
// FMA port before every broadcast, and an element-wise fill loop compiles to masked inserts.
template <typename T>
inline typename VT<T>::vec vbcast(T x) {
  return x - typename VT<T>::vec{};
}

// Rows of faces held in registers for a tile of V vectors of output channels: accumulators R*V plus V weight
// vectors plus a broadcast must fit the register file.
constexpr int rows_for(int v) {
  const int r = (TCDCN_NUM_VREGS - 2 - v) / v;
  return r > 12 ? 12 : (r < 1 ? 1 : r);
}

}  // namespace
