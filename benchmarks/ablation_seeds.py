"""The paper's ablation (Sec. 4.1-4.2) with seeds and statistics (issue 22).

Variants: FLD, FLD+pose, FLD+gender, FLD+glasses, FLD+smile, FLD+all, FLD+all without task-wise early stopping;
seeds 0-4 for FLD and FLD+all, 0-2 for the others; two recipes: ``today`` (the shipped one: absolute-error landmark
loss, Adam, shift / rotation / zoom / mirror augmentation, landmark-framed boxes) and ``paper`` (least squares, SGD
at 0.003, light jitter: shifts up to 2 % and mirroring). Every run trains with ``tcdcn-train`` for ``--epochs`` (the
same for all) and is scored on mtfl/test with its per-face errors kept, so that differences can be tested:

* per variant: mean and standard deviation over seeds of test NME and failure rate;
* FLD+all vs FLD and FLD+all vs FLD+all without early stopping: the paired difference (same seeds, same faces) with
  a 95 % bootstrap interval, resampling seeds and faces (2,000 draws).

Runs are resumable (``--resume``; finished runs are read back) and run one after another in a driver; two drivers
may share the work on two cores when each owns its recipe (``--recipes``) or its seeds (``--seeds``). They start
with ``--out`` as working directory so that they import the installed (or ``PYTHONPATH``) package.

    python benchmarks/ablation_seeds.py --out /path/to/runs --epochs 20 [--recipes today,paper] [--report]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALL = "pose,gender,glasses,smile"
VARIANTS = {  # name: (aux tasks, extra tcdcn-train arguments, seeds)
    "FLD": ("", [], range(5)),
    "FLD+all": (ALL, [], range(5)),
    "FLD+all, no early stopping": (ALL, ["--no-early-stopping"], range(3)),
    "FLD+pose": ("pose", [], range(3)),
    "FLD+gender": ("gender", [], range(3)),
    "FLD+glasses": ("glasses", [], range(3)),
    "FLD+smile": ("smile", [], range(3)),
}
RECIPES = {
    "today": ["--landmark-loss", "l1", "--boxes", "landmarks"],
    "paper": ["--landmark-loss", "l2", "--optimizer", "sgd", "--lr", "0.003", "--max-shift", "0.02",
              "--max-rotate", "0", "--zoom", "1", "1", "--boxes", "landmarks"],
}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def plan(recipes: list[str]) -> list[tuple[str, str, int]]:
    """Runs in the order they are worth having: the main comparison first (FLD and FLD+all, seeds interleaved),
    then early stopping, then the single tasks; each recipe after the previous one."""
    out = []
    for r in recipes:
        for s in range(5):
            for v in ("FLD", "FLD+all", "FLD+all, no early stopping", "FLD+pose", "FLD+gender", "FLD+glasses",
                      "FLD+smile"):
                if s in VARIANTS[v][2]:
                    out.append((r, v, s))
    return out


def test_errors(weights: Path, test_dir: Path) -> dict:
    """Per-face inter-ocular errors [N], per-point errors [N, 5] and poses of mtfl/test for a checkpoint."""
    from tcdcn_ext.inference.boxes import from_box_frame
    from tcdcn_ext.models import load_model
    from tcdcn_ext.training import evaluate as ev
    from tcdcn_ext.training.datasets import load_staged

    fs = load_staged(test_dir, progress=False)
    model = load_model(weights)
    uv = model.predict(model.preprocess(fs.images, fs.boxes))["landmarks"].numpy()
    pred = from_box_frame(uv, fs.boxes)
    pe = ev.point_errors(pred, fs.landmarks, "inter_ocular")
    return {"errors": pe.mean(1), "point_errors": pe, "pose": fs.attributes["pose"]}


def run_one(recipe: str, variant: str, seed: int, args) -> dict:
    aux, extra, _ = VARIANTS[variant]
    out = Path(args.out).resolve() / recipe / f"{slug(variant)}_s{seed}"
    done = out / "test_errors.npz"
    if not done.exists():
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tcdcn_ext", "train", "--out", str(out), "--epochs", str(args.epochs),
               "--aux-tasks", aux, "--seed", str(seed), "--threads", "1", "--quiet", "--resume",
               *RECIPES[recipe], *extra]
        t0 = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=out.parent)
        res = test_errors(out / "best.pt", Path(args.test))
        np.savez(done, **res, train_seconds=time.time() - t0)
        e = res["errors"]
        print(f"{recipe} {variant} seed {seed}: {100 * e.mean():.3f} % / {100 * (e > 0.1).mean():.2f} %",
              flush=True)
    z = np.load(done)
    summary = json.loads((out / "summary.json").read_text())
    return {"errors": z["errors"], "point_errors": z["point_errors"], "pose": z["pose"],
            "stopped_at": summary.get("stopped_at", {}), "val_error": summary.get("best", {}).get("val_error")}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, draws: int = 2000, seed: int = 0) -> dict:
    """a, b: [seeds, faces] errors of two variants on the same seeds and faces. The mean of a - b and its 95 %
    interval, resampling seeds and faces with replacement (NME) and the same for the failure rate."""
    rng = np.random.default_rng(seed)
    s, n = a.shape
    d_err, d_fail = a - b, (a > 0.1).astype(float) - (b > 0.1)
    boot_e, boot_f = np.empty(draws), np.empty(draws)
    for k in range(draws):
        si = rng.integers(0, s, s)
        fi = rng.integers(0, n, n)
        boot_e[k] = d_err[np.ix_(si, fi)].mean()
        boot_f[k] = d_fail[np.ix_(si, fi)].mean()
    return {"nme_diff": float(d_err.mean()), "nme_ci95": [float(x) for x in np.percentile(boot_e, [2.5, 97.5])],
            "failure_diff": float(d_fail.mean()),
            "failure_ci95": [float(x) for x in np.percentile(boot_f, [2.5, 97.5])], "seeds": int(s), "faces": int(n)}


def report(results: dict) -> dict:
    out: dict = {}
    for recipe, runs in results.items():
        rows = {}
        for variant in VARIANTS:
            seeds = sorted(s for (v, s) in runs if v == variant)
            if not seeds:
                continue
            e = np.stack([runs[(variant, s)]["errors"] for s in seeds])
            nme, fail = e.mean(1), (e > 0.1).mean(1)
            rows[variant] = {"seeds": seeds, "nme_mean": float(nme.mean()), "nme_std": float(nme.std(ddof=1)) if
                             len(seeds) > 1 else None, "failure_mean": float(fail.mean()),
                             "failure_std": float(fail.std(ddof=1)) if len(seeds) > 1 else None,
                             "per_seed_nme": nme.tolist(), "per_seed_failure": fail.tolist()}
        tests = {}
        for a, b in (("FLD+all", "FLD"), ("FLD+all", "FLD+all, no early stopping")):
            common = sorted(set(s for (v, s) in runs if v == a) & set(s for (v, s) in runs if v == b))
            if len(common) >= 2:
                ea = np.stack([runs[(a, s)]["errors"] for s in common])
                eb = np.stack([runs[(b, s)]["errors"] for s in common])
                tests[f"{a} - {b}"] = paired_bootstrap(ea, eb)
        out[recipe] = {"variants": rows, "paired": tests}
    return out


def markdown(summary: dict) -> str:
    """The tables of ``docs/ABLATION.md`` from :func:`report`'s summary (the claims are written by hand)."""
    lines = []
    for recipe in RECIPES:
        if recipe not in summary:
            continue
        r = summary[recipe]
        lines += [f"### Recipe `{recipe}`: `{' '.join(RECIPES[recipe])}`, {summary['epochs']} epochs", "",
                  "| variant | seeds | test NME (mean +- std) | failure (mean +- std) | per seed NME |",
                  "|---|---|---|---|---|"]
        for v, row in r["variants"].items():
            sd = (lambda x: f" +- {100 * x:.3f}" if x is not None else "")
            lines.append(f"| {v} | {len(row['seeds'])} | {100 * row['nme_mean']:.3f} %{sd(row['nme_std'])} | "
                         f"{100 * row['failure_mean']:.2f} %{sd(row['failure_std'])} | "
                         + ", ".join(f"{100 * x:.3f}" for x in row["per_seed_nme"]) + " |")
        if r["paired"]:
            lines += ["", "| paired difference (same seeds, same faces) | seeds | NME difference [95 % CI] | "
                      "failure difference [95 % CI] |", "|---|---|---|---|"]
            for name, t in r["paired"].items():
                lines.append(f"| {name} | {t['seeds']} | {100 * t['nme_diff']:+.3f} [{100 * t['nme_ci95'][0]:+.3f}, "
                             f"{100 * t['nme_ci95'][1]:+.3f}] points | {100 * t['failure_diff']:+.2f} "
                             f"[{100 * t['failure_ci95'][0]:+.2f}, {100 * t['failure_ci95'][1]:+.2f}] points |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--recipes", default="today,paper")
    p.add_argument("--test", default=None, help="mtfl/test folder (default: $TCDCN_DATA/mtfl/test)")
    p.add_argument("--max-runs", type=int, default=None, help="train at most this many new runs in this call")
    p.add_argument("--seeds", default=None, help="comma list: train only these seeds (two drivers on two cores can "
                   "split a recipe between them, e.g. 0,2,4 and 1,3); the report reads every finished run")
    p.add_argument("--variants", default=None, help="comma list of run-folder names (FLD, FLD_all, FLD_pose, ...): "
                   "train and report only these")
    p.add_argument("--report", action="store_true", help="no training: summarise the finished runs")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ablation_seeds.json"))
    p.add_argument("--markdown", default=None, help="also write the tables (markdown) here")
    args = p.parse_args()
    if args.test is None:
        from tcdcn_ext.training.train import default_data_root

        args.test = str(default_data_root() / "mtfl" / "test")
    results: dict = {}
    new = 0
    wanted = None if args.variants is None else set(args.variants.split(","))
    for recipe, variant, seed in plan(args.recipes.split(",")):
        if wanted is not None and slug(variant) not in wanted:
            continue
        finished = (Path(args.out).resolve() / recipe / f"{slug(variant)}_s{seed}" / "test_errors.npz").exists()
        skip_seed = args.seeds is not None and seed not in {int(x) for x in args.seeds.split(",")}
        if not finished and (args.report or skip_seed or (args.max_runs is not None and new >= args.max_runs)):
            continue
        new += not finished
        results.setdefault(recipe, {})[(variant, seed)] = run_one(recipe, variant, seed, args)
    summary = report(results)
    summary["epochs"] = args.epochs
    summary["recipes"] = {r: RECIPES[r] for r in args.recipes.split(",")}
    Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(summary))
    print(json.dumps({r: v for r, v in summary.items() if r in RECIPES}, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
