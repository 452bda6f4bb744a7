"""Paper Sec. 4.1-4.2 experiments: which auxiliary tasks help, seeds, task-wise early stopping on/off, and task
relatedness (Fig. 5b). Each configuration is trained with ``tcdcn-train`` and scored on ``mtfl/test`` (2,995 AFLW
faces, annotated boxes); results go to ``benchmarks/results/ablation.json`` and ``docs/ABLATION.md``.

    python benchmarks/ablation.py --epochs 20 --jobs 2 --out /path/to/runs

Runs already finished in ``--out`` are reused, so the script can be stopped and restarted. The runs are started
with ``--out`` as their working directory, so they import the installed (or ``PYTHONPATH``) tcdcn_ext, never a
source tree in the current directory that may be rebuilt while they run. The ablation uses a
shorter schedule than the shipped model (see tcdcn_ext/weights/MODEL_CARD.md) so that all runs fit in an evening
on two cores; compare rows with each other, not with the shipped model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALL = "pose,gender,glasses,smile"
CONFIGS = {  # name: (aux tasks, seed, extra args)
    "FLD": ("", 0, []),
    "FLD+pose": ("pose", 0, []),
    "FLD+gender": ("gender", 0, []),
    "FLD+glasses": ("glasses", 0, []),
    "FLD+smile": ("smile", 0, []),
    "FLD+all": (ALL, 0, []),
    "FLD+all (no early stopping)": (ALL, 0, ["--no-early-stopping"]),
    "FLD+all (least squares, as the paper)": (ALL, 0, ["--landmark-loss", "l2"]),
    # Task-wise early stopping's k (strip, in epochs) and epsilon, chosen by VALIDATION error (val_error column).
    "FLD+all k=3 eps=0.5": (ALL, 0, ["--strip-k", "3"]),
    "FLD+all k=10 eps=0.5": (ALL, 0, ["--strip-k", "10"]),
    "FLD+all k=5 eps=0.1": (ALL, 0, ["--epsilon", "0.1"]),
    "FLD+all k=5 eps=2": (ALL, 0, ["--epsilon", "2"]),
    "FLD seed 1": ("", 1, []),
    "FLD seed 2": ("", 2, []),
    "FLD+all seed 1": (ALL, 1, []),
    "FLD+all seed 2": (ALL, 2, []),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def run_one(name: str, args) -> dict:
    aux, seed, extra = CONFIGS[name]
    out = Path(args.out).resolve() / slug(name)
    summary = out / "test_summary.json"
    if summary.exists():
        res = json.loads(summary.read_text())
        if res.get("val_error") is None and (out / "summary.json").exists():
            res["val_error"] = json.loads((out / "summary.json").read_text()).get("best", {}).get("val_error")
        return res
    cmd = [sys.executable, "-m", "tcdcn_ext", "train", "--out", str(out), "--epochs", str(args.epochs),
           "--aux-tasks", aux, "--seed", str(seed), "--threads", "1", "--quiet", *args.train_args.split(), *extra]
    if (out / "checkpoint.pt").exists():
        cmd.append("--resume")
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=out.parent)
    subprocess.run([sys.executable, "-m", "tcdcn_ext", "eval", "--model", str(out / "best.pt"), "--json",
                    str(summary), "--threads", "1", "--quiet"], check=True, stdout=subprocess.DEVNULL, cwd=out.parent)
    res = json.loads(summary.read_text())
    res["train_seconds"] = round(time.time() - t0)
    run_summary = json.loads((out / "summary.json").read_text())
    res["stopped_at"] = run_summary.get("stopped_at", {})
    res["val_error"] = run_summary.get("best", {}).get("val_error")
    res["relatedness"] = relatedness(out / "best.pt")
    summary.write_text(json.dumps(res, indent=2))
    print(f"{name}: {100 * res['mean_error']:.2f} % / {100 * res['failure_rate']:.2f} %", flush=True)
    return res


def relatedness(weights: Path) -> dict:
    """Fig. 5b: Pearson correlation, over the shared feature's units, between how strongly the landmark head and
    each auxiliary head use each unit (mean |weight| over the head's outputs)."""
    import torch

    sd = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    lm = sd["landmark_head.weight"].float().abs().mean(0).numpy()
    out = {}
    for k, v in sd.items():
        if k.startswith("aux_heads.") and k.endswith(".weight"):
            a = v.float().abs().mean(0).numpy()
            out[k.split(".")[1]] = float(np.corrcoef(lm, a)[0, 1])
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(ROOT / "runs" / "ablation"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", default="", help="semicolon-separated config names")
    p.add_argument("--train-args", default="--landmark-loss l1", help="extra tcdcn-train arguments for every run")
    args = p.parse_args()
    names = [n for n in CONFIGS if not args.only or n in args.only.split(";")]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(names, pool.map(lambda n: run_one(n, args), names)))
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "ablation.json").write_text(json.dumps(
        {"epochs": args.epochs, "train_args": args.train_args, "results": results}, indent=2))
    lines = [f"Ablation on mtfl/test (2,995 faces), {args.epochs} epochs each, `{args.train_args}`.", "",
             "| configuration | test mean error | test failure | AUC@0.1 | validation error | aux tasks stopped at "
             "(epoch) |", "|---|---|---|---|---|---|"]
    for n, r in results.items():
        val = f"{100 * r['val_error']:.2f} %" if r.get("val_error") is not None else "-"
        lines.append(f"| {n} | {100 * r['mean_error']:.2f} % | {100 * r['failure_rate']:.2f} % | {r['auc']:.4f} | "
                     f"{val} | {r.get('stopped_at') or '-'} |")
    lines += ["", "Task relatedness (Pearson correlation of per-unit |weight| of the landmark head vs each aux head):",
              ""]
    for n, r in results.items():
        if r.get("relatedness"):
            lines.append(f"- {n}: " + ", ".join(f"{k} {v:+.2f}" for k, v in r["relatedness"].items()))
    (ROOT / "docs" / "ABLATION.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
