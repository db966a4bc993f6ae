"""Each rnncore benchmark's median over its group's peer (PyTorch), from pytest-benchmark JSON.

    pytest benchmarks --benchmark-json=bench.json && python benchmarks/ratios.py bench.json

Several files (repeated runs) give the median of the per-run ratios and their range: on a
shared machine the peer's time alone moves by 10-30% from run to run, and a ratio is only
meaningful between timings of the same run.
"""
import json
import statistics
import sys
from collections import defaultdict


def run_ratios(path):
    """{(group, runner): (median seconds, ratio to the peer or None, peak bytes)} of one run."""
    groups = defaultdict(dict)
    with open(path) as f:
        benchmarks = json.load(f)["benchmarks"]
    for b in benchmarks:
        who = b["extra_info"].get("peer") or b["params"].get("backend") or b["name"].split("[")[1].split("-")[0]
        groups[b["group"]][who] = (b["stats"]["median"], b["extra_info"].get("peak_bytes"))
    out = {}
    for group, runs in groups.items():
        peer = next((v[0] for k, v in runs.items() if k.startswith("torch")), None)
        for who, (median, peak) in runs.items():
            out[group, who] = (median, median / peer if peer else None, peak)
    return out


def main(paths):
    runs = [run_ratios(p) for p in paths]
    keys = sorted(set().union(*runs))
    spread = len(runs) > 1
    print(f"{'group':<28}{'runner':<12}{'median ms':>11}{'x peer':>8}" + (f"{'range':>13}" if spread else "")
          + f"{'peak MiB':>10}")
    for key in keys:
        seen = [r[key] for r in runs if key in r]
        ms = statistics.median(s[0] for s in seen) * 1e3
        ratios = [s[1] for s in seen if s[1] is not None]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        span = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
        peak = seen[-1][2]
        mib = "-" if peak is None else f"{peak / 2**20:.1f}"
        print(f"{key[0]:<28}{key[1]:<12}{ms:>11.2f}{ratio:>8}" + (f"{span:>13}" if spread else "") + f"{mib:>10}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench.json"])
