"""Each rnncore benchmark's median over its group's peer (PyTorch), from a pytest-benchmark JSON.

    pytest benchmarks --benchmark-json=bench.json && python benchmarks/ratios.py bench.json
"""
import json
import sys
from collections import defaultdict


def main(path):
    groups = defaultdict(dict)
    for b in json.load(open(path))["benchmarks"]:
        who = b["extra_info"].get("peer") or b["params"].get("backend") or b["name"].split("[")[1].split("-")[0]
        groups[b["group"]][who] = (b["stats"]["median"], b["extra_info"].get("peak_bytes"))
    print(f"{'group':<28}{'runner':<12}{'median ms':>11}{'x peer':>8}{'peak MiB':>10}")
    for group, runs in sorted(groups.items()):
        peer = next((v[0] for k, v in runs.items() if k.startswith("torch")), None)
        for who, (median, peak) in sorted(runs.items()):
            ratio = f"{median / peer:.2f}" if peer else "-"
            mib = "-" if peak is None else f"{peak / 2**20:.1f}"
            print(f"{group:<28}{who:<12}{median * 1e3:>11.2f}{ratio:>8}{mib:>10}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
