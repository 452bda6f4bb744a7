"""The attribute network (tcdcn_ext.models.attributes, tcdcn_ext.training.attributes), its metrics, its weights
I/O and its use by the Aligner and tcdcn-eval."""

from __future__ import annotations

import json
import math
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import data_root

from tcdcn_ext import Aligner
from tcdcn_ext.inference.results import AttributeTable
from tcdcn_ext.models import WeightsError, shipped_models
from tcdcn_ext.models import attributes as attr
from tcdcn_ext.training import attributes as tattr
from tcdcn_ext.training.evaluate import (balanced_accuracy, expected_calibration_error, reliability_table,
                                         summarise_5pt)

ASTRONAUT = Path(str(files("tcdcn_ext") / "assets" / "astronaut.jpg"))
BOX = (177.0, 77.0, 265.0, 165.0)


def small_net(seed: int = 0) -> attr.AttributeNet:
    torch.manual_seed(seed)
    return attr.AttributeNet(attr.AttributeConfig(input_size=24, channels=(4, 8), context=1.4)).eval()


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def test_balanced_accuracy_is_the_mean_recall():
    labels = np.array([0, 0, 0, 0, 1])
    assert balanced_accuracy(labels, np.zeros(5), 2) == 0.5  # the majority answer: chance, not 80 %
    assert balanced_accuracy(labels, labels, 2) == 1.0
    assert balanced_accuracy(labels, np.array([0, 0, 1, 1, 1]), 2) == pytest.approx((0.5 + 1.0) / 2)
    # Classes absent from the labels do not count; None: the classes present.
    assert balanced_accuracy(np.array([2, 2]), np.array([2, 0]), 5) == 0.5
    assert balanced_accuracy(np.array([2, 2]), np.array([2, 0])) == 0.5
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        balanced_accuracy(np.zeros(3), np.zeros(2))


def test_expected_calibration_error_known_values():
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(labels, np.array([[0.9, 0.1]] * 4)) == pytest.approx(0.15)
    assert expected_calibration_error(labels, np.array([[0.75, 0.25]] * 4)) == pytest.approx(0.0)
    rows = reliability_table(labels, np.array([[0.9, 0.1]] * 2 + [[0.6, 0.4]] * 2), bins=10)
    assert [(r["count"], r["accuracy"]) for r in rows] == [(2, 0.5), (2, 1.0)]  # by confidence: 0.6, 0.9
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        expected_calibration_error(labels, np.zeros(4))


def test_summary_has_balanced_accuracy_and_calibration():
    rng = np.random.default_rng(0)
    gt = rng.uniform(10, 30, (6, 5, 2))
    probs = {"glasses": np.array([[0.9, 0.1]] * 6)}
    s = summarise_5pt(gt, gt, {"glasses": np.array([0, 0, 0, 0, 0, 1])}, probs)
    assert s["aux_accuracy"]["glasses"] == pytest.approx(5 / 6)
    assert s["aux_balanced_accuracy"]["glasses"] == 0.5
    assert s["aux_calibration_error"]["glasses"] == pytest.approx(abs(5 / 6 - 0.9))


def test_fit_temperature_recovers_the_scale():
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(4000, 3, generator=g)
    labels = torch.distributions.Categorical(logits=logits).sample()
    t = tattr.fit_temperature(4.0 * logits, labels)  # over-confident by 4x
    assert t == pytest.approx(4.0, rel=0.1)


# ---------------------------------------------------------------------------------------------------------------
# Network and weights


def test_forward_shapes_mirror_and_errors():
    net = small_net()
    x = torch.randn(3, 1, 24, 24)
    out = net(x)
    assert {t: tuple(v.shape) for t, v in out.items()} == {"pose": (3, 5), "gender": (3, 2), "glasses": (3, 2),
                                                           "smile": (3, 2)}
    # Mirror averaging: a mirrored face gets the same answers, its pose bins reversed.
    a = attr.predict_logits(net, x)
    b = attr.predict_logits(net, x.flip(3))
    torch.testing.assert_close(a["pose"], b["pose"][:, [4, 3, 2, 1, 0]])
    torch.testing.assert_close(a["gender"], b["gender"])
    p = attr.attribute_probabilities(net, x)
    assert all(np.allclose(v.sum(1), 1.0, atol=1e-5) for v in p.values())
    with pytest.raises(ValueError, match=r"\[N, 1, 24, 24\].*\(3, 1, 20, 20\)"):
        net(torch.randn(3, 1, 20, 20))
    with pytest.raises(ValueError, match="floating point"):
        net(torch.zeros(1, 1, 24, 24, dtype=torch.uint8))


def test_temperature_divides_the_eval_logits():
    net = small_net()
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        before = net(x)
        net.temperature.fill_(2.0)
        after = net(x)
    for t in before:
        torch.testing.assert_close(after[t], before[t] / 2)


def test_save_load_round_trip_and_checksum(tmp_path):
    net = small_net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        net.temperature.copy_(torch.tensor([1.1, 0.9, 1.3, 0.7]))
    path = tmp_path / "a.pt"
    record = attr.save_attribute_net(net, path, {"seed": 0})
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == record["sha256"]
    back = attr.load_attribute_net(path)
    for k, v in net.state_dict().items():
        w = back.state_dict()[k]
        # float16 storage for the weights; the statistics and temperatures exactly
        if k.endswith(("running_mean", "running_var", "temperature")) or not v.is_floating_point():
            assert torch.equal(w, v), k
        else:
            assert torch.equal(w, v.half().float()), k
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(WeightsError, match="a.pt: sha256"):
        attr.load_attribute_net(path)
    with pytest.raises(WeightsError, match="missing"):
        attr.load_attribute_net(tmp_path / "none.pt")


