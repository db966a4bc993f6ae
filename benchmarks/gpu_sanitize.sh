#!/usr/bin/env bash
# compute-sanitizer memcheck, racecheck and synccheck over benchmarks/sanitize.py (every kernel
# instantiation on odd shapes). Each tool is capped at 170 s; any error, any "not supported"
# and any kernel never launched fails the script. About 6-8 minutes on an H100.
cd "$(dirname "$0")/.." || exit 1
source benchmarks/gpu_common.sh
DIR=$(results_dir gpu-sanitize)
command -v compute-sanitizer > /dev/null || { fail "compute-sanitizer is not on PATH"; finish "$DIR"; }
for tool in memcheck racecheck synccheck; do
  timeout 170 compute-sanitizer --tool "$tool" --error-exitcode 9 python3 benchmarks/sanitize.py \
    > "$DIR/sanitizer-$tool.log" 2>&1
  check_sanitizer_log "$DIR/sanitizer-$tool.log" $?
  echo "$tool: $(grep -E 'every kernel ran|never launched|ERROR SUMMARY|not supported' "$DIR/sanitizer-$tool.log" | tr '\n' ' ')"
done
finish "$DIR"
