"""Deployment paths for the shipped models: torch.compile(fullgraph=True), torch.export (save/load) and ONNX.

The compile and export tests need no extra package; the ONNX ones need ``onnx``, ``onnxscript`` and ``onnxruntime``
(``pip install ".[onnx]"``) and skip with a reason without them.
"""

from __future__ import annotations

import importlib.util
import operator

import pytest
import torch

from tcdcn_ext import export as tx
from tcdcn_ext.cli import export_main
from tcdcn_ext.averaging import default_shifts
from tcdcn_ext.model import TCDCN, load_model, shipped_models

MODELS = [pytest.param(name, marks=pytest.mark.skipif(name not in shipped_models(),
                                                      reason=f"the shipped {name} model is not installed"))
          for name in ("5pt", "68pt")]

_missing_onnx = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(bool(_missing_onnx), reason=f"needs {', '.join(_missing_onnx)} (the optional extra: "
                                f"pip install \".[onnx]\")")


def float_model(name: str) -> TCDCN:
    """The shipped model computing with its float parameters. Exported graphs (torch.export, jit, ONNX) carry the
    parameters in float32; the shipped 5-point model's default int8 weights are a setting of the native CPU
    engine only (whose own accuracy the model card gives), so the graphs are compared with the float engine."""
    return load_model(name).set_inference_weights("auto")


def inputs(model: TCDCN, n: int, margin: int = 0) -> torch.Tensor:
    s = model.input_size + 2 * margin
    return torch.randn(n, 1, s, s)


def assert_same_outputs(got, want, **tol):
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k, **tol)


# ---------------------------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("name", MODELS)
def test_compile_fullgraph_equals_eager_and_follows_the_parameters(name):
    torch._dynamo.reset()
    model = load_model(name)
    x = inputs(model, 2)
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        assert_same_outputs(compiled(x), model(x), rtol=0, atol=0)
    # The compiled graph calls the engine op, which checks the parameters' watch as the eager path does.
    with torch.no_grad():
        model.landmark_head.bias.add_(0.25)
    with torch.inference_mode():
        want = model(x)
        assert_same_outputs(compiled(x), want, rtol=0, atol=0)
    torch._dynamo.reset()


def test_compiled_graph_holds_the_engine_op():
    torch._dynamo.reset()
    model = TCDCN().eval()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.inference_mode():
        torch.compile(model, fullgraph=True, backend=backend)(inputs(model, 1))
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert torch.ops.tcdcn_ext.inference_engine.default in targets or torch.ops.tcdcn_ext.inference_engine in targets
    torch._dynamo.reset()


