"""The TCDCN model, its weights files, and a tiny training run (loss goes down, early stopping, resume)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from tcdcn_ext.models import weights as model_mod
from tcdcn_ext.model import TCDCN, TCDCNConfig, WeightsError, load_model, save_weights
from tcdcn_ext.train import TrainConfig, train


def write_synthetic_split(root, n=48, seed=0):
    """A staged-format split whose 5 'landmarks' are bright dots the network can learn to find."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = ["image,box_x0,box_y0,box_x1,box_y1," + ",".join(f"x{k},y{k}" for k in range(5)) +
            ",gender,smile,glasses,pose,source"]
    template = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
    for i in range(n):
        img = (rng.random((128, 128, 3)) * 60).astype(np.uint8)
        box = np.array([24, 24, 104, 104], float) + rng.uniform(-4, 4, 4)
        pts = box[:2] + (template + rng.normal(0, 0.03, template.shape)) * (box[2:] - box[:2])
        for x, y in pts:
            cv2.circle(img, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
        name = f"syn_{i:03d}.jpg"
        cv2.imwrite(str(root / "images" / name), img)
        attrs = [i % 2, (i // 2) % 2, int(i % 7 == 0), int(rng.integers(0, 5))]
        rows.append(",".join([name, *(f"{v:.2f}" for v in box), *(f"{v:.2f}" for v in pts.reshape(-1)),
                              *map(str, attrs), f"synthetic/{name}"]))
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")
    return root


def test_forward_shapes_and_frame():
    m = TCDCN()
    out = m(torch.randn(3, 1, 40, 40))
    assert out["landmarks"].shape == (3, 5, 2)
    assert {k: tuple(v.shape) for k, v in out.items() if k != "landmarks"} == {
        "pose": (3, 5), "gender": (3, 2), "glasses": (3, 2), "smile": (3, 2)}
    with pytest.raises(ValueError, match=r"Tensor\[N, 1, 40, 40\]"):
        m(torch.randn(3, 1, 39, 40))
    shared = TCDCN(TCDCNConfig(shared_conv=True, input_size=60, num_points=68, aux_tasks={}))
    assert shared(torch.randn(2, 1, 60, 60))["landmarks"].shape == (2, 68, 2)


def test_preprocess_normalises_the_box():
    m = TCDCN()
    img = np.zeros((100, 120, 3), np.uint8)
    img[20:60, 30:70] = 200
    x = m.preprocess(img, [30, 20, 70, 60])
    assert x.shape == (1, 1, 40, 40)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-2


def test_weights_round_trip_and_tamper_detection(tmp_path):
    m = TCDCN()
    path = tmp_path / "w.pt"
    rec = save_weights(m, path, meta={"note": "test"})
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == rec["sha256"]
    m2 = load_model(path)
    x = torch.randn(2, 1, 40, 40)
    torch.testing.assert_close(m2(x)["landmarks"], m.eval()(x)["landmarks"], atol=2e-3, rtol=2e-3)  # fp16 storage
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_model(path)
    path.write_bytes(bytes(data[: len(data) // 3]))
    path.with_suffix(".json").unlink()  # no record: the archive itself is checked
    with pytest.raises(WeightsError, match="cannot be read"):
        load_model(path)
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_unknown_shipped_name_is_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(model_mod, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsError, match="not in this installation"):
        load_model("68pt")


def test_tiny_training_learns_and_resumes(tmp_path):
    split = write_synthetic_split(tmp_path / "split")
    # No augmentation, so the epoch losses are comparable and the run is short.
    base = dict(train_dir=str(split), batch_size=8, lr=1e-3, warmup_epochs=0.5, threads=1, progress=False,
                val_fraction=0.25, strip_k=2, epsilon=0.0, seed=3, max_shift=0.0, max_rotate_deg=0.0,
                zoom=(1.0, 1.0), mirror=False)
    full = train(TrainConfig(out_dir=str(tmp_path / "full"), epochs=4, **base))
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_landmarks"] < log[0]["train_landmarks"]
    # epsilon 0 stops every auxiliary task as soon as its validation loss exceeds its best training loss,
    # after k = 2 evaluations; the bookkeeping records the step.
    assert all(2 <= step <= 4 for step in full["stopped_at"].values())
    assert set(full["stopped_at"]) <= {"pose", "gender", "glasses", "smile"}
    assert (tmp_path / "full" / "best.pt").exists() and (tmp_path / "full" / "best.json").exists()

    # A run interrupted after 2 epochs and resumed reaches exactly the uninterrupted result.
    train(TrainConfig(out_dir=str(tmp_path / "split_run"), epochs=4, **base), stop_after=2)
    resumed = train(TrainConfig(out_dir=str(tmp_path / "split_run"), epochs=4, **base), resume=True)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split_run" / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert resumed["stopped_at"] == full["stopped_at"]


@pytest.mark.parametrize("extra", [{"learn_lambda": True}, {"optimizer": "sgd", "lr": 0.003},
                                   {"aux_tasks": ()}, {"balance_pose": 0.5, "landmark_loss": "l1"}])
def test_training_variants_run(tmp_path, extra):
    """The other recipes (learned lambda_a, the paper's SGD, landmarks only, pose balancing + L1) train and log."""
    split = write_synthetic_split(tmp_path / "split", n=24)
    cfg = dict(train_dir=str(split), out_dir=str(tmp_path / "run"), epochs=1, batch_size=8, threads=1,
               progress=False, val_fraction=0.25)
    cfg.update(extra)
    summary = train(TrainConfig(**cfg))
    rec = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(rec["train_landmarks"]) and np.isfinite(summary["best"]["val_error"])
    if extra.get("learn_lambda"):
        assert set(rec["lambdas"]) == {"pose", "gender", "glasses", "smile"}


def test_landmark_framed_boxes_train_and_refit(tmp_path):
    """``--boxes landmarks``: the faces are framed by the MTFL box model's box of their true 5 points (training,
    validation and the heads' refit), and anything but given / landmarks is refused."""
    from tcdcn_ext.inference.boxes import predict_boxes_5pt
    from tcdcn_ext.training.datasets import load_staged
    from tcdcn_ext.training.train import landmark_boxes, refit_aux_heads, validation_split

    split = write_synthetic_split(tmp_path / "split", n=24)
    fs = load_staged(split, progress=False)
    boxes = landmark_boxes(fs)
    np.testing.assert_array_equal(boxes, predict_boxes_5pt(fs.landmarks.astype(np.float64)).astype(np.float32))
    assert not np.allclose(boxes, fs.boxes)  # the split's own boxes are other boxes
    tr, va = validation_split(len(fs), 0.25, 0)
    assert len(va) == 6 and len(tr) == 18 and not set(tr) & set(va)
    cfg = dict(train_dir=str(split), out_dir=str(tmp_path / "run"), epochs=1, batch_size=8, threads=1,
               progress=False, val_fraction=0.25, boxes="landmarks")
    summary = train(TrainConfig(**cfg))
    assert np.isfinite(summary["best"]["val_error"])
    report = refit_aux_heads(tmp_path / "run" / "best.pt", tmp_path / "refit" / "model.pt", split, 0.25, 0,
                             steps=5, progress=False, boxes="landmarks")
    assert set(report) == {"pose", "gender", "glasses", "smile"}
    meta = json.loads((tmp_path / "refit" / "model.json").read_text())["meta"]
    assert meta["refit_aux_heads"]["boxes"] == "landmarks"
    with pytest.raises(ValueError, match="boxes must be 'given' or 'landmarks'"):
        train(TrainConfig(**{**cfg, "boxes": "detector", "out_dir": str(tmp_path / "bad")}))
