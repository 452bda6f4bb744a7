"""Loading runs no code: every ``torch.load`` of the package is ``weights_only=True`` (resume included), a planted
file with a malicious pickle is refused with a clear error and its payload never runs; ``load_model`` holds the
``.json`` record's config to the file's; atomic writes fsync the folder after the rename."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_model_train import write_synthetic_split

from tcdcn_ext import checkpoint
from tcdcn_ext.checkpoint import UnsafeFileError, load_tensors
from tcdcn_ext.model import TCDCN, TCDCNConfig, WeightsError, load_model, save_weights
from tcdcn_ext.train import TrainConfig, train

SMALL = {"channels": [4, 8, 8, 8], "feature_dim": 16}


class _Payload:
    """Pickles as a call of ``exec``: loading it with plain pickle writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _plant(path: Path, marker: Path, blob: dict) -> None:
    torch.save({**blob, "evil": _Payload(marker)}, path)


def test_planted_payload_is_real(tmp_path):
    """The planted file does run code under weights_only=False (so the refusals below are not by accident)."""
    marker = tmp_path / "marker"
    _plant(tmp_path / "x.pt", marker, {})
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.read_text() == "pwned"


def test_resume_refuses_a_malicious_checkpoint(tmp_path):
    split = write_synthetic_split(tmp_path / "split", n=16)
    out = tmp_path / "run"
    cfg = TrainConfig(train_dir=str(split), out_dir=str(out), epochs=2, batch_size=8, threads=1, progress=False,
                      val_fraction=0.25, model=SMALL)
    train(cfg, stop_after=1)
    good = load_tensors(out / "checkpoint.pt")  # the real resume checkpoint loads with weights_only=True
    assert good["epoch"] == 1
    marker = tmp_path / "marker"
    _plant(out / "checkpoint.pt", marker, good)
    with pytest.raises(UnsafeFileError, match=r"refusing to load the resume checkpoint .*checkpoint\.pt.*"
                                              r"Nothing from it was executed"):
        train(cfg, resume=True)
    assert not marker.exists()


def test_load_model_refuses_a_malicious_weights_file(tmp_path):
    model = TCDCN(TCDCNConfig(**SMALL))
    save_weights(model, tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    marker = tmp_path / "marker"
    _plant(tmp_path / "m.pt", marker, blob)
    (tmp_path / "m.json").unlink()  # without a record no checksum stops it first: the loader itself must refuse
    with pytest.raises(WeightsError, match="refusing to load the weights file"):
        load_model(tmp_path / "m.pt")
    assert not marker.exists()


def test_init_from_refuses_a_malicious_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    _plant(tmp_path / "c.pt", marker, {})
    split = write_synthetic_split(tmp_path / "split", n=8)
    with pytest.raises(UnsafeFileError, match="--init-from checkpoint"):
        train(TrainConfig(train_dir=str(split), out_dir=str(tmp_path / "run"), epochs=1, progress=False,
                          init_from=str(tmp_path / "c.pt"), model=SMALL))
    assert not marker.exists()


def test_load_model_holds_the_record_config_to_the_file(tmp_path):
    model = TCDCN(TCDCNConfig(**SMALL))
    record = save_weights(model, tmp_path / "m.pt")
    assert record["config"] == model.config.to_dict()
    assert load_model(tmp_path / "m.pt").config == model.config
    edited = json.loads((tmp_path / "m.json").read_text())
    edited["config"]["feature_dim"] = 32
    (tmp_path / "m.json").write_text(json.dumps(edited))
    with pytest.raises(WeightsError, match=r"m\.json describes another model than m\.pt holds.*feature_dim"):
        load_model(tmp_path / "m.pt")
    edited["config"]["feature_dim"] = 16
    edited["config"]["no_such_field"] = 1
    (tmp_path / "m.json").write_text(json.dumps(edited))
    with pytest.raises(WeightsError, match="'config' is not a TCDCNConfig"):
        load_model(tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt", verify=False).config == model.config  # verify=False skips the record


def test_shipped_records_match_their_weights():
    for name in ("5pt", "68pt"):
        try:
            load_model(name)
        except WeightsError as exc:
            if "is not in this installation" in str(exc):
                continue
            raise


def test_atomic_write_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    seen = []
    target = tmp_path / "a.pt"
    monkeypatch.setattr(checkpoint, "fsync_dir", lambda p: seen.append((Path(p), target.exists())))
    checkpoint.atomic_torch_save({"x": torch.ones(2)}, target)
    assert seen == [(tmp_path, True)]
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ZeroDivisionError):
        checkpoint.atomic_write(tmp_path / "b.txt", lambda f: 1 / 0)
    assert not (tmp_path / "b.txt").exists() and not list(tmp_path.glob("*.tmp"))
