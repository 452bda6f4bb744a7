"""TCDCN's one-op CPU inference path (TCDCN._build_plan, set_inference_weights): the same outputs as the module
path, float16 weight storage, and a plan that follows the parameters."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from tcdcn_ext.model import TCDCN, TCDCNConfig, load_model, shipped_models


def module_path(m: TCDCN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs by the training path (grad enabled: the per-module ops, float32 parameters)."""
    with torch.enable_grad():
        return {k: v.detach() for k, v in m(x).items()}


def rounded_to_half(m: TCDCN) -> TCDCN:
    m = copy.deepcopy(m)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().float())
    return m


def assert_outputs_close(a, b, tol):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and a[k].is_contiguous(), k
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=k)


@pytest.mark.parametrize("n", [1, 2, 3, 40])
@pytest.mark.parametrize("mode", ["auto", "float32", "float16"])
def test_plan_equals_module_path(n, mode):
    m = TCDCN().eval().set_inference_weights(mode)
    x = torch.randn(n, 1, 40, 40)
    with torch.inference_mode():
        got = m(x)
        features = m.features(x)
    assert m._plan is not None and len(m._plan.weights) == 6  # four conv layers, the fc, the heads
    want_dtype = torch.float16 if mode == "float16" else torch.float32  # Glorot weights are no float16 values
    assert all(w.dtype == want_dtype for w in m._plan.weights)
    ref = m if mode != "float16" else rounded_to_half(m)
    assert_outputs_close(got, module_path(ref, x), 1e-4)
    with torch.enable_grad():
        torch.testing.assert_close(features, ref.features(x).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [1, 3])
def test_float16_storage_equals_float32_on_rounded_weights(n):
    m = rounded_to_half(TCDCN().eval())
    x = torch.randn(n, 1, 40, 40)
    with torch.inference_mode():
        auto = m.set_inference_weights("auto")(x)
        assert all(w.dtype == torch.float16 for w in m._plan.weights)  # every weight is a float16 value now
        f32 = m.set_inference_weights("float32")(x)
        assert all(w.dtype == torch.float32 for w in m._plan.weights)
    assert_outputs_close(auto, f32, 1e-6)


@pytest.mark.skipif("5pt" not in shipped_models(), reason="no shipped 5-point model")
def test_shipped_model_takes_float16_and_keeps_its_outputs():
    m = load_model("5pt")
    assert m.inference_weights == "int8"  # the shipped default (tests/test_int8_weights.py)
    m.set_inference_weights("auto")
    x = torch.randn(4, 1, 40, 40)
    with torch.inference_mode():
        got = m(x)
    assert all(w.dtype == torch.float16 for w in m._plan.weights)
    assert_outputs_close(got, module_path(m, x), 1e-5)


def test_plan_follows_the_parameters():
    m = TCDCN().eval()
    x = torch.randn(2, 1, 40, 40)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    sum(v.square().sum() for v in m(x).values()).backward()
    with torch.inference_mode():
        m.eval()
        before = m(x)
        opt.step()  # in place: versions change
        after = m(x)
    assert_outputs_close(after, module_path(m, x), 1e-4)
    assert not torch.allclose(before["landmarks"], after["landmarks"])
    other = TCDCN().eval()
    m.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert_outputs_close(m(x), module_path(other, x), 1e-4)
    with torch.no_grad():
        m.conv[0].weight.data = m.conv[0].weight.data * 2  # new storage
    with torch.inference_mode():
        assert_outputs_close(m(x), module_path(m, x), 1e-4)


def test_float64_and_other_architectures_keep_the_module_path():
    m = TCDCN().eval()
    x = torch.randn(2, 1, 40, 40)
    with torch.inference_mode():
        m(x)
        assert m._plan.weights
        m.double()  # _apply drops the plan; float64 parameters get an empty one
        assert m._plan is None
        y = m(x.double())
        assert y["landmarks"].dtype == torch.float64
        m.float()
        assert_outputs_close(m(x), module_path(m, x), 1e-4)
        assert m._plan.weights
    reflect = TCDCN(TCDCNConfig(shared_conv=True)).eval()
    reflect.conv[0].padding_mode = "reflect"  # (no padding, so the same outputs; but not what the path implements)
    with torch.inference_mode():
        got = reflect(x)
    assert reflect._plan is not None and not reflect._plan.weights
    assert_outputs_close(got, module_path(reflect, x), 1e-4)


