// CUDA implementation of tcdcn_ext::lc_conv2d / lc_conv2d_abs_tanh / _lc_conv2d_backward.
//
// Every output location l has its own [K, C_out] weight matrix (K = C_in*kH*kW) shared by all N faces, so each
// of the three products is a batch of small GEMMs, one (or a slice of one) per block:
//
//   forward      out[n, l, co]     = sum_k   P[n, l, k] * w[l, k, co]          rows n,  cols co, reduce k
//   grad_weight  gw[l, k, co]      = sum_n   P[n, l, k] * go[n, l, co]         rows k,  cols co, reduce n
//   grad_input   gi[n, ci, ih, iw] = sum_{(l, kh, kw) covering (ih, iw)} sum_co go[n, l, co] * w[l, ci, kh, kw, co]
//                                                                               rows n,  cols ci, reduce (l, co)
//
// with P[n, l, k] the zero-padded input under tap k of location l's window (no im2col buffer: taps are read
// through a per-chunk offset table). All three share one block-level tile GEMM: the block stages a kChunk-deep
// slice of both operands in shared memory and each thread accumulates a kRM x kRN register tile, so a location's
// weights are read once per tile of up to 256 faces. No atomics: grad_weight reduces over faces inside a block, and
// when that leaves too few blocks for the GPU it splits the faces into S slices written to a scratch buffer that a
// second kernel sums in a fixed order; grad_input gathers, for each input pixel, the (location, tap) pairs whose
// window covers it. Results are therefore deterministic (bit-identical between runs).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cuda/cuda_utils.cuh"
#include "lc_conv2d_shape.h"

