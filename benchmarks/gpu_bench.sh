#!/usr/bin/env bash
# The benchmark suite beside cuDNN, back-to-back pairs, and the quick truncation sweep.
# About 6-8 minutes on an H100 (each part capped).
cd "$(dirname "$0")/.." || exit 1
source benchmarks/gpu_common.sh
DIR=$(results_dir gpu-bench)
timeout 240 python3 -m pytest benchmarks -n 0 -q -rs --benchmark-json="$DIR/bench.json" > "$DIR/bench.log" 2>&1
check_pytest_log "$DIR/bench.log" $?
python3 benchmarks/ratios.py "$DIR/bench.json" > "$DIR/ratios.txt" 2>&1 || fail "ratios.py"
cat "$DIR/ratios.txt"
timeout 90 python3 benchmarks/paired.py --backend cupy --json "$DIR/paired.json" > "$DIR/paired.txt" 2>&1 || fail "paired.py"
tail -20 "$DIR/paired.txt"
timeout 150 python3 -m rnncore.app.cli bench --quick --json "$DIR/sweep.json" --plot "$DIR/sweep.png" \
  > "$DIR/sweep.txt" 2>&1 || fail "the sweep"
tail -30 "$DIR/sweep.txt"
finish "$DIR"
