#!/usr/bin/env bash
# CI check: every runtime dependency of tcdcn_ext other than torch (read from pyproject.toml) has a binary wheel for
# every CPython that torch supports (3.10-3.14) on Linux x86-64 and aarch64, macOS arm64 and Windows x86-64, so
# that `pip install .` never has to build one (the bundled face detector needs nothing beyond them).
# pip resolves each (python, platform) without installing (--dry-run --report); a resolved file that is not a wheel
# for that platform, or no resolution, fails the check. Needs the package registry; ~10 s per combination.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEPS=$("$PY" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in (re.split(r"[<>=!~;\[ ]", x)[0] for x in deps) if d != "torch"))
EOF
)
declare -A PLATFORMS=(
  [linux-x86_64]="manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64"
  [linux-aarch64]="manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_27_aarch64 manylinux_2_28_aarch64"
  [macos-arm64]="macosx_11_0_arm64 macosx_12_0_arm64 macosx_13_0_arm64 macosx_14_0_arm64 macosx_11_0_universal2"
  [windows-amd64]="win_amd64"
)
declare -A PATTERN=([linux-x86_64]="linux.*x86_64" [linux-aarch64]="linux.*aarch64" [macos-arm64]="macosx.*(arm64|universal2)"
                    [windows-amd64]="win_amd64")
fail=0
report=$(mktemp)
for py in 3.10 3.11 3.12 3.13 3.14; do
  for fam in linux-x86_64 linux-aarch64 macos-arm64 windows-amd64; do
    args=()
    for p in ${PLATFORMS[$fam]}; do args+=(--platform "$p"); done
    if ! "$PY" -m pip install -q --dry-run --ignore-installed --no-deps --only-binary=:all: --python-version "$py" \
        "${args[@]}" --target "$(mktemp -d)" --report "$report" $DEPS >/dev/null 2>&1; then
      echo "check_wheels: FAIL: no binary wheels of {$DEPS} for CPython $py on $fam"
      fail=1
      continue
    fi
    files=$("$PY" -c "import json,sys; print(' '.join(i['download_info']['url'].rsplit('/',1)[-1] for i in json.load(open(sys.argv[1]))['install']))" "$report")
    for f in $files; do
      if ! [[ $f =~ \.whl$ && ( $f =~ ${PATTERN[$fam]} || $f =~ -none-any\.whl$ ) ]]; then  # or pure Python
        echo "check_wheels: FAIL: CPython $py on $fam resolves to $f"
        fail=1
      fi
    done
    echo "check_wheels: CPython $py $fam: $files"
  done
done
rm -f "$report"
[ $fail = 0 ] && echo "check_wheels: PASS ($DEPS)" || echo "check_wheels: FAIL"
exit $fail
