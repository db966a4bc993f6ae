#!/usr/bin/env bash
# Shared by the GPU scripts (gpu_tests.sh, gpu_sanitize.sh, gpu_bench.sh): each is one call of the
# device tool, sized to finish in under 9 minutes on an H100, and saves its logs under
# benchmarks/results/<script>-<time>/ (and $OUT when the device tool sets it).
# Sourcing it sets RNNCORE_REQUIRE_GPU=1 (a GPU test that cannot run fails, naming why).
set -uo pipefail
export RNNCORE_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
FAILED=0

results_dir() {  # results_dir NAME: make and print benchmarks/results/NAME-<utc time>
  local dir="benchmarks/results/$1-$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -p "$dir" && echo "$dir"
}

fail() { echo "FAIL: $*" >&2; FAILED=1; }

# check_pytest_log LOG STATUS: the run passed, and skipped nothing (pytest -rs lists skips)
check_pytest_log() {
  local log=$1 status=$2
  [ "$status" -eq 0 ] || fail "$log: pytest exited $status"
  if grep -qiE '(^SKIPPED|[0-9]+ skipped)' "$log"; then fail "$log: tests were skipped"; fi
  grep -qE '[0-9]+ passed' "$log" || fail "$log: no test passed"
}

# check_sanitizer_log LOG STATUS: compute-sanitizer ran, supported the device, found nothing,
# and sanitize.py launched every kernel
check_sanitizer_log() {
  local log=$1 status=$2
  [ "$status" -eq 0 ] || fail "$log: exit status $status"
  if grep -qiE 'not supported|unsupported|unable to|could not|no CUDA-capable|failed to' "$log"; then
    fail "$log: the sanitizer could not check this device or program"
  fi
  if grep -E 'ERROR SUMMARY: [0-9]+' "$log" | grep -qvE 'ERROR SUMMARY: 0 errors'; then fail "$log: errors reported"; fi
  grep -qE 'ERROR SUMMARY: 0 errors' "$log" || fail "$log: no ERROR SUMMARY (did the sanitizer run?)"
  grep -q 'every kernel ran' "$log" || fail "$log: some kernel never launched"
}

# finish DIR: copy DIR to $OUT (if set) and exit 1 on any failure
finish() {
  local dir=$1
  [ -n "${OUT:-}" ] && cp -r "$dir" "$OUT/" 2>/dev/null
  if [ "$FAILED" -ne 0 ]; then echo "$(basename "$0"): FAILED (logs in $dir)"; exit 1; fi
  echo "$(basename "$0"): passed (logs in $dir)"
}
