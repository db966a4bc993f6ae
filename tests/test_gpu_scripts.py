"""The GPU scripts (benchmarks/gpu_*.sh) cannot run here; their syntax and the checks that
decide pass or fail (benchmarks/gpu_common.sh) can."""
import shutil
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCH.glob("gpu_*.sh"))
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_each_part_requires_the_gpu_and_saves_under_results():
    for name in ("gpu_tests.sh", "gpu_sanitize.sh", "gpu_bench.sh"):
        text = (BENCH / name).read_text()
        assert "source benchmarks/gpu_common.sh" in text and "results_dir" in text and "finish" in text
    common = (BENCH / "gpu_common.sh").read_text()
    assert "RNNCORE_REQUIRE_GPU=1" in common and "benchmarks/results/" in common


def check(function, log_text, status, tmp_path):
    log = tmp_path / "x.log"
    log.write_text(log_text)
    done = subprocess.run(["bash", "-c", f'source "{BENCH}/gpu_common.sh"; {function} "{log}" {status}; exit $FAILED'],
                          capture_output=True, text=True)
    return done.returncode == 0


PASSED = "........\n12 passed in 3.1s\n"
SANITIZED = "cupy (cublas): ran\nevery kernel ran: 40 instantiations\n========= ERROR SUMMARY: 0 errors\n"


@pytest.mark.parametrize("text, status, ok", [
    (PASSED, 0, True),
    ("SKIPPED [1] tests/test_gpu.py:12: needs CuPy\n3 passed, 1 skipped\n", 0, False),
    ("3 passed, 2 skipped in 1s\n", 0, False),
    ("1 failed, 3 passed\n", 1, False),
    ("no tests ran\n", 5, False),
])
def test_pytest_logs(tmp_path, text, status, ok):
    assert check("check_pytest_log", text, status, tmp_path) == ok


@pytest.mark.parametrize("text, status, ok", [
    (SANITIZED, 0, True),
    ("========= ERROR SUMMARY: 3 errors\nevery kernel ran\n", 9, False),
    ("========= ERROR SUMMARY: 3 errors\nevery kernel ran\n", 0, False),
    ("========= Error: Device not supported\nevery kernel ran\n========= ERROR SUMMARY: 0 errors\n", 0, False),
    ("========= Target application is not supported by this tool\nERROR SUMMARY: 0 errors\nevery kernel ran\n", 0,
     False),
    ("cupy: ran\nnever launched:\n  training.cu: axpy<double>\n========= ERROR SUMMARY: 0 errors\n", 1, False),
    ("every kernel ran\n", 0, False),  # no summary: the sanitizer never ran
])
def test_sanitizer_logs(tmp_path, text, status, ok):
    assert check("check_sanitizer_log", text, status, tmp_path) == ok
