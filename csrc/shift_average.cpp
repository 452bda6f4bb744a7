// tcdcn_ext::shift_average, the device-independent part: argument checks and the schedule of the shared
// computation. See shift_average.h and the op's documentation in tcdcn_ext/ops.py.
//
// Shared (ordinary) convolutions: a translated input is a translated feature map, so the windows are not cut out
// of the crop; each layer runs once over the region that the windows of a group cover. A 2x2 max pooling only
// commutes with a translation by an even number of pixels, so at every pooling the group splits by the parity of
// its windows' offsets (the pooling phase) and each phase is pooled on its own grid: the result is exactly the
// per-window pooling, not an approximation. Windows whose offsets agree modulo 2^(poolings so far) keep sharing.
//
// Locally connected layers: the weights belong to output locations, so a shifted window meets different weights
// and nothing but the weights can be shared. The K windows become one batch of K inputs per face, so the layer
// kernels read each weight once per block of windows instead of once per pass (batch-1 inference is bound by
// reading the weights).
#include "shift_average.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <map>
#include <utility>

namespace tcdcn {
namespace {

constexpr const char* kOp = "shift_average";

using LcFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
                        at::IntArrayRef);

c10::TypedOperatorHandle<LcFn> lc_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<LcFn>();
}

// half_ok: a float16 weight with a float32 crop is accepted (locally connected layers on the CPU, whose kernels
// widen float16 weights in registers).
void check_tensor(const at::Tensor& t, const at::Tensor& crop, const std::string& name, bool half_ok = false) {
  TORCH_CHECK(t.defined(), kOp, ": ", name, " is undefined");
  TORCH_CHECK(t.device() == crop.device(), kOp, ": ", name, " is on ", t.device(), " but crop is on ",
              crop.device(), "; move the model and the crop to the same device");
  const bool half = half_ok && t.scalar_type() == at::kHalf && crop.scalar_type() == at::kFloat;
  TORCH_CHECK(half || t.scalar_type() == crop.scalar_type(), kOp, ": ", name, " is ", t.scalar_type(),
              " but crop is ", crop.scalar_type(), "; use one dtype for the model and the crop",
              half_ok ? " (or float16 locally connected weights with a float32 crop on the CPU)" : "");
}

// |tanh| is tcdcn_ext's own abs_tanh op (the one the model's AbsTanh layers call).
at::Tensor activate(const at::Tensor& x, bool abs_tanh) {
  if (!abs_tanh) return at::relu(x);
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("tcdcn_ext::abs_tanh", "").typed<at::Tensor(const at::Tensor&)>();
  return op.call(x);
}

// A map that several windows read, and where each window starts in it.
struct Group {
  at::Tensor map;                  // [N, C, h, w]
  std::vector<int64_t> k, oy, ox;  // window index and its top-left corner in `map`
};

// The bounding box of a group's windows of side `side`: top-left corner (y0, x0) in the group's map, h x w.
struct Bounds {
  int64_t y0, x0, h, w;
};

Bounds bounds(const Group& g, int64_t side) {
  const int64_t y0 = *std::min_element(g.oy.begin(), g.oy.end());
  const int64_t x0 = *std::min_element(g.ox.begin(), g.ox.end());
  return {y0, x0, *std::max_element(g.oy.begin(), g.oy.end()) + side - y0,
          *std::max_element(g.ox.begin(), g.ox.end()) + side - x0};
}

