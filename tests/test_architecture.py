"""The package's architecture (issue 15): the one layer description and what is made from it, the Epilogue mirror
of the C++ enum, the old module paths, no private name imported across modules, one preprocessing of training,
evaluation and ``TCDCN.preprocess``."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tcdcn_ext
from tcdcn_ext import ops
from tcdcn_ext.models import TCDCN, TCDCNConfig
from tcdcn_ext.models.layers import Epilogue, describe, shift_average_args
from tcdcn_ext.ops.nn import AbsTanh, LocallyConnected2d

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(tcdcn_ext.__file__).resolve().parent

CONFIGS = [
    TCDCNConfig(),
    TCDCNConfig(num_points=68, aux_tasks={}, shared_conv=True, activation="relu", input_size=40),
    TCDCNConfig(channels=(8, 8), kernels=(3, 3), pool_after=(False, True), input_size=16, feature_dim=12,
                aux_tasks={"smile": 2}),
]


def _cpp_epilogues() -> dict[str, int]:
    """``enum Epilogue`` of the C++ sources: name (without the ``k``, upper case, no underscores) -> value."""
    for path in sorted((ROOT / "csrc").rglob("*.h")) + sorted((ROOT / "csrc").rglob("*.cpp")):
        m = re.search(r"enum\s+(?:class\s+)?Epilogue\b[^{]*\{([^}]*)\}", path.read_text())
        if m:
            return {name.upper(): int(value) for name, value in re.findall(r"k(\w+)\s*=\s*(\d+)", m.group(1))}
    pytest.skip("no enum Epilogue in csrc/")


def test_epilogue_mirrors_the_cpp_enum():
    cpp = _cpp_epilogues()
    assert {e.name.replace("_", ""): int(e) for e in Epilogue} == cpp
    assert ops.LC_EPILOGUES == {e.key: e for e in Epilogue}
    assert [Epilogue.of(a, p) for a in ("abs_tanh", "relu") for p in (False, True)] == [
        Epilogue.ABS_TANH, Epilogue.ABS_TANH_MAXPOOL, Epilogue.RELU, Epilogue.RELU_MAXPOOL]


@pytest.mark.parametrize("config", CONFIGS, ids=["5pt", "68pt-shared-relu", "small"])
def test_modules_and_stack_layers_are_made_from_the_description(config):
    torch.manual_seed(0)
    model = TCDCN(config).eval()
    layers = describe(config)
    assert model.layers == layers
    assert [layer.kind for layer in layers][-2:] == ["fc", "heads"]
    conv = [layer for layer in layers if layer.convolutional]
    # the modules, in order: conv (the description's kind and shapes), activation, pooling where the epilogue says
    modules = list(model.conv)
    for layer in conv:
        m, act = modules.pop(0), modules.pop(0)
        assert type(m) is (nn.Conv2d if layer.shared else LocallyConnected2d)
        assert (m.in_channels, m.out_channels) == (layer.in_channels, layer.out_channels)
        assert type(act) is {"abs_tanh": AbsTanh, "relu": nn.ReLU}[layer.epilogue.activation]
        if layer.epilogue.pooled:
            assert isinstance(modules.pop(0), nn.MaxPool2d)
    assert not modules
    assert model.fc.in_features == layers[-2].in_channels * layers[-2].kernel ** 2
    assert sum(h.out_features for _, h in model.named_heads()) == layers[-1].out_channels
    # the stack: one entry per layer of the description, its epilogue; the op on it gives the module path's outputs
    stack = model.stack_layers()
    assert [s.layer for s in stack] == list(layers)
    x = torch.randn(3, 1, config.input_size, config.input_size)
    y = ops.lc_conv2d_stack(x, [s.weight for s in stack], [s.bias for s in stack],
                            [s.epilogue.key for s in stack]).flatten(1)
    with torch.no_grad():
        h = model.conv(x)
        f = model.act(model.fc(h.flatten(1)))
        want = torch.cat([head(f) for _, head in model.named_heads()], dim=1)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    args = shift_average_args(layers)
    assert args["pool_after"] == list(config.pool_after) and args["shared_conv"] == config.shared_conv
    assert args["activation"] == config.activation and args["num_points"] == config.num_points
    assert args["window"] == config.input_size


def test_a_model_changed_after_construction_leaves_the_stack():
    model = TCDCN().eval()
    model.conv[2] = nn.AvgPool2d(2)
    assert model.stack_layers() is None
    x = torch.randn(2, 1, 40, 40)
    with torch.no_grad():
        out = model(x)  # the module path
    assert out["landmarks"].shape == (2, 5, 2)


OLD_PATHS = {
    "tcdcn_ext.model": ["TCDCN", "TCDCNConfig", "load_model", "save_weights", "WeightsError", "CudaGraphForward"],
    "tcdcn_ext.data": ["FaceSet", "load_staged", "make_inputs", "Augmenter", "MIRROR_5", "box_to_input_matrix"],
    "tcdcn_ext.aligner": ["Aligner", "Face", "Attribute", "ImageError", "load_image"],
    "tcdcn_ext.detect": ["YuNetDetector", "CALIBRATION_5PT", "calibrate_boxes", "fit_box_calibration"],
    "tcdcn_ext.checkpoint": ["atomic_write", "load_tensors", "UnsafeFileError"],
    "tcdcn_ext.averaging": ["predict_averaged", "default_shifts"],
    "tcdcn_ext.evaluate": ["landmark_errors", "predict_faceset"],
    "tcdcn_ext.train": ["TrainConfig", "train"],
    "tcdcn_ext.nn": ["LocallyConnected2d"],
    "tcdcn_ext._reference": ["lc_conv2d"],
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_module_paths_still_import(old):
    module = importlib.import_module(old)
    for name in OLD_PATHS[old]:
        assert getattr(module, name) is not None, (old, name)


def _package_modules():
    return [p for p in PACKAGE.rglob("*.py") if p.name != "_legacy.py"]


def test_no_private_name_is_imported_from_another_module():
    """``from <a tcdcn_ext module> import _name`` only for ``_C`` (the extension) and ``_legacy``."""
    bad = []
    for path in _package_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                for alias in node.names:
                    if alias.name.startswith("_") and alias.name not in ("_C", "_legacy", "_reference"):
                        bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {alias.name}")
    assert not bad, bad


def test_training_evaluation_and_preprocess_make_the_same_inputs():
    """One preprocessing: the training run's validation inputs (grey images cached, make_inputs), the evaluation's
    (predict_faces -> TCDCN.preprocess) and the augmenter at identity are the same bits."""
    from tcdcn_ext.inference.preprocess import grey, make_inputs
    from tcdcn_ext.training.augment import Augmenter

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (90 + 7 * i, 80 + 5 * i, 3), dtype=np.uint8) for i in range(4)]
    boxes = np.array([[10, 12, 60, 62], [5.5, 3.25, 70, 71], [-8, -4, 40, 44], [20, 30, 95, 100]], np.float32)
    model = TCDCN().eval()
    evaluation = model.preprocess(images, boxes).numpy()
    training = make_inputs([grey(im) for im in images], model.input_boxes(boxes), model.input_size)
    assert np.array_equal(evaluation, training)
    aug = Augmenter(size=40, max_shift=0.0, max_rotate_deg=0.0, zoom=(1.0, 1.0), mirror=False)
    x, _, _ = aug([grey(im) for im in images], boxes, np.zeros((4, 5, 2), np.float32), {}, rng)
    np.testing.assert_allclose(x, evaluation, rtol=0, atol=1e-5)


def test_calibrate_is_a_command(capsys):
    from tcdcn_ext.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--help"])
    assert exc.value.code == 0 and "--fit" in capsys.readouterr().out
