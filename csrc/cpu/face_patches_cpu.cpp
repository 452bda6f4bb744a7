// CPU implementation of tcdcn_ext::face_patches: the model's input sampling (box -> S x S grey patch, bilinear,
// black outside the image, per-patch standardisation) for many faces in one call. It is the C++ twin of
// tcdcn_ext.data.make_inputs (which warps with OpenCV one face at a time from Python).
//
// Work per face: the separable bilinear map needs, for each of the <= 2 S source rows it touches, S horizontal
// interpolations of two grey taps each (<= 4 S^2 grey values), then S^2 vertical ones. Consecutive faces of one
// image whose boxes overlap (the shifted copies of a box in TCDCN-Averaged, or re-boxed faces) share one grey
// conversion of the union of their source regions when that union holds fewer pixels than their taps; other
// faces read their taps straight from the uint8 image. Both paths give the same floats bit for bit: a grey value
// is ((0.299 R + 0.587 G) + 0.114 B) in float wherever it is computed, and the interpolation order is fixed.
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

// The three ITU-R 601 products of every 8-bit level, 0.299f * float(v) etc.: the same floats as multiplying (the
// weights of OpenCV's RGB2GRAY on float input, what training used), without three int->float conversions and
// three multiplies per pixel.
struct LumaTable {
  float r[256], g[256], b[256];
};

const LumaTable& luma_table() {
  static const LumaTable table = [] {
    LumaTable t;
    for (int v = 0; v < 256; ++v) {
      t.r[v] = 0.299f * float(v);
      t.g[v] = 0.587f * float(v);
      t.b[v] = 0.114f * float(v);
    }
    return t;
  }();
  return table;
}

// A half-open rectangle of source pixels.
struct Rect {
  int64_t x0, x1, y0, y1;
  int64_t area() const { return (x1 - x0) * (y1 - y0); }
};

Rect unite(const Rect& a, const Rect& b) {
  return {std::min(a.x0, b.x0), std::max(a.x1, b.x1), std::min(a.y0, b.y0), std::max(a.y1, b.y1)};
}

// Source pixels any tap of one axis can touch, clipped to the image (at least one pixel so indices stay valid):
// the taps of output centre x are floor(x) and floor(x) + 1, and the centres run from start + step / 2 to
// start + (size - 1/2) step (either way round: a box may be given mirrored).
void axis_span(double start, double step, int64_t size, int64_t extent, int64_t& lo, int64_t& hi) {
  const double a = start + 0.5 * step, b = start + (double(size) - 0.5) * step;
  lo = std::max<int64_t>(0, std::min<int64_t>(extent - 1, int64_t(std::floor(std::min(a, b)))));
  hi = std::max<int64_t>(lo + 1, std::min<int64_t>(extent, int64_t(std::floor(std::max(a, b))) + 2));
}

Rect face_rect(const ImageView& im, const double* box, int64_t size) {
  Rect r;
  axis_span(box[0], (box[2] - box[0]) / double(size), size, im.w, r.x0, r.x1);
  axis_span(box[1], (box[3] - box[1]) / double(size), size, im.h, r.y0, r.y1);
  return r;
}

// Grey values the tap-by-tap path computes for a face: 2 S per source row, at most 2 S rows.
int64_t tap_cost(const Rect& r, int64_t size) { return 2 * size * std::min(2 * size, r.y1 - r.y0); }

// One axis of the separable bilinear map: for each of the `size` outputs, the two source taps (indices relative
// to `lo`, clamped into [lo, hi)) and their weights, 0 for taps outside the image (the black border).
struct AxisTaps {
  std::vector<int64_t> i0, i1;
  std::vector<float> w0, w1;
};

void axis_taps(double start, double step, int64_t size, int64_t extent, int64_t lo, int64_t hi, AxisTaps& t) {
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
    t.i0[j] = std::min(std::max(x0, lo), hi - 1) - lo;
    t.i1[j] = std::min(std::max(x0 + 1, lo), hi - 1) - lo;
  }
}

// The next group's source rows, requested a few cache lines at a time while the current group is sampled (which
// is compute-bound), so that its grey conversion finds them in cache rather than waiting on memory row by row.
class RegionPrefetch {
 public:
  RegionPrefetch() = default;
  RegionPrefetch(const ImageView& im, const Rect& r, int64_t steps) {
    if (im.sx > 4 || steps <= 0 || im.h == 0 || im.w == 0) return;  // interleaved pixels only
    base_ = im.data + r.y0 * im.sy + r.x0 * im.sx;
    stride_ = im.sy;
    bytes_ = (r.x1 - r.x0) * im.sx;
    rows_ = r.y1 - r.y0;
    per_step_ = (rows_ * ((bytes_ + 63) / 64 + 1) + steps - 1) / steps;
  }
  void step() {
    for (int64_t k = 0; k < per_step_ && row_ < rows_; ++k) {
      const uint8_t* p = base_ + row_ * stride_;
      if (offset_ < bytes_) {
        prefetch_line(p + offset_);
        offset_ += 64;
      } else {
        prefetch_line(p + bytes_ - 1);
        offset_ = 0;
        ++row_;
      }
    }
  }

