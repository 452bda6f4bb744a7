"""Command-line entry points: ``tcdcn-align``, ``tcdcn-train``, ``tcdcn-eval``, ``tcdcn-export`` (also
``python -m tcdcn_ext``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["align_main", "eval_main", "export_main", "main", "train_main"]


def align_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-align``: landmarks on images, folders and videos (see ``tcdcn-align --help``)."""
    from .align_cli import main as _main

    return _main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-train``: train a model (see ``tcdcn-train --help``)."""
    from .training.train import main as _main

    return _main(argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``tcdcn-export``: write a model as ONNX (standard operators) and/or a torch.export program (see
    ``tcdcn-export --help``)."""
    from .models.export import main as _main

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
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    import torch

    from .training.datasets import load_staged
    from .training import evaluate as ev
    from .models import load_model
    from .training.train import default_data_root

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if args.inference_weights is not None:
        model.set_inference_weights(args.inference_weights)
    split = Path(args.data) if args.data else default_data_root() / (
        "mtfl/test" if model.num_points == 5 else "300w/test_common")
    fs = load_staged(split, progress=not args.quiet)
    if fs.num_points != model.num_points:
        raise SystemExit(f"tcdcn-eval: {split} has {fs.num_points}-point annotations but the model predicts "
                         f"{model.num_points}")
    if args.averaged and args.mirror_average:
        raise SystemExit("tcdcn-eval: --averaged and --mirror-average cannot be combined")
    pred, probs = ev.predict_faceset(model, fs, args.batch_size, progress=not args.quiet,
                                     mirror_average=args.mirror_average)
    if args.averaged:
        from .inference.averaging import predict_averaged

        pred, aprobs = predict_averaged(model, fs.images, fs.boxes, batch_size=args.batch_size, return_probs=True,
                                        progress=not args.quiet)
        probs.update(aprobs)
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tcdcn_ext {align,train,eval,export} ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"align": align_main, "train": train_main, "eval": eval_main, "export": export_main}
    if not argv or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            return align_main(argv)  # `python -m tcdcn_ext IMG ...` behaves like tcdcn-align
        print("usage: python -m tcdcn_ext {align,train,eval,export} [options]   (align is the default)")
        return 0 if argv else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
