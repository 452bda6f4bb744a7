#!/usr/bin/env bash
# CI compile check of the CUDA kernels on a machine without a GPU.
#
# Builds tcdcn_ext with FORCE_CUDA=1 for sm_90 against a CUDA torch and pip's CUDA toolkit in a venv of its own,
# then asserts that every tcdcn_ext operator has a CUDA kernel registered with the dispatcher. Nothing runs on a
# GPU here (the kernels' numerics are checked by tests/test_cuda_extra.py and benchmarks/gpu_check.sh on a GPU
# host); this catches code that does not compile, link or register.
#
# The build happens in a scratch copy of the sources, so the in-place CPU build of the working tree
# (tcdcn_ext/_C*.so, build/) is never touched.
#
# Environment:
#   TCDCN_CUDA_VENV   venv to create or reuse (default: <repo>/.venv-cuda, ignored by git)
#   PYTHON            interpreter that creates the venv (default: python3)
#   MAX_JOBS          parallel compile jobs (default: 2)
#   KEEP_BUILD=1      keep the scratch build folder and print its path
# Exit status 0 and a final "cuda_compile_check: PASS" line on success; "cuda_compile_check: FAIL: ..." otherwise.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TCDCN_CUDA_VENV:-$REPO/.venv-cuda}
PY=${PYTHON:-python3}
TORCH_SPEC="torch==2.14.1"
TOOLKIT_SPEC="cuda-toolkit[nvcc,cccl]==13.0.3"
T0=$(date +%s)

log() { echo "[cuda_compile_check +$(($(date +%s) - T0))s] $*"; }
fail() {
  echo "cuda_compile_check: FAIL: $*"
  echo "cuda_compile_check: wall time $(($(date +%s) - T0)) s"
  exit 1
}

SCRATCH_PARENT=${TMPDIR:-/tmp}
WORK=$(mktemp -d "$SCRATCH_PARENT/tcdcn-cuda-build.XXXXXX") || fail "cannot create a scratch folder in $SCRATCH_PARENT"
if [ "${KEEP_BUILD:-0}" = 1 ]; then
  trap 'echo "cuda_compile_check: build kept in $WORK"' EXIT
else
  trap 'rm -rf "$WORK"' EXIT
fi

# 1. The venv: a CUDA 13.0 torch plus pip's nvcc and CCCL headers (no system CUDA needed).
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PY" -m venv "$VENV" || fail "could not create the venv $VENV with $PY"
fi
VPY="$VENV/bin/python"
log "pip install $TORCH_SPEC $TOOLKIT_SPEC numpy ninja pybind11 setuptools wheel"
"$VPY" -m pip install -q "$TORCH_SPEC" "$TOOLKIT_SPEC" numpy ninja pybind11 setuptools wheel \
  || fail "pip install into $VENV failed"
"$VPY" - <<'PY' || fail "the venv's torch is not a CUDA build"
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
assert torch.version.cuda is not None
PY

# 2. CUDA_HOME: the folder above the pip toolkit's bin/nvcc (site-packages/nvidia/cu13 for CUDA 13 wheels).
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
NVCC=$(ls "$SITE"/nvidia/*/bin/nvcc "$SITE"/nvidia/*/*/bin/nvcc 2>/dev/null | head -n 1)
[ -n "$NVCC" ] || fail "no nvcc found under $SITE/nvidia (is $TOOLKIT_SPEC installed?)"
export CUDA_HOME=$(dirname "$(dirname "$NVCC")")
export PATH="$CUDA_HOME/bin:$PATH"
log "CUDA_HOME=$CUDA_HOME ($("$NVCC" --version | tail -n 1))"

# 3. Build in a scratch copy of the sources.
mkdir -p "$WORK/src"
SOURCES=(setup.py pyproject.toml csrc tcdcn_ext)
[ -f "$REPO/README.md" ] && SOURCES+=(README.md)
tar -C "$REPO" --exclude='*.so' --exclude='__pycache__' -cf - "${SOURCES[@]}" \
  | tar -C "$WORK/src" -xf - || fail "could not copy the sources to $WORK/src"
export TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2}
unset TCDCN_FORCE_CPU
log "building (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS) in $WORK/src"
if ! (cd "$WORK/src" && "$VPY" setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1); then
  tail -n 80 "$WORK/build.log"
  fail "the CUDA build failed (last 80 lines of the build log above)"
fi
grep -E "tcdcn_ext build configuration|CUDA kernels:|CUDA_HOME=" "$WORK/build.log"
log "build done"

# 4. The extension imports (no GPU needed) and every op has a CUDA kernel; the binary holds sm_90 code.
(cd "$WORK/src" && "$VPY" - <<'PY') || fail "the CUDA kernels are not all registered (see above)"
import glob
import torch
import tcdcn_ext
from tcdcn_ext import _C

ops = ["lc_conv2d", "lc_conv2d_abs_tanh", "_lc_conv2d_backward", "abs_tanh", "_abs_tanh_backward", "shift_average"]
ok = bool(_C.with_cuda)
print(f"tcdcn_ext._C.with_cuda = {_C.with_cuda}")
for op in ops:
    for key in ("CPU", "CUDA"):
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"tcdcn_ext::{op}", key)
        print(f"  tcdcn_ext::{op:<22} {key:<4} kernel: {'yes' if has else 'NO'}")
        ok &= has
so = glob.glob("tcdcn_ext/_C*.so")[0]
blob = open(so, "rb").read()
has_sm90 = b"sm_90" in blob
print(f"  {so}: {len(blob) / 1e6:.1f} MB, mentions sm_90: {has_sm90}")
ok &= has_sm90
raise SystemExit(0 if ok else 1)
PY

log "done"
echo "cuda_compile_check: PASS (wall time $(($(date +%s) - T0)) s)"