 private:
  static void prefetch_line(const uint8_t* p) {
#if defined(__GNUC__)
    __builtin_prefetch(p, 0, 2);
#else
    (void)p;
#endif
  }
  const uint8_t* base_ = nullptr;
  int64_t stride_ = 0, bytes_ = 0, rows_ = 0, row_ = 0, offset_ = 0, per_step_ = 0;
};

// Grey sources for sample(): row(y) and at(row, x) with x, y relative to the taps' origin.
struct GreyBuffer {  // a converted region, float [rows, stride]
  const float* data;
  int64_t stride;
  const float* row(int64_t y) const { return data + y * stride; }
  float at(const float* row, int64_t x) const { return row[x]; }
};

struct GreyImage {  // uint8 [H, W] (or [H, W, 1])
  const ImageView& im;
  const uint8_t* row(int64_t y) const { return im.data + y * im.sy; }
  float at(const uint8_t* row, int64_t x) const { return float(row[x * im.sx]); }
};

struct ColourImage {  // uint8 [H, W, 3|4]; ir, ib: element offsets of red and blue in a pixel
  const ImageView& im;
  const LumaTable& lut;
  int64_t ir, ib;
  const uint8_t* row(int64_t y) const { return im.data + y * im.sy; }
  float at(const uint8_t* row, int64_t x) const {
    const uint8_t* p = row + x * im.sx;
    return lut.r[p[ir]] + lut.g[p[im.sc]] + lut.b[p[ib]];
  }
};

// Bilinear S x S patch: each source row a tap needs is interpolated horizontally once (two row buffers, reused
// when consecutive outputs share a row, i.e. when upsampling), then each output row blends two of them. A row
// whose weight is 0 (outside the image) is skipped: a0 * h0 + 0 == a0 * h0 for the non-negative grey values.
template <class Source>
void sample(const Source& src, const AxisTaps& tx, const AxisTaps& ty, int64_t size, float* dst,
            std::vector<float>& rows, RegionPrefetch& next) {
  rows.resize(2 * size);
  float* buf[2] = {rows.data(), rows.data() + size};
  int64_t row_of[2] = {-1, -1}, used_at[2] = {-1, -1};
  auto horizontal = [&](int64_t i, int64_t y, const float* keep) -> const float* {
    for (int k = 0; k < 2; ++k) {
      if (row_of[k] == y) {
        used_at[k] = i;
        return buf[k];
      }
    }
    // Never overwrite the other row of the current output row; otherwise the least recently used buffer.
    const int k = buf[0] == keep ? 1 : buf[1] == keep ? 0 : (used_at[0] <= used_at[1] ? 0 : 1);
    const auto r = src.row(y);
    float* h = buf[k];
    for (int64_t j = 0; j < size; ++j) h[j] = tx.w0[j] * src.at(r, tx.i0[j]) + tx.w1[j] * src.at(r, tx.i1[j]);
    row_of[k] = y;
    used_at[k] = i;
    return h;
  };
  for (int64_t i = 0; i < size; ++i) {
    next.step();
    const float a0 = ty.w0[i], a1 = ty.w1[i];
    float* d = dst + i * size;
    const float* r0 = a0 != 0.f ? horizontal(i, ty.i0[i], nullptr) : nullptr;
    const float* r1 = a1 != 0.f ? horizontal(i, ty.i1[i], r0) : nullptr;
    if (r0 && r1) {
      for (int64_t j = 0; j < size; ++j) d[j] = a0 * r0[j] + a1 * r1[j];
    } else if (r0) {
      for (int64_t j = 0; j < size; ++j) d[j] = a0 * r0[j];
    } else if (r1) {
      for (int64_t j = 0; j < size; ++j) d[j] = a1 * r1[j];
    } else {
      std::fill(d, d + size, 0.f);
    }
  }
}

// Rows of a region lie a whole image row apart, which the hardware prefetcher does not follow on its own; the
// images of a batch are usually out of cache (the forward pass in between evicts them). Interleaved pixels only.
constexpr int64_t kPrefetchRows = 4;

inline void prefetch_bytes(const uint8_t* p, int64_t n) {
#if defined(__GNUC__)
  for (int64_t x = 0; x < n; x += 64) __builtin_prefetch(p + x);
  __builtin_prefetch(p + n - 1);
#else
  (void)p;
  (void)n;
#endif
}

void grey_region(const ImageView& im, int64_t ir, int64_t ib, const Rect& r, std::vector<float>& out) {
  const LumaTable& lut = luma_table();
  const int64_t rw = r.x1 - r.x0, sx = im.sx, sc = im.sc;
  out.resize(r.area());
  for (int64_t y = r.y0; y < r.y1; ++y) {
    const uint8_t* row = im.data + y * im.sy + r.x0 * sx;
    float* g = out.data() + (y - r.y0) * rw;
    if (sx <= 4 && y + kPrefetchRows < r.y1) prefetch_bytes(row + kPrefetchRows * im.sy, rw * sx);
    if (im.c == 1) {
      for (int64_t x = 0; x < rw; ++x) g[x] = float(row[x * sx]);
    } else {
      for (int64_t x = 0; x < rw; ++x) {
        const uint8_t* p = row + x * sx;
        g[x] = lut.r[p[ir]] + lut.g[p[sc]] + lut.b[p[ib]];
      }
    }
  }
}

