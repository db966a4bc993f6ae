#!/usr/bin/env bash
# The tests marked gpu (every cell on both recurrence strategies) and the kernel compile tests,
# with RNNCORE_REQUIRE_GPU=1: a skip is a failure. About 3-5 minutes on an H100.
cd "$(dirname "$0")/.." || exit 1
source benchmarks/gpu_common.sh
DIR=$(results_dir gpu-tests)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$DIR/gpu.txt" 2>&1 || fail "nvidia-smi"
cat "$DIR/gpu.txt"
timeout 420 python3 -m pytest -m gpu -n 0 -q -rs tests > "$DIR/pytest-gpu.log" 2>&1
check_pytest_log "$DIR/pytest-gpu.log" $?
tail -15 "$DIR/pytest-gpu.log"
timeout 90 python3 -m pytest -n 0 -q -rs tests/test_kernels_compile.py > "$DIR/pytest-compile.log" 2>&1
check_pytest_log "$DIR/pytest-compile.log" $?
tail -5 "$DIR/pytest-compile.log"
finish "$DIR"
