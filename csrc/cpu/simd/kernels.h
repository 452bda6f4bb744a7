// Torch-free kernel interface shared by the per-ISA translation units (lc_conv2d_{ref,avx2,avx512}.cpp).
// Everything is raw pointers and element strides so the ISA files need no torch header and can be
// compiled with their own instruction-set flags.
#pragma once

#include <cstddef>
#include <cstdint>

#include "epilogue.h"

namespace tcdcn::cpu {

// Geometry of one locally connected convolution (padding already applied by the caller).
struct LcGeom {
  int64_t N, C_in, H, W;         // input  [N, C_in, H, W] (any strides, below)
  int64_t C_out, H_out, W_out;   // output [N, C_out, H_out, W_out]
  int64_t kH, kW, sH, sW;        // kernel size and stride
  int64_t in_sN, in_sC, in_sH, in_sW;  // input element strides
  // in_off[k] for k = (ci * kH + kh) * kW + kw: element offset of that tap from a window's top-left corner.
  const int64_t* in_off;
  // gi_off[t] for tap t = kh * kW + kw: element offset of that tap in a channels-last [N, H, W, C_in]
  // grad_input buffer, (kh * W + kw) * C_in.
  const int64_t* gi_off;
  int64_t L() const { return H_out * W_out; }
  int64_t K() const { return C_in * kH * kW; }
  // Element offset of output location l's window corner in the input / in a contiguous grad_input.
  int64_t in_base(int64_t l) const { return (l / W_out) * sH * in_sH + (l % W_out) * sW * in_sW; }
  int64_t gi_base(int64_t l) const { return ((l / W_out) * sH * W + (l % W_out) * sW) * C_in; }
};

template <typename T>
struct LcKernels {
  // out[n, l, co] (contiguous [N, L, C_out], i.e. channels-last) for locations [l0, l1) and every face:
  //   out = sum_k in[n, window(l) + in_off[k]] * w[l, k, co] + bias[l, co]
  // w: [L, K, C_out] contiguous; bias: [L, C_out] contiguous (the op's [C_out, H_out, W_out] transposed) or null.
  // epilogue kPlain: store; kAbsTanh: store |tanh(out)|; kRelu: store relu(out); kAbsTanhMaxPool (kReluMaxPool):
  // the 2x2 (floor-mode) max pooling of |tanh(out)| (relu(out)) into [N, H_out/2, W_out/2, C_out] (locations a
  // pooling cell drops are skipped). With a pooling epilogue a cell is started by its first location and finished
  // by its last, so [l0, l1) must hold whole pairs of output rows: l0 a multiple of 2 * W_out, and l1 too or l1 = L.
  void (*forward)(const LcGeom& g, const T* in, const T* w, const T* bias, T* out, int64_t l0, int64_t l1,
                  Epilogue epilogue);
  // For locations [l0, l1): gw[l, k, co] = sum_n in[n, window(l) + in_off[k]] * go[n, l, co] (overwritten);
  // gb[l, co] = sum_n go[n, l, co]. go: [N, L, C_out] contiguous; gw or gb may be null (not wanted). order: the K
  // taps in the order they are visited (the caller sorts them by input offset), order_off[j] =
  // in_off[order[j]].
  void (*backward_weight)(const LcGeom& g, const T* in, const T* go, T* gw, T* gb, int64_t l0, int64_t l1,
                          const int64_t* order, const int64_t* order_off);
  // For faces [n0, n1): gi[n, gi_base(l) + gi_off[kh*kW+kw] + ci] += sum_co go[n, l, co] * w[l, ci, kh, kw, co]
  // over every l. w: the forward's [L, K, C_out] weights; each location's are transposed to [C_out, kH, kW, C_in]
  // into scratch (K * C_out elements, the calling thread's own) while they are in cache. gi: channels-last
  // [N, H, W, C_in], zeroed by the caller.
  void (*backward_input)(const LcGeom& g, const T* go, const T* w, T* gi, int64_t n0, int64_t n1, T* scratch);
  // forward with the weights stored as IEEE binary16 bits (same layout as w): each weight is widened to T on load
  // and the sums stay in T. Null where T is not float (float16 weights go with float32 activations only).
  void (*forward_half_weight)(const LcGeom& g, const T* in, const uint16_t* w, const T* bias, T* out, int64_t l0,
                              int64_t l1, Epilogue epilogue);
  // Spatially shared convolution, as forward() with one weight matrix for every location:
  //   out = sum_k in[n, window(l) + in_off[k]] * w[k, co] + bias[co]
  // w: [K, conv_channel_pad(C_out)] contiguous, k = (ci * kH + kh) * kW + kw (a [C_out, C_in, kH, kW] weight
  // permuted to (ci, kh, kw, co)), the padding columns zero; bias: [conv_channel_pad(C_out)] or null. Epilogues
  // and [l0, l1) as forward(); stride g.sH, g.sW.
  void (*conv_forward)(const LcGeom& g, const T* in, const T* w, const T* bias, T* out, int64_t l0, int64_t l1,
                       Epilogue epilogue);
  // conv_forward with binary16 weights (T = float only, else null).
  void (*conv_forward_half_weight)(const LcGeom& g, const T* in, const uint16_t* w, const T* bias, T* out,
                                   int64_t l0, int64_t l1, Epilogue epilogue);
  // forward with symmetric int8 weights q (same layout as w) and a scale per location and output channel, ws:
  // [L, C_out] contiguous; w[l, k, co] = q[l, k, co] * ws[l, co]. The sum over the taps runs on q widened to T
  // and is scaled once: out = (sum_k in * q) * ws[l, co] + bias[l, co]. T = float only, else null.
  void (*forward_int8_weight)(const LcGeom& g, const T* in, const int8_t* w, const T* ws, const T* bias, T* out,
                              int64_t l0, int64_t l1, Epilogue epilogue);
};

// conv_forward's weight and bias columns: C_out rounded up to a multiple of 16 (every vector width in floats).
constexpr int64_t conv_channel_pad(int64_t c_out) { return (c_out + 15) / 16 * 16; }

template <typename T>
struct AbsTanhKernels {
  // y[i] = |tanh(x[i])| for i < n.
  void (*forward)(const T* x, T* y, int64_t n);
  // gi[i] = go[i] * sign(x[i]) * (1 - tanh(x[i])^2), with sign(0) = 0.
  void (*backward)(const T* go, const T* x, T* gi, int64_t n);
  // abs_tanh_maxpool2d, one run of n side-by-side pooling cells whose four inputs are x[k] + i (k = 0..3: top-left,
  // top-right, bottom-left, bottom-right), i < n:
  //   pool_max_abs: m[i] = max_k |x[k][i]| (NaN wins; the caller takes tanh of it afterwards);
  //   pool_backward: the cell's argmax k* (the first k holding the maximum of |x|, a NaN replacing any k before it)
  //   gets g[k*][i] = go[i] * sign(x[k*][i]) * (1 - out[i]^2), the other three g[k][i] = 0.
  void (*pool_max_abs)(const T* const* x, T* m, int64_t n);
  void (*pool_backward)(const T* const* x, const T* go, const T* out, T* const* g, int64_t n);
};

// Geometry of the detector's convolutions (dw_separable, stem): activations channels-last and contiguous.
struct DwSepGeom {
  int64_t N, H, W;      // input [N, H, W, C_in]
  int64_t C_in, C_out;  // output [N, H', W', C_out]
  int64_t Cp;           // dws_channel_pad(C_out): the weights' and biases' padded column count
  int relu, pool;       // dw_separable: ReLU after the depthwise conv; 2x2 floor-mode max pooling after that
};

// Padded channel count of the detector weights: C_out rounded up to a multiple of 16 (every vector width).
constexpr int64_t dws_channel_pad(int64_t c_out) { return (c_out + 15) / 16 * 16; }

// Scratch elements one dw_separable_block call needs (its ring, zero row, depthwise rows and summed-input row).
constexpr int64_t dws_block_scratch(int64_t W, int64_t C_in, int64_t Cp) { return (4 * (W + 2) + 2 * W) * Cp + W * C_in; }

template <typename T>
struct DwSepKernels {
  // Depthwise-separable block (dw_separable_body.h) for image n, output rows [r0, r1) (pooled rows when g.pool):
  // in [N, H, W, C_in]; up [N, H/2, W/2, C_in] or null (added with nearest 2x upsampling before the pointwise
  // conv); pw [C_in, Cp], pb [Cp], dw [9, Cp] (tap dy * 3 + dx), db [Cp]; out [N, H or H/2, W or W/2, C_out];
  // scratch: dws_block_scratch(W, C_in, Cp) elements owned by the caller.
  void (*block)(const DwSepGeom& g, const T* in, const T* up, const T* pw, const T* pb, const T* dw, const T* db,
                T* out, int64_t n, int64_t r0, int64_t r1, T* scratch);
  // 3x3 stride-2 convolution, zero padding 1, then ReLU, for image n, output rows [r0, r1): in [N, H, W, C_in];
  // w [9 * C_in, Cp] (row (kh * 3 + kw) * C_in + ci), b [Cp]; out [N, ceil(H/2), ceil(W/2), C_out]; scratch:
  // ceil(W/2) * Cp elements.
  void (*stem)(const DwSepGeom& g, const T* in, const T* w, const T* b, T* out, int64_t n, int64_t r0, int64_t r1,
               T* scratch);
};

#define TCDCN_DECLARE_ISA(isa)                                                                      \
  namespace isa {                                                                                   \
  extern const LcKernels<float> lc_kernels_f32;                                                     \
  extern const LcKernels<double> lc_kernels_f64;                                                    \
  extern const AbsTanhKernels<float> abs_tanh_kernels_f32;                                          \
  extern const AbsTanhKernels<double> abs_tanh_kernels_f64;                                         \
  extern const DwSepKernels<float> dw_separable_kernels_f32;                                        \
  extern const DwSepKernels<double> dw_separable_kernels_f64;                                       \
  }
TCDCN_DECLARE_ISA(ref)
TCDCN_DECLARE_ISA(avx2)
TCDCN_DECLARE_ISA(avx512)
#undef TCDCN_DECLARE_ISA

}  // namespace tcdcn::cpu
