"""The shipped 68-point model and TCDCN-Averaged (tcdcn_ext.averaging): fast, offline, CPU-only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcdcn_ext import data as data_mod
from tcdcn_ext import evaluate as ev
from tcdcn_ext.averaging import (DEFAULT_SHIFTS_20, make_shifts, predict_averaged, predict_windows_reference,
                                 shift_crops)
from tcdcn_ext.model import TCDCN, TCDCNConfig, load_model, save_weights

from conftest import data_root


def _synthetic_face(size: int = 160, offset: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """A drawn, roughly face-like RGB image on black and its box (landmark-extent-like, about 80 px)."""
    import cv2

    img = np.zeros((size, size, 3), np.uint8)
    cx, cy = 80 + offset[0], 80 + offset[1]
    cv2.ellipse(img, (cx, cy), (38, 46), 0, 0, 360, (190, 160, 140), -1)
    for ex in (cx - 16, cx + 16):
        cv2.ellipse(img, (ex, cy - 12), (8, 4), 0, 0, 360, (40, 40, 40), -1)
    cv2.line(img, (cx, cy - 6), (cx, cy + 10), (120, 90, 80), 2)
    cv2.ellipse(img, (cx, cy + 24), (14, 5), 0, 0, 360, (90, 40, 50), -1)
    box = np.array([[cx - 40.0, cy - 38.0, cx + 40.0, cy + 46.0]], np.float32)
    return img, box


def _small_model(box_scale: float = 1.0, seed: int = 0) -> TCDCN:
    torch.manual_seed(seed)
    m = TCDCN(TCDCNConfig(num_points=68, aux_tasks={}, shared_conv=True, channels=(4, 6, 8, 8), feature_dim=16,
                          box_scale=box_scale))
    with torch.no_grad():  # a non-trivial landmark head, so the outputs depend on the pixels
        m.landmark_head.weight.normal_(0, 0.05)
    return m.eval()


# -- the shipped model ----------------------------------------------------------------------------------------------


def test_shipped_68pt_loads_offline_and_predicts_in_the_box_frame():
    m = load_model("68pt")
    assert m.num_points == 68 and m.config.shared_conv
    img, box = _synthetic_face()
    pts = ev.predict_faceset(m, data_mod.FaceSet(images=[img], boxes=box, landmarks=np.zeros((1, 68, 2)),
                                                  names=["synthetic"]), progress=False)[0]
    assert pts.shape == (1, 68, 2) and np.all(np.isfinite(pts))
    # Points land on the face: inside the box enlarged by 1.5 about its centre, centroid near the box centre.
    c = (box[0, :2] + box[0, 2:]) / 2
    half = (box[0, 2:] - box[0, :2]) / 2
    assert np.all(np.abs(pts[0] - c) <= 1.5 * half)
    assert np.all(np.abs(pts[0].mean(0) - c) <= 0.25 * half)
    # The right frame: translating the image and the box by whole pixels translates the points by that much.
    img2, box2 = _synthetic_face(offset=(7, -5))
    x1, x2 = m.preprocess(img, box), m.preprocess(img2, box2)
    # The same pixels are seen (the drawing is shifted exactly; OpenCV's fixed-point bilinear weights differ in the
    # last bits with the absolute position).
    torch.testing.assert_close(x1, x2, atol=2e-3, rtol=0)
    p1 = data_mod.from_box_frame(m.predict(x1)["landmarks"].numpy(), box)
    p2 = data_mod.from_box_frame(m.predict(x2)["landmarks"].numpy(), box2)
    np.testing.assert_allclose(p2 - p1, np.broadcast_to([7.0, -5.0], p1.shape), atol=0.05)


def test_box_scale_round_trips_through_save_and_load(tmp_path):
    m = _small_model(box_scale=1.25)
    rec = save_weights(m, tmp_path / "m.pt", half=False)
    assert rec["config"]["box_scale"] == 1.25 and rec["config"]["activation"] == "abs_tanh"
    m2 = load_model(tmp_path / "m.pt")
    assert m2.config.box_scale == 1.25
    img, box = _synthetic_face()
    a = m.predict(m.preprocess(img, box))["landmarks"]
    b = m2.predict(m2.preprocess(img, box))["landmarks"]
    torch.testing.assert_close(a, b)
    # predict() maps the network's enlarged-box frame back to the given box's frame.
    with torch.no_grad():
        raw = m(m.preprocess(img, box))["landmarks"]
    torch.testing.assert_close(a, (raw - 0.5) * 1.25 + 0.5)
    np.testing.assert_allclose(m.input_boxes(box), [[30.0, 31.5, 130.0, 136.5]], atol=1e-4)  # 1.25 x about (80, 84)


def test_activation_option_defaults_to_abs_tanh():
    from tcdcn_ext.nn import AbsTanh

    assert TCDCNConfig().activation == "abs_tanh" and TCDCNConfig().box_scale == 1.0
    relu = TCDCN(TCDCNConfig(shared_conv=True, activation="relu"))
    assert any(isinstance(x, torch.nn.ReLU) for x in relu.conv) and not any(isinstance(x, AbsTanh) for x in relu.conv)
    with pytest.raises(ValueError):
        TCDCNConfig(activation="sigmoid")


# -- TCDCN-Averaged (the op's own tests are in test_shift_average.py) ---------------------------------------------


def test_averaging_moves_points_with_the_image():
    """Translating the image and the box by whole pixels translates the averaged points by the same amount."""
    m = _small_model(1.25)
    img, box = _synthetic_face()
    img2, box2 = _synthetic_face(offset=(6, -4))
    p1 = predict_averaged(m, img, box, DEFAULT_SHIFTS_20)
    p2 = predict_averaged(m, img2, box2, DEFAULT_SHIFTS_20)
    np.testing.assert_allclose(p2 - p1, np.broadcast_to([6.0, -4.0], p1.shape), atol=0.05)


def test_predict_averaged_matches_a_loop_over_windows():
    m = _small_model(1.25)
    img, box = _synthetic_face()
    shifts = make_shifts("ring", 3, 6)
    crop = shift_crops(m, img, box, 3)
    ref = predict_windows_reference(m, crop, shifts)["landmarks"].numpy()
    np.testing.assert_allclose(predict_averaged(m, [img], box, shifts), data_mod.from_box_frame(ref, box),
                               atol=1e-4)


# -- real data ------------------------------------------------------------------------------------------------------


def test_shipped_68pt_on_300w_test_common_subset():
    split = data_root() / "300w" / "test_common"
    if not (split / "annotations.csv").exists():
        pytest.skip(f"{split} is not available")
    fs = data_mod.load_staged(split, limit=30, progress=False)
    m = load_model("68pt")
    pred, _ = ev.predict_faceset(m, fs, progress=False)
    err = ev.landmark_errors(pred, fs.landmarks, "outer_corners")
    assert err.mean() < 0.07, f"outer-corner error {100 * err.mean():.2f} % on 30 test_common faces"
    avg = predict_averaged(m, fs.images, fs.boxes)
    assert ev.landmark_errors(avg, fs.landmarks, "outer_corners").mean() < 0.07
