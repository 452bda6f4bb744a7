#!/usr/bin/env bash
# One prepared check of the CUDA kernels on a fresh GPU machine (no network; the image brings torch, nvcc,
# pytest, pytest-benchmark, ninja, numpy):
#
#   1. nvidia-smi and the torch / CUDA versions          -> OUTDIR/nvidia_smi.txt, summary
#   2. build the extension in place with the CUDA kernels (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST, default 9.0)
#   3. pytest tests/test_ops.py -m needs_cuda             -> OUTDIR/junit_ops.xml
#   4. pytest tests/test_cuda_extra.py                    -> OUTDIR/junit_cuda_extra.xml
#      pytest tests/test_shift_average.py tests/test_cuda_graph.py -m needs_cuda -> OUTDIR/junit_shift_average_graph.xml
#   5. pytest benchmarks/bench_ops_cuda.py                -> OUTDIR/bench_cuda.json
#      pytest benchmarks/bench_model_cuda.py              -> OUTDIR/bench_model_cuda.json (model latency, graph,
#                                                            throughput, shift_average)
#   6. compute-sanitizer memcheck + racecheck on a small run of every kernel (where the tool exists and works)
#   7. OUTDIR/summary.json and OUTDIR/summary.md (printed last)
#
# Every step has a time limit and the script goes on after a failure; all steps together stay inside
# GPU_CHECK_BUDGET_S (default 450 s). At most 7 files are written to OUTDIR; the full log is OUTDIR/gpu_check.log.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default: all cores),
# GPU_CHECK_BUDGET_S, GPU_CHECK_SKIP_BUILD=1 (use the extension already built in place: dry runs),
# TCDCN_BENCH_DEVICE / TCDCN_BENCH_NS (passed to the benchmark; dry runs only).
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -uo pipefail

OUTDIR=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/gpu_check.log"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
T0=$(date +%s)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
STEPS="$SCRATCH/steps.tsv"
trap 'rm -rf "$SCRATCH"' EXIT
: >"$LOG"
: >"$STEPS"
cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

say() { echo "[gpu_check +$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }

# step NAME CAP_S CMD...: run CMD with a limit of min(CAP_S, what the budget has left), output to the log.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - T0) - 20))
  if [ "$left" -lt 15 ]; then
    say "$name: SKIPPED (time budget spent)"
    printf '%s\tskipped\t0\tbudget spent\n' "$name" >>"$STEPS"
    return 0
  fi
  local limit=$((cap < left ? cap : left)) t1 rc
  say "$name: start (limit ${limit}s): $*"
  t1=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  local secs=$(($(date +%s) - t1)) status=passed
  [ "$rc" -ne 0 ] && status=failed
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status=timeout
  say "$name: $status (rc $rc, ${secs}s)"
  printf '%s\t%s\t%s\trc %s\n' "$name" "$status" "$secs" "$rc" >>"$STEPS"
}

skip() {
  say "$1: SKIPPED ($2)"
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$STEPS"
}

# 1. The machine.
if command -v nvidia-smi >/dev/null 2>&1; then
  step nvidia_smi 30 bash -c "nvidia-smi > '$OUTDIR/nvidia_smi.txt' 2>&1; nvidia-smi -q -d CLOCK,POWER,PERFORMANCE >> '$OUTDIR/nvidia_smi.txt' 2>&1"
else
  skip nvidia_smi "no nvidia-smi on PATH"
fi
"$PY" - >"$SCRATCH/env.json" 2>>"$LOG" <<'PY'
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                memory_gib=round(p.total_memory / 2**30, 1))
print(json.dumps(info))
PY
say "environment: $(cat "$SCRATCH/env.json")"
HAVE_GPU=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

# 2. Build in place with the CUDA kernels.
# CUDA_HOME: the environment's, else /usr/local/cuda, else the nvcc on PATH (when it sits in a toolkit folder:
# /usr/local/bin/nvcc can be a wrapper script, which would make torch guess CUDA_HOME=/usr/local), else pip's.
if [ -z "${CUDA_HOME:-}" ]; then
  NVCC_ON_PATH=$(command -v nvcc 2>/dev/null || true)
  SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)
  for cand in /usr/local/cuda ${NVCC_ON_PATH:+"$(dirname "$(dirname "$(readlink -f "$NVCC_ON_PATH")")")"} \
    "$SITE"/nvidia/*; do
    if [ -x "$cand/bin/nvcc" ] && [ -f "$cand/include/cuda_runtime.h" ]; then
      CUDA_HOME=$cand
      break
    fi
  done
fi
if [ -n "${CUDA_HOME:-}" ]; then
  export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
  say "CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version 2>/dev/null | tail -n 1))"
fi
if [ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ]; then
  skip build "GPU_CHECK_SKIP_BUILD=1: using the in-place build already there"
elif [ -z "${CUDA_HOME:-}" ]; then
  skip build "no nvcc found (PATH, /usr/local/cuda, pip's nvidia/*/bin)"
