"""benchmarks/paired.py and ab_kernels.py, run as a user runs them: rows, and errors for bad arguments."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_paired(*args):
    return subprocess.run([sys.executable, str(BENCHMARKS / "paired.py"), *args], capture_output=True, text=True,
                          timeout=300)


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
    assert row["quartiles"][0] <= row["ratio"] <= row["quartiles"][1]
    assert row["target"] is None and row["met"] is None  # the numpy backend has no target at 100
    assert "lstm-100  numpy" in done.stdout


@pytest.mark.parametrize("args, message", [
    (("--old", "no-such-commit-here"), "--old 'no-such-commit-here' is not a commit of"),
    (("--old", "HEAD", "--turns", "0"), "--hidden, --batch, --steps and --turns must be >= 1"),
])
def test_ab_kernels_rejects_bad_arguments(args, message):
    pytest.importorskip("numba")
    bad = subprocess.run([sys.executable, str(BENCHMARKS / "ab_kernels.py"), *args], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
