// LcStackPlan (lc_stack_plan.h): a stack of convolutional layers checked and laid out once, then run on the CPU
// kernels (cpu/simd/kernels.h; int8 weights also on the vnni and amx paths, lc_int8.h and lc_amx.h).
#include "cpu/lc_stack_plan.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <list>
#include <mutex>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "cpu/kernel_table.h"
#include "cpu/lc_conv2d_cpu.h"
#include "cpu/simd/lc_amx.h"
#include "cpu/simd/lc_int8.h"
#include "epilogue.h"
#include "lc_conv2d_shape.h"

namespace tcdcn::cpu {
namespace {

// A spatially shared convolution's weight [C_out, C_in, kH, kW] laid out as conv_forward reads it: [K, cp] with
// k = (ci * kH + kh) * kW + kw, the padding columns zero (cpu/simd/kernels.h).
at::Tensor conv_weight_layout_uncached(const at::Tensor& w, int64_t cp) {
  const int64_t c_out = w.size(0);
  at::Tensor out = at::zeros({w.size(1) * w.size(2) * w.size(3), cp}, w.options());
  out.narrow(1, 0, c_out).copy_(w.permute({1, 2, 3, 0}).reshape({-1, c_out}));
  return out;
}

// conv_weight_layout_uncached, remembered for the last few weights it was asked for. lc_conv2d_stack called again and
// again with the same weights (a compiled or exported TCDCN forward, whose graph holds the op rather than the
// native engine that keeps a plan) would otherwise lay them out on every call: for the 68-point model's four
// shared layers that is half the time of a batch-1 forward. An entry holds a weak reference to its source (the
// tensor may be freed; its address is not reused while the entry exists), and the source's version counter, data
// pointer and metadata, so that an in-place change, new storage or a resize lays it out again. Inference tensors
// have no version counter and are never remembered.
at::Tensor conv_weight_layout(const at::Tensor& w, int64_t cp) {
  if (w.is_inference()) return conv_weight_layout_uncached(w, cp);
  struct Entry {
    c10::weak_intrusive_ptr<c10::TensorImpl> source;
    int64_t version;
    const void* data;
    std::vector<int64_t> sizes, strides;
    int64_t cp;
    at::Tensor layout;
  };
  static std::mutex mutex;
  static std::list<Entry> cache;  // most recently used first
  constexpr size_t kCapacity = 16;
  const c10::TensorImpl* impl = w.unsafeGetTensorImpl();
  const int64_t version = int64_t(w._version());
  const void* data = w.const_data_ptr();
  const auto same = [&](const Entry& e) {
    return e.source._unsafe_get_target() == impl && !e.source.expired() && e.version == version && e.data == data &&
           e.cp == cp && w.sizes().equals(e.sizes) && w.strides().equals(e.strides) &&
           e.layout.scalar_type() == w.scalar_type();
  };
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = cache.begin(); it != cache.end(); ++it) {
      if (same(*it)) {
        cache.splice(cache.begin(), cache, it);
        return cache.front().layout;
      }
    }
  }
  at::Tensor layout = conv_weight_layout_uncached(w, cp);
  std::lock_guard<std::mutex> lock(mutex);
  cache.remove_if([](const Entry& e) { return e.source.expired(); });
  cache.push_front(Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr()), version, data,
                         w.sizes().vec(), w.strides().vec(), cp, layout});
  if (cache.size() > kCapacity) cache.pop_back();
  return layout;
}

// The accepted epilogue codes, for messages: "0 (none), 1 (abs_tanh), ... or 4 (relu_maxpool2d)".
std::string epilogue_codes() {
  std::string s;
  for (int e = 0; e < kNumEpilogues; ++e) {
    if (e > 0) s += e + 1 < kNumEpilogues ? ", " : " or ";
    s += std::to_string(e) + " (" + kEpilogueNames[e] + ")";
  }
  return s;
}

}  // namespace