// (p - mean) / (std + 1e-6), mean and std in double. Four partial sums keep the additions independent (the
// sequential sum is latency-bound); they change the double mean by a few ulp, far below float resolution.
void standardise(float* d, int64_t n) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    for (int l = 0; l < 4; ++l) s[l] += d[k + l];
  }
  for (; k < n; ++k) s[0] += d[k];
  const double mean = ((s[0] + s[1]) + (s[2] + s[3])) / double(n);
  double q[4] = {0.0, 0.0, 0.0, 0.0};
  for (k = 0; k + 4 <= n; k += 4) {
    for (int l = 0; l < 4; ++l) q[l] += (d[k + l] - mean) * (d[k + l] - mean);
  }
  for (; k < n; ++k) q[0] += (d[k] - mean) * (d[k] - mean);
  const float inv = float(1.0 / (std::sqrt(((q[0] + q[1]) + (q[2] + q[3])) / double(n)) + 1e-6));
  for (k = 0; k < n; ++k) d[k] = float((d[k] - mean) * inv);
}

struct Scratch {
  AxisTaps tx, ty;
  std::vector<float> grey, rows;
};

// Faces [f0, f1) of one image, sharing `region`'s grey conversion when `shared`.
void patch_group(const ImageView& im, int order, const double* boxes, int64_t f0, int64_t f1, const Rect& region,
                 bool shared, int64_t size, bool standardise_, float* out, Scratch& s,
                 RegionPrefetch& next) {
  const int64_t ir = (order == 1 ? 2 : 0) * im.sc, ib = (order == 1 ? 0 : 2) * im.sc;
  if (shared) grey_region(im, ir, ib, region, s.grey);
  for (int64_t f = f0; f < f1; ++f) {
    const double* box = boxes + 4 * f;
    const double sx = (box[2] - box[0]) / double(size), sy = (box[3] - box[1]) / double(size);
    float* dst = out + f * size * size;
    if (im.h == 0 || im.w == 0) {
      std::fill(dst, dst + size * size, 0.f);  // no pixel at all: every tap is outside
    } else if (shared) {
      axis_taps(box[0], sx, size, im.w, region.x0, region.x1, s.tx);
      axis_taps(box[1], sy, size, im.h, region.y0, region.y1, s.ty);
      sample(GreyBuffer{s.grey.data(), region.x1 - region.x0}, s.tx, s.ty, size, dst, s.rows, next);
    } else {
      axis_taps(box[0], sx, size, im.w, 0, im.w, s.tx);
      axis_taps(box[1], sy, size, im.h, 0, im.h, s.ty);
      if (im.c == 1) {
        sample(GreyImage{im}, s.tx, s.ty, size, dst, s.rows, next);
      } else {
        sample(ColourImage{im, luma_table(), ir, ib}, s.tx, s.ty, size, dst, s.rows, next);
      }
    }
    if (standardise_) standardise(dst, size * size);
  }
}

struct Group {
  int64_t f0, f1;
  Rect region;
  bool shared;
};

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
  // Greedy groups of consecutive faces of one image: a face joins while the union of the group's source regions
  // stays no larger than the grey values its faces would compute tap by tap.
  std::vector<Group> groups;
  for (int64_t f = 0; f < F;) {
    const ImageView& im = views[ip[f]];
    Rect u = face_rect(im, bp + 4 * f, size);
    int64_t cost = tap_cost(u, size), g = f + 1;
    for (; g < F && ip[g] == ip[f]; ++g) {
      const Rect r = face_rect(im, bp + 4 * g, size), v = unite(u, r);
      const int64_t c = cost + tap_cost(r, size);
      if (v.area() > c) break;
      u = v;
      cost = c;
    }
    groups.push_back({f, g, u, u.area() <= cost && im.h > 0 && im.w > 0});
    f = g;
  }
  float* op_ = out.mutable_data_ptr<float>();
  const int order = int(channel_order);
  at::parallel_for(0, int64_t(groups.size()), 1, [&](int64_t g0, int64_t g1) {
    Scratch scratch;
    for (int64_t g = g0; g < g1; ++g) {
      const Group& gr = groups[g];
      RegionPrefetch next;
      if (g + 1 < g1) next = RegionPrefetch(views[ip[groups[g + 1].f0]], groups[g + 1].region, (gr.f1 - gr.f0) * size);
      patch_group(views[ip[gr.f0]], order, bp, gr.f0, gr.f1, gr.region, gr.shared, size, standardise, op_,
                  scratch, next);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tcdcn_ext, CPU, m) { m.impl("face_patches", &face_patches_cpu); }

}  // namespace tcdcn
