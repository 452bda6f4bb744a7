// CPU implementation of tcdcn_ext::face_patches: the model's input sampling (box -> S x S grey patch, bilinear,
// black outside the image, per-patch standardisation) for many faces in one call, threaded over faces. It is
// the C++ twin of tcdcn_ext.data.make_inputs (which warps with OpenCV one face at a time from Python).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace tcdcn {
namespace {

struct ImageView {
  const uint8_t* data;
  int64_t h, w, c, sy, sx, sc;  // sizes and element strides (c == 1 for grey)
};

// ITU-R 601 luma in float, the same weights as OpenCV's RGB2GRAY on float input (what training used).
inline float luma(const uint8_t* p, int64_t sc, int order) {
  const float r = float(p[order == 1 ? 2 * sc : 0]), g = float(p[sc]), b = float(p[order == 1 ? 0 : 2 * sc]);
  return 0.299f * r + 0.587f * g + 0.114f * b;
}

// One axis of the separable bilinear map: for each of the `size` outputs, the two source taps (indices into a
// region starting at `lo`, clamped) and their weights, 0 for taps outside the image (the black border).
struct AxisTaps {
  std::vector<int64_t> i0, i1;
  std::vector<float> w0, w1;
};

inline void axis_taps(double start, double step, int64_t size, int64_t lo, int64_t hi_excl, int64_t extent,
                      AxisTaps& t) {
  t.i0.resize(size);
  t.i1.resize(size);
  t.w0.resize(size);
  t.w1.resize(size);
  for (int64_t j = 0; j < size; ++j) {
    const double x = start + (double(j) + 0.5) * step;  // output j's centre in source pixel-centre coordinates
    const double fx = std::floor(x);
    const int64_t x0 = int64_t(fx);
    const float a = float(x - fx);
    const bool in0 = x0 >= 0 && x0 < extent, in1 = x0 + 1 >= 0 && x0 + 1 < extent;
    t.w0[j] = in0 ? 1.f - a : 0.f;
    t.w1[j] = in1 ? a : 0.f;
    t.i0[j] = std::min(std::max(x0, lo), hi_excl - 1) - lo;
    t.i1[j] = std::min(std::max(x0 + 1, lo), hi_excl - 1) - lo;
  }
}

// Face patch: the grey values of the box's source region are computed once (a contiguous float buffer), then
// sampled with precomputed, branch-free separable taps.
void one_patch(const ImageView& im, const double* box, int64_t size, int order, float* dst, std::vector<float>& grey,
               AxisTaps& tx, AxisTaps& ty) {
  const double x0 = box[0], y0 = box[1];
  const double sx = (box[2] - box[0]) / double(size), sy = (box[3] - box[1]) / double(size);
  // Source pixels any tap can touch, clipped to the image (at least one pixel so indices stay valid).
  auto span = [](double start, double step, int64_t size, int64_t extent, int64_t& lo, int64_t& hi) {
    const double a = start + 0.5 * step, b = start + (double(size) - 0.5) * step;
    lo = std::max<int64_t>(0, std::min<int64_t>(extent - 1, int64_t(std::floor(std::min(a, b)))));
    hi = std::max<int64_t>(lo + 1, std::min<int64_t>(extent, int64_t(std::floor(std::max(a, b))) + 2));
  };
  int64_t cx0, cx1, cy0, cy1;
  span(x0, sx, size, im.w, cx0, cx1);
  span(y0, sy, size, im.h, cy0, cy1);
  axis_taps(x0, sx, size, cx0, cx1, im.w, tx);
  axis_taps(y0, sy, size, cy0, cy1, im.h, ty);
  const int64_t rw = cx1 - cx0, rh = cy1 - cy0;
  grey.resize(rw * rh);
  for (int64_t y = 0; y < rh; ++y) {
    const uint8_t* row = im.data + (cy0 + y) * im.sy + cx0 * im.sx;
    float* g = grey.data() + y * rw;
    if (im.c == 1) {
      for (int64_t x = 0; x < rw; ++x) g[x] = float(row[x * im.sx]);
    } else if (im.sc == 1) {  // interleaved pixels: constant channel offsets, so the loop vectorises
      const int64_t step = im.sx, ir = order == 1 ? 2 : 0, ib = order == 1 ? 0 : 2;
      for (int64_t x = 0; x < rw; ++x) {
        const uint8_t* q = row + x * step;
        g[x] = 0.299f * float(q[ir]) + 0.587f * float(q[1]) + 0.114f * float(q[ib]);
      }
    } else {
      for (int64_t x = 0; x < rw; ++x) g[x] = luma(row + x * im.sx, im.sc, order);
    }
  }
  for (int64_t i = 0; i < size; ++i) {
    const float* r0 = grey.data() + ty.i0[i] * rw;
    const float* r1 = grey.data() + ty.i1[i] * rw;
    const float a0 = ty.w0[i], a1 = ty.w1[i];
    float* d = dst + i * size;
    for (int64_t j = 0; j < size; ++j) {
      const int64_t c0 = tx.i0[j], c1 = tx.i1[j];
      d[j] = a0 * (tx.w0[j] * r0[c0] + tx.w1[j] * r0[c1]) + a1 * (tx.w0[j] * r1[c0] + tx.w1[j] * r1[c1]);
    }
  }
}

at::Tensor face_patches_cpu(at::TensorList images, const at::Tensor& image_index, const at::Tensor& boxes,
                            int64_t size, int64_t channel_order, bool standardise) {
  const char* op = "face_patches";
  TORCH_CHECK(size >= 1, op, ": size must be >= 1, got ", size);
  TORCH_CHECK(channel_order == 0 || channel_order == 1, op, ": channel_order must be 0 (RGB) or 1 (BGR), got ",
              channel_order);
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must be [F, 4], got shape ", boxes.sizes());
  TORCH_CHECK(image_index.dim() == 1 && image_index.size(0) == boxes.size(0), op, ": image_index must be [F] = [",
              boxes.size(0), "], got shape ", image_index.sizes());
  TORCH_CHECK(image_index.scalar_type() == at::kLong, op, ": image_index must be int64, got ",
              image_index.scalar_type());
  std::vector<ImageView> views;
  views.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const at::Tensor& im = images[i];
    TORCH_CHECK(im.device().is_cpu() && im.scalar_type() == at::kByte, op, ": images[", i,
                "] must be a uint8 CPU tensor, got ", im.scalar_type(), " on ", im.device());
    TORCH_CHECK(im.dim() == 2 || (im.dim() == 3 && (im.size(2) == 1 || im.size(2) == 3 || im.size(2) == 4)), op,
                ": images[", i, "] must be [H, W] or [H, W, 1|3|4], got shape ", im.sizes());
    const bool grey = im.dim() == 2 || im.size(2) == 1;
    views.push_back({im.const_data_ptr<uint8_t>(), im.size(0), im.size(1), grey ? 1 : im.size(2), im.stride(0),
                     im.stride(1), im.dim() == 3 ? im.stride(2) : 1});
  }
  const int64_t F = boxes.size(0);
  at::Tensor out = at::empty({F, 1, size, size}, boxes.options().dtype(at::kFloat));
  if (F == 0) return out;
  const at::Tensor b = boxes.to(at::kDouble).contiguous();
  const at::Tensor idx = image_index.contiguous();
  const double* bp = b.const_data_ptr<double>();
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  for (int64_t f = 0; f < F; ++f) {
    TORCH_CHECK(ip[f] >= 0 && ip[f] < int64_t(views.size()), op, ": image_index[", f, "] = ", ip[f],
                " is out of range for ", views.size(), " images");
    TORCH_CHECK(std::isfinite(bp[4 * f]) && std::isfinite(bp[4 * f + 1]) && std::isfinite(bp[4 * f + 2]) &&
                    std::isfinite(bp[4 * f + 3]),
                op, ": boxes[", f, "] is not finite");
  }
  float* op_ = out.mutable_data_ptr<float>();
  const int order = int(channel_order);
  at::parallel_for(0, F, 4, [&](int64_t f0, int64_t f1) {
    std::vector<float> grey;
    AxisTaps tx, ty;
    for (int64_t f = f0; f < f1; ++f) {
      float* dst = op_ + f * size * size;
      one_patch(views[ip[f]], bp + 4 * f, size, order, dst, grey, tx, ty);
      if (!standardise) continue;
      double sum = 0.0;
      for (int64_t k = 0; k < size * size; ++k) sum += dst[k];
      const double n = double(size * size), mean = sum / n;
      double ss = 0.0;
      for (int64_t k = 0; k < size * size; ++k) ss += (dst[k] - mean) * (dst[k] - mean);
      const float inv = float(1.0 / (std::sqrt(ss / n) + 1e-6));
      for (int64_t k = 0; k < size * size; ++k) dst[k] = float((dst[k] - mean) * inv);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CPU, m) { m.impl("face_patches", &face_patches_cpu); }

}  // namespace tcdcn