LcStackPlan::LcStackPlan(const std::vector<at::Tensor>& weight, const std::vector<std::optional<at::Tensor>>& bias,
                         at::IntArrayRef epilogue, const at::Tensor& input, const char* op,
                         const std::vector<std::optional<at::Tensor>>& scale)
    : dtype_(input.scalar_type()) {
  TORCH_CHECK(!weight.empty() && bias.size() == weight.size() && epilogue.size() == weight.size(), op,
              ": weight (", weight.size(), "), bias (", bias.size(), ") and epilogue (", epilogue.size(),
              ") must list the same, non-zero number of layers");
  TORCH_CHECK(scale.empty() || scale.size() == weight.size(), op, ": scale must be empty or list one entry per ",
              "layer (", weight.size(), "), got ", scale.size());
  TORCH_CHECK(input.device().is_cpu(), op, ": input must be on the CPU, got ", input.device());
  const int64_t unit[2] = {1, 1}, none[2] = {0, 0};
  at::Tensor in = input;  // layer i's input: metadata only (later layers: a one-element stand-in of its shape)
  for (size_t i = 0; i < weight.size(); ++i) {
    const std::string name = std::string(op) + ": layer " + std::to_string(i);
    TORCH_CHECK(valid_epilogue(epilogue[i]), name, ": epilogue must be ", epilogue_codes(), ", got ", epilogue[i]);
    Layer l{};
    l.epilogue = static_cast<Epilogue>(epilogue[i]);
    l.shared = weight[i].dim() == 4;
    if (l.shared) {
      // A spatially shared convolution: weight [C_out, C_in, kH, kW], bias [C_out], kept as conv_forward reads them
      // ([K, C_pad] and [C_pad], zero padding columns; see kernels.h).
      const at::Tensor& w = weight[i];
      TORCH_CHECK(in.dim() == 4, name, ": input must be 4-D [N, C, H, W], got shape ", in.sizes());
      TORCH_CHECK(w.scalar_type() == in.scalar_type() || (w.scalar_type() == at::kHalf && in.scalar_type() == at::kFloat),
                  name, ": weight dtype ", w.scalar_type(), " does not match input dtype ", in.scalar_type(),
                  " (a float16 weight needs a float32 input)");
      TORCH_CHECK(w.device() == in.device(), name, ": weight is on ", w.device(), " but input is on ", in.device());
      TORCH_CHECK(w.size(1) == in.size(1), name, ": weight [C_out, C_in, kH, kW] = ", w.sizes(), " has C_in = ",
                  w.size(1), " but the input has ", in.size(1), " channels (shape ", in.sizes(), ")");
      TORCH_CHECK(w.size(2) >= 1 && w.size(3) >= 1 && w.size(2) <= in.size(2) && w.size(3) <= in.size(3), name,
                  ": the ", w.size(2), "x", w.size(3), " kernel does not fit the ", in.size(2), "x", in.size(3),
                  " input");
      l.C_in = in.size(1), l.H = in.size(2), l.W = in.size(3), l.C_out = w.size(0);
      l.kH = w.size(2), l.kW = w.size(3), l.H_out = l.H - l.kH + 1, l.W_out = l.W - l.kW + 1;
      const int64_t cp = cpu::conv_channel_pad(l.C_out);
      l.weight = conv_weight_layout(w, cp);
      if (bias[i].has_value() && bias[i]->defined()) {
        const at::Tensor& b = *bias[i];
        TORCH_CHECK(b.dim() == 1 && b.size(0) == l.C_out, name, ": bias must be [C_out] = [", l.C_out,
                    "], got shape ", b.sizes());
        TORCH_CHECK(b.scalar_type() == in.scalar_type() && b.device() == in.device(), name, ": bias must be ",
                    in.scalar_type(), " on ", in.device(), ", got ", b.scalar_type(), " on ", b.device());
        l.bias = at::zeros({cp}, b.options());
        l.bias.narrow(0, 0, l.C_out).copy_(b);
      }
    } else {
      const bool int8 = weight[i].scalar_type() == at::kChar;
      const bool has_scale = !scale.empty() && scale[i].has_value() && scale[i]->defined();
      TORCH_CHECK(int8 == has_scale, name, int8 ? ": an int8 weight needs its scale" :
                  ": a scale goes with an int8 weight only, got a ", weight[i].scalar_type(), " weight");
      // An int8 weight is checked as a float32 one of its shape (the checks read only shape, dtype and device).
      const at::Tensor w_shape = int8 ? at::empty({}, in.options()).expand(weight[i].sizes()) : weight[i];
      TORCH_CHECK(!int8 || (in.scalar_type() == at::kFloat && weight[i].device() == in.device()), name,
                  ": an int8 weight needs a float32 input on its device, got ", in.scalar_type(), " on ",
                  in.device(), " and a weight on ", weight[i].device());
      const LcShape s = lc_conv2d_shape(in, w_shape, bias[i], unit, none, name.c_str(), /*half_weight_ok=*/true);
      l.weight = weight[i].contiguous();
      l.C_in = s.C_in, l.H = s.H, l.W = s.W, l.C_out = s.C_out, l.H_out = s.H_out, l.W_out = s.W_out;
      l.kH = s.kH, l.kW = s.kW;
      if (int8) {
        const at::Tensor& sc = *scale[i];
        TORCH_CHECK(sc.dim() == 3 && sc.size(0) == s.H_out && sc.size(1) == s.W_out && sc.size(2) == s.C_out, name,
                    ": scale must be [H_out, W_out, C_out] = [", s.H_out, ", ", s.W_out, ", ", s.C_out,
                    "], got shape ", sc.sizes());
        TORCH_CHECK(sc.scalar_type() == at::kFloat && sc.device() == in.device(), name,
                    ": scale must be float32 on ", in.device(), ", got ", sc.scalar_type(), " on ", sc.device());
        l.scale = sc.contiguous();
        l.set_pairs();
      }
    }
    if (i == 0) {
      C_ = l.C_in;
      H_ = l.H;
      W_ = l.W;
    }
    if (!l.shared && bias[i].has_value() && bias[i]->defined()) l.bias = bias_hwc(*bias[i], l.C_out, l.H_out, l.W_out);
    l.set_offsets(i == 0);
    layers_.push_back(std::move(l));
    const Layer& b = layers_.back();
    in = at::empty_strided({in.size(0), b.C_out, b.out_h(), b.out_w()}, {0, 0, 0, 0}, input.options());
  }
}

