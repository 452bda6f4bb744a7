// Body of the FMA-throughput micro-benchmark (fma_peak.cpp); included inside its namespace after vec.h.
// 12 independent accumulator chains cover the FMA latency (4 cycles) times two FMA ports with room to spare.
namespace {
constexpr int kChains = 12;
}  // namespace

const int fma_peak_lanes = VT<float>::W;
const int fma_peak_chains = kChains;

float fma_peak(int64_t iters) {
  typedef VT<float>::vec vec;
  vec acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = vbcast<float>(1.0f + 1e-3f * float(c));
  // a * x + b with |a| < 1 stays bounded (no overflow, no denormals) however long it runs.
  const vec a = vbcast<float>(0.999999f), b = vbcast<float>(1e-6f);
  for (int64_t i = 0; i < iters; ++i) {
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * a + b;
  }
  float s = 0.0f;
  for (int c = 0; c < kChains; ++c)
    for (int j = 0; j < VT<float>::W; ++j) s += acc[c][j];
  return s;
}