def test_inference_engine_opcheck_and_errors():
    model = TCDCN().eval()
    x = inputs(model, 3)
    width = 2 * model.num_points + sum(model.config.aux_tasks.values())
    torch.library.opcheck(torch.ops.tcdcn_ext.inference_engine.default, (x, model._engine_key, width))
    with torch.inference_mode():
        y = torch.ops.tcdcn_ext.inference_engine(x, model._engine_key, width)
        torch.testing.assert_close(y, model.forward_stacked(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="expects 7"):
        torch.ops.tcdcn_ext.inference_engine(x, model._engine_key, 7)
    key = model._engine_key
    del model
    with pytest.raises(RuntimeError, match="no TCDCN model is registered"):
        torch.ops.tcdcn_ext.inference_engine(x, key, width)


def test_copies_are_other_engines():
    import copy

    model = TCDCN().eval()
    clone = copy.deepcopy(model)
    assert clone._engine_key != model._engine_key


# ---------------------------------------------------------------------------------------------------------------
# torch.export


@pytest.mark.parametrize("name", MODELS)
def test_export_graph_is_registered_ops_and_reloads(name, tmp_path):
    model = float_model(name)
    x = inputs(model, 2)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.tcdcn_ext.lc_conv2d_stack.default in targets
    for t in targets:  # our op for the network; aten only to relay out the fc / heads and view the output
        assert t is operator.getitem or (isinstance(t, torch._ops.OpOverload) and t.namespace in ("aten", "tcdcn_ext"))
    assert sum(isinstance(t, torch._ops.OpOverload) and t.namespace == "tcdcn_ext" for t in targets) == 1
    path = tmp_path / f"{name}.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    for n in (1, 5):
        xb = inputs(model, n)
        with torch.inference_mode():
            assert_same_outputs(loaded(xb), model(xb))


def test_cli_writes_a_program(tmp_path, capsys):
    path = tmp_path / "m.pt2"
    assert export_main(["--model", "5pt", "--pt2", str(path)]) == 0
    assert "wrote" in capsys.readouterr().out
    model = float_model("5pt")
    x = inputs(model, 3)
    with torch.inference_mode():
        assert_same_outputs(torch.export.load(path).module()(x), model(x))


def test_cli_refuses_averaged_programs(tmp_path):
    with pytest.raises(SystemExit):
        export_main(["--pt2", str(tmp_path / "m.pt2"), "--averaged"])


def test_jit_trace_records_the_ops_not_the_engine_outputs():
    """torch.jit.trace after an eager call used to record the native engine's outputs as constants."""
    model = float_model("5pt")
    x, other = inputs(model, 2), inputs(model, 3)
    with torch.no_grad():
        model(x)  # the plan and engine exist
        traced = torch.jit.trace(model, (x,), strict=False, check_trace=False)
        assert_same_outputs(traced(other), model(other), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# ONNX: the standard-operator module (no extra needed), then the written graph under onnxruntime


@pytest.mark.parametrize("name", MODELS)
def test_portable_module_equals_the_model(name):
    model = float_model(name)
    x = inputs(model, 3)
    portable = tx.portable_module(model)
    with torch.inference_mode():
        got = dict(zip(portable.output_names, portable(x)))
        assert_same_outputs(got, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_averaged_portable_module_equals_predict_shift_average(name):
    model = float_model(name)
    shifts = default_shifts(model)
    crop = inputs(model, 2, margin=int(abs(shifts).max()))
    portable = tx.portable_module(model, shifts)
    with torch.inference_mode():
        got = dict(zip(portable.output_names, portable(crop)))
        assert_same_outputs(got, model.predict_shift_average(crop, shifts), rtol=1e-5, atol=1e-5)


def test_portable_module_refuses_what_it_does_not_cover():
    model = TCDCN()
    model.conv[2] = torch.nn.AvgPool2d(2)
    with pytest.raises(ValueError, match="not one the export covers"):
        tx.portable_module(model)


@needs_onnx
@pytest.mark.parametrize("name", MODELS)
def test_onnx_standard_ops_dynamic_batch_equals_native(name, tmp_path):
    import onnx
    import onnxruntime as ort

    model = float_model(name)
    path = tx.to_onnx(model, tmp_path / f"{name}.onnx")
    graph = onnx.load(str(path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch dimension
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["landmarks"] + list(model.config.aux_tasks)
    for n in (1, 5):
        x = inputs(model, n)
        with torch.inference_mode():
            want = model(x)
        got = dict(zip(names, session.run(None, {"input": x.numpy()})))
        for k in names:
            torch.testing.assert_close(torch.from_numpy(got[k]), want[k], rtol=0, atol=1e-4, msg=k)


@needs_onnx
def test_onnx_averaged_equals_predict_shift_average(tmp_path):
    import onnxruntime as ort

    model = float_model("5pt")
    shifts = default_shifts(model)
    path = tx.to_onnx(model, tmp_path / "avg.onnx", shifts=shifts)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    crop = inputs(model, 3, margin=int(abs(shifts).max()))
    with torch.inference_mode():
        want = model.predict_shift_average(crop, shifts)
    got = session.run(None, {"crop": crop.numpy()})
    for k, v in zip(want, got):
        torch.testing.assert_close(torch.from_numpy(v), want[k], rtol=0, atol=1e-4, msg=k)


def test_to_onnx_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        tx.to_onnx(TCDCN(), tmp_path / "m.onnx", opset=17)