LcStackPlan LcStackPlan::for_input(const at::Tensor& x, const char* op) const {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == C_ && x.scalar_type() == dtype_ && x.device().is_cpu(), op,
              ": input must be a CPU ", dtype_, " [N, ", C_, ", H, W] tensor, got ", x.scalar_type(), " ", x.sizes(),
              " on ", x.device());
  LcStackPlan p = *this;
  p.H_ = x.size(2), p.W_ = x.size(3);
  int64_t h = p.H_, w = p.W_;
  for (size_t i = 0; i < p.layers_.size(); ++i) {
    Layer& l = p.layers_[i];
    TORCH_CHECK(l.shared, op, ": layer ", i, " is locally connected: its weights are for one input size only");
    TORCH_CHECK(h >= l.kH && w >= l.kW, op, ": layer ", i, ": the ", l.kH, "x", l.kW, " kernel does not fit the ",
                h, "x", w, " input");
    l.H = h, l.W = w, l.H_out = h - l.kH + 1, l.W_out = w - l.kW + 1;
    l.set_offsets(i == 0);
    h = l.out_h(), w = l.out_w();
  }
  return p;
}

// Layer 0 reads the input as given (offsets for contiguous NCHW here, redone in run() for other strides); later
// layers read the previous layer's channels-last output.
void LcStackPlan::Layer::set_offsets(bool first) {
  if (first)
    tap_offsets(C_in, kH, kW, H * W, W, 1, off);
  else
    tap_offsets(C_in, kH, kW, 1, W * C_in, C_in, off);
}

