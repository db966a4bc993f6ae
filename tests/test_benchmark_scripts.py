"""benchmarks/paired.py and ab_kernels.py, run as a user runs them: rows, and errors for bad arguments."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_paired(*args):
    return subprocess.run([sys.executable, str(BENCHMARKS / "paired.py"), *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("args, message", [
    (("--only", "lstm-650,gru-7"), "unknown comparison ['gru-7']"),
    (("--pairs", "1"), "--pairs must be >= 2"),
    (("--pause", "-0.5"), "--pause must be >= 0 seconds"),
    (("--pause", "nan"), "--pause must be >= 0 seconds"),
    (("--backend", "numpy,bogus"), "unknown backend 'bogus'"),
])
def test_paired_rejects_bad_arguments(args, message):
    pytest.importorskip("torch")
    bad = run_paired(*args)
    assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


def test_paired_rows(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "paired.json"
    done = run_paired("--only", "lstm-100", "--backend", "numpy", "--pairs", "3", "--pause", "0.001",
                      "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["pause"] == 0.001
    (row,) = report["rows"]
    assert (row["comparison"], row["backend"], row["pairs"]) == ("lstm-100", "numpy", 3)
    assert row["ms"] > 0 and row["torch_ms"] > 0
    assert row["quartiles"][0] <= row["ratio"] <= row["quartiles"][1]  # the arithmetic: test_paired_summary
    assert row["target"] is None and row["met"] is None  # the numpy backend has no target at 100
    assert "lstm-100  numpy" in done.stdout


SUMMARY = """
import json, sys
sys.path.insert(0, sys.argv[1])
import paired
rows, target = json.loads(sys.stdin.read())
print(json.dumps(paired.summary("lstm-100", "numba", target, [tuple(r) for r in rows])))
"""


def summarize(rows, target):
    """paired.summary of (ours s, peer s, ratio) rows, in a process of its own (paired.py imports
    PyTorch, whose OpenMP runtime must start before Numba's)."""
    done = subprocess.run([sys.executable, "-c", SUMMARY, str(BENCHMARKS)], input=json.dumps([rows, target]),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("pairs, target, expected", [
    # 5 pairs (ours ms, peer ms), out of order: ratios 2, 0.25, 1, 4, 0.5 -> sorted 0.25 0.5 1 2 4. Median 1
    # (their mean would be 1.55); quartiles at positions 1 and 3 of 0..4: 0.5 and 2 (the "exclusive"
    # method would give 0.375 and 3). Medians: ours 3 ms, peer 3 ms. Target 0.9: not met.
    ([(2, 1), (1, 4), (3, 3), (8, 2), (6, 12)], 0.9,
     {"ms": 3.0, "torch_ms": 3.0, "ratio": 1.0, "quartiles": [0.5, 2.0], "met": False}),
    # 4 pairs: ratios 1, 4, 2, 3 -> median 2.5; quartiles at positions 0.75 and 2.25 of 0..3: 1.75 and
    # 3.25 (exclusive: 1.25 and 3.75). Medians: ours 1.75 ms, peer 0.75 ms, whose ratio (2.33) is not
    # the median of the ratios. Target 2.5: met, at the boundary (every number exact in binary).
    ([(1, 1), (2, 0.5), (3, 1.5), (1.5, 0.5)], 2.5,
     {"ms": 1.75, "torch_ms": 0.75, "ratio": 2.5, "quartiles": [1.75, 3.25], "met": True}),
])
def test_paired_summary(pairs, target, expected):
    """The report's arithmetic on pairs worked out by hand: the median of the per-pair ratios (not
    the ratio of the medians), their quartiles by the inclusive method (NumPy's default linear
    percentile, which the expectations are also checked against), each side's median in ms, and
    whether the median meets the target."""
    import numpy as np

    pytest.importorskip("torch")  # paired.py exits without it
    rows = [(a / 1e3, b / 1e3, a / b) for a, b in pairs]
    ratios = [r for _, _, r in rows]
    assert np.percentile(ratios, [25, 50, 75]) == pytest.approx([expected["quartiles"][0], expected["ratio"],
                                                                 expected["quartiles"][1]])
    got = summarize(rows, target)
    assert (got["comparison"], got["backend"], got["pairs"], got["target"]) == ("lstm-100", "numba", len(pairs),
                                                                               target)
    assert got["met"] is expected.pop("met")
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), (key, got[key], value)


@pytest.mark.parametrize("args, message", [
    (("--old", "no-such-commit-here"), "--old 'no-such-commit-here' is not a commit of"),
    (("--old", "HEAD", "--turns", "0"), "--hidden, --batch, --steps and --turns must be >= 1"),
])
def test_ab_kernels_rejects_bad_arguments(args, message):
    pytest.importorskip("numba")
    bad = subprocess.run([sys.executable, str(BENCHMARKS / "ab_kernels.py"), *args], capture_output=True, text=True,
                         timeout=300, check=False)
    assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
