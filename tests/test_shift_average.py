"""tcdcn_ext.ops.shift_average (TCDCN-Averaged in one op) against K independent forward passes, on CPU and CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import cpu_and_cuda
from tcdcn_ext import ops
from tcdcn_ext.averaging import (DEFAULT_SHIFTS_20, DEFAULT_SHIFTS_LOCAL, default_shifts, make_shifts,
                                 predict_averaged, predict_windows_reference, shift_crops)
from tcdcn_ext.model import TCDCN, TCDCNConfig, load_model

# Odd and even offsets in both axes, repeated shifts, the origin, the margin's edge: every pooling phase.
MIXED = [(0, 0), (1, 0), (-1, 2), (3, -3), (4, 4), (-4, -4), (2, 1), (1, 0), (-3, 1)]


def _model(shared: bool, activation: str = "abs_tanh", box_scale: float = 1.0, size: int = 20,
           dtype=torch.float64, device: str = "cpu") -> TCDCN:
    torch.manual_seed(1)
    cfg = TCDCNConfig(input_size=size, num_points=5, channels=(3, 4, 5, 6), kernels=(3, 3, 2, 2),
                      pool_after=(True, False, True, False), feature_dim=12, shared_conv=shared,
                      activation=activation, box_scale=box_scale)
    m = TCDCN(cfg)
    with torch.no_grad():
        m.landmark_head.weight.normal_(0, 0.3)
        for p in m.parameters():  # non-trivial biases too
            if p.dim() != 6 and p.dim() != 4:
                p.add_(0.1 * torch.randn_like(p))
    return m.to(device=device, dtype=dtype).eval()


def _crop(n: int, size: int, margin: int, dtype=torch.float64, device: str = "cpu") -> torch.Tensor:
    return torch.randn(n, 1, size + 2 * margin, size + 2 * margin, dtype=dtype, device=device)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shared,activation", [(True, "relu"), (True, "abs_tanh"), (False, "abs_tanh"),
                                               (False, "relu")])
@pytest.mark.parametrize("box_scale", [1.0, 1.25])
def test_equals_independent_passes_float64(device, shared, activation, box_scale):
    m = _model(shared, activation, box_scale, device=device)
    crop = _crop(3, 20, 4, device=device)
    got = m.predict_shift_average(crop, MIXED)
    ref = predict_windows_reference(m, crop, MIXED)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-10, msg=k)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shared", [True, False])
def test_heads_per_shift_are_the_single_window_outputs(device, shared):
    m = _model(shared, dtype=torch.float32, device=device)
    crop = _crop(2, 20, 4, dtype=torch.float32, device=device)
    layers = [mod for mod in m.conv if hasattr(mod, "weight")]
    heads_w = torch.cat([m.landmark_head.weight] + [h.weight for h in m.aux_heads.values()])
    heads_b = torch.cat([m.landmark_head.bias] + [h.bias for h in m.aux_heads.values()])
    with torch.inference_mode():
        lm, heads = ops.shift_average(crop, MIXED, 20, [l.weight for l in layers], [l.bias for l in layers],
                                      m.config.pool_after, shared, "abs_tanh", m.fc.weight, m.fc.bias, heads_w,
                                      heads_b, 5)
        assert lm.shape == (2, 5, 2) and heads.shape == (2, len(MIXED), heads_w.shape[0])
        for k, (dx, dy) in enumerate(MIXED):
            o = m(crop[..., 4 + dy:24 + dy, 4 + dx:24 + dx])
            flat = torch.cat([o["landmarks"].flatten(1)] + [o[t] for t in m.aux_heads], dim=1)
            torch.testing.assert_close(heads[:, k], flat, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("name", ["5pt", "68pt"])
def test_shipped_models_match_twenty_passes_to_1e4(device, name):
    """The issue's exactness bar: the fused op equals 20 independent passes on the shifted windows, to 1e-4
    (float32), for the shipped networks and their default shift patterns."""
    # (The shipped 5-point model's default int8 weights stand for slightly different values than the parameters the
    # reference passes use: tests/test_int8_weights.py checks the op on those.)
    m = load_model(name, device=device).set_inference_weights("auto")
    shifts = default_shifts(m)
    assert len(shifts) == 20
    crop = _crop(4, m.input_size, int(np.abs(shifts).max()), dtype=torch.float32, device=device)
    got = m.predict_shift_average(crop, shifts)
    ref = predict_windows_reference(m, crop, shifts)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-4, msg=k)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_zero_shift_is_the_plain_prediction(device):
    for shared in (True, False):
        m = _model(shared, device=device)
        crop = _crop(2, 20, 0, device=device)
        got = m.predict_shift_average(crop, [[0, 0]])
        plain = m.predict(crop)
        for k in plain:
            torch.testing.assert_close(got[k], plain[k], rtol=0, atol=1e-12)


def test_a_translation_of_the_face_is_undone():
    """Shifting the crop's content by (tx, ty) pixels and the shifts by the same amount reproduces the averaged
    prediction plus (tx, ty) / S: the un-shift has the right sign and scale."""
    m = _model(True, box_scale=1.25)
    big = torch.randn(1, 1, 40, 40, dtype=torch.float64)
    a = big[..., 8:36, 8:36]  # window 20 + margin 4
    b = big[..., 9:37, 6:34]  # b[i, j] = a[i + 1, j - 2]
    # Window (dx + 2, dy - 1) of b is window (dx, dy) of a: the same pixels, the same window-frame prediction, but
    # un-shifted by (+2, -1) px more, i.e. expressed in b's centred frame, which sits (2, -1) px from a's.
    sa = [(0, 0), (1, -1), (-2, 2)]
    sb = [(dx + 2, dy - 1) for dx, dy in sa]
    pa = m.predict_shift_average(a, sa)["landmarks"]
    pb = m.predict_shift_average(b, sb)["landmarks"]
    expected = pa + torch.tensor([2.0, -1.0], dtype=torch.float64) / 20 * 1.25
    torch.testing.assert_close(pb, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shared", [True, False])
def test_op_equals_the_reference_implementation(device, shared):
    from tcdcn_ext import _reference

    m = _model(shared, "relu" if shared else "abs_tanh", device=device)
    layers = [mod for mod in m.conv if hasattr(mod, "weight")]
    crop = _crop(2, 20, 4, device=device)
    flat = [v for pair in MIXED for v in pair]
    args = (crop, flat, 20, [l.weight.detach() for l in layers], [l.bias.detach() for l in layers], [1, 0, 1, 0],
            shared, m.config.activation, m.fc.weight.detach(), m.fc.bias.detach(), m.landmark_head.weight.detach(),
            m.landmark_head.bias.detach(), 5)
    with torch.inference_mode():
        got = torch.ops.tcdcn_ext.shift_average(*args)
        ref = _reference.shift_average(*args)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


def test_opcheck():
    for shared in (True, False):
        m = _model(shared, dtype=torch.float32)
        layers = [mod for mod in m.conv if hasattr(mod, "weight")]
        crop = _crop(2, 20, 3, dtype=torch.float32)
        args = (crop, [0, 0, 1, -1, -3, 2], 20, [l.weight.detach() for l in layers],
                [l.bias.detach() for l in layers], [1, 0, 1, 0], shared, "abs_tanh", m.fc.weight.detach(),
                m.fc.bias.detach(), m.landmark_head.weight.detach(), m.landmark_head.bias.detach(), 5)
        torch.library.opcheck(torch.ops.tcdcn_ext.shift_average.default, args)


def test_inference_only():
    m = _model(True, dtype=torch.float32)
    crop = _crop(1, 20, 2, dtype=torch.float32)
    layers = [mod for mod in m.conv if hasattr(mod, "weight")]
    args = (crop, [[1, 0]], 20, [l.weight for l in layers], [l.bias for l in layers], m.config.pool_after, True,
            "abs_tanh", m.fc.weight, m.fc.bias, m.landmark_head.weight, m.landmark_head.bias, 5)
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.shift_average(*args)  # parameters require grad
    with torch.no_grad():
        lm, _ = ops.shift_average(*args)
    assert not lm.requires_grad
    # The raw op with gradients enabled: running is allowed, asking for the gradient is not.
    lm, _ = torch.ops.tcdcn_ext.shift_average(crop, [1, 0], 20, list(args[3]), list(args[4]), [1, 0, 1, 0], True,
                                              "abs_tanh", *args[8:])
    with pytest.raises(RuntimeError, match="inference-only"):
        lm.sum().backward()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_bad_arguments_name_the_problem(device):
    m = _model(True, dtype=torch.float32, device=device)
    crop = _crop(2, 20, 2, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match="whole pixels"):
        m.predict_shift_average(crop, [[0.5, 0]])
    with pytest.raises(ValueError, match=r"\[K, 2\]"):
        m.predict_shift_average(crop, np.zeros((0, 2)))
    with pytest.raises(RuntimeError, match="out of the crop"):
        m.predict_shift_average(crop, [[3, 0]])
    with pytest.raises(RuntimeError, match="equal margin"):
        m.predict_shift_average(crop[..., 1:, :], [[0, 0]])
    with pytest.raises(RuntimeError, match=r"\[N, 1, H, W\]"):
        m.predict_shift_average(crop[:, 0], [[0, 0]])
    with pytest.raises(RuntimeError, match="float32 or float64"):
        m.predict_shift_average(crop.half(), [[0, 0]])
    with pytest.raises(RuntimeError, match="dtype|but crop is"):
        m.predict_shift_average(crop.double(), [[0, 0]])
    convs = [l for l in m.conv if hasattr(l, "weight")]
    with pytest.raises(RuntimeError, match="fc_weight must be"):
        torch.ops.tcdcn_ext.shift_average(crop, [0, 0], 20, [l.weight for l in convs], [l.bias for l in convs],
                                          [1, 0, 1, 0], True, "abs_tanh", m.fc.weight.t(), m.fc.bias,
                                          m.landmark_head.weight, m.landmark_head.bias, 5)
    local = _model(False, dtype=torch.float32, size=24, device=device)
    with pytest.raises(RuntimeError, match="output locations"):
        torch.ops.tcdcn_ext.shift_average(crop, [0, 0], 20, [l.weight for l in local.conv if hasattr(l, "weight")],
                                          [l.bias for l in local.conv if hasattr(l, "weight")], [1, 0, 1, 0], False,
                                          "abs_tanh", local.fc.weight, local.fc.bias, local.landmark_head.weight,
                                          local.landmark_head.bias, 5)
    with pytest.raises(RuntimeError, match="activation"):
        torch.ops.tcdcn_ext.shift_average(crop, [0, 0], 20, [l.weight for l in m.conv if hasattr(l, "weight")],
                                          [l.bias for l in m.conv if hasattr(l, "weight")], [1, 0, 1, 0], True,
                                          "gelu", m.fc.weight, m.fc.bias, m.landmark_head.weight,
                                          m.landmark_head.bias, 5)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_empty_batch(device):
    m = _model(True, dtype=torch.float32, device=device)
    out = m.predict_shift_average(_crop(0, 20, 2, dtype=torch.float32, device=device), [[1, 1], [0, 0]])
    assert out["landmarks"].shape == (0, 5, 2) and out["pose"].shape == (0, 5)


@pytest.mark.needs_cuda
def test_cuda_matches_cpu():
    for shared in (True, False):
        m = _model(shared, dtype=torch.float32)
        crop = _crop(3, 20, 4, dtype=torch.float32)
        cpu = m.predict_shift_average(crop, MIXED)
        gpu = m.to("cuda").predict_shift_average(crop.cuda(), MIXED)
        for k in cpu:
            torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-4, atol=1e-5, msg=k)


# -- crops and the image-level API ------------------------------------------------------------------------------


def _face_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = (rng.random((90, 100, 3)) * 255).astype(np.uint8)
    return img, np.array([[20.0, 15.0, 72.0, 70.0]])


@pytest.mark.parametrize("box_scale", [1.0, 1.25])
def test_crop_centre_is_the_plain_input(box_scale):
    m = _model(True, box_scale=box_scale, dtype=torch.float32)
    img, box = _face_image()
    crop = shift_crops(m, img, box, margin=3)
    assert crop.shape == (1, 1, 26, 26) and crop.dtype == torch.float32
    torch.testing.assert_close(crop[..., 3:23, 3:23], m.preprocess(img, box), rtol=0, atol=2e-4)


def test_predict_averaged_single_zero_shift_is_the_plain_prediction():
    from tcdcn_ext import data

    m = _model(True, box_scale=1.25, dtype=torch.float32)
    imgs, boxes = zip(*(_face_image(s) for s in range(3)))
    boxes = np.concatenate(boxes)
    plain = data.from_box_frame(m.predict(m.preprocess(list(imgs), boxes))["landmarks"].numpy(), boxes)
    got = predict_averaged(m, list(imgs), boxes, shifts=[[0, 0]])
    assert got.dtype == np.float32 and got.shape == (3, 5, 2)
    np.testing.assert_allclose(got, plain, atol=2e-3)  # the crop's bilinear taps agree to float rounding


def test_shift_patterns():
    for pattern, r in (("rings", 4), ("ring", 1), ("grid", 2)):
        s = make_shifts(pattern, r)
        assert s.shape == (20, 2) and s.dtype == np.int64
        np.testing.assert_allclose(s.mean(0), 0.0, atol=1e-12)
        assert np.abs(s).max() <= (2 * r if pattern == "grid" else r)
    np.testing.assert_array_equal(DEFAULT_SHIFTS_20, make_shifts("rings", 4))
    np.testing.assert_array_equal(DEFAULT_SHIFTS_LOCAL, make_shifts("ring", 1))
    assert not DEFAULT_SHIFTS_20.flags.writeable
    with pytest.raises(ValueError, match="unknown shift pattern"):
        make_shifts("spiral")


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("half", [False, True])
def test_fc_and_heads_in_the_locally_connected_layout(shared, half):
    """On the CPU the op also takes the fc and the heads as locally connected layers ([1, 1, C, s, s, F] and
    [1, 1, F, 1, 1, D], float16 allowed), run straight from the feature maps: the same as the [F, C*s*s] form."""
    from tcdcn_ext import _reference

    m = _model(shared, "relu" if shared else "abs_tanh", dtype=torch.float32)
    layers = [mod for mod in m.conv if hasattr(mod, "weight")]
    crop = _crop(3, 20, 4, dtype=torch.float32)
    flat = [v for pair in MIXED for v in pair]
    c, s = m.config.channels[-1], 2
    fc_w, head_w = m.fc.weight.detach(), m.landmark_head.weight.detach()
    if half:
        fc_w, head_w = fc_w.half().float(), head_w.half().float()
    lc_fc = ops.lc_weight_from_natural(fc_w.reshape(1, 1, -1, c, s, s))
    lc_head = ops.lc_weight_from_natural(head_w.reshape(1, 1, -1, head_w.shape[1], 1, 1))
    if half:
        lc_fc, lc_head = lc_fc.half(), lc_head.half()
    common = (crop, flat, 20, [l.weight.detach() for l in layers], [l.bias.detach() for l in layers], [1, 0, 1, 0],
              shared, m.config.activation)
    fc_b, head_b = m.fc.bias.detach(), m.landmark_head.bias.detach()
    with torch.inference_mode():
        want = torch.ops.tcdcn_ext.shift_average(*common, fc_w, fc_b, head_w, head_b, 5)
        for biases in ((fc_b, head_b), (fc_b.reshape(-1, 1, 1), head_b.reshape(-1, 1, 1))):
            got = torch.ops.tcdcn_ext.shift_average(*common, lc_fc, biases[0], lc_head, biases[1], 5)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        ref = _reference.shift_average(*common, lc_fc, fc_b, lc_head, head_b, 5)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match=r"head_weight must be \[1, 1, F, 1, 1, D\] like fc_weight's layout"):
            torch.ops.tcdcn_ext.shift_average(*common, lc_fc, fc_b, head_w, head_b, 5)
        with pytest.raises(RuntimeError, match=r"fc_weight must be \[F, 24\] or \[1, 1, 6, 2, 2, F\]"):
            torch.ops.tcdcn_ext.shift_average(*common, lc_fc[:, :, :3], fc_b, lc_head, head_b, 5)
        with pytest.raises(RuntimeError, match=r"fc_bias must be \[12\] or \[F, 1, 1\]"):
            torch.ops.tcdcn_ext.shift_average(*common, lc_fc, fc_b[:5], lc_head, head_b, 5)