else
  step build 300 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" setup.py build_ext --inplace
fi
step import 60 "$PY" -c 'import tcdcn_ext, torch; from tcdcn_ext import _C
ops = ["lc_conv2d", "lc_conv2d_abs_tanh", "_lc_conv2d_backward", "abs_tanh", "_abs_tanh_backward", "shift_average"]
cuda = {op: torch._C._dispatch_has_kernel_for_dispatch_key("tcdcn_ext::" + op, "CUDA") for op in ops}
print("with_cuda", _C.with_cuda, "torch", _C.torch_version, "CUDA kernels", cuda)
assert all(cuda.values()), cuda'

# 3-4. Tests (the cpu/cuda-parametrised op tests, CUDA cases only; then the CUDA extras).
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts=-ra)
if [ -f tests/test_ops.py ]; then
  step tests_ops 150 "${PYTEST[@]}" tests/test_ops.py -m needs_cuda --junitxml="$OUTDIR/junit_ops.xml"
else
  skip tests_ops "tests/test_ops.py not found"
fi
step tests_cuda_extra 200 "${PYTEST[@]}" tests/test_cuda_extra.py --junitxml="$OUTDIR/junit_cuda_extra.xml"
step tests_shift_average_graph 120 "${PYTEST[@]}" tests/test_shift_average.py tests/test_cuda_graph.py -m needs_cuda \
  --junitxml="$OUTDIR/junit_shift_average_graph.xml"

# 5. Benchmarks.
step bench_cuda 200 "${PYTEST[@]}" benchmarks/bench_ops_cuda.py --benchmark-json="$OUTDIR/bench_cuda.json" \
  --benchmark-columns=median,iqr,rounds --benchmark-sort=name
step bench_model_cuda 150 "${PYTEST[@]}" benchmarks/bench_model_cuda.py --benchmark-json="$OUTDIR/bench_model_cuda.json" \
  --benchmark-columns=median,iqr,rounds --benchmark-sort=name

# 6. Memory errors and shared-memory races in every kernel, on small shapes (the fp64 gradcheck shapes plus a
# split-over-faces grad_weight). Needs a working compute-sanitizer (Firecracker machines; not gVisor).
cat >"$SCRATCH/sanitize.py" <<'PY'
import torch
from tcdcn_ext import ops
torch.manual_seed(0)
dev = "cuda"
for n, c_in, h, w, k, c_out, st, pd in [(3, 5, 7, 6, 3, 70, (2, 1), (1, 1)), (600, 4, 4, 4, 2, 6, (1, 1), (0, 0))]:
    ho, wo = ops.lc_output_size((h, w), k, st, pd)
    x = torch.randn(n, c_in, h, w, device=dev, requires_grad=True)
    wt = torch.randn(ho, wo, c_in, k, k, c_out, device=dev, requires_grad=True)
    b = torch.randn(c_out, ho, wo, device=dev, requires_grad=True)
    y = ops.abs_tanh(ops.lc_conv2d(x, wt, b, st, pd))
    y.backward(torch.randn_like(y))
    with torch.no_grad():
        ops.lc_conv2d_abs_tanh(x, wt, b, st, pd)
