// The one place that declares every tcdcn_ext operator schema, plus the pybind11 module `_C` (bindings only: what
// it binds lives in files of its own, see docs/CSRC.md). This is the only translation unit that includes
// <torch/extension.h> (it costs ~35 s to compile); kernels register their implementations from their own files
// with TORCH_LIBRARY_IMPL.
#include <torch/extension.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cpu/huge_pages.h"
#include "cpu/isa.h"
#include "cpu/stack_engine.h"
#include "cpu/thread_team.h"
#include "epilogue.h"
#include "tensor_watch.h"

TORCH_LIBRARY(tcdcn_ext, m) {
  // Locally connected (unshared-weight) 2-D convolution. weight: [H_out, W_out, C_in, kH, kW, C_out]
  // (output-location-major, C_out innermost); bias: [C_out, H_out, W_out]. Output is NCHW-shaped with
  // channels-last strides (C_out innermost), which is what the kernels write without a transpose.
  m.def("lc_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride=[1, 1], int[2] padding=[0, 0]) -> Tensor");
  // Inference-only fused lc_conv2d + bias + |tanh|.
  m.def("lc_conv2d_abs_tanh(Tensor input, Tensor weight, Tensor? bias, int[2] stride=[1, 1], int[2] padding=[0, 0]) -> Tensor");
  // Inference-only fused lc_conv2d + bias + |tanh| + 2x2 max pooling (stride 2, floor mode); CPU only.
  m.def("lc_conv2d_abs_tanh_maxpool2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride=[1, 1], "
        "int[2] padding=[0, 0]) -> Tensor");
  // Inference-only, CPU only: locally connected (or spatially shared) layers in turn, each stride 1 and unpadded,
  // with epilogue[i] an Epilogue code (epilogue.h; _C.EPILOGUES by name): one call for a whole stack (at batch 1 a
  // Python round trip and dispatch per layer cost about as much as a small layer). weight[i] float16 or the input's
  // dtype.
  m.def("lc_conv2d_stack(Tensor input, Tensor[] weight, Tensor?[] bias, int[] epilogue) -> Tensor");
  // Gradients of lc_conv2d; an entry of output_mask that is false yields an empty tensor in that slot. grad_input
  // has channels-last strides, like the forward's output (what the kernels write; the layers below read it so).
  m.def("_lc_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // |tanh(x)| and its gradient sign(x) * (1 - tanh(x)^2), taken as 0 at x == 0.
  m.def("abs_tanh(Tensor x) -> Tensor");
  m.def("_abs_tanh_backward(Tensor grad_output, Tensor x) -> Tensor");
  // max_pool2d(|tanh(x)|, 2) (kernel 2, stride 2, floor mode) in one pass, with a gradient: the trainable form of
  // the activation + pooling after a locally connected layer. x [N, C, H, W]; output and gradient keep x's layout
  // (channels-last stays channels-last, anything else comes out contiguous). The backward takes the forward's x
  // and output (the gradient goes to the first maximum of |x| in each cell, as max_pool2d's does, NaN included).
  m.def("abs_tanh_maxpool2d(Tensor x) -> Tensor");
  m.def("_abs_tanh_maxpool2d_backward(Tensor grad_output, Tensor x, Tensor out) -> Tensor");
  // Model inputs from uint8 images: face f's box (x0, y0, x1, y1) of images[image_index[f]] resampled to a
  // size x size grey patch (bilinear, 0 outside the image), optionally standardised per patch. channel_order:
  // 0 = RGB(A), 1 = BGR(A) (ignored for [H, W] grey images). Output [F, 1, size, size] float32.
  // TCDCN-Averaged, inference only: the network run on K shifted S x S windows of each face crop [N, 1, H, W]
  // (window k's top-left at ((H - S) / 2 + dy_k, (W - S) / 2 + dx_k), shifts = [dx_0, dy_0, dx_1, dy_1, ...]),
  // with the convolutions (shared_conv) or the weight reads (locally connected) shared between the shifts.
  // Layers: conv_weight[l] ([C_out, C_in, k, k] shared or [H_out, W_out, C_in, k, k, C_out] locally connected),
  // conv_bias[l], activation ('abs_tanh' | 'relu'), 2x2 max pooling after layer l if pool_after[l]; then
  // fc + activation and one linear head whose first 2 * num_points outputs are the landmarks (u, v) in the
  // window frame. Returns (landmarks [N, num_points, 2] un-shifted into the centred window's frame and averaged
  // over the shifts, heads [N, K, D] per shift).
  m.def("shift_average(Tensor crop, int[] shifts, int window, Tensor[] conv_weight, Tensor[] conv_bias, "
        "int[] pool_after, bool shared_conv, str activation, Tensor fc_weight, Tensor fc_bias, Tensor head_weight, "
        "Tensor head_bias, int num_points) -> (Tensor, Tensor)");
  m.def("face_patches(Tensor[] images, Tensor image_index, Tensor boxes, int size, int channel_order, "
        "bool standardise) -> Tensor");
  // The face detector's (YuNet's) convolutions, inference only, CPU only; outputs channels-last.
  // Depthwise-separable block: z = conv1x1(input + up2(up), pw_weight [C_out, C_in], pw_bias) (up: [N, C_in, H/2,
  // W/2] added with nearest 2x upsampling, or None), y = depthwise conv3x3(z, dw_weight [C_out, 3, 3], dw_bias,
  // padding 1), then relu(y) if relu and 2x2 floor-mode max pooling if pool.
  m.def("dw_separable(Tensor input, Tensor pw_weight, Tensor pw_bias, Tensor dw_weight, Tensor dw_bias, "
        "Tensor? up=None, bool relu=True, bool pool=False) -> Tensor");
  // relu(conv2d(input, weight [C_out, C_in, 3, 3], bias, stride 2, padding 1)): the detector's stem.
  m.def("conv3x3_stride2_relu(Tensor input, Tensor weight, Tensor bias) -> Tensor");
}

namespace {

std::string cpu_isa_name() { return tcdcn::cpu::isa_name(tcdcn::cpu::active_isa()); }

std::vector<std::string> cpu_isas_supported() {
  std::vector<std::string> out;
  for (auto isa : tcdcn::cpu::supported_isas()) out.push_back(tcdcn::cpu::isa_name(isa));
  return out;
}

// f() with the GIL released.
template <typename F>
auto nogil(const F& f) {
  py::gil_scoped_release released;
  return f();
}

template <typename T>
py::object or_none(std::optional<T> v) {
  return v ? py::cast(std::move(*v)) : py::none();
}

// _C.StackEngine: cpu::StackEngine (cpu/stack_engine.h) as Python sees it. A call the engine does not serve gives
// None; every call runs with the GIL released (the checks and the kernels); outputs() is a dict keyed by the
// blocks' names, made Python strings once here.
class PyStackEngine {
 public:
  PyStackEngine(const std::vector<at::Tensor>& weight, const std::vector<std::optional<at::Tensor>>& bias,
                const std::vector<int64_t>& epilogue, const at::Tensor& example, std::vector<int64_t> split,
                std::vector<at::Tensor> sources, std::vector<std::string> names, std::vector<int64_t> first_shape,
                std::vector<bool> softmax, const std::vector<std::optional<at::Tensor>>& scale)
      : engine_(weight, bias, epilogue, example, std::move(split), std::move(sources), std::move(names),
                std::move(first_shape), std::move(softmax), scale) {
    for (const std::string& n : engine_.names()) names_.push_back(py::str(n));
  }

  py::object stacked(const at::Tensor& x) const { return or_none(nogil([&] { return engine_.stacked(x); })); }
  py::object probabilities(const at::Tensor& x) const {
    return or_none(nogil([&] { return engine_.probabilities(x); }));
  }
  py::object heads(const at::Tensor& x) const { return or_none(nogil([&] { return engine_.heads(x); })); }
  py::object outputs(const at::Tensor& x) const {
    std::optional<std::vector<at::Tensor>> parts = nogil([&] { return engine_.outputs(x); });
    if (!parts) return py::none();
    py::dict out;
    for (size_t i = 0; i < parts->size(); ++i) out[names_[i]] = py::cast(std::move((*parts)[i]));
    return std::move(out);
  }

 private:
  tcdcn::cpu::StackEngine engine_;
  std::vector<py::str> names_;
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tcdcn_ext native helpers; the operators live in torch.ops.tcdcn_ext";
  m.def("thread_team_size", &tcdcn::cpu::thread_team_size, pybind11::arg("n"),
        "Set the calling thread's OpenMP team size (what torch's intra-op parallelism uses in this thread) to n "
        "(n <= 0: leave it); returns the previous size.");
  m.def("cpu_isa", &cpu_isa_name, "The CPU kernel path in use: 'ref', 'avx2', 'avx512', 'vnni' or 'amx'.");
  m.def("cpu_isas_supported", &cpu_isas_supported, "Every CPU kernel path this host can run.");
  m.def("set_cpu_isa", [](const std::string& name) { tcdcn::cpu::set_isa(tcdcn::cpu::isa_from_name(name)); },
        "Force a CPU kernel path (for tests); raises if the host cannot run it.");
  // Helpers of TCDCN's one-op inference path (model.py), which runs at batch 1 right after its weight stream has
  // evicted the interpreter's working set: one call checks the plan's twenty source parameters (forty attribute
  // reads from Python cost ~11 us there), and the plan's weights lie in one huge-page buffer (their ~1700 4 KiB
  // pages would also evict the TLB's entries for everything else).
  py::class_<tcdcn::TensorWatch>(m, "TensorWatch",
                                 "Remembers tensors; changed() tells whether one was modified in place or re-stored "
                                 "since.")
      .def(py::init<std::vector<at::Tensor>>())
      .def("changed", &tcdcn::TensorWatch::changed);
  py::class_<PyStackEngine>(m, "StackEngine",
                            "A checked stack of convolutional layers run in one call: TCDCN's CPU inference path.")
      .def(py::init<const std::vector<at::Tensor>&, const std::vector<std::optional<at::Tensor>>&,
                    const std::vector<int64_t>&, const at::Tensor&, std::vector<int64_t>, std::vector<at::Tensor>,
                    std::vector<std::string>, std::vector<int64_t>, std::vector<bool>,
                    const std::vector<std::optional<at::Tensor>>&>(),
           py::arg("weight"), py::arg("bias"), py::arg("epilogue"), py::arg("example"), py::arg("split"),
           py::arg("sources"), py::arg("names") = std::vector<std::string>(),
           py::arg("first_shape") = std::vector<int64_t>(), py::arg("softmax") = std::vector<bool>(),
           py::arg("scale") = std::vector<std::optional<at::Tensor>>())
      .def("stacked", &PyStackEngine::stacked, "[N, D] output, or None where x is not served / sources changed.")
      .def("probabilities", &PyStackEngine::probabilities,
           "stacked() with the blocks flagged in `softmax` as probabilities (softmax per row), or None.")
      .def("heads", &PyStackEngine::heads, "The output split into [N, split[i]] blocks, or None (as stacked).")
      .def("outputs", &PyStackEngine::outputs,
           "{names[i]: block i} with the first block viewed as [N, *first_shape], or None (as stacked).");
  m.def("empty_huge_pages", &tcdcn::cpu::empty_huge_pages,
        "Uninitialised uint8 CPU tensor of nbytes on 2 MiB-aligned memory advised as transparent huge pages.");
  // The epilogue codes of lc_conv2d_stack and StackEngine (epilogue.h), by name: tcdcn_ext.ops.LC_EPILOGUES mirrors
  // them.
  py::dict epilogues;
  for (int e = 0; e < tcdcn::kNumEpilogues; ++e) epilogues[py::str(tcdcn::kEpilogueNames[e])] = e;
  m.attr("EPILOGUES") = epilogues;
  m.attr("torch_version") = TORCH_VERSION;
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
#ifdef TCDCN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