@pytest.mark.parametrize("config", [TCDCNConfig(activation="relu"), TCDCNConfig(shared_conv=True),
                                    TCDCNConfig(shared_conv=True, activation="relu", input_size=60, num_points=68,
                                                channels=(20, 48, 64, 80), kernels=(5, 5, 3, 3),
                                                pool_after=(True, True, True, False), feature_dim=512, aux_tasks={})],
                         ids=["relu", "shared", "68pt_shape"])
@pytest.mark.parametrize("n", [1, 3, 13])
def test_relu_and_shared_convolutions_take_the_plan(config, n):
    """ReLU and spatially shared convolutions (the 68-point model) run in the one native call too: shared layers
    on the direct convolution kernel, whose channel tails (20 = 16 + 4) are masked."""
    net = TCDCN(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # some negative pre-activations, so that relu matters
    x = torch.randn(n, 1, config.input_size, config.input_size)
    with torch.inference_mode():
        got = net(x)
    assert net._plan.weights and net._plan.engine is not None
    if config.shared_conv:  # shared layers keep float32 copies (read from cache at every location)
        assert all(w.dtype == torch.float32 and w.dim() == 4 for w in net._plan.weights[:len(config.channels)])
    assert_outputs_close(got, module_path(net, x), 1e-4)


def test_errors_and_copies():
    m = TCDCN().eval()
    with pytest.raises(ValueError, match="must be one of"):
        m.set_inference_weights("bfloat16")
    with torch.no_grad():
        m.fc.weight[0, 0] = 1e6
    m.set_inference_weights("float16")
    x = torch.randn(1, 1, 40, 40)
    with pytest.raises(ValueError, match="fc has weights beyond float16's range"), torch.inference_mode():
        m(x)
    m.set_inference_weights("auto")  # not float16 values: float32 for that layer, fine
    with torch.inference_mode():
        want = m(x)
        assert m._plan.weights[4].dtype == torch.float32
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone._plan is None and clone.inference_weights == "auto"
        with torch.inference_mode():
            assert_outputs_close(clone(x), want, 0)
    with pytest.raises(ValueError, match="expected input"), torch.inference_mode():
        m(torch.randn(1, 1, 39, 39))


def test_model_built_under_inference_mode():
    with torch.inference_mode():  # inference tensors have no version counter: the plan still builds and runs
        m = TCDCN().eval()
        x = torch.randn(2, 1, 40, 40)
        got = m(x)
        assert m._plan.weights
    normal = TCDCN().eval()
    normal.load_state_dict(m.state_dict())
    assert_outputs_close({k: v.clone() for k, v in got.items()}, module_path(normal, x.clone()), 1e-4)


def test_fused_optimizer_steps_are_seen():
    """A fused Adam step changes the parameters without bumping their version counters; the usual loop (train mode
    for the step, eval for prediction) must still predict with the new weights."""
    import copy

    torch.manual_seed(0)
    m = TCDCN()
    x = torch.randn(3, 1, 40, 40)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, fused=True)
    m.eval()
    with torch.no_grad():
        before = m(x)["landmarks"]
    m.train()
    m(x)["landmarks"].sum().backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        after = m(x)["landmarks"]
        fresh = copy.deepcopy(m)(x)["landmarks"]
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)


