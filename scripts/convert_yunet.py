"""Convert the YuNet ONNX file to the weights that ship with tcdcn_ext (``tcdcn_ext/weights/yunet.pt`` + ``.json``).

    pip install onnx     # this script only; the library never imports onnx
    python scripts/convert_yunet.py ../shared/models/yunet/face_detection_yunet_2026may.onnx

The ONNX graph (opset 11, batch-norm already folded into the convolutions) is walked in order: the first Conv is
the stem, then every (1x1 Conv, 3x3 grouped Conv) pair is one depthwise-separable block, assigned to
:data:`tcdcn_ext.yunet.YUNET_LAYERS` and ``NECK`` in graph order; the heads' four (1x1, 3x3) pairs per stride
(cls, bbox, obj, kps in the graph's order of outputs) are stacked into one 16-channel head per stride in the order
cls, obj, bbox, kps. The script checks every shape and the wiring it assumes (ReLU after each backbone block, the
three MaxPools, the two Resize + Add merges), so a different graph is refused rather than mis-converted, then checks
that the converted module matches the ONNX file run by OpenCV's DNN engine on a random image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def convert(onnx_path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    from tcdcn_ext.yunet import HEADS, NECK, YUNET_LAYERS

    model = onnx.load(str(onnx_path))
    g = model.graph
    init = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = [n for n in g.node if n.op_type == "Conv"]

    def attrs(n):
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

    def wb(n):
        return init[n.input[1]], init[n.input[2]]

    out: dict[str, np.ndarray] = {}
    stem = convs[0]
    w, b = wb(stem)
    if w.shape != (16, 3, 3, 3) or attrs(stem)["strides"] != [2, 2]:
        raise SystemExit(f"unexpected stem {stem.name}: weight {w.shape}, {attrs(stem)}")
    out["stem_weight"], out["stem_bias"] = w, b

    pairs = []  # (pointwise node, depthwise node)
    for n in convs[1:]:
        w, _ = wb(n)
        if w.shape[2:] == (1, 1):
            nxt = consumers.get(n.output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != "Conv" or init[nxt[0].input[1]].shape[1:] != (1, 3, 3):
                raise SystemExit(f"{n.name}: a 1x1 conv not followed by one 3x3 depthwise conv")
            dw = nxt[0]
            if attrs(dw)["group"] != init[dw.input[1]].shape[0] or attrs(dw)["pads"] != [1, 1, 1, 1]:
                raise SystemExit(f"{dw.name}: not a padded depthwise 3x3 conv ({attrs(dw)})")
            pairs.append((n, dw))
    body = YUNET_LAYERS + NECK
    if len(pairs) != len(body) + 4 * len(HEADS):
        raise SystemExit(f"expected {len(body)} blocks + {4 * len(HEADS)} head pairs, found {len(pairs)} pairs")
    for blk, (pw, dw) in zip(body, pairs):
        wp, bp = wb(pw)
        wd, bd = wb(dw)
        if wp.shape != (blk.c_out, blk.c_in, 1, 1) or wd.shape != (blk.c_out, 1, 3, 3):
            raise SystemExit(f"block {blk.name}: shapes {wp.shape} / {wd.shape} do not match {blk}")
        follow = [c.op_type for c in consumers.get(dw.output[0], [])]
        if follow != ["Relu"]:
            raise SystemExit(f"block {blk.name}: expected a ReLU after {dw.name}, found {follow}")
        out[f"{blk.name}_pw_weight"], out[f"{blk.name}_pw_bias"] = wp[:, :, 0, 0], bp
        out[f"{blk.name}_dw_weight"], out[f"{blk.name}_dw_bias"] = wd[:, 0], bd
    if [n.op_type for n in g.node].count("MaxPool") != 4 or [n.op_type for n in g.node].count("Resize") != 2:
        raise SystemExit("expected 4 MaxPool and 2 Resize nodes")

    # Heads: find each pair's level by the feature map it reads, its kind by the graph output it reaches.
    level_of = {}
    for lvl, blk in enumerate((NECK[1], NECK[0], YUNET_LAYERS[-1])):  # stride 8, 16, 32 maps
        _, dw = pairs[body.index(blk)]
        relu = consumers[dw.output[0]][0]
        level_of[relu.output[0]] = lvl
    outputs = {o.name for o in g.output}
    kinds = {"cls": (0, 1), "obj": (1, 2), "bbox": (2, 6), "kps": (6, 16)}
    heads = [{} for _ in HEADS]
    for pw, dw in pairs[len(body):]:
        lvl = level_of.get(pw.input[0])
        if lvl is None:
            raise SystemExit(f"head conv {pw.name} reads {pw.input[0]}, not a neck/backbone output")
        name = dw.output[0]
        while name not in outputs:  # Transpose -> Reshape (-> Sigmoid) -> a graph output such as "kps_16"
            nxt = consumers.get(name, [])
            if len(nxt) != 1:
                raise SystemExit(f"head {pw.name}: {name} does not lead to one graph output")
            name = nxt[0].output[0]
        t, stride = name.split("_")
        if t not in kinds or int(stride) != 8 << lvl:
            raise SystemExit(f"head {pw.name} at stride {8 << lvl} feeds {name}")
        heads[lvl][t] = (wb(pw), wb(dw))
    for lvl, blk in enumerate(HEADS):
        if sorted(heads[lvl]) != sorted(kinds):
            raise SystemExit(f"stride {8 << lvl}: heads {sorted(heads[lvl])}")
        pw_w = np.zeros((16, 64), np.float32)
        pw_b = np.zeros(16, np.float32)
        dw_w = np.zeros((16, 3, 3), np.float32)
        dw_b = np.zeros(16, np.float32)
        for t, (a, z) in kinds.items():
            (wp, bp), (wd, bd) = heads[lvl][t]
            if wp.shape != (z - a, 64, 1, 1) or wd.shape != (z - a, 1, 3, 3):
                raise SystemExit(f"stride {8 << lvl} {t}: shapes {wp.shape} {wd.shape}")
            pw_w[a:z], pw_b[a:z], dw_w[a:z], dw_b[a:z] = wp[:, :, 0, 0], bp, wd[:, 0], bd
        out[f"{blk.name}_pw_weight"], out[f"{blk.name}_pw_bias"] = pw_w, pw_b
        out[f"{blk.name}_dw_weight"], out[f"{blk.name}_dw_bias"] = dw_w, dw_b
    return out


def check_against_opencv(net, onnx_path: Path) -> float:
    """Max abs difference between our module and OpenCV's DNN run of the ONNX on a random 96x128 image."""
    import cv2
    import torch

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (96, 128, 3)).astype(np.float32)
    dnn = cv2.dnn.readNet(str(onnx_path))
    dnn.setInput(cv2.dnn.blobFromImage(img))
    names = [f"{k}_{s}" for s in (8, 16, 32) for k in ("cls", "obj", "bbox", "kps")]
    ref = dict(zip(names, dnn.forward(names)))
    with torch.no_grad():
        heads = net.forward_reference(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous())
    worst = 0.0
    for lvl, s in enumerate((8, 16, 32)):
        h = heads[lvl][0].reshape(16, -1).T.numpy()
        sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
        ours = {"cls": sig(h[:, 0:1]), "obj": sig(h[:, 1:2]), "bbox": h[:, 2:6], "kps": h[:, 6:16]}
        for k, v in ours.items():
            theirs = np.asarray(ref[f"{k}_{s}"]).reshape(v.shape)
            worst = max(worst, float(np.abs(theirs - v).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("onnx", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "tcdcn_ext" / "weights" / "yunet.pt")
    args = p.parse_args(argv)
    import torch

    from tcdcn_ext.yunet import YuNet

    arrays = convert(args.onnx)
    net = YuNet()
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    diff = check_against_opencv(net.eval(), args.onnx)
    print(f"max |ours - OpenCV DNN| on a random image: {diff:.3g}")
    if diff > 1e-3:
        raise SystemExit("conversion does not match the ONNX graph")
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, args.out)
    src = hashlib.sha256(args.onnx.read_bytes()).hexdigest()
    record = {"file": args.out.name, "sha256": hashlib.sha256(args.out.read_bytes()).hexdigest(),
              "bytes": args.out.stat().st_size, "source": args.onnx.name, "source_sha256": src,
              "parameters": int(sum(v.size for v in arrays.values())),
              "command": "python scripts/convert_yunet.py ../shared/models/yunet/" + args.onnx.name,
              "licence": "MIT, Copyright (c) 2020 Shiqi Yu (YUNET_LICENSE)"}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
