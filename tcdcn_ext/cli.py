"""Command-line entry points: ``tcdcn-align``, ``tcdcn-train``, ``tcdcn-train-attributes``, ``tcdcn-eval``,
``tcdcn-export`` (also ``python -m tcdcn_ext``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["align_main", "eval_main", "export_main", "main", "train_attributes_main", "train_main"]


def align_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-align``: landmarks on images, folders and videos (see ``tcdcn-align --help``)."""
    from .align_cli import main as _main

    return _main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-train``: train a model (see ``tcdcn-train --help``)."""
    from .train import main as _main

    return _main(argv)


def train_attributes_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-train-attributes``: train the attribute network (see ``tcdcn-train-attributes --help``)."""
    from .attributes import main as _main

    return _main(argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-export``: write a model as ONNX (standard operators) and/or a torch.export program (see
    ``tcdcn-export --help``)."""
    from .export import main as _main

    return _main(argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-eval``: score a model on a staged-crops folder with the paper's metrics."""
    p = argparse.ArgumentParser(prog="tcdcn-eval", description="Evaluate a TCDCN model on a folder in the staged "
                                "format (images/ + annotations.csv with box columns), using the annotated boxes.")
    p.add_argument("--model", default="5pt", help="'5pt', '68pt' or a weights .pt path")
    p.add_argument("--data", default=None, help="split folder (default: mtfl/test or 300w/test_common under "
                   "$TCDCN_DATA or ../shared/data)")
    p.add_argument("--json", default=None, help="write the summary JSON here")
    p.add_argument("--predictions", default=None, help="write per-face predictions CSV here")
    p.add_argument("--plot", default=None, help="write the CED plot PNG here")
    p.add_argument("--mirror-average", action="store_true", help="average with the mirrored face's prediction")
    p.add_argument("--averaged", action="store_true", help="TCDCN-Averaged: landmarks and attribute probabilities "
                   "averaged over 20 shifted input windows in one shift_average op per batch "
                   "(tcdcn_ext.averaging.default_shifts)")
    p.add_argument("--inference-weights", choices=["auto", "float32", "float16", "int8"], default=None,
                   help="storage of the weights on the CPU inference path (TCDCN.set_inference_weights); default: "
                        "the model's own (int8 for the shipped 5-point model, else auto)")
    p.add_argument("--attributes", default="auto",
                   help="where the attribute predictions come from: 'auto' (the shipped attribute network for a "
                        "5-point model, as the Aligner prints them; else the model's heads), 'network', 'heads', "
                        "or an attribute network weights path")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from . import data as data_mod
    from . import evaluate as ev
    from .model import load_model
    from .train import default_data_root

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if args.inference_weights is not None:
        model.set_inference_weights(args.inference_weights)
    split = Path(args.data) if args.data else default_data_root() / (
        "mtfl/test" if model.num_points == 5 else "300w/test_common")
    fs = data_mod.load_staged(split, progress=not args.quiet)
    if fs.num_points != model.num_points:
        raise SystemExit(f"tcdcn-eval: {split} has {fs.num_points}-point annotations but the model predicts "
                         f"{model.num_points}")
    if args.averaged and args.mirror_average:
        raise SystemExit("tcdcn-eval: --averaged and --mirror-average cannot be combined")
    pred, probs = ev.predict_faceset(model, fs, args.batch_size, progress=not args.quiet,
                                     mirror_average=args.mirror_average)
    if args.averaged:
        from .averaging import predict_averaged

        pred, aprobs = predict_averaged(model, fs.images, fs.boxes, batch_size=args.batch_size, return_probs=True,
                                        progress=not args.quiet)
        probs.update(aprobs)
    net = _eval_attribute_net(args.attributes, model.num_points)
    if net is not None:
        from .attributes import attribute_inputs, attribute_probabilities

        for i in range(0, len(fs), args.batch_size):
            x = attribute_inputs(fs.images[i:i + args.batch_size], fs.boxes[i:i + args.batch_size], net.config)
            for t, v in attribute_probabilities(net, x).items():
                probs.setdefault(f"_net_{t}", []).append(v)
        for t in net.config.tasks:
            probs[t] = np.concatenate(probs.pop(f"_net_{t}"))
    attrs = {k: v for k, v in fs.attributes.items() if k in probs}
    summary = ev.evaluate_predictions(pred, fs.landmarks, attrs or None, {k: probs[k] for k in attrs} or None)
    summary["model"], summary["data"], summary["faces"] = str(args.model), str(split), len(fs)
    err = ev.landmark_errors(pred, fs.landmarks, "inter_ocular" if model.num_points == 5 else "outer_corners")
    if args.json:
        ev.write_json(args.json, summary)
    if args.plot:
        ev.plot_ced({str(args.model): err}, args.plot, title=f"CED on {split.name} ({len(fs)} faces)")
    if args.predictions:
        pa = {k: (v.argmax(1), v) for k, v in probs.items()}
        ev.write_predictions_csv(args.predictions, [Path(n).name for n in fs.names], pred, pa)
    print(ev.format_table(summary))
    return 0


def _eval_attribute_net(choice: str, num_points: int):
    """tcdcn-eval's ``--attributes``: the attribute network to score, or None for the model's own heads."""
    from . import attributes as attr

    if choice == "heads" or (choice == "auto" and (num_points != 5 or not attr.shipped_attribute_net_available())):
        return None
    if num_points != 5:
        raise SystemExit("tcdcn-eval: --attributes network reads MTFL boxes: it needs 5-point data and model")
    return attr.load_attribute_net(None if choice in ("auto", "network") else choice)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tcdcn_ext {align,train,eval,export} ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"align": align_main, "train": train_main, "eval": eval_main, "export": export_main,
                "train-attributes": train_attributes_main}
    if not argv or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            return align_main(argv)  # `python -m tcdcn_ext IMG ...` behaves like tcdcn-align
        print("usage: python -m tcdcn_ext {align,train,train-attributes,eval,export} [options]   (align is the "
              "default)")
        return 0 if argv else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