def test_train_resumes_to_the_uninterrupted_weights(tmp_path):
    split = data_root() / "mtfl" / "train"
    if not (split / "annotations.csv").is_file():
        pytest.skip(f"needs the MTFL training split at {split}")
    cfg = tattr.AttributeTrainConfig(epochs=2, limit=160, batch_size=32, val_fraction=0.25,
                                    model={"input_size": 24, "channels": (4, 8)})
    whole = tattr.train_attributes(split, tmp_path / "whole", cfg, progress=False)
    assert tattr.train_attributes(split, tmp_path / "parts", cfg, progress=False, stop_after=1) is None
    assert not (tmp_path / "parts" / "attributes.pt").exists()
    parts = tattr.train_attributes(split, tmp_path / "parts", cfg, progress=False)
    assert [h["epoch"] for h in parts["history"]] == [1, 2]
    assert parts["best_epoch"] == whole["best_epoch"] and parts["temperatures"] == whole["temperatures"]
    a = attr.load_attribute_net(tmp_path / "whole" / "attributes.pt")
    b = attr.load_attribute_net(tmp_path / "parts" / "attributes.pt")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert a.config.input_size == 24 and float(a.temperature.min()) > 0
    assert set(parts["val"]) == {"pose", "gender", "glasses", "smile"}
    with pytest.raises(ValueError, match="other settings"):
        tattr.train_attributes(split, tmp_path / "parts", tattr.AttributeTrainConfig(
            **{**cfg.__dict__, "epochs": 3}), progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Aligner


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)


def test_attribute_table_computes_once_on_first_read():
    calls = []

    def compute():
        calls.append(1)
        return {"glasses": np.array([[0.2, 0.8], [0.7, 0.3]], np.float32)}

    table = AttributeTable(compute=compute)
    assert calls == []
    assert table.attributes(0)["glasses"].label == "glasses"
    assert table.attributes(1)["glasses"].label == "no_glasses"
    assert calls == [1]


@pytest.mark.skipif("5pt" not in shipped_models(), reason="the shipped 5-point model is missing")
def test_aligner_reads_attributes_from_a_given_network(rgb):
    net = small_net(1)
    with torch.no_grad():
        net.heads["glasses"].bias.copy_(torch.tensor([-50.0, 50.0]))  # always "glasses"
    a = Aligner(detector="none", attributes=net)
    heads = Aligner(detector="none", attributes="heads")
    f = a.align(rgb, [BOX])[0]
    g = heads.align(rgb, [BOX])[0]
    np.testing.assert_array_equal(f.landmarks, g.landmarks)  # the landmarks do not depend on it
    assert f.attributes["glasses"].label == "glasses" and f.attributes["glasses"].probability > 0.999
    # The network reads the MTFL box of the final landmarks, enlarged by its context, as attribute_inputs does.
    from tcdcn_ext.inference.boxes import predict_boxes_5pt

    box = predict_boxes_5pt(f.landmarks[None].astype(np.float64))
    want = attr.attribute_probabilities(net, attr.attribute_inputs([rgb], box, net.config))
    for t, p in want.items():
        np.testing.assert_allclose(list(f.attributes[t].probabilities.values()), p[0], atol=2e-3)
    with pytest.raises(ValueError, match="attributes must be"):
        Aligner(detector="none", attributes=3)


def test_aligner_68_points_reads_the_network_from_its_five_points(rgb):
    if "68pt" not in shipped_models():
        pytest.skip("the shipped 68-point model is missing")
    from tcdcn_ext.inference.boxes import predict_boxes_5pt
    from tcdcn_ext.models.landmarks import five_from_68

    net = small_net(2)
    f = Aligner(points=68, detector="none", attributes=net).align(rgb, [BOX])[0]
    assert Aligner(points=68, detector="none", attributes="heads").align(rgb, [BOX])[0].attributes == {}
    box = predict_boxes_5pt(five_from_68(f.landmarks[None]).astype(np.float64))
    want = attr.attribute_probabilities(net, attr.attribute_inputs([rgb], box, net.config))
    for t, p in want.items():
        np.testing.assert_allclose(list(f.attributes[t].probabilities.values()), p[0], atol=2e-3)


@pytest.mark.skipif(not attr.shipped_attribute_net_available(), reason="no shipped attribute network")
def test_shipped_network_loads_and_is_the_default(rgb):
    net = attr.load_attribute_net()
    assert math.isfinite(float(net.temperature.sum()))
    a = Aligner(detector="none")
    assert a.attribute_net is not None
    f = a.align(rgb, [BOX])[0]
    assert set(f.attributes) == {"pose", "gender", "glasses", "smile"}
    # The astronaut (Eileen Collins): frontal, female, no glasses, smiling.
    assert f.attributes["pose"].label == "frontal"
    assert f.attributes["glasses"].label == "no_glasses"
    assert f.attributes["smile"].label == "smiling"
