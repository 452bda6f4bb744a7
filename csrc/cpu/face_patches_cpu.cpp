// CPU implementation of tcdcn_ext::face_patches: the model's input sampling (box -> S x S grey patch, bilinear,
// black outside the image, per-patch standardisation) for many faces in one call, threaded over faces. It is
// the C++ twin of tcdcn_ext.data.make_inputs (which warps with OpenCV one face at a time from Python).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace tcdcn {
namespace {

struct ImageView {
  const uint8_t* data;
  int64_t h, w, c, sy, sx, sc;  // sizes and element strides (c == 1 for grey)
};

// ITU-R 601 luma in float, the same weights as OpenCV's RGB2GRAY on float input (what training used).
inline float grey_at(const ImageView& im, int64_t y, int64_t x, int order) {
  const uint8_t* p = im.data + y * im.sy + x * im.sx;
  if (im.c == 1) return float(p[0]);
  const float r = float(p[order == 1 ? 2 * im.sc : 0]), g = float(p[im.sc]), b = float(p[order == 1 ? 0 : 2 * im.sc]);
  return 0.299f * r + 0.587f * g + 0.114f * b;
}

inline float sample(const ImageView& im, double x, double y, int order) {
  const double fx = std::floor(x), fy = std::floor(y);
  const int64_t x0 = int64_t(fx), y0 = int64_t(fy);
  const float ax = float(x - fx), ay = float(y - fy);
  float v = 0.f;
  for (int dy = 0; dy < 2; ++dy) {
    const int64_t yy = y0 + dy;
    if (yy < 0 || yy >= im.h) continue;
    const float wy = dy ? ay : 1.f - ay;
    for (int dx = 0; dx < 2; ++dx) {
      const int64_t xx = x0 + dx;
      if (xx < 0 || xx >= im.w) continue;
      v += wy * (dx ? ax : 1.f - ax) * grey_at(im, yy, xx, order);
    }
  }
  return v;
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
  at::parallel_for(0, F, 16, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      const ImageView& im = views[ip[f]];
      const double x0 = bp[4 * f], y0 = bp[4 * f + 1], x1 = bp[4 * f + 2], y1 = bp[4 * f + 3];
      const double sx = (x1 - x0) / double(size), sy = (y1 - y0) / double(size);
      float* dst = op_ + f * size * size;
      double sum = 0.0;
      for (int64_t i = 0; i < size; ++i) {
        const double y = y0 + (double(i) + 0.5) * sy;  // input pixel i's centre in image pixel-centre coordinates
        for (int64_t j = 0; j < size; ++j) {
          const float v = sample(im, x0 + (double(j) + 0.5) * sx, y, order);
          dst[i * size + j] = v;
          sum += v;
        }
      }
      if (!standardise) continue;
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
