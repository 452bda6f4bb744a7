"""The whole Aligner pipeline (YuNet, box calibration, re-boxing passes) on the validation faces of mtfl/train.

Each held-out 128x128 training crop (the seed-0 split of ``tcdcn-train``, never the test set) is given as a whole
image; the detected face whose box overlaps the annotated box most (IoU >= 0.3) is scored (mean point error over
the inter-ocular distance; failure: > 10 %). This is where the Aligner's ``refine`` default was chosen.

    python benchmarks/eval_val_pipeline.py --model 5pt --refine 1 2 3
"""

from __future__ import annotations

import argparse

from tcdcn_ext import Aligner
from tcdcn_ext.training import evaluate
from tcdcn_ext.training.datasets import load_staged
from tcdcn_ext.training.train import default_data_root, validation_split

from eval_end_to_end import matched_faces  # (benchmarks/, beside this script)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="5pt")
    p.add_argument("--refine", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    fs = load_staged(default_data_root() / "mtfl" / "train", progress=False)
    _, val = validation_split(len(fs), args.val_fraction, args.seed)
    va = fs.subset(val)
    for refine in args.refine:
        keep, pred = matched_faces(Aligner(model=args.model, detector="yunet", refine=refine).align_batch(va.images),
                                   va.boxes)
        err = evaluate.landmark_errors(pred, va.landmarks[keep], "inter_ocular")
        print(f"{args.model} refine={refine}: {100 * err.mean():.3f} % error, "
              f"{100 * evaluate.failure_rate(err):.2f} % failures, {len(keep)}/{len(va)} faces found", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
