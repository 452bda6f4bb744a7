"""Face attributes (head pose, gender, glasses, smile) from their own network.

TCDCN's auxiliary heads are there to help the landmarks (paper Eq. 3), and task-wise early stopping switches them
off within a few epochs: read from the shared 100-unit feature they are near chance (issue 22: balanced accuracy
gender 62.7 %, glasses 50.0 % on mtfl/test). This module gives the attributes a network of their own:
:class:`AttributeNet`, a small shared-convolution network (3x3 conv + batch norm + ReLU stages with 2x2 max pooling,
global average pooling, one linear head per task) on a wider, larger crop of the face's MTFL box than the landmark
network reads (``context`` x the box, ``input_size`` pixels a side, grey, standardised per image), with a
temperature per task, fitted on validation faces, that makes its softmax probabilities calibrated.

Trained by :mod:`tcdcn_ext.training.attributes` (``tcdcn-train-attributes``); the shipped file
``weights/attributes_5pt.pt`` is what :class:`tcdcn_ext.Aligner` reads its attributes from (model card:
``weights/ATTRIBUTES.md``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ATTRIBUTE_TASKS", "POSE_MIRROR", "AttributeConfig", "AttributeNet", "WEIGHTS", "attribute_inputs",
           "attribute_probabilities", "load_attribute_net", "predict_logits", "save_attribute_net",
           "shipped_attribute_net_available"]

#: The MTFL attribute tasks and their class counts (0-based codes as in the staged CSVs).
ATTRIBUTE_TASKS: dict[str, int] = {"pose": 5, "gender": 2, "glasses": 2, "smile": 2}
#: Mirroring a face maps pose bin k to 4 - k (left profile <-> right profile); the other attributes are unchanged.
POSE_MIRROR = [4, 3, 2, 1, 0]


@dataclass
class AttributeConfig:
    input_size: int = 48  # S: the network reads S x S grey pixels
    context: float = 1.4  # the crop is the face box enlarged by this factor about its centre
    channels: tuple[int, ...] = (32, 64, 96, 128)
    convs_per_stage: int = 1
    dropout: float = 0.2
    tasks: dict[str, int] = field(default_factory=lambda: dict(ATTRIBUTE_TASKS))


class AttributeNet(nn.Module):
    """``[N, 1, S, S]`` standardised grey crops -> ``{task: logits [N, classes]}`` (divided by each task's fitted
    temperature in eval mode: ``softmax`` of the outputs are calibrated probabilities)."""

    def __init__(self, config: AttributeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AttributeConfig()
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(config.channels):
            for j in range(config.convs_per_stage):
                layers += [nn.Conv2d(c_in if j == 0 else c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.ReLU(inplace=True)]
            if i < len(config.channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({t: nn.Linear(c_in, n) for t, n in config.tasks.items()})
        self.register_buffer("temperature", torch.ones(len(config.tasks)))
        # Channels-last convolutions: on one CPU thread 4x faster than NCHW for this network at 64 faces (oneDNN's
        # NCHW path for few channels and small maps is slow), 1.5x at one face.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        s = self.config.input_size
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"AttributeNet: input must be [N, 1, {s}, {s}], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"AttributeNet: input must be floating point, got {x.dtype}")
        h = self.dropout(self.features(x.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3)))
        out = {t: head(h) for t, head in self.heads.items()}
        if not self.training:
            out = {t: v / self.temperature[i] for i, (t, v) in enumerate(out.items())}
        return out


def attribute_inputs(images: Sequence[np.ndarray], boxes: np.ndarray, config: AttributeConfig) -> Tensor:
    """The network's inputs for faces given by their boxes (the landmark network's box frame): each box enlarged
    by ``config.context`` about its centre, resampled to ``input_size`` grey, standardised per image."""
    from ..inference.boxes import scale_boxes
    from ..inference.preprocess import make_inputs  # OpenCV is imported only when images are processed

    b = scale_boxes(np.asarray(boxes, np.float32).reshape(-1, 4), config.context).astype(np.float32)
    return torch.from_numpy(make_inputs(list(images), b, config.input_size))


@torch.inference_mode()
def predict_logits(net: AttributeNet, x: Tensor, batch_size: int = 512, mirror: bool = True) -> dict[str, Tensor]:
    """Logits (temperature applied) in eval mode, averaged with the mirrored crop's (pose bins reversed) when
    ``mirror``."""
    was = net.training
    net.eval()
    try:
        outs: dict[str, list[Tensor]] = {}
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if mirror:  # the faces and their mirror images in one pass
                n = len(xb)
                both = net(torch.cat([xb, xb.flip(3)]))
                o = {t: 0.5 * (v[:n] + (v[n:, POSE_MIRROR] if t == "pose" else v[n:])) for t, v in both.items()}
            else:
                o = net(xb)
            for t, v in o.items():
                outs.setdefault(t, []).append(v)
        return {t: torch.cat(v) for t, v in outs.items()}
    finally:
        net.train(was)


@torch.inference_mode()
def attribute_probabilities(net: AttributeNet, x: Tensor) -> dict[str, np.ndarray]:
    """Calibrated class probabilities ``{task: float32 [N, C]}`` (mirror-averaged logits, fitted temperature)."""
    return {t: F.softmax(v.float(), 1).cpu().numpy() for t, v in predict_logits(net, x, len(x) or 1).items()}


#: The shipped attribute network (see ``weights/ATTRIBUTES.md``).
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "attributes_5pt.pt"


def shipped_attribute_net_available() -> bool:
    return WEIGHTS.is_file()


def save_attribute_net(net: AttributeNet, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> dict:
    """Write ``path`` (config + float16 state dict; the batch-norm statistics and temperatures as float32) and
    ``path.json`` with its sha256 and ``meta`` (the model card's command, data, seed and metrics)."""
    from ..util.files import atomic_torch_save, atomic_write_text
    from .weights import file_sha256

    path = Path(path)
    config = {**asdict(net.config), "channels": list(net.config.channels)}
    state = {k: (v.half() if v.is_floating_point() and not k.endswith(("running_mean", "running_var",
                                                                        "temperature")) else v).clone()
             for k, v in net.state_dict().items()}
    atomic_torch_save({"format": "tcdcn_ext.attributes/1", "config": config, "state_dict": state}, path)
    record = {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size, "config": config,
              "meta": dict(meta or {})}
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True, default=str))
    return record


def load_attribute_net(path: str | os.PathLike | None = None) -> AttributeNet:
    """An :class:`AttributeNet` from ``path`` (default: the shipped one), in eval mode, float32. The file's sha256
    is checked against the ``.json`` record beside it and it is read with ``weights_only=True``;
    :class:`tcdcn_ext.models.WeightsError` names the file on any problem."""
    from .weights import WeightsError, load_checked

    path = WEIGHTS if path is None else Path(path)
    record = load_checked(path, "attribute network weights")
    try:
        c = dict(record["config"])
        c["channels"] = tuple(c["channels"])
        net = AttributeNet(AttributeConfig(**c))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in record["state_dict"].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: not an attribute network record ({exc})") from exc
    net.requires_grad_(False)
    return net.eval()