// Shared-convolution features of every window: the last maps [N * K, C, s, s] (face-major: row n * K + k),
// channels-last.
at::Tensor shared_features(const ShiftAverageKernels& kernels, const at::Tensor& crop,
                           const std::vector<ShiftWindow>& win, int64_t S,
                           at::TensorList conv_weight, at::TensorList conv_bias, at::IntArrayRef pool_after,
                           bool abs_tanh) {
  const int64_t N = crop.size(0), K = int64_t(win.size());
  std::vector<Group> groups(1);
  groups[0].map = crop;
  for (int64_t k = 0; k < K; ++k) {
    groups[0].k.push_back(k);
    groups[0].oy.push_back(win[k].oy);
    groups[0].ox.push_back(win[k].ox);
  }
  int64_t side = S;
  for (size_t l = 0; l < conv_weight.size(); ++l) {
    const int64_t kh = conv_weight[l].size(2);
    const std::function<at::Tensor(const at::Tensor&)> conv =
        kernels.conv_act ? kernels.conv_act(conv_weight[l], conv_bias[l], abs_tanh) : nullptr;
    // Groups whose regions have the same size run as one batch (deeper layers: many small groups).
    std::map<std::pair<int64_t, int64_t>, std::vector<size_t>> by_size;
    std::vector<at::Tensor> regions(groups.size());
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      Group& g = groups[gi];
      const Bounds b = bounds(g, side);
      regions[gi] = g.map.slice(2, b.y0, b.y0 + b.h).slice(3, b.x0, b.x0 + b.w);
      for (size_t i = 0; i < g.k.size(); ++i) {
        g.oy[i] -= b.y0;
        g.ox[i] -= b.x0;
      }
      by_size[{b.h, b.w}].push_back(gi);
    }
    for (const auto& kv : by_size) {
      const std::vector<size_t>& members = kv.second;
      std::vector<at::Tensor> batch;
      for (size_t gi : members) batch.push_back(regions[gi]);
      const at::Tensor x = members.size() == 1 ? batch[0] : at::cat(batch);
      at::Tensor y = conv ? conv(x) : activate(at::conv2d(x, conv_weight[l], conv_bias[l]), abs_tanh);
      for (size_t j = 0; j < members.size(); ++j) groups[members[j]].map = y.narrow(0, int64_t(j) * N, N);
    }
    side = side - kh + 1;
    if (!pool_after[l]) continue;
    // Split every group by pooling phase; each phase is pooled on its own stride-2 grid.
    std::vector<Group> next;
    for (const Group& g : groups) {
      std::map<std::pair<int64_t, int64_t>, Group> phases;
      for (size_t i = 0; i < g.k.size(); ++i) {
        Group& p = phases[{g.oy[i] & 1, g.ox[i] & 1}];
        p.k.push_back(g.k[i]);
        p.oy.push_back(g.oy[i]);
        p.ox.push_back(g.ox[i]);
      }
      for (auto& kv : phases) {
        Group& p = kv.second;
        // Only whole 2x2 cells of each window: its floor-mode pooled side is side / 2.
        const Bounds b = bounds(p, 2 * (side / 2));
        p.map = kernels.pool2x2(g.map, b.y0, b.x0, b.h / 2, b.w / 2);
        for (size_t i = 0; i < p.k.size(); ++i) {
          p.oy[i] = (p.oy[i] - b.y0) / 2;
          p.ox[i] = (p.ox[i] - b.x0) / 2;
        }
        next.push_back(std::move(p));
      }
    }
    groups = std::move(next);
    side /= 2;
  }
  const int64_t C = groups[0].map.size(1);
  at::Tensor feats = at::empty({N, K, side, side, C}, crop.options());  // channels-last: copies of whole pixels
  for (const Group& g : groups) {
    for (size_t i = 0; i < g.k.size(); ++i) {
      const at::Tensor w = g.map.slice(2, g.oy[i], g.oy[i] + side).slice(3, g.ox[i], g.ox[i] + side);
      feats.select(1, g.k[i]).copy_(w.permute({0, 2, 3, 1}));
    }
  }
  return feats.view({N * K, side, side, C}).permute({0, 3, 1, 2});
}

