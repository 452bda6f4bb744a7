#!/usr/bin/env bash
# Sanitizer job: build tcdcn_ext with DEBUG=1 TCDCN_SANITIZE=1 (-O0 -g -fsanitize=address,undefined) in a copy of
# the sources, then run the operator tests (tests/test_ops.py, tests/test_fuzz_ops.py) under ASan + UBSan and say
# CLEAN or DIRTY. The checkout's own tcdcn_ext/_C*.so is never touched.
#
#   scripts/sanitize.sh                       # default: the non-slow op tests
#   scripts/sanitize.sh -m slow -k fuzz       # extra pytest arguments replace "-m 'not slow'"
#
# Environment: PYTHON (default: python3 on PATH; the interpreter whose torch the build uses), MAX_JOBS (default 1),
# TCDCN_SANITIZE_DIR (build copy; default ${TMPDIR:-/tmp}/tcdcn_sanitize, reused so a rerun only recompiles what
# changed). Exit status: 0 clean, 1 dirty (a sanitizer report or a failing test), 2 the build failed.
#
# Why the options: Python and torch are not instrumented, so the ASan runtime must be loaded before them
# (LD_PRELOAD), and CPython's arenas/interned objects "leak" by design (detect_leaks=0). Every report is also
# written to a log file (log_path) so that a report from inside a test whose output pytest captured is not missed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=${TCDCN_SANITIZE_DIR:-${TMPDIR:-/tmp}/tcdcn_sanitize}
export MAX_JOBS=${MAX_JOBS:-1}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

echo "sanitize: copying sources to $WORK"
mkdir -p "$WORK"
# Refresh the sources but keep build/ (ninja then recompiles only what changed). cp -p keeps mtimes so unchanged
# files are not rebuilt.
rm -rf "$WORK/csrc" "$WORK/tests" "$WORK/reports"
find "$WORK/tcdcn_ext" -name '*.py' -delete 2>/dev/null || true
cp -p "$ROOT/setup.py" "$ROOT/pyproject.toml" "$WORK/"
cp -pr "$ROOT/csrc" "$ROOT/tests" "$WORK/"
mkdir -p "$WORK/tcdcn_ext"
(cd "$ROOT/tcdcn_ext" && find . -path ./__pycache__ -prune -o -type f ! -name '_C*.so' ! -name '*.pyc' -print) |
  while read -r f; do mkdir -p "$WORK/tcdcn_ext/$(dirname "$f")"; cp -p "$ROOT/tcdcn_ext/$f" "$WORK/tcdcn_ext/$f"; done

echo "sanitize: building (DEBUG=1 TCDCN_SANITIZE=1 TCDCN_FORCE_CPU=1 MAX_JOBS=$MAX_JOBS) with $PYTHON"
if ! (cd "$WORK" && DEBUG=1 TCDCN_SANITIZE=1 TCDCN_FORCE_CPU=1 "$PYTHON" setup.py build_ext --inplace \
        >"$WORK/build.log" 2>&1); then
  tail -n 40 "$WORK/build.log"
  echo "sanitize: BUILD FAILED after $(elapsed) s (log: $WORK/build.log)"
  exit 2
fi
so=$(ls "$WORK"/tcdcn_ext/_C*.so)
# (grep reads all of nm's output: with pipefail, grep -q quitting early fails the pipeline by SIGPIPE on a large .so)
if ! nm -D "$so" | grep __asan_report >/dev/null; then
  echo "sanitize: BUILD FAILED: $so is not instrumented (no __asan_report symbols)"
  exit 2
fi
echo "sanitize: built $so after $(elapsed) s"

# libstdc++ is preloaded too: python does not link it, and ASan's __cxa_throw interceptor must find the real
# function when the runtime starts, or the first C++ exception (any TORCH_CHECK) aborts with "CHECK failed:
# real___cxa_throw != 0".
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBSTDCXX=$(gcc -print-file-name=libstdc++.so)
mkdir -p "$WORK/reports"
export LD_PRELOAD="$LIBASAN $LIBSTDCXX"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1:log_path=$WORK/reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$WORK/reports/ubsan"
export PYTHONDONTWRITEBYTECODE=1
if [ $# -eq 0 ]; then set -- -m "not slow"; fi

cd "$WORK"
# Refuse to run if the interpreter would import another build of tcdcn_ext (e.g. an installed wheel).
"$PYTHON" -c "import tcdcn_ext, sys; f = tcdcn_ext._C.__file__; sys.exit(0 if f.startswith('$WORK') else
  f'sanitize: imported {f}, not the sanitized build')"
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_fuzz_ops.py "$@" 2>&1 | tee "$WORK/pytest.log"
rc=${PIPESTATUS[0]}
set -e
unset LD_PRELOAD

reports=$(ls "$WORK"/reports/ 2>/dev/null | wc -l)
if [ "$reports" -gt 0 ]; then
  for f in "$WORK"/reports/*; do echo "== $f"; head -n 60 "$f"; done
fi
if [ "$rc" -eq 0 ] && [ "$reports" -eq 0 ]; then
  echo "sanitize: CLEAN (ASan+UBSan, no report, tests passed) in $(elapsed) s"
  exit 0
fi
echo "sanitize: DIRTY (pytest exit $rc, $reports sanitizer report file(s) in $WORK/reports) in $(elapsed) s"
exit 1
