"""Tests for tcdcn_ext.evaluate: hand-computed metrics, the CED plot and the result files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tcdcn_ext import evaluate as ev


def _five(n: int = 1) -> np.ndarray:
    # Eyes 10 px apart: inter-ocular distance 10.
    base = np.array([[10.0, 10.0], [20.0, 10.0], [15.0, 15.0], [11.0, 20.0], [19.0, 20.0]])
    return np.repeat(base[None], n, axis=0)


def test_landmark_errors_5pt_by_hand() -> None:
    gt = _five(2)
    pred = gt.copy()
    pred[0, 2] += [3.0, 4.0]  # face 0: one point 5 px off -> mean 1 px -> 0.1
    pred[1] = gt[1] + [0.6, 0.8]  # face 1: points 1..4 1 px off...
    pred[1, 0] = gt[1, 0] + [0.4, 0.0]  # ...and point 0 0.4 px off
    err = ev.landmark_errors(pred, gt, "inter_ocular")
    np.testing.assert_allclose(err, [0.1, (0.4 + 4 * 1.0) / 5 / 10])
    pe = ev.point_errors(pred, gt, "inter_ocular")
    assert pe.shape == (2, 5)
    np.testing.assert_allclose(pe[0], [0, 0, 0.5, 0, 0])
    # Explicit normalisers.
    np.testing.assert_allclose(ev.landmark_errors(pred, gt, np.array([5.0, 5.0])), 2 * err)


def _sixty_eight() -> np.ndarray:
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (1, 68, 2))
    gt[0, 36] = [30, 40]
    gt[0, 45] = [70, 40]  # outer corners 40 apart
    gt[0, 36:42] = gt[0, 36:42] - gt[0, 36:42].mean(0) + [35, 40]
    gt[0, 42:48] = gt[0, 42:48] - gt[0, 42:48].mean(0) + [65, 40]  # pupils 30 apart
    return gt


def test_normalisers_68() -> None:
    gt = _sixty_eight()
    np.testing.assert_allclose(ev.normaliser(gt, "outer_corners"), [np.linalg.norm(gt[0, 36] - gt[0, 45])])
    np.testing.assert_allclose(ev.normaliser(gt, "inter_pupil"), [30.0])
    pred = gt + [0.0, 3.0]  # every point 3 px off
    np.testing.assert_allclose(ev.landmark_errors(pred, gt, "inter_pupil"), [0.1])
    with pytest.raises(ValueError, match="'outer_corners' is not defined for 5 points"):
        ev.normaliser(_five(), "outer_corners")
    with pytest.raises(ValueError, match="shapes differ"):
        ev.point_errors(_five(), gt, "inter_ocular")
    bad = _five()
    bad[0, 1] = bad[0, 0]
    with pytest.raises(ValueError, match=r"zero or invalid for faces \[0\]"):
        ev.landmark_errors(bad, bad, "inter_ocular")


def test_failure_ced_auc_by_hand() -> None:
    err = np.array([0.02, 0.05, 0.10, 0.20])
    assert ev.failure_rate(err, 0.10) == 0.25  # strictly above
    assert ev.failure_rate(err, 0.04) == 0.75
    x, y = ev.ced_curve(err, 0.10, steps=11)
    np.testing.assert_allclose(x, np.linspace(0, 0.1, 11))
    np.testing.assert_allclose(y, [0, 0, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.75])
    # Exact AUC: faces contribute (1 - e/T) each: 0.8 + 0.5 + 0 + 0 over 4.
    assert ev.auc_at(err, 0.10) == pytest.approx(1.3 / 4)
    # Agrees with a fine Riemann sum of the CED.
    x, y = ev.ced_curve(err, 0.10, steps=200001)
    assert np.trapezoid(y, x) / 0.10 == pytest.approx(1.3 / 4, abs=1e-4)
    assert ev.auc_at(np.zeros(3)) == 1.0 and ev.auc_at(np.full(3, 0.5)) == 0.0
    assert math.isnan(ev.failure_rate(np.array([])))


def test_summarise_5pt() -> None:
    gt = _five(4)
    pred = gt.copy()
    pred[:, :, 0] += np.array([0.5, 1.0, 2.0, 0.0])[:, None]  # errors 0.05, 0.10, 0.20, 0
    attrs = {"pose": np.array([2, 2, 0, 4]), "smile": np.array([1, 0, 1, 0]), "gender": np.array([0, 1, 1, 1])}
    probs = {"smile": np.array([0.9, 0.2, 0.4, 0.1]),  # [N] = P(class 1): 3 of 4 right
             "gender": np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])}  # 3 of 4 right
    s = ev.summarise_5pt(pred, gt, attrs, probs)
    assert s["num_faces"] == 4
    assert s["mean_error"] == pytest.approx(0.0875)
    assert s["failure_rate"] == 0.25
    assert s["auc"] == pytest.approx((0.5 + 0.0 + 0.0 + 1.0) / 4)
    assert set(s["per_landmark"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
    assert s["per_landmark"]["nose"] == pytest.approx(0.0875)
    assert s["per_pose"]["frontal"] == {"count": 2, "mean_error": pytest.approx(0.075), "failure_rate": 0.0}
    assert s["per_pose"]["left_profile"]["failure_rate"] == 1.0
    assert s["per_pose"]["left"]["count"] == 0 and math.isnan(s["per_pose"]["left"]["mean_error"])
    assert s["aux_accuracy"] == {"smile": 0.75, "gender": 0.75}
    with pytest.raises(ValueError, match="without ground truth"):
        ev.summarise_5pt(pred, gt, {"pose": attrs["pose"]}, {"glasses": np.zeros(4)})


def test_summarise_68pt_regions() -> None:
    gt = _sixty_eight()
    pred = gt.copy()
    pred[0, 48:68] += [4.0, 0.0]  # only the mouth is off, by 4 px = 0.1 outer-corner distances
    d = np.linalg.norm(gt[0, 36] - gt[0, 45])
    s = ev.summarise_68pt(pred, gt)
    assert s["per_region"]["mouth"] == pytest.approx(4.0 / d)
    assert s["per_region"]["jaw"] == 0 and s["per_region"]["eyes"] == 0
    assert s["mean_error"] == pytest.approx(20 * 4.0 / 68 / d)
    assert s["mean_error_inter_pupil"] == pytest.approx(20 * 4.0 / 68 / 30)
    assert s["failure_rate"] == 0.0
    np.testing.assert_allclose(ev.five_from_68(gt)[0, :2], [[35, 40], [65, 40]])


def test_plot_ced_writes_valid_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = ev.plot_ced({"model": rng.gamma(4, 0.015, 300), "baseline (\u00e9)": rng.gamma(4, 0.02, 300)},
                       tmp_path / "sub" / "ced.png", max_err=0.10, title="CED test")
    img = cv2.imread(str(path))
    assert img is not None and img.shape == (600, 800, 3)
    assert img.std() > 10  # something drawn
    # Both curve colours appear.
    assert np.any(np.all(img == (180, 119, 31), axis=2)) and np.any(np.all(img == (14, 127, 255), axis=2))
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind
    with pytest.raises(ValueError, match="no curves"):
        ev.plot_ced({}, tmp_path / "x.png")


def test_write_json_numpy_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("old")
    ev.write_json(path, {"a": np.float32(0.5), "b": np.arange(3), "c": np.int64(7), "d": float("nan"),
                         "e": (1, np.bool_(True)), "f": {"g": np.array([[1.5]])}})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": 7, "d": None, "e": [1, True],
                                            "f": {"g": [[1.5]]}}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
    with pytest.raises(TypeError, match="cannot serialise object"):
        ev.write_json(tmp_path / "t.json", {"x": object()})
    assert not (tmp_path / "t.json").exists()


def test_write_predictions_csv(tmp_path: Path) -> None:
    pts = np.array([[[1.234, 2.0], [3.0, 4.5]], [[5.0, 6.0], [7.0, 8.0]]])
    attrs = {"smile": (np.array([1, 0]), np.array([0.9, 0.3])),
             "pose": (np.array([2, 0]), np.array([[0.1, 0.1, 0.8, 0, 0], [0.6, 0.1, 0.1, 0.1, 0.1]]))}
    path = ev.write_predictions_csv(tmp_path / "p.csv", ["a.jpg", "b.jpg"], pts, attrs)
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["image", "x0", "y0", "x1", "y1", "smile", "smile_prob", "pose", "pose_prob"]
    assert rows[1] == ["a.jpg", "1.23", "2.00", "3.00", "4.50", "1", "0.9000", "2", "0.8000"]
    assert rows[2] == ["b.jpg", "5.00", "6.00", "7.00", "8.00", "0", "0.7000", "0", "0.6000"]
    with pytest.raises(ValueError, match="1 names for 2 faces"):
        ev.write_predictions_csv(tmp_path / "q.csv", ["a.jpg"], pts)


def test_format_table_and_evaluate_predictions(tmp_path: Path) -> None:
    gt = _five(3)
    pred = gt + [0.5, 0.0]
    attrs = {"pose": np.array([2, 1, 3])}
    s = ev.evaluate_predictions(pred, gt, attrs, out_dir=tmp_path, names=["a", "b", "c"])
    assert s["mean_error"] == pytest.approx(0.05)
    table = ev.format_table(s)
    assert "| mean_error | 5.00 % |" in table and "| auc | 0.5000 |" in table
    assert "| frontal | 1 | 5.00 % | 0.00 % |" in table and "| left_eye | 5.00 % |" in table
    assert "| left_profile | 0 | n/a | n/a |" in table
    for name in ("summary.json", "summary.md", "ced.png", "predictions.csv"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["per_pose"]["left_profile"]["mean_error"] is None
    s68 = ev.evaluate_predictions(_sixty_eight(), _sixty_eight())
    assert s68["mean_error"] == 0 and "per_region" in s68