def test_stack_engine_serves_or_answers_none():
    """The native engine behind the path: the op's result for what it serves; None (the caller then rebuilds or
    takes the module path) for another dtype, device or shape, and once a source parameter changed in place."""
    from tcdcn_ext import _C
    from tcdcn_ext.model import _LC_STACK

    m = TCDCN().eval()
    x = torch.randn(3, 1, 40, 40)
    with torch.inference_mode():
        m(x)
        p = m._plan
        want = _LC_STACK(x, p.weights, p.biases, p.epilogues).flatten(1)
        e = p.engine
        for xi in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3),
                   torch.randn(3, 1, 40, 80)[..., ::2]):
            want_i = _LC_STACK(xi, p.weights, p.biases, p.epilogues).flatten(1)
            assert torch.equal(e.stacked(xi), want_i)
        parts = e.heads(x)
        assert [t.shape[1] for t in parts] == p.head_sizes and all(t.is_contiguous() for t in parts)
        assert torch.equal(torch.cat(parts, 1), want)
        assert e.stacked(x[:0]).shape == (0, sum(p.head_sizes))
        out = e.outputs(x)
        assert list(out) == p.head_names and out["landmarks"].shape == (3, 5, 2)
        assert_outputs_close(out, m(x), 0)
        assert_outputs_close(out, module_path(m, x), 1e-4)
        for bad in (x.double(), x[:, :, 1:], x[0], torch.randn(3, 2, 40, 40)):
            assert e.stacked(bad) is None and e.heads(bad) is None and e.outputs(bad) is None
    with torch.no_grad():
        m.conv[0].weight.add_(1)
    with torch.inference_mode():
        assert e.stacked(x) is None
        assert_outputs_close(m(x), module_path(m, x), 1e-4)  # the model rebuilt its plan
        assert m._plan.engine is not e
    with pytest.raises(RuntimeError, match="split sizes add up to 20 but the last layer has 21"):
        _C.StackEngine(p.weights, p.biases, p.epilogues, x, [10, 10], [])
    with pytest.raises(RuntimeError, match="first_shape \\[5, 3\\] does not hold the first block's 10 columns"):
        _C.StackEngine(p.weights, p.biases, p.epilogues, x, p.head_sizes, [], p.head_names, [5, 3])
    with pytest.raises(RuntimeError, match="2 names for 5 split blocks"):
        _C.StackEngine(p.weights, p.biases, p.epilogues, x, p.head_sizes, [], ["a", "b"])
    with pytest.raises(RuntimeError, match="made without names"):
        _C.StackEngine(p.weights, p.biases, p.epilogues, x, p.head_sizes, []).outputs(x)
    with pytest.raises(RuntimeError, match="last layer must give a 1 x 1 map"):
        _C.StackEngine(p.weights[:1], p.biases[:1], p.epilogues[:1], x, [16], [])
    with pytest.raises(RuntimeError, match="StackEngine: layer 1: weight has C_in = 48"):
        _C.StackEngine(p.weights[:1] + p.weights[2:], p.biases[:1] + p.biases[2:], p.epilogues[:1] + p.epilogues[2:],
                       x, [21], [])


@pytest.mark.parametrize("config", [TCDCNConfig(), TCDCNConfig(shared_conv=True)], ids=["planned", "module_path"])
def test_forward_probabilities(config):
    """The Aligner's read: landmarks, then each task's softmax probabilities (in the native call on the CPU
    inference path, torch.softmax otherwise), the same either way."""
    m = TCDCN(config).eval()
    x = torch.randn(3, 1, config.input_size, config.input_size)
    with torch.inference_mode():
        got = m.forward_probabilities(x)
        out = m(x)
    want = torch.cat([out["landmarks"].flatten(1)] + [out[t].softmax(1) for t in config.aux_tasks], dim=1)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if m._plan.engine is not None:
        from tcdcn_ext import _C

        p = m._plan
        with pytest.raises(RuntimeError, match="made without softmax flags"):
            _C.StackEngine(p.weights, p.biases, p.epilogues, x, p.head_sizes, []).probabilities(x)
        with pytest.raises(RuntimeError, match="2 softmax flags for 5 split blocks"):
            _C.StackEngine(p.weights, p.biases, p.epilogues, x, p.head_sizes, [], [], [], [True, False])
        assert p.engine.probabilities(x.double()) is None
