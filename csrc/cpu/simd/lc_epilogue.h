// The forward kernels' epilogues (store, |tanh|, relu, each with or without the fused 2x2 max pooling) and the
// output-slot arithmetic of the pooled ones: shared by the float forwards (lc_forward_body.h, conv_forward_body.h)
// and the int8 kernels (lc_conv2d_vnni.cpp, lc_conv2d_amx.cpp).
// Included inside an ISA namespace after vec.h and abs_tanh_math.h; no include guard on purpose (each ISA
// namespace gets its own copy, see lc_conv2d_body.h).

namespace {

// The epilogues (tcdcn::Epilogue, epilogue.h): kPlain stores the sum, kAbsTanh stores |tanh(sum)|,
// kAbsTanhMaxPool stores the 2x2 max pooling of |tanh(sum)| (floor mode; NaN propagates as in torch's max_pool2d);
// kRelu and kReluMaxPool the same with relu. Both activations increase with their argument's key (|x| for |tanh|, x
// for relu), so the max of a cell's activations is the activation of its largest key: the cell's first location
// (even row, even column) stores its key, the next two max-accumulate theirs and the last (odd row, odd column)
// applies the activation once: a quarter of the |tanh|s (whose latency a small layer such as TCDCN's first would
// otherwise expose), and no zero-filled output. Locations are visited in increasing order for each face and
// channel, so the four come in that order.
// Where a location stands in its pooling cell (pooled epilogues only).
enum CellPart : int { kCellFirst = 0, kCellInner = 1, kCellLast = 2 };

inline bool pooled(Epilogue mode) { return mode == kAbsTanhMaxPool || mode == kReluMaxPool; }

template <typename V>
inline V relu_vec(V v) {
  return ((v > 0) | (v != v)) ? v : V{};  // NaN stays NaN, as torch.relu
}

// The first n lanes of dst (n = W: the whole vector; n < W: a channel tail, with masked loads and stores).
template <typename T>
__attribute__((always_inline)) inline void store_out_n(T* dst, typename VT<T>::vec v, Epilogue mode, int part, int n) {
  typedef typename VT<T>::vec vec;
  const auto load = [&] { return n == VT<T>::W ? vload<T>(dst) : vload_n<T>(dst, n); };
  const auto store = [&](vec x) {
    if (n == VT<T>::W)
      vstore<T>(dst, x);
    else
      vstore_n<T>(dst, x, n);
  };
  if (mode == kPlain) {
    store(v);
    return;
  }
  if (mode == kAbsTanh) {
    store(act_vec(v));
    return;
  }
  if (mode == kRelu) {
    store(relu_vec(v));
    return;
  }
  if (mode == kAbsTanhMaxPool) v = v < 0 ? -v : v;  // |v| (NaN stays NaN)
  if (part != kCellFirst) {
    const vec o = load();
    v = (o != o) ? o : (((v > o) | (v != v)) ? v : o);
  }
  if (part == kCellLast) v = mode == kAbsTanhMaxPool ? act_vec(v) : relu_vec(v);
  store(v);
}

template <typename T>
__attribute__((always_inline)) inline void store_out(T* dst, typename VT<T>::vec v, Epilogue mode, int part) {
  store_out_n<T>(dst, v, mode, part, VT<T>::W);
}

template <typename T>
inline void store_out_scalar(T* dst, T v, Epilogue mode, int part) {
  if (mode == kPlain) {
    *dst = v;
    return;
  }
  if (mode == kAbsTanh) {
    *dst = abs_tanh_scalar(v);
    return;
  }
  if (mode == kRelu) {
    *dst = (v > T(0) || v != v) ? v : T(0);
    return;
  }
  if (mode == kAbsTanhMaxPool) v = v < 0 ? -v : v;
  if (part != kCellFirst) {
    const T o = *dst;
    v = (o != o) ? o : ((v > o || v != v) ? v : o);
  }
  if (part == kCellLast) v = mode == kAbsTanhMaxPool ? abs_tanh_scalar(v) : ((v > T(0) || v != v) ? v : T(0));
  *dst = v;
}

// Output slot of location l: l itself, or its 2x2 pooling cell; dropped_by_pool() tells whether floor-mode pooling
// drops it, cell_part() where it stands in its cell.
inline int64_t out_slot(const tcdcn::cpu::LcGeom& g, int64_t l, Epilogue mode) {
  return pooled(mode) ? ((l / g.W_out) / 2) * (g.W_out / 2) + (l % g.W_out) / 2 : l;
}
inline bool dropped_by_pool(const tcdcn::cpu::LcGeom& g, int64_t l, Epilogue mode) {
  return pooled(mode) && ((l / g.W_out) >= 2 * (g.H_out / 2) || (l % g.W_out) >= 2 * (g.W_out / 2));
}
inline int cell_part_at(int64_t i, int64_t j) {
  return (i & 1) ? ((j & 1) ? kCellLast : kCellInner) : ((j & 1) ? kCellInner : kCellFirst);
}
inline int cell_part(const tcdcn::cpu::LcGeom& g, int64_t l) { return cell_part_at(l / g.W_out, l % g.W_out); }
inline int64_t out_slots(const tcdcn::cpu::LcGeom& g, Epilogue mode) {
  return pooled(mode) ? (g.H_out / 2) * (g.W_out / 2) : g.L();
}

}  // namespace
