"""Choose TCDCN-Averaged's shift pattern on held-out *training* faces, then report the test error of the choice.

    python benchmarks/averaging_select.py --model 68pt --out benchmarks/results/averaging_68pt.json
    python benchmarks/averaging_select.py --model 5pt --out benchmarks/results/averaging_5pt.json
    python benchmarks/averaging_select.py --model 68pt --even --out benchmarks/results/averaging_68pt_even.json

Validation faces: the split ``tcdcn-train`` held out when the shipped model was trained (seed 0; 10 % of
``300w/train`` for 68 points, 5 % of ``mtfl/train`` for 5 points), so the choice never sees the test set. Error:
outer-eye-corner normalisation (68 points) or inter-ocular (5 points), in percent. Prints a table (markdown) and
writes every number to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tcdcn_ext import data as data_mod
from tcdcn_ext import evaluate as ev
from tcdcn_ext.averaging import default_shifts, make_shifts, predict_averaged
from tcdcn_ext.model import load_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="68pt", choices=["5pt", "68pt"])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--radii", default="1,2,3,4,5,6")
    p.add_argument("--out", default=None)
    p.add_argument("--even", action="store_true",
                   help="instead: the patterns rounded to even pixels (one pooling phase: faster shared convolutions), "
                        "each against the default by paired difference on the validation faces")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.model == "68pt":
        train, test, frac, norm = "300w/train", "300w/test_common", 0.1, "outer_corners"
    else:
        train, test, frac, norm = "mtfl/train", "mtfl/test", 0.05, "inter_ocular"
    model = load_model(args.model)
    fs = data_mod.load_staged(Path(args.data) / train, progress=False)
    perm = np.random.default_rng(0 + 1_000_003).permutation(len(fs))
    val = fs.subset(np.sort(perm[:max(1, int(round(frac * len(fs))))]))

    def err(faces, shifts) -> float:
        pred = predict_averaged(model, faces.images, faces.boxes, shifts)
        return float(100 * ev.landmark_errors(pred, faces.landmarks, norm).mean())

    if args.even:
        return _even_patterns(args, model, val, norm, radii=[float(r) for r in args.radii.split(",")])
    t0 = time.time()
    res = {"model": args.model, "validation": f"{train} held-out {len(val)} faces (seed 0)",
           "single_val": err(val, [[0, 0]]), "table": {}}
    radii = [float(r) for r in args.radii.split(",")]
    for pattern in ("rings", "ring", "grid"):
        for r in radii:
            if pattern == "grid" and r > 3:
                continue
            res["table"][f"{pattern} {r:g}"] = err(val, make_shifts(pattern, r))
            print(f"{pattern:6s} r={r:g}: {res['table'][f'{pattern} {r:g}']:.3f} %  ({time.time() - t0:.0f} s)",
                  file=sys.stderr)
    best = min(res["table"], key=res["table"].get)
    res["best_on_validation"] = best
    te = data_mod.load_staged(Path(args.data) / test, progress=False)
    res["test"] = {"faces": len(te), "single": err(te, [[0, 0]]), "default": err(te, default_shifts(model)),
                   "best_on_validation": err(te, make_shifts(*best.split()[:1], float(best.split()[1]))),
                   "default_shifts": default_shifts(model).tolist()}
    print(f"| pattern | " + " | ".join(f"r={r:g}" for r in radii) + " |")
    print("|---" * (len(radii) + 1) + "|")
    for pattern in ("rings", "ring", "grid"):
        cells = [f"{res['table'][f'{pattern} {r:g}']:.3f}" if f"{pattern} {r:g}" in res["table"] else ""
                 for r in radii]
        print(f"| {pattern} | " + " | ".join(cells) + " |")
    print(f"single pass (validation): {res['single_val']:.3f} %; best: {best}")
    print(f"test ({len(te)} faces): single {res['test']['single']:.3f} %, default averaged "
          f"{res['test']['default']:.3f} %, validation's best ({best}) {res['test']['best_on_validation']:.3f} %")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


def _even_patterns(args, model, val, norm, radii) -> int:
    """Each pattern rounded to even pixels vs the model's default, paired on the validation faces."""
    def errs(shifts) -> np.ndarray:
        pred = predict_averaged(model, val.images, val.boxes, shifts)
        return 100 * ev.landmark_errors(pred, val.landmarks, norm)

    base = errs(default_shifts(model))
    res = {"model": args.model, "default": float(base.mean()), "even": {}}
    print("| pattern (rounded to even pixels) | validation % | paired diff to the default (SE) | distinct |")
    print("|---|---|---|---|")
    for pattern in ("rings", "ring", "grid"):
        for r in radii:
            if pattern == "grid" and r not in (1, 2):
                continue
            shifts = (2 * np.rint(make_shifts(pattern, r) / 2)).astype(np.int64)
            e = errs(shifts)
            d = e - base
            row = {"error": float(e.mean()), "diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))),
                   "distinct": int(len(np.unique(shifts, axis=0)))}
            res["even"][f"{pattern} {r:g}"] = row
            print(f"| {pattern} {r:g} | {row['error']:.3f} | {row['diff']:+.3f} ({row['se']:.3f}) | {row['distinct']} |",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