torch.cuda.synchronize()
print("sanitize run done")
PY
if [ "$HAVE_GPU" = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
  step sanitizer_memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 99 "$PY" "$SCRATCH/sanitize.py"
  step sanitizer_racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 99 "$PY" "$SCRATCH/sanitize.py"
else
  skip sanitizer "no GPU or no compute-sanitizer on PATH"
fi

# 7. Summary.
"$PY" - "$OUTDIR" "$SCRATCH" "$(($(date +%s) - T0))" <<'PY' 2>>"$LOG" || echo "gpu_check: the summary writer failed (see $LOG)"
import json, os, sys
import xml.etree.ElementTree as ET

out, scratch, wall = sys.argv[1], sys.argv[2], int(sys.argv[3])
summary = {"wall_s": wall, "steps": [], "tests": {}, "benchmarks": []}
try:
    summary["environment"] = json.load(open(os.path.join(scratch, "env.json")))
except Exception as exc:  # torch failed to import: the log says why
    summary["environment"] = {"error": repr(exc)}
for line in open(os.path.join(scratch, "steps.tsv")):
    name, status, secs, note = (line.rstrip("\n").split("\t") + ["", "", ""])[:4]
    summary["steps"].append({"step": name, "status": status, "seconds": int(secs or 0), "note": note})

for key, fname in (("test_ops (needs_cuda)", "junit_ops.xml"), ("test_cuda_extra", "junit_cuda_extra.xml"),
                   ("test_shift_average + test_cuda_graph (needs_cuda)", "junit_shift_average_graph.xml")):
    path = os.path.join(out, fname)
    if not os.path.exists(path):
        continue
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    bad = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                msg = (el.get("message") or "").strip().splitlines()
                bad.append(f"{case.get('classname')}::{case.get('name')}: {msg[0][:200] if msg else tag}")
    counts["failed_cases"] = bad
    summary["tests"][key] = counts

bench_path = os.path.join(out, "bench_cuda.json")
rows = {}
if os.path.exists(bench_path):
    data = json.load(open(bench_path))
    summary["benchmark_machine"] = {k: data.get("machine_info", {}).get(k) for k in ("gpu", "torch", "cpu_isa")}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "layer" not in info:
            key = ("abs_tanh", info.get("elements"), "elementwise")
        else:
            key = (info["layer"], info["n"], info["mode"])
        rows.setdefault(key, {})[info.get("impl")] = (b["stats"]["median"], info.get("gflop"))
    for key in sorted(rows, key=lambda k: (str(k[2]), int(k[1] or 0), str(k[0]))):
        r = rows[key]
        ours, ref = r.get("ours", (None, None)), r.get("reference", (None, None))
        entry = {"layer": key[0], "n": key[1], "mode": key[2],
                 "ours_median_ms": ours[0] and 1e3 * ours[0], "reference_median_ms": ref[0] and 1e3 * ref[0]}
        if ours[0] and ref[0]:
            entry["speedup_vs_reference"] = ref[0] / ours[0]
        if ours[0] and ours[1]:
            entry["ours_tflops"] = ours[1] / ours[0] / 1e3
        summary["benchmarks"].append(entry)

model_path = os.path.join(out, "bench_model_cuda.json")
summary["model_benchmarks"] = []
if os.path.exists(model_path):
    for b in json.load(open(model_path)).get("benchmarks", []):
        info = b.get("extra_info", {})
        summary["model_benchmarks"].append({"name": b["name"], "median_ms": 1e3 * b["stats"]["median"],
                                            **{k: info.get(k) for k in ("us_per_face", "faces_per_s",
                                                                        "ratio_vs_reference", "ratio_vs_one_pass")}})

json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)

env = summary["environment"]
fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
md = ["# tcdcn_ext GPU check", "",
      f"GPU: {env.get('gpu', 'none')} (sm {env.get('capability', '-')}, {env.get('multiprocessors', '-')} SMs), "
      f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), python {env.get('python')}; wall {wall} s", "",
      "| step | status | s | note |", "|---|---|---|---|"]
md += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['note']} |" for s in summary["steps"]]
md += ["", "| tests | passed | failed | errors | skipped |", "|---|---|---|---|---|"]
for key, c in summary["tests"].items():
    md.append(f"| {key} | {c['passed']} | {c['failures']} | {c['errors']} | {c['skipped']} |")
for key, c in summary["tests"].items():
    md += [f"- FAILED {x}" for x in c["failed_cases"][:20]]
if summary["benchmarks"]:
    md += ["", "| mode | N | layer | ours (ms) | reference (ms) | speedup | ours TFLOP/s |", "|---|---|---|---|---|---|---|"]
    for e in summary["benchmarks"]:
        md.append(f"| {e['mode']} | {e['n']} | {e['layer']} | {fmt(e['ours_median_ms'], '.4f')} | "
                  f"{fmt(e['reference_median_ms'], '.4f')} | {fmt(e.get('speedup_vs_reference'), '.2f')}x | "
                  f"{fmt(e.get('ours_tflops'), '.2f')} |")
if summary["model_benchmarks"]:
    md += ["", "| model row | median (ms) | us/face | faces/s | vs reference | vs one pass |", "|---|---|---|---|---|---|"]
    for e in summary["model_benchmarks"]:
        md.append(f"| {e['name']} | {e['median_ms']:.4f} | {fmt(e['us_per_face'], '.2f')} | "
                  f"{fmt(e['faces_per_s'], '.3g')} | {fmt(e['ratio_vs_reference'], '.2f')} | "
                  f"{fmt(e['ratio_vs_one_pass'], '.2f')} |")
open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY

say "done in $(($(date +%s) - T0)) s; results in $OUTDIR"
if cut -f2 "$STEPS" | grep -qE '^(failed|timeout)$'; then
  exit 1
fi
exit 0
