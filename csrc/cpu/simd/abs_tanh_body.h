// abs_tanh kernel bodies; included by abs_tanh_{ref,avx2,avx512}.cpp after vec.h and abs_tanh_math.h.
namespace {

void abs_tanh_f32(const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if TCDCN_VEC_BYTES > 0
  constexpr int W = VT<float>::W;
  for (; i + W <= n; i += W) vstore<float>(y + i, abs_tanh_vec(vload<float>(x + i)));
#endif
  for (; i < n; ++i) y[i] = abs_tanh_scalar(x[i]);
}

void abs_tanh_f64(const double* x, double* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = abs_tanh_scalar(x[i]);
}

void abs_tanh_backward_f32(const float* go, const float* x, float* gi, int64_t n) {
  int64_t i = 0;
#if TCDCN_VEC_BYTES > 0
  constexpr int W = VT<float>::W;
  for (; i + W <= n; i += W) {
    const fvec xv = vload<float>(x + i);
    const fvec y = abs_tanh_vec(xv);
    const fvec s = xv > 0.0f ? fvec{} + 1.0f : (xv < 0.0f ? fvec{} - 1.0f : fvec{});
    vstore<float>(gi + i, vload<float>(go + i) * s * (1.0f - y * y));
  }
#endif
  for (; i < n; ++i) {
    const float y = abs_tanh_scalar(x[i]);
    gi[i] = go[i] * sign_of(x[i]) * (1.0f - y * y);
  }
}

void abs_tanh_backward_f64(const double* go, const double* x, double* gi, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double y = abs_tanh_scalar(x[i]);
    gi[i] = go[i] * sign_of(x[i]) * (1.0 - y * y);
  }
}

}  // namespace

const AbsTanhKernels<float> abs_tanh_kernels_f32 = {&abs_tanh_f32, &abs_tanh_backward_f32};
const AbsTanhKernels<double> abs_tanh_kernels_f64 = {&abs_tanh_f64, &abs_tanh_backward_f64};
