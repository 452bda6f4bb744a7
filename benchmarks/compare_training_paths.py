"""Does a training path change what training reaches? (issue 17: "a model trained with the fast training path
reaches the same validation error as the fp32 path, same seed and epochs, within seed noise").

Reads two folders of ``benchmarks/ablation_seeds.py`` runs of one variant (``--variant``, a run-folder name such as
``FLD_all``) made with the same command and seeds by two versions of the code, and prints per seed the best
validation error (``summary.json``) and the mtfl/test NME and failure rate (``test_errors.npz``), then the paired
difference new - old over seeds and faces with its 95 % bootstrap interval, next to the spread between seeds:

    python benchmarks/ablation_seeds.py --out RUNS_NEW --epochs 20 --recipes today --variants FLD_all
    python benchmarks/compare_training_paths.py --old RUNS_OLD/today --new RUNS_NEW/today --variant FLD_all \\
        --json benchmarks/results/training_path_equivalence.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_seeds import paired_bootstrap  # noqa: E402


def load(folder: Path, variant: str) -> dict[int, dict]:
    runs = {}
    for d in sorted(folder.glob(f"{variant}_s*")):
        seed = d.name.rsplit("_s", 1)[1]
        if not seed.isdigit() or not (d / "test_errors.npz").exists():
            continue
        summary = json.loads((d / "summary.json").read_text())
        z = np.load(d / "test_errors.npz")
        runs[int(seed)] = {"val_error": summary["best"]["val_error"], "best_epoch": summary["best"]["epoch"],
                           "errors": z["errors"]}
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="folder of the reference runs (e.g. RUNS/today)")
    p.add_argument("--new", required=True, help="folder of the runs to compare")
    p.add_argument("--variant", default="FLD_all")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    old, new = load(Path(args.old), args.variant), load(Path(args.new), args.variant)
    seeds = sorted(set(old) & set(new))
    if len(seeds) < 2:
        print(f"need at least two seeds finished in both folders; old has {sorted(old)}, new has {sorted(new)}")
        return 1
    print("| seed | val error old | val error new | test NME old | test NME new | failure old | failure new |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for s in seeds:
        a, b = old[s], new[s]
        row = {"seed": s, "val_old": a["val_error"], "val_new": b["val_error"], "nme_old": float(a["errors"].mean()),
               "nme_new": float(b["errors"].mean()), "fail_old": float((a["errors"] > 0.1).mean()),
               "fail_new": float((b["errors"] > 0.1).mean())}
        rows.append(row)
        print(f"| {s} | {100 * row['val_old']:.3f} % | {100 * row['val_new']:.3f} % | {100 * row['nme_old']:.3f} % | "
              f"{100 * row['nme_new']:.3f} % | {100 * row['fail_old']:.2f} % | {100 * row['fail_new']:.2f} % |")
    val_old, val_new = np.array([r["val_old"] for r in rows]), np.array([r["val_new"] for r in rows])
    test = paired_bootstrap(np.stack([new[s]["errors"] for s in seeds]), np.stack([old[s]["errors"] for s in seeds]))
    out = {"variant": args.variant, "seeds": seeds, "rows": rows,
           "val_mean_old": float(val_old.mean()), "val_mean_new": float(val_new.mean()),
           "val_std_between_seeds_old": float(val_old.std(ddof=1)),
           "val_mean_diff_new_minus_old": float((val_new - val_old).mean()),
           "test_new_minus_old": test}
    print(f"\nvalidation error: old {100 * val_old.mean():.3f} % (seed std {100 * val_old.std(ddof=1):.3f}), new "
          f"{100 * val_new.mean():.3f} %, mean paired difference {100 * (val_new - val_old).mean():+.3f} points")
    print(f"test NME new - old: {100 * test['nme_diff']:+.3f} points [{100 * test['nme_ci95'][0]:+.3f}, "
          f"{100 * test['nme_ci95'][1]:+.3f}]; failure {100 * test['failure_diff']:+.2f} points "
          f"[{100 * test['failure_ci95'][0]:+.2f}, {100 * test['failure_ci95'][1]:+.2f}]")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