// Which int8 kernel runs a layer (measured on one Sapphire Rapids core, 5-point TCDCN): up to kPairMaxFaces faces the
// vnni one (the weight stream is the cost: ~5 % faster than widening to float); from kTileMinFaces faces and
// kTileMinTaps taps the AMX tiles (layers 2 and 3 at N = 256: ~2.5 ms less each); otherwise the float kernels, which
// widen each weight (for a 25-tap layer the tiles' gather of the windows and the vnni kernel's 4-face register tile
// cost more than they save).
constexpr int64_t kPairMaxFaces = 3;
constexpr int64_t kTileMinFaces = 16;
constexpr int64_t kTileMinTaps = 64;

void LcStackPlan::Layer::set_pairs() {
  if (static_cast<int>(best_isa()) < static_cast<int>(Isa::vnni) || C_out % 16 != 0) return;
  if (static_cast<int>(best_isa()) >= static_cast<int>(Isa::amx)) {
    // [L, C_in, kH, kW, C_out] -> taps in (kh, kw, ci) order, zero-padded to K_pad, pairs interleaved per channel.
    const int64_t L = H_out * W_out, K = C_in * kH * kW, kp = lc_amx_k_pad(K);
    at::Tensor q = weight.view({L, C_in, kH, kW, C_out}).permute({0, 2, 3, 1, 4}).reshape({L, K, C_out});
    if (kp != K) q = at::constant_pad_nd(q, {0, 0, 0, kp - K}, 0);
    if (K >= kTileMinTaps)
      tile_weight = q.view({L, kp / 2, 2, C_out}).permute({0, 1, 3, 2}).to(at::kBFloat16).contiguous();  // exact
  }
  // [L, C_in, kH, kW, C_out] -> the taps of each kernel row in channels-last memory order (kw, ci), padded with a
  // zero tap to an even count, taken in pairs: [L, kH, rows of pairs, 2, C_out] -> [L, P, C_out, 2].
  const int64_t L = H_out * W_out, run = kW * C_in, prow = lc_pairs_per_row(kW, C_in);
  at::Tensor q = weight.view({L, C_in, kH, kW, C_out}).permute({0, 2, 3, 1, 4}).reshape({L, kH, run, C_out});
  if (2 * prow != run) q = at::constant_pad_nd(q, {0, 0, 0, 2 * prow - run}, 0);
  pair_weight = q.view({L, kH, prow, 2, C_out}).permute({0, 1, 2, 4, 3}).contiguous().view({L, kH * prow, C_out, 2});
  pair_off.resize(kH * prow);
  for (int64_t kh = 0, p = 0; kh < kH; ++kh)
    for (int64_t r = 0; r < prow; ++r, ++p) pair_off[p] = kh * W * C_in + 2 * r;
}

bool LcStackPlan::serves(const at::Tensor& x) const {
  return x.scalar_type() == dtype_ && x.device().is_cpu() && x.dim() == 4 && x.size(1) == C_ && x.size(2) == H_ &&
         x.size(3) == W_ && !x.is_neg() && !x.is_conj();
}