// Locally connected features of every window, the K windows of a face one batch through the layer kernels: the last
// maps [N * K, C, s, s] (face-major).
at::Tensor local_features(const ShiftAverageKernels& kernels, const at::Tensor& crop,
                          const std::vector<ShiftWindow>& win, int64_t S, at::TensorList conv_weight,
                          at::TensorList conv_bias, at::IntArrayRef pool_after, bool abs_tanh) {
  at::Tensor h = kernels.windows(crop, win, S);  // [N * K, 1, S, S]
  const std::vector<int64_t> one{1, 1}, zero{0, 0};
  // Where the device has it (the CPU), one kernel also does the |tanh| and the 2x2 pooling in the same pass.
  const bool fused_pool = kernels.lc_fused_pool && abs_tanh;
  for (size_t l = 0; l < conv_weight.size(); ++l) {
    const std::optional<at::Tensor> b = conv_bias[l];
    if (pool_after[l] && fused_pool) {
      h = lc_op("tcdcn_ext::lc_conv2d_abs_tanh_maxpool2d").call(h, conv_weight[l], b, one, zero);
      continue;
    }
    if (abs_tanh) {
      h = lc_op("tcdcn_ext::lc_conv2d_abs_tanh").call(h, conv_weight[l], b, one, zero);
    } else {
      h = at::relu(lc_op("tcdcn_ext::lc_conv2d").call(h, conv_weight[l], b, one, zero));
    }
    if (pool_after[l]) h = kernels.pool2x2(h, 0, 0, h.size(2) / 2, h.size(3) / 2);
  }
  return h;
}

}  // namespace

