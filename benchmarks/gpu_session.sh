#!/usr/bin/env bash
# The GPU work no longer fits one call of the device tool (at most 10 minutes): run each of
# these as its own call, each under 9 minutes on an H100, each failing loudly:
#   bash benchmarks/gpu_tests.sh      tests marked gpu + kernel compile tests (skips fail)
#   bash benchmarks/gpu_sanitize.sh   compute-sanitizer memcheck, racecheck, synccheck
#   bash benchmarks/gpu_bench.sh      benchmarks beside cuDNN, pairs, the truncation sweep
# This script runs them one after another (for a machine without the 10-minute limit).
cd "$(dirname "$0")/.." || exit 1
status=0
for part in tests sanitize bench; do bash "benchmarks/gpu_$part.sh" || status=1; done
exit $status
