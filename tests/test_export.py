"""Deployment paths for the shipped models: torch.compile(fullgraph=True) and torch.export (save/load)."""

from __future__ import annotations

import operator

import pytest
import torch

from tcdcn_ext.model import TCDCN, load_model, shipped_models

MODELS = [pytest.param(name, marks=pytest.mark.skipif(name not in shipped_models(),
                                                      reason=f"the shipped {name} model is not installed"))
          for name in ("5pt", "68pt")]


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
        torch.testing.assert_close(y, model._forward_stacked(x), rtol=0, atol=0)
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
    model = load_model(name)
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