at::Tensor pool2x2_output(const at::Tensor& map, int64_t y0, int64_t x0, int64_t h, int64_t w) {
  TORCH_CHECK(y0 >= 0 && x0 >= 0 && y0 + 2 * h <= map.size(2) && x0 + 2 * w <= map.size(3),
              "shift_average: internal error: pooling cells outside the map");
  const bool cl = map.stride(1) == 1 && map.size(1) > 1;
  return at::empty({map.size(0), map.size(1), h, w},
                   map.options().memory_format(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
}

std::tuple<at::Tensor, at::Tensor> shift_average_forward(
    const ShiftAverageKernels& kernels, const at::Tensor& crop, at::IntArrayRef shifts, int64_t window,
    at::TensorList conv_weight, at::TensorList conv_bias, at::IntArrayRef pool_after, bool shared_conv,
    const std::string& activation, const at::Tensor& fc_weight, const at::Tensor& fc_bias,
    const at::Tensor& head_weight, const at::Tensor& head_bias, int64_t num_points) {
  // -- arguments -----------------------------------------------------------------------------------------------
  TORCH_CHECK(crop.dim() == 4 && crop.size(1) == 1, kOp, ": crop must be [N, 1, H, W] (grey face crops with a "
              "margin around the window), got shape ", crop.sizes());
  TORCH_CHECK(crop.scalar_type() == at::kFloat || crop.scalar_type() == at::kDouble, kOp,
              ": crop must be float32 or float64, got ", crop.scalar_type());
  const int64_t S = window, Hc = crop.size(2), Wc = crop.size(3);
  TORCH_CHECK(S >= 1, kOp, ": window must be >= 1, got ", S);
  TORCH_CHECK(Hc >= S && Wc >= S && (Hc - S) % 2 == 0 && (Wc - S) % 2 == 0, kOp, ": the crop (", Hc, " x ", Wc,
              ") must be the ", S, " x ", S, " window plus an equal margin on each side (H - window and W - window "
              "even and >= 0)");
  TORCH_CHECK(!shifts.empty() && shifts.size() % 2 == 0, kOp,
              ": shifts must be a flat list of (dx, dy) pairs with at least one pair, got ", shifts.size(), " values");
  const int64_t K = int64_t(shifts.size()) / 2, my = (Hc - S) / 2, mx = (Wc - S) / 2;
  std::vector<ShiftWindow> win(K);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t dx = shifts[2 * k], dy = shifts[2 * k + 1];
    TORCH_CHECK(std::abs(dx) <= mx && std::abs(dy) <= my, kOp, ": shift ", k, " (dx ", dx, ", dy ", dy,
                ") moves the window out of the crop, whose margin is ", mx, " px (x) and ", my,
                " px (y); make the crop larger or the shifts smaller");
    win[k] = {my + dy, mx + dx, dx, dy};
  }
  const size_t L = conv_weight.size();
  TORCH_CHECK(L >= 1 && conv_bias.size() == L && pool_after.size() == L, kOp, ": conv_weight (", L,
              "), conv_bias (", conv_bias.size(), ") and pool_after (", pool_after.size(),
              ") must list the same, non-zero number of layers");
  TORCH_CHECK(activation == "abs_tanh" || activation == "relu", kOp,
              ": activation must be 'abs_tanh' or 'relu', got '", activation, "'");
  const bool abs_tanh = activation == "abs_tanh";
  int64_t side = S, channels = 1;
  for (size_t l = 0; l < L; ++l) {
    const std::string w = "conv_weight[" + std::to_string(l) + "]", b = "conv_bias[" + std::to_string(l) + "]";
    check_tensor(conv_weight[l], crop, w, /*half_ok=*/!shared_conv && kernels.lc_half_weights);
    check_tensor(conv_bias[l], crop, b);
    const at::Tensor& cw = conv_weight[l];
    int64_t k = 0, c_out = 0;
    if (shared_conv) {
      TORCH_CHECK(cw.dim() == 4 && cw.size(1) == channels && cw.size(2) == cw.size(3), kOp, ": ", w,
                  " must be a square [C_out, ", channels, ", k, k] convolution, got shape ", cw.sizes());
      k = cw.size(2);
      c_out = cw.size(0);
      TORCH_CHECK(conv_bias[l].dim() == 1 && conv_bias[l].size(0) == c_out, kOp, ": ", b, " must be [", c_out,
                  "], got shape ", conv_bias[l].sizes());
    } else {
      TORCH_CHECK(cw.dim() == 6 && cw.size(2) == channels && cw.size(3) == cw.size(4), kOp, ": ", w,
                  " must be a locally connected [H_out, W_out, ", channels, ", k, k, C_out] weight, got shape ",
                  cw.sizes());
      k = cw.size(3);
      c_out = cw.size(5);
      TORCH_CHECK(cw.size(0) == side - k + 1 && cw.size(1) == side - k + 1, kOp, ": ", w, " has ", cw.size(0), " x ",
                  cw.size(1), " output locations but its ", side, " x ", side, " input gives ", side - k + 1, " x ",
                  side - k + 1);
    }
    TORCH_CHECK(side - k + 1 >= 1, kOp, ": layer ", l, "'s ", k, " x ", k, " kernel does not fit its ", side,
                " x ", side, " input");
    side = side - k + 1;
    if (pool_after[l]) {
      TORCH_CHECK(side >= 2, kOp, ": layer ", l, "'s ", side, " x ", side, " output is too small to pool");
      side /= 2;
    }
    channels = c_out;
  }
  const int64_t flat = channels * side * side;
  // fc and heads: [F, C * s * s] and [D, F] (at::addmm), or on the CPU the locally connected layout
  // [1, 1, C, s, s, F] and [1, 1, F, 1, 1, D] (float16 allowed; TCDCN's inference copies), run on the lc kernels
  // straight from the feature maps.
  const bool lc_fc = fc_weight.dim() == 6;
  const bool lc_ok = kernels.lc_heads != nullptr;  // the CPU's
  check_tensor(fc_weight, crop, "fc_weight", /*half_ok=*/lc_fc && lc_ok);
  check_tensor(fc_bias, crop, "fc_bias");
  check_tensor(head_weight, crop, "head_weight", /*half_ok=*/lc_fc && lc_ok);
  check_tensor(head_bias, crop, "head_bias");
  TORCH_CHECK(!lc_fc || lc_ok, kOp, ": fc_weight in the locally connected layout is taken on the CPU only, got ",
              crop.device());
  TORCH_CHECK(lc_fc ? (fc_weight.size(0) == 1 && fc_weight.size(1) == 1 && fc_weight.size(2) == channels &&
                       fc_weight.size(3) == side && fc_weight.size(4) == side)
                    : (fc_weight.dim() == 2 && fc_weight.size(1) == flat),
              kOp, ": fc_weight must be [F, ", flat, "] or [1, 1, ", channels, ", ", side, ", ", side,
              ", F] (the conv stack gives ", channels, " x ", side, " x ", side, "), got shape ", fc_weight.sizes());
  const int64_t F = lc_fc ? fc_weight.size(5) : fc_weight.size(0);
  TORCH_CHECK(fc_bias.numel() == F && (fc_bias.dim() == 1 || (lc_fc && fc_bias.dim() == 3)), kOp,
              ": fc_bias must be [", F, "]", lc_fc ? " or [F, 1, 1]" : "", ", got shape ", fc_bias.sizes());
  TORCH_CHECK(num_points >= 1, kOp, ": num_points must be >= 1, got ", num_points);
  TORCH_CHECK(head_weight.dim() == (lc_fc ? 6 : 2), kOp, ": head_weight must be ", lc_fc ? "[1, 1, F, 1, 1, D]" : "[D, F]",
              " like fc_weight's layout, got shape ", head_weight.sizes());
  const int64_t D = lc_fc ? head_weight.size(5) : head_weight.size(0);
  TORCH_CHECK((lc_fc ? (head_weight.size(0) == 1 && head_weight.size(1) == 1 && head_weight.size(2) == F &&
                        head_weight.size(3) == 1 && head_weight.size(4) == 1)
                     : head_weight.size(1) == F) &&
                  D >= 2 * num_points,
              kOp, ": head_weight must be ", lc_fc ? "[1, 1, " : "[D, ", F, lc_fc ? ", 1, 1, D]" : "]",
              " with D >= 2 * num_points = ", 2 * num_points, " (landmark rows first), got shape ",
              head_weight.sizes());
  TORCH_CHECK(head_bias.numel() == D && (head_bias.dim() == 1 || (lc_fc && head_bias.dim() == 3)), kOp,
              ": head_bias must be [", D, "]", lc_fc ? " or [D, 1, 1]" : "", ", got shape ", head_bias.sizes());

  const int64_t N = crop.size(0);
  at::Tensor heads = at::empty({N, K, D}, crop.options());
  if (N == 0) return {at::empty({0, num_points, 2}, crop.options()), heads};

  // -- the network, once per distinct shift (a repeated shift weighs more in the mean, its window is the same) --
  std::vector<ShiftWindow> uniq;
  std::vector<int64_t> slot(K);
  {
    std::map<std::pair<int64_t, int64_t>, int64_t> seen;
    for (int64_t k = 0; k < K; ++k) {
      auto it = seen.emplace(std::make_pair(win[k].dx, win[k].dy), int64_t(uniq.size())).first;
      if (it->second == int64_t(uniq.size())) uniq.push_back(win[k]);
      slot[k] = it->second;
    }
  }
  const int64_t U = int64_t(uniq.size());
  const at::Tensor maps = shared_conv  // [N * U, C, s, s]
                             ? shared_features(kernels, crop, uniq, S, conv_weight, conv_bias, pool_after, abs_tanh)
                             : local_features(kernels, crop, uniq, S, conv_weight, conv_bias, pool_after, abs_tanh);
  if (lc_fc) {  // fc (with its activation) and the heads as two locally connected layers on the maps as they lie
    heads = kernels.lc_heads(maps, fc_weight, fc_bias, head_weight, head_bias, abs_tanh).view({N, U, D});
  } else {
    at::Tensor f = activate(at::addmm(fc_bias, maps.reshape({N * U, flat}), fc_weight.t()), abs_tanh);
    heads = at::addmm(head_bias, f, head_weight.t()).reshape({N, U, D});
  }
  if (U < K) {
    const at::Tensor index = at::tensor(slot, at::TensorOptions().dtype(at::kLong)).to(crop.device());
    heads = heads.index_select(1, index);
  }
  heads = heads.contiguous();
  double shift_u = 0, shift_v = 0;
  for (const ShiftWindow& w : win) {
    shift_u += double(w.dx);
    shift_v += double(w.dy);
  }
  shift_u /= double(K) * double(S);
  shift_v /= double(K) * double(S);
  return {kernels.unshift_average(heads, shift_u, shift_v, num_points), heads};
}

}  // namespace tcdcn
