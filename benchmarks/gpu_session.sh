#!/usr/bin/env bash
# Everything that needs a GPU, in one call of the device tool (its $OUT collects the logs):
#   tests marked gpu (every cell, RNN, LSTM and GRU, on both recurrence strategies: the shared
#   tests run on the "cupy" and "cupy-fused" backends there), compute-sanitizer on every kernel
#   instantiation (sanitize.py exits 1 if one never launched), the benchmark suite beside cuDNN,
#   the truncation sweep, and a short BetterRnnlm run on PTB data (carried in shared/data).
set -uo pipefail
OUT=${OUT:-/tmp/rnncore-gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -m gpu -q -rs tests 2>&1 | tee "$OUT/pytest-gpu.log" | tail -25
python3 -m pytest -q -rs tests/test_kernels_compile.py 2>&1 | tee "$OUT/pytest-compile.log" | tail -5  # nvcc and NVRTC, not marked gpu
for tool in memcheck racecheck synccheck; do
  compute-sanitizer --tool $tool --error-exitcode 9 python3 benchmarks/sanitize.py > "$OUT/sanitizer-$tool.log" 2>&1
  echo "compute-sanitizer $tool: exit $? ($(grep -E 'every kernel ran|never launched|ERROR SUMMARY' "$OUT/sanitizer-$tool.log" | tr '\n' ' '))"
done
python3 -m pytest benchmarks -q --benchmark-json="$OUT/bench.json" > "$OUT/bench.log" 2>&1
python3 benchmarks/ratios.py "$OUT/bench.json" | tee "$OUT/ratios.txt"
python3 benchmarks/paired.py --backend cupy --json "$OUT/paired.json" | tee "$OUT/paired.txt"  # back-to-back pairs beside cuDNN
python3 -m rnncore.app.cli bench --quick --json "$OUT/sweep.json" --plot "$OUT/sweep.png" > "$OUT/sweep.txt" 2>&1
tail -40 "$OUT/sweep.txt"
