"""Validation error of 5-point models under two framings of the same held-out training faces.

The MTFL test faces' boxes were made from their true landmarks by a box model (data README), and the Aligner's
refining pass re-boxes every detected face from its predicted landmarks the same way; the training split's own
boxes come from a face detector. This scores models on the validation faces (the seed-0 split of
``tcdcn-train``, never the test set) framed both ways, so that a choice between models trained on either framing
is made on validation faces.

    python benchmarks/eval_val_boxes.py --model 5pt runs/5pt_lmbox/best.pt --json out.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tcdcn_ext.inference.boxes import from_box_frame
from tcdcn_ext.models import load_model
from tcdcn_ext.training import evaluate as ev
from tcdcn_ext.training.datasets import load_staged
from tcdcn_ext.training.reports import write_json
from tcdcn_ext.training.train import default_data_root, landmark_boxes, validation_split


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", required=True, help="'5pt' or weights paths")
    p.add_argument("--data", default=None, help="training split (default: mtfl/train)")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    split = Path(args.data) if args.data else default_data_root() / "mtfl" / "train"
    fs = load_staged(split, progress=False)
    _, val = validation_split(len(fs), args.val_fraction, args.seed)
    va = fs.subset(val)
    framings = {"given": va.boxes, "landmarks": landmark_boxes(va)}
    rows = []
    for name in args.model:
        model = load_model(name)
        for framing, boxes in framings.items():
            x = model.preprocess(va.images, boxes)
            uv = model.predict(x)["landmarks"].numpy()
            pred = from_box_frame(uv, boxes)
            err = ev.landmark_errors(pred, va.landmarks, "inter_ocular")
            rows.append({"model": name, "framing": framing, "faces": len(err), "mean_error": float(err.mean()),
                         "failure_rate": ev.failure_rate(err)})
            print(f"{name:40s} {framing:10s} {100 * err.mean():.3f} % error, {100 * ev.failure_rate(err):.2f} % "
                  f"failures ({len(err)} faces)", flush=True)
    if args.json:
        write_json(args.json, {"split": str(split), "seed": args.seed, "val_fraction": args.val_fraction,
                                  "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
