"""Video: jitter and lag of the tracker against a known motion, and the one-euro parameters that minimise the
error against the truth.

    python benchmarks/eval_tracking.py [--model 68pt|5pt]

Clip: the bundled portrait in a 640x480 frame moved along a smooth known path (12 px amplitude, 2 s period) with
sub-pixel wobble and pixel noise (:func:`tcdcn_ext.tracking.synthetic_moving_video`), 90 frames at 30 fps. The
truth of each frame is the landmarks of the untranslated frame plus the frame's translation. The one-euro
parameters are chosen on a clip of seed 1 (grid below); the table reports a clip of seed 0 (the same path shape,
another phase, wobble and noise). Writes ``benchmarks/results/tracking_<model>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_detector import make_frame  # noqa: E402
from tcdcn_ext import Aligner  # noqa: E402
from tcdcn_ext.tracking import measure_tracking, synthetic_moving_video  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="68pt")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    aligner = Aligner(points=int(args.model.rstrip("pt")))
    frame = make_frame("640x480", 1)
    reference = np.asarray(aligner(frame)[0].landmarks, np.float64)
    tune_frames, tune_shifts = synthetic_moving_video(frame, seed=1)
    grid = []
    for mc, beta in itertools.product([0.3, 1.0, 3.0, 10.0, 30.0], [0.0, 10.0, 100.0, 1000.0]):
        r = measure_tracking(aligner, tune_frames, tune_shifts, reference, "smooth", min_cutoff=mc, beta=beta)
        grid.append({"min_cutoff": mc, "beta": beta, **r})
        print(json.dumps(grid[-1]), flush=True)
    best = min(grid, key=lambda r: r["error_px"])
    frames, shifts = synthetic_moving_video(frame, seed=0)
    rows = {"detect every frame": measure_tracking(aligner, frames, shifts, reference, "detect"),
            "track, no smoothing": measure_tracking(aligner, frames, shifts, reference, "track"),
            "track + one-euro (previous default 1.0 / 10)": measure_tracking(aligner, frames, shifts, reference,
                                                                           "smooth", min_cutoff=1.0, beta=10.0),
            f"track + one-euro (tuned {best['min_cutoff']} / {best['beta']})":
                measure_tracking(aligner, frames, shifts, reference, "smooth", min_cutoff=best["min_cutoff"],
                                 beta=best["beta"])}
    for k, v in rows.items():
        print(f"{k:48s} error {v['error_px']:.3f} px (bias {v['bias_px']:.2f}), jitter {v['jitter_px']:.3f} px, lag {v['lag_error_px']:.3f} px, "
              f"{v['detections']} detector calls")
    out = ROOT / "benchmarks" / "results" / f"tracking_{args.model}.json"
    out.write_text(json.dumps({"command": "python benchmarks/eval_tracking.py --model " + args.model,
                               "clip": "portrait in 640x480, 12 px / 2 s path, +-0.25 px wobble, noise 2, 90 frames",
                               "tuning_seed": 1, "report_seed": 0, "grid": grid, "best": best, "rows": rows},
                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