namespace tcdcn {
namespace {

using cuda::ceil_div;

constexpr int kRM = 4;             // register tile rows per thread
constexpr int kRN = 4;             // register tile columns per thread
constexpr int kChunk = 16;         // reduction depth staged in shared memory per step
constexpr int kMaxThreads = 256;
constexpr int kMaxTR = 64;         // threads along rows  -> at most 256 rows per block tile
constexpr int kMaxTC = 16;         // threads along cols  -> at most 64 columns per block tile
constexpr int kMaxRows = kMaxTR * kRM;
constexpr int kMaxCols = kMaxTC * kRN;

// Geometry passed by value to the kernels (offsets are element counts).
struct LcArgs {
  int64_t N, C_in, H, W, C_out, H_out, W_out, kH, kW, sH, sW, pH, pW;
  int64_t in_sN, in_sC, in_sH, in_sW;  // input strides (any layout)
  int TR, TC;                           // thread grid of the block tile: TR x TC threads, kRM*TR x kRN*TC outputs
};

// Block tile shape for a [rows x cols] output: columns first (up to 64), then as many row threads as fit.
struct Tile {
  int TR, TC;
};

Tile pick_tile(int64_t rows, int64_t cols) {
  const int tc = static_cast<int>(std::clamp<int64_t>(ceil_div(cols, kRN), 1, kMaxTC));
  const int64_t tr = std::min<int64_t>({ceil_div(std::max<int64_t>(rows, 1), kRM), kMaxThreads / tc, kMaxTR});
  return {static_cast<int>(std::max<int64_t>(tr, 1)), tc};
}

// Shared-memory operands of the tile GEMM: A[r][row], B[r][col] for r < kChunk. The +1 pads keep the
// transposing stores (r fastest across threads) off a single bank.
template <typename T>
struct TileSmem {
  T a[kChunk][kMaxRows + 1];
  T b[kChunk][kMaxCols + 1];
};

// acc[i][j] += sum_r A[r][trow + i*TR] * B[r][tcol + j*TC]. Rows/columns are interleaved across threads
// (stride TR / TC), so a warp reads consecutive B addresses and only a few distinct A rows (broadcasts).
template <typename T>
__device__ __forceinline__ void tile_mma(const TileSmem<T>& s, int trow, int tcol, int TR, int TC,
                                         T (&acc)[kRM][kRN]) {
#pragma unroll 4
  for (int r = 0; r < kChunk; ++r) {
    T a[kRM], b[kRN];
#pragma unroll
    for (int i = 0; i < kRM; ++i) a[i] = s.a[r][trow + i * TR];
#pragma unroll
    for (int j = 0; j < kRN; ++j) b[j] = s.b[r][tcol + j * TC];
#pragma unroll
    for (int i = 0; i < kRM; ++i)
#pragma unroll
      for (int j = 0; j < kRN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
  }
}

// Walks e = tid, tid + nthreads, ... over an [outer x inner] index grid (e = o*inner + i) without a division per
// element: the operand loaders below run this once per staged element.
struct GridWalk {
  int o0, i0, dq, dr;  // first (outer, inner); the step nthreads = dq*inner + dr
  __device__ GridWalk(int tid, int nthreads, int inner)
      : o0(tid / inner), i0(tid % inner), dq(nthreads / inner), dr(nthreads % inner) {}
};

template <typename F>
__device__ __forceinline__ void walk(const GridWalk& wk, int outer, int inner, F&& body) {
  for (int o = wk.o0, i = wk.i0; o < outer;) {
    body(o, i);
    o += wk.dq;
    i += wk.dr;
    if (i >= inner) {  // dr < inner, so one wrap at most
      i -= inner;
      ++o;
    }
  }
}

// Offset of tap k of the window at output (oh, ow) from a face's base pointer, or -1 where the tap falls in the
// zero padding or k is past K.
__device__ __forceinline__ int64_t tap_offset(const LcArgs& g, int64_t oh, int64_t ow, int64_t k) {
  const int64_t khw = g.kH * g.kW;
  if (k >= g.C_in * khw) return -1;
  const int64_t ci = k / khw, rem = k - ci * khw;
  const int64_t kh = rem / g.kW, kw = rem - kh * g.kW;
  const int64_t ih = oh * g.sH - g.pH + kh, iw = ow * g.sW - g.pW + kw;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return -1;
  return ci * g.in_sC + ih * g.in_sH + iw * g.in_sW;
}

// ------------------------------------------------------------------------------------------------------------
// Forward: block (l, face tile, channel tile). out is [N, L, C_out] (the channels-last NCHW tensor's storage).

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) lc_forward_kernel(const LcArgs g, const T* __restrict__ x,
                                                                 const T* __restrict__ w,
                                                                 const T* __restrict__ bias, T* __restrict__ out,
                                                                 bool act) {
  __shared__ TileSmem<T> s;
  __shared__ int64_t tab[2][kChunk];  // tap offsets of the current / next chunk (double-buffered)
  const int TR = g.TR, TC = g.TC, rows = TR * kRM, cols = TC * kRN;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int trow = tid / TC, tcol = tid % TC;
  const int64_t L = g.H_out * g.W_out, K = g.C_in * g.kH * g.kW, C = g.C_out;
  const int64_t l = blockIdx.x, oh = l / g.W_out, ow = l % g.W_out;
  const int64_t c0 = int64_t(blockIdx.z) * cols;
  const T* wl = w + l * K * C;
  const GridWalk walk_a(tid, nthreads, kChunk), walk_b(tid, nthreads, cols);

  for (int64_t n0 = int64_t(blockIdx.y) * rows; n0 < g.N; n0 += int64_t(gridDim.y) * rows) {
    T acc[kRM][kRN];
#pragma unroll
    for (int i = 0; i < kRM; ++i)
#pragma unroll
      for (int j = 0; j < kRN; ++j) acc[i][j] = T(0);
    for (int q = tid; q < kChunk; q += nthreads) tab[0][q] = tap_offset(g, oh, ow, q);
    __syncthreads();
    int buf = 0;
    for (int64_t k0 = 0; k0 < K; k0 += kChunk, buf ^= 1) {
      // A[kk][f] = P[n0 + f, l, k0 + kk]; kk fastest so a thread group walks one face's window.
      walk(walk_a, rows, kChunk, [&](int f, int kk) {
        const int64_t n = n0 + f, o = tab[buf][kk];
        s.a[kk][f] = (n < g.N && o >= 0) ? x[n * g.in_sN + o] : T(0);
      });
      // B[kk][c] = w[l, k0 + kk, c0 + c]; c fastest: contiguous in memory.
      walk(walk_b, kChunk, cols, [&](int kk, int c) {
        const int64_t k = k0 + kk, co = c0 + c;
        s.b[kk][c] = (k < K && co < C) ? wl[k * C + co] : T(0);
      });
      __syncthreads();
      for (int q = tid; q < kChunk; q += nthreads) tab[buf ^ 1][q] = tap_offset(g, oh, ow, k0 + kChunk + q);
      tile_mma(s, trow, tcol, TR, TC, acc);
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kRN; ++j) {
      const int64_t co = c0 + tcol + j * TC;
      if (co >= C) continue;
      const T b = bias != nullptr ? bias[co * L + l] : T(0);
#pragma unroll
      for (int i = 0; i < kRM; ++i) {
        const int64_t n = n0 + trow + i * TR;
        if (n >= g.N) continue;
        const T v = acc[i][j] + b;
        out[(n * L + l) * C + co] = act ? cuda::abs_tanh_dev(v) : v;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// grad_weight / grad_bias: block (l, tap tile, channel tile + slice). Slice s reduces faces
// [s*per_slice, (s+1)*per_slice) and writes gw_out + s*L*K*C (and gb_out + s*C*L); with one slice these are the
// final tensors. gw_out may be null (only grad_bias wanted); gb_out may be null.

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) lc_backward_weight_kernel(const LcArgs g, const T* __restrict__ x,
                                                                         const T* __restrict__ go,
                                                                         T* __restrict__ gw_out,
                                                                         T* __restrict__ gb_out,
                                                                         int64_t per_slice, int col_tiles) {
  __shared__ TileSmem<T> s;
  __shared__ int64_t tab[kMaxRows];  // tap offsets of this block's rows (taps)
  const int TR = g.TR, TC = g.TC, rows = TR * kRM, cols = TC * kRN;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int trow = tid / TC, tcol = tid % TC;
  const int64_t L = g.H_out * g.W_out, K = g.C_in * g.kH * g.kW, C = g.C_out;
  const int64_t l = blockIdx.x, oh = l / g.W_out, ow = l % g.W_out;
  const int64_t k0 = int64_t(blockIdx.y) * rows;
  const int64_t c0 = int64_t(blockIdx.z % col_tiles) * cols;
  const int64_t slice = blockIdx.z / col_tiles;
  const int64_t n_begin = slice * per_slice, n_end = std::min(g.N, n_begin + per_slice);
  // grad_bias is the column sum of go: one row of threads of the first tap tile keeps it.
  const bool keep_bias = gb_out != nullptr && blockIdx.y == 0 && trow == 0;

  const GridWalk walk_a(tid, nthreads, rows), walk_b(tid, nthreads, cols);
  for (int r = tid; r < rows; r += nthreads) tab[r] = tap_offset(g, oh, ow, k0 + r);
  T acc[kRM][kRN];
  T bacc[kRN];
#pragma unroll
  for (int j = 0; j < kRN; ++j) {
    bacc[j] = T(0);
#pragma unroll
    for (int i = 0; i < kRM; ++i) acc[i][j] = T(0);
  }
  __syncthreads();

  for (int64_t nb = n_begin; nb < n_end; nb += kChunk) {
    // A[ff][r] = P[nb + ff, l, k0 + r]; r fastest.
    walk(walk_a, kChunk, rows, [&](int ff, int r) {
      const int64_t n = nb + ff, o = tab[r];
      s.a[ff][r] = (n < n_end && o >= 0) ? x[n * g.in_sN + o] : T(0);
    });
    // B[ff][c] = go[nb + ff, l, c0 + c]; contiguous in c.
    walk(walk_b, kChunk, cols, [&](int ff, int c) {
      const int64_t n = nb + ff, co = c0 + c;
      s.b[ff][c] = (n < n_end && co < C) ? go[(n * L + l) * C + co] : T(0);
    });
    __syncthreads();
    tile_mma(s, trow, tcol, TR, TC, acc);
    if (keep_bias) {
#pragma unroll 4
      for (int ff = 0; ff < kChunk; ++ff)
#pragma unroll
        for (int j = 0; j < kRN; ++j) bacc[j] += s.b[ff][tcol + j * TC];
    }
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < kRN; ++j) {
    const int64_t co = c0 + tcol + j * TC;
    if (co >= C) continue;
    if (gw_out != nullptr) {
      T* dst = gw_out + slice * L * K * C;
#pragma unroll
      for (int i = 0; i < kRM; ++i) {
        const int64_t k = k0 + trow + i * TR;
        if (k < K) dst[(l * K + k) * C + co] = acc[i][j];
      }
    }
    if (keep_bias) gb_out[slice * C * L + co * L + l] = bacc[j];
  }
}

// dst[i] = sum_{s < S} part[s * M + i], summed in slice order (deterministic).
template <typename T>
__global__ void __launch_bounds__(kMaxThreads) sum_slices_kernel(const T* __restrict__ part, T* __restrict__ dst,
                                                                 int64_t M, int64_t S) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < M; i += step) {
    T v = T(0);
    for (int64_t sl = 0; sl < S; ++sl) v += part[sl * M + i];
    dst[i] = v;
  }
}

// ------------------------------------------------------------------------------------------------------------
// grad_input: block (input pixel p = (ih, iw), face tile, C_in tile). The pixel is covered by the windows of
// output rows oh in [ceil((ih + pH - kH + 1) / sH), floor((ih + pH) / sH)] (clipped to [0, H_out)), at tap row
// kh = ih + pH - oh*sH; likewise for columns. The reduction index is r = j*C_out + co over those nJ windows j.
// gi is contiguous [N, C_in, H, W] and fully written (zeros where no window covers the pixel).

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) lc_backward_input_kernel(const LcArgs g, const T* __restrict__ go,
                                                                        const T* __restrict__ w,
                                                                        T* __restrict__ gi) {
  __shared__ TileSmem<T> s;
  // Per reduction index of the current / next chunk: offset into go[n] (l*C + co) and into w (before the
  // ci term): (l*K + kh*kW + kw)*C + co; -1 past the end.
  __shared__ int64_t go_tab[2][kChunk];
  __shared__ int64_t w_tab[2][kChunk];
  const int TR = g.TR, TC = g.TC, rows = TR * kRM, cols = TC * kRN;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int trow = tid / TC, tcol = tid % TC;
  const int64_t L = g.H_out * g.W_out, khw = g.kH * g.kW, K = g.C_in * khw, C = g.C_out;
  const int64_t ih = blockIdx.x / g.W, iw = blockIdx.x % g.W;
  const int64_t ci0 = int64_t(blockIdx.z) * cols;

  // Output rows / columns whose window covers (ih, iw), in padded coordinates.
  const int64_t ihp = ih + g.pH, iwp = iw + g.pW;
  const int64_t oh_lo = ihp >= g.kH ? ceil_div(ihp - g.kH + 1, g.sH) : 0;
  const int64_t ow_lo = iwp >= g.kW ? ceil_div(iwp - g.kW + 1, g.sW) : 0;
  const int64_t oh_hi = std::min(g.H_out - 1, ihp / g.sH), ow_hi = std::min(g.W_out - 1, iwp / g.sW);
  const int64_t nh = std::max<int64_t>(0, oh_hi - oh_lo + 1), nw = std::max<int64_t>(0, ow_hi - ow_lo + 1);
  const int64_t R = nh * nw * C;

  const GridWalk walk_a(tid, nthreads, kChunk), walk_b(tid, nthreads, kChunk);
  // Table entries q of buffer b for reduction index r.
  auto fill_tab = [&](int b, int q, int64_t r) {
    if (r >= R) {
      go_tab[b][q] = -1;
      w_tab[b][q] = -1;
      return;
    }
    const int64_t j = r / C, co = r - j * C;
    const int64_t oh = oh_lo + j / nw, ow = ow_lo + j % nw;
    const int64_t kh = ihp - oh * g.sH, kw = iwp - ow * g.sW;
    const int64_t l = oh * g.W_out + ow;
    go_tab[b][q] = l * C + co;
    w_tab[b][q] = (l * K + kh * g.kW + kw) * C + co;
  };

  for (int64_t n0 = int64_t(blockIdx.y) * rows; n0 < g.N; n0 += int64_t(gridDim.y) * rows) {
    T acc[kRM][kRN];
#pragma unroll
    for (int i = 0; i < kRM; ++i)
#pragma unroll
      for (int j = 0; j < kRN; ++j) acc[i][j] = T(0);
    for (int q = tid; q < kChunk; q += nthreads) fill_tab(0, q, q);
    __syncthreads();
    int buf = 0;
    for (int64_t r0 = 0; r0 < R; r0 += kChunk, buf ^= 1) {
      // A[rr][f] = go[n0 + f, l_j, co]; rr fastest: runs of consecutive channels.
      walk(walk_a, rows, kChunk, [&](int f, int rr) {
        const int64_t n = n0 + f, o = go_tab[buf][rr];
        s.a[rr][f] = (n < g.N && o >= 0) ? go[n * L * C + o] : T(0);
      });
      // B[rr][c] = w[l_j, ci0 + c, kh_j, kw_j, co]; rr fastest for the same reason.
      walk(walk_b, cols, kChunk, [&](int c, int rr) {
        const int64_t ci = ci0 + c, o = w_tab[buf][rr];
        s.b[rr][c] = (ci < g.C_in && o >= 0) ? w[o + ci * khw * C] : T(0);
      });
      __syncthreads();
      for (int q = tid; q < kChunk; q += nthreads) fill_tab(buf ^ 1, q, r0 + kChunk + q);
      tile_mma(s, trow, tcol, TR, TC, acc);
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < kRM; ++i) {
      const int64_t n = n0 + trow + i * TR;
      if (n >= g.N) continue;
#pragma unroll
      for (int j = 0; j < kRN; ++j) {
        const int64_t ci = ci0 + tcol + j * TC;
        if (ci < g.C_in) gi[((n * g.C_in + ci) * g.H + ih) * g.W + iw] = acc[i][j];
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Host side.

LcArgs make_args(const LcShape& sh, const at::Tensor& x, Tile t) {
  LcArgs g{};
  g.N = sh.N;
  g.C_in = sh.C_in;
  g.H = sh.H;
  g.W = sh.W;
  g.C_out = sh.C_out;
  g.H_out = sh.H_out;
  g.W_out = sh.W_out;
  g.kH = sh.kH;
  g.kW = sh.kW;
  g.sH = sh.sH;
  g.sW = sh.sW;
  g.pH = sh.pH;
  g.pW = sh.pW;
  g.in_sN = x.stride(0);
  g.in_sC = x.stride(1);
  g.in_sH = x.stride(2);
  g.in_sW = x.stride(3);
  g.TR = t.TR;
  g.TC = t.TC;
  return g;
}

void check_cuda_args(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     const char* op) {
  // Before lc_conv2d_shape, so that a CPU weight next to a CUDA input gets this message rather than a bare
  // device mismatch.
  cuda::check_cuda(input, op, "input");
  cuda::check_cuda(weight, op, "weight");
  if (bias.has_value() && bias->defined()) cuda::check_cuda(*bias, op, "bias");
}

dim3 grid3(int64_t x, int64_t y, int64_t z, const char* op) {
  TORCH_CHECK(x >= 1 && x <= int64_t(0x7fffffff) && z <= cuda::kMaxGridYZ, op,
              ": problem too large for one launch (grid ", x, " x ", y, " x ", z, ")");
  return dim3(static_cast<unsigned int>(x), static_cast<unsigned int>(std::clamp<int64_t>(y, 1, cuda::kMaxGridYZ)),
              static_cast<unsigned int>(std::max<int64_t>(z, 1)));
}

at::Tensor forward_impl(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, bool act, const char* op) {
  check_cuda_args(input, weight, bias, op);
  const LcShape sh = lc_conv2d_shape(input, weight, bias, stride, padding, op);
  const c10::cuda::CUDAGuard guard(input.device());
  // Channels-last output: the kernel writes [N, H_out, W_out, C_out] rows of C_out, as the CPU kernels do.
  at::Tensor out = at::empty({sh.N, sh.C_out, sh.H_out, sh.W_out},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const at::Tensor w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const Tile t = pick_tile(sh.N, sh.C_out);
  const LcArgs g = make_args(sh, input, t);
  const dim3 grid = grid3(sh.L(), ceil_div(sh.N, t.TR * kRM), ceil_div(sh.C_out, t.TC * kRN), op);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lc_conv2d_cuda", [&] {
    lc_forward_kernel<scalar_t><<<grid, t.TR * t.TC, 0, stream>>>(
        g, input.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
        has_bias ? b.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), act);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor lc_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding) {
  return forward_impl(input, weight, bias, stride, padding, /*act=*/false, "lc_conv2d");
}

at::Tensor lc_conv2d_abs_tanh_cuda(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef padding) {
  return forward_impl(input, weight, bias, stride, padding, /*act=*/true, "lc_conv2d_abs_tanh");
}

// Number of face slices for grad_weight: enough blocks x threads to fill the GPU about twice, each slice keeping
// at least 128 faces (below that the scratch traffic outweighs the gain), at most 64 slices.
int64_t weight_grad_slices(int64_t blocks, int threads, int64_t N) {
  const int64_t target = int64_t(cuda::multiprocessor_count()) * 2048 * 2;
  const int64_t want = ceil_div(target, std::max<int64_t>(1, blocks * threads));
  return std::clamp<int64_t>(std::min(want, ceil_div(N, 128)), 1, 64);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lc_conv2d_backward_cuda(const at::Tensor& grad_output,
                                                                       const at::Tensor& input,
                                                                       const at::Tensor& weight, at::IntArrayRef stride,
                                                                       at::IntArrayRef padding,
                                                                       std::array<bool, 3> output_mask) {
  const char* op = "_lc_conv2d_backward";
  check_cuda_args(input, weight, std::nullopt, op);
  cuda::check_cuda(grad_output, op, "grad_output");
  const LcShape sh = lc_conv2d_shape(input, weight, std::nullopt, stride, padding, op);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == sh.N && grad_output.size(1) == sh.C_out &&
                  grad_output.size(2) == sh.H_out && grad_output.size(3) == sh.W_out,
              op, ": grad_output must be [", sh.N, ", ", sh.C_out, ", ", sh.H_out, ", ", sh.W_out, "], got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(), op,
              ": grad_output must match input's dtype and device, got ", grad_output.scalar_type(), " on ",
              grad_output.device());
  const c10::cuda::CUDAGuard guard(input.device());
  const auto opts = input.options();
  // Same results as the CPU kernels: gi with channels-last strides (the kernel writes it contiguous; converted on
  // return), contiguous gw / gb, an empty tensor for an unwanted slot, and zero gradients for an empty batch.
  at::Tensor gi = output_mask[0] ? at::empty(input.sizes(), opts) : at::empty({0}, opts);
  at::Tensor gw = output_mask[1] ? at::empty(weight.sizes(), opts) : at::empty({0}, opts);
  at::Tensor gb = output_mask[2] ? at::empty({sh.C_out, sh.H_out, sh.W_out}, opts) : at::empty({0}, opts);
  if (sh.N == 0 || sh.C_out == 0 || sh.K() == 0) {
    if (output_mask[0]) gi.zero_();
    if (output_mask[1]) gw.zero_();
    // With no taps (C_in == 0) the output is the bias alone, so grad_bias is still the sum over faces.
    if (output_mask[2]) gb.copy_(grad_output.sum(0));
    return {output_mask[0] ? gi.contiguous(at::MemoryFormat::ChannelsLast) : gi, gw, gb};
  }
  // [N, L, C_out] rows, the layout the kernels read grad_output in.
  const at::Tensor go = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t L = sh.L(), K = sh.K(), C = sh.C_out;

  if (output_mask[1] || output_mask[2]) {
    const Tile t = pick_tile(K, C);
    const int threads = t.TR * t.TC;
    const int64_t row_tiles = output_mask[1] ? ceil_div(K, t.TR * kRM) : 1;  // grad_bias alone needs one
    const int64_t col_tiles = ceil_div(C, t.TC * kRN);
    const int64_t S = weight_grad_slices(L * row_tiles * col_tiles, threads, sh.N);
    const int64_t per_slice = ceil_div(sh.N, S);
    const int64_t slices = ceil_div(sh.N, per_slice);  // no empty trailing slice
    TORCH_CHECK(row_tiles <= cuda::kMaxGridYZ, op, ": kernel too large for one launch (", K, " taps)");
    const dim3 grid = grid3(L, row_tiles, col_tiles * slices, op);
    const LcArgs g = make_args(sh, input, t);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lc_conv2d_backward_weight_cuda", [&] {
      at::Tensor gw_part, gb_part;
      scalar_t* gw_dst = output_mask[1] ? gw.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gb_dst = output_mask[2] ? gb.mutable_data_ptr<scalar_t>() : nullptr;
      if (slices > 1) {
        if (output_mask[1]) gw_dst = (gw_part = at::empty({slices, L * K * C}, opts)).mutable_data_ptr<scalar_t>();
        if (output_mask[2]) gb_dst = (gb_part = at::empty({slices, C * L}, opts)).mutable_data_ptr<scalar_t>();
      }
      lc_backward_weight_kernel<scalar_t><<<grid, threads, 0, stream>>>(
          g, input.const_data_ptr<scalar_t>(), go.const_data_ptr<scalar_t>(), gw_dst, gb_dst, per_slice,
          static_cast<int>(col_tiles));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (slices > 1) {
        constexpr int kSumThreads = 256;
        if (output_mask[1]) {
          sum_slices_kernel<scalar_t><<<cuda::elementwise_blocks(L * K * C, kSumThreads), kSumThreads, 0, stream>>>(
              gw_part.const_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(), L * K * C, slices);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (output_mask[2]) {
          sum_slices_kernel<scalar_t><<<cuda::elementwise_blocks(C * L, kSumThreads), kSumThreads, 0, stream>>>(
              gb_part.const_data_ptr<scalar_t>(), gb.mutable_data_ptr<scalar_t>(), C * L, slices);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    });
  }

  if (output_mask[0] && gi.numel() > 0) {
    const Tile t = pick_tile(sh.N, sh.C_in);
    const dim3 grid = grid3(sh.H * sh.W, ceil_div(sh.N, t.TR * kRM), ceil_div(sh.C_in, t.TC * kRN), op);
    const LcArgs g = make_args(sh, input, t);
    const at::Tensor w = weight.contiguous();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lc_conv2d_backward_input_cuda", [&] {
      lc_backward_input_kernel<scalar_t><<<grid, t.TR * t.TC, 0, stream>>>(
          g, go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), gi.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {output_mask[0] ? gi.contiguous(at::MemoryFormat::ChannelsLast) : gi, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CUDA, m) {
  m.impl("lc_conv2d", &lc_conv2d_cuda);
  m.impl("lc_conv2d_abs_tanh", &lc_conv2d_abs_tanh_cuda);
  m.impl("_lc_conv2d_backward", &lc_conv2d_backward_cuda);
}

}  // namespace tcdcn