at::Tensor LcStackPlan::run(const at::Tensor& x) const {
  const int64_t N = x.size(0);
  const Layer& last = layers_.back();
  at::Tensor out = at::empty({N, last.C_out, last.out_h(), last.out_w()},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (N == 0) return out;
  // Every intermediate output (channels-last [N, H, W, C]) in one allocation.
  int64_t scratch_n = 0;
  for (size_t i = 0; i + 1 < layers_.size(); ++i) scratch_n += N * layers_[i].out_numel();
  const at::Tensor scratch = at::empty({scratch_n}, x.options());
  std::vector<int64_t> off0;  // layer 0's tap offsets when x is not contiguous NCHW
  const Layer& first = layers_.front();
  const bool nchw = (first.C_in == 1 || x.stride(1) == first.H * first.W) && (first.H == 1 || x.stride(2) == first.W) &&
                    (first.W == 1 || x.stride(3) == 1);
  if (!nchw) tap_offsets(first.C_in, first.kH, first.kW, x.stride(1), x.stride(2), x.stride(3), off0);
#if TCDCN_HAVE_X86_SIMD
  // int8 layers on the vnni path (lc_int8.h): each one's input quantised to int16 channels-last rows first, with two
  // elements of slack after the last face (an odd run of taps reads one past it, against a zero weight).
  const bool pairs = static_cast<int>(active_isa()) >= static_cast<int>(Isa::vnni) && N <= kPairMaxFaces;
  int64_t xq_n = 0;
  for (const Layer& l : layers_)
    if (pairs && l.pair_weight.defined()) xq_n = std::max(xq_n, N * l.C_in * l.H * l.W + 2);
  const at::Tensor xq = xq_n > 0 ? at::empty({xq_n}, x.options().dtype(at::kShort)) : at::Tensor();
  const at::Tensor xs = xq_n > 0 ? at::empty({N}, x.options().dtype(at::kFloat)) : at::Tensor();
  const bool tiles = static_cast<int>(active_isa()) >= static_cast<int>(Isa::amx) && N >= kTileMinFaces;
  const at::Tensor x_rows = (xq_n > 0 && first.pair_weight.defined()) || (tiles && first.tile_weight.defined())
                                ? x.contiguous(at::MemoryFormat::ChannelsLast)
                                : x;
#endif
  AT_DISPATCH_FLOATING_TYPES(dtype_, "lc_conv2d_stack", [&] {
    const auto& k = cpu::lc_kernels<scalar_t>();
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* next = scratch_n > 0 ? scratch.mutable_data_ptr<scalar_t>() : nullptr;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& l = layers_[i];
      scalar_t* dst = i + 1 == layers_.size() ? out.mutable_data_ptr<scalar_t>() : next;
      if (N * l.out_numel() > 0) {
        LcGeom g{};
        g.N = N, g.C_in = l.C_in, g.H = l.H, g.W = l.W, g.C_out = l.C_out, g.H_out = l.H_out, g.W_out = l.W_out;
        g.kH = l.kH, g.kW = l.kW, g.sH = 1, g.sW = 1;
        if (i == 0) {
          g.in_sN = x.stride(0), g.in_sC = x.stride(1), g.in_sH = x.stride(2), g.in_sW = x.stride(3);
          g.in_off = nchw ? l.off.data() : off0.data();
        } else {
          g.in_sN = l.H * l.W * l.C_in, g.in_sC = 1, g.in_sH = l.W * l.C_in, g.in_sW = l.C_in;
          g.in_off = l.off.data();
        }
        const scalar_t* bp = l.bias.defined() ? l.bias.const_data_ptr<scalar_t>() : nullptr;
        const Epilogue ep = l.epilogue;
        const auto launch = [&](auto fn, auto wp) {
          for_location_ranges(l.H_out, l.W_out, N * l.C_in * l.kH * l.kW * l.C_out, ep,
                              [&](int64_t l0, int64_t l1) { fn(g, in, wp, bp, dst, l0, l1, ep); });
        };
        bool launched = false;  // float16 or int8 weights (float32 input): launched here
        if constexpr (std::is_same_v<scalar_t, float>) {
#if TCDCN_HAVE_X86_SIMD
          if ((launched = tiles && l.tile_weight.defined())) {
            const float* src = i == 0 ? x_rows.const_data_ptr<float>() : reinterpret_cast<const float*>(in);
            const LcAmxGeom ga{N, l.H, l.W, l.C_in, i == 0 ? x_rows.stride(0) : l.H * l.W * l.C_in, l.H_out, l.W_out,
                               l.C_out, l.kH, l.kW, lc_amx_k_pad(l.C_in * l.kH * l.kW)};
            const uint16_t* tw = reinterpret_cast<const uint16_t*>(l.tile_weight.const_data_ptr<at::BFloat16>());
            const float* ws = l.scale.const_data_ptr<float>();
            const float* bf = reinterpret_cast<const float*>(bp);
            float* df = reinterpret_cast<float*>(dst);
            for_location_ranges(l.H_out, l.W_out, N * l.C_in * l.kH * l.kW * l.C_out, ep, [&](int64_t l0, int64_t l1) {
              at::Tensor a = at::empty({lc_amx_scratch(ga)}, x.options().dtype(at::kShort));  // 64-byte aligned
              amx::lc_forward_int8_tiles(ga, src, tw, ws, bf, df, l0, l1, ep,
                                         reinterpret_cast<uint16_t*>(a.mutable_data_ptr<int16_t>()));
            });
          } else if ((launched = pairs && l.pair_weight.defined())) {
            const float* src = i == 0 ? x_rows.const_data_ptr<float>() : reinterpret_cast<const float*>(in);
            const int64_t count = l.H * l.W * l.C_in, src_sN = i == 0 ? x_rows.stride(0) : count;
            const LcPairGeom gp{N, l.H, l.W, l.C_in, l.H_out, l.W_out, l.C_out, int64_t(l.pair_off.size()),
                                l.pair_off.data()};
            int16_t* q = xq.mutable_data_ptr<int16_t>();
            float* s = xs.mutable_data_ptr<float>();
            at::parallel_for(0, N, grain_for(count), [&](int64_t n0, int64_t n1) {
              vnni::quantize_rows(src + n0 * src_sN, src_sN, n1 - n0, count, lc_pair_qmax(gp.P), q + n0 * count,
                                  s + n0);
            });
            q[N * count] = q[N * count + 1] = 0;
            const int8_t* pw = l.pair_weight.const_data_ptr<int8_t>();
            const float* ws = l.scale.const_data_ptr<float>();
            const float* bf = reinterpret_cast<const float*>(bp);
            float* df = reinterpret_cast<float*>(dst);
            for_location_ranges(l.H_out, l.W_out, N * l.C_in * l.kH * l.kW * l.C_out, ep, [&](int64_t l0, int64_t l1) {
              vnni::lc_forward_pairs(gp, q, s, pw, ws, bf, df, l0, l1, ep);
            });
          } else
#endif
          if ((launched = l.weight.scalar_type() == at::kChar)) {
            // (scalar_t is float here; the casts only satisfy the float64 instantiation, where this never runs)
            const auto& kf = cpu::lc_kernels<float>();
            const float* inf = reinterpret_cast<const float*>(in);
            const float* bf = reinterpret_cast<const float*>(bp);
            float* df = reinterpret_cast<float*>(dst);
            const int8_t* wq = l.weight.const_data_ptr<int8_t>();
            const float* ws = l.scale.const_data_ptr<float>();
            for_location_ranges(l.H_out, l.W_out, N * l.C_in * l.kH * l.kW * l.C_out, ep, [&](int64_t l0, int64_t l1) {
              kf.forward_int8_weight(g, inf, wq, ws, bf, df, l0, l1, ep);
            });
          } else if ((launched = l.weight.scalar_type() == at::kHalf)) {
            // at::Half is the binary16 bit pattern in a uint16_t; the kernels take the bits.
            launch(l.shared ? k.conv_forward_half_weight : k.forward_half_weight,
                   reinterpret_cast<const uint16_t*>(l.weight.const_data_ptr<at::Half>()));
          }
        }
        if (!launched) launch(l.shared ? k.conv_forward : k.forward, l.weight.const_data_ptr<scalar_t>());
      }
      in = dst, next = dst + N * l.out_numel();
    }
  });
  return out;
}

}  // namespace tcdcn::cpu
