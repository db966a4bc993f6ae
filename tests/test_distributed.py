"""Data-parallel training under mpiexec (rnncore/app/distributed.py): K ranks train as one process.

The runs are real ``mpiexec -n K`` subprocesses, oversubscribed on a small machine; they are
skipped where mpiexec or mpi4py is missing.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rnncore.app import distributed

HAVE_MPI = shutil.which("mpiexec") is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpiexec and mpi4py (pip install 'rnncore[mpi]')")

# a tiny model on 3000 PTB words: 100 iterations an epoch at batch 6 x 5
TINY = ["--corpus", "ptb", "--limit", "3000", "--model", "rnnlm", "--wordvec", "16", "--hidden", "16",
        "--batch-size", "6", "--time-size", "5", "--lr", "1", "--quiet", "--eval-interval", "7"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    return env


@pytest.fixture(autouse=True)
def _corpora(request, monkeypatch):
    if "tmp_path" in request.fixturenames:  # the runs read PTB
        monkeypatch.setenv("RNNCORE_DATA_DIR", str(request.getfixturevalue("shared_data")))


def _run(k, args, cwd, script=None, timeout=240, extra_env=None):
    """``rnncore train`` on k ranks (k = 0: plain, no mpiexec), or ``script`` (a driver that calls cli.main)."""
    command = [sys.executable, "-c", script or "import sys; from rnncore.app.cli import main; sys.exit(main())"]
    command += ["train", *args]
    if k:
        command = ["mpiexec", "-n", str(k), "--oversubscribe"] + command
    return subprocess.run(command, cwd=cwd, env={**_env(), **(extra_env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _weights(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "meta"}


def _metrics(path):
    return json.loads(path.read_text())


def test_rows_are_shared_contiguously_and_completely():
    for total in (1, 5, 6, 20):
        for size in range(1, total + 1):
            rows = [distributed.rows_of(r, size, total) for r in range(size)]
            assert rows[0][0] == 0 and rows[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
            assert max(r1 - r0 for r0, r1 in rows) - min(r1 - r0 for r0, r1 in rows) <= 1


def test_without_mpiexec_nothing_is_split_and_mpi4py_is_not_imported():
    code = ("import sys; from rnncore.app import cli, distributed, train; "
            "c = distributed.communicator(); assert c is distributed.SINGLE and c.size == 1; "
            "print('mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_open_mpi_ranks_stop_on_sigcont_and_only_a_launcher_is_written_to():
    assert distributed.launcher_stop_signals({"OMPI_COMM_WORLD_SIZE": "2"}) == (signal.SIGCONT,)
    assert distributed.launcher_stop_signals({"PMI_RANK": "0"}) == ()
    assert not distributed.tell_launcher("not for pytest's parent")  # not an mpiexec: left alone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sets a process name with Linux's prctl")
def test_a_parent_with_any_name_is_left_alone(tmp_path):
    """A parent whose name is not text (prctl allows any bytes) is not a launcher, and no error."""
    parent = textwrap.dedent("""
        import ctypes, subprocess, sys
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b"mpi\\xff\\xfeexec"), 0, 0, 0)  # PR_SET_NAME
        child = "from rnncore.app import distributed; print(distributed.tell_launcher('hello'))"
        sys.exit(subprocess.run([sys.executable, "-c", child]).returncode)
    """)
    out = subprocess.run([sys.executable, "-c", parent], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_the_launchers_are_recognized():
    assert not distributed.launched_by_mpiexec({})
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMIX_RANK"):
        assert distributed.launched_by_mpiexec({name: "0"})


@needs_mpi
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("batching", ["sequential", "random"])
def test_k_ranks_train_as_one_process(tmp_path, backend, batching):
    """300 iterations with dropout: K = 2 and 3 ranks give one process's losses, validation and
    test perplexities and weights (and carried states, gathered from the ranks), up to float32
    rounding: the ranks sum their shares in another order than one process's BLAS does."""
    if backend == "numba" and importlib.util.find_spec("numba") is None:
        pytest.skip("numba is not installed")
    args = TINY + ["--backend", backend, "--batching", batching, "--dropout", "0.3", "--epochs", "3"]
    runs = {}
    for k in (0, 2, 3):
        out = _run(k, args + ["--checkpoint", f"k{k}/m.npz", "--metrics", f"k{k}.json"], tmp_path)
        assert out.returncode == 0, out.stderr
        runs[k] = _metrics(tmp_path / f"k{k}.json"), _weights(tmp_path / f"k{k}/m.last.npz")
        if k:  # one log, rank 0's
            assert out.stderr.count("epoch 3 | train ppl") == 1, out.stderr
    (one, w1) = runs[0]
    for k in (2, 3):
        many, wk = runs[k]
        for a, b in zip(one["epochs"], many["epochs"]):
            assert b["train_ppl"] == pytest.approx(a["train_ppl"], rel=1e-5)
            assert b["valid_ppl"] == pytest.approx(a["valid_ppl"], rel=1e-5)
        assert many["test_ppl"] == pytest.approx(one["test_ppl"], rel=1e-5)
        assert w1.keys() == wk.keys()
        for name in w1:
            np.testing.assert_allclose(wk[name], w1[name], rtol=1e-4, atol=2e-6, err_msg=f"K={k}: {name}")


@needs_mpi
def test_a_run_resumes_under_another_number_of_ranks(tmp_path):
    """One epoch on 2 ranks, then a second on 3 from its checkpoint: the carried states of all
    six rows were saved and are cut anew, so the result is the uninterrupted single process's."""
    args = TINY + ["--backend", "numpy", "--dropout", "0.3"]
    out = _run(2, args + ["--epochs", "1", "--checkpoint", "a/m.npz"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert _weights(tmp_path / "a/m.last.npz")["state0.h"].shape == (6, 16)
    out = _run(3, ["--checkpoint", "a/m.npz", "--resume", "--epochs", "2", "--quiet", "--metrics", "a.json"],
               tmp_path)
    assert out.returncode == 0, out.stderr
    out = _run(0, args + ["--epochs", "2", "--checkpoint", "b/m.npz", "--metrics", "b.json"], tmp_path)
    assert out.returncode == 0, out.stderr
    resumed, straight = _metrics(tmp_path / "a.json"), _metrics(tmp_path / "b.json")
    assert resumed["epochs"][1]["train_ppl"] == pytest.approx(straight["epochs"][1]["train_ppl"], rel=1e-5)
    wa, wb = _weights(tmp_path / "a/m.last.npz"), _weights(tmp_path / "b/m.last.npz")
    for name in wb:
        np.testing.assert_allclose(wa[name], wb[name], rtol=1e-4, atol=2e-6, err_msg=name)


# rank 1 alone meets trouble in its 41st forward pass
DRIVER = textwrap.dedent("""
    import os, signal, sys
    from rnncore import models
    from rnncore.app.cli import main

    forward, calls = models.RecurrentLM.forward, [0]

    def troubled(self, xs, ts):
        loss = forward(self, xs, ts)
        calls[0] += 1
        if os.environ.get("OMPI_COMM_WORLD_RANK") == "1" and calls[0] == 41:
            what = os.environ["TROUBLE"]
            if what == "nan":
                return loss * float("nan")
            if what == "crash":
                raise RuntimeError("rank 1 broke")
            os.kill(os.getpid(), getattr(signal, what))
        return loss

    models.RecurrentLM.forward = troubled
    sys.exit(main())
""")


@needs_mpi
def test_a_nan_on_one_rank_stops_all_with_one_message(tmp_path):
    out = _run(3, TINY + ["--backend", "numpy", "--epochs", "2", "--checkpoint", "m.npz"], tmp_path, DRIVER,
               timeout=120, extra_env={"TROUBLE": "nan"})
    assert out.returncode == 1, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert errors == ["rnncore train: error: the loss became nan at epoch 1, iteration 41; training stopped. "
                      "Try a lower --lr or a --max-grad clip"], out.stderr


@needs_mpi
def test_a_crashed_rank_ends_the_job_with_a_clear_message(tmp_path):
    out = _run(3, TINY + ["--backend", "numpy", "--epochs", "2", "--checkpoint", "m.npz"], tmp_path, DRIVER,
               timeout=120, extra_env={"TROUBLE": "crash"})
    assert out.returncode != 0
    assert ("rnncore train: internal error (rank 1 of 3): RuntimeError: rank 1 broke" in out.stderr), out.stderr


@needs_mpi
@pytest.mark.parametrize("sig, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_to_one_rank_stops_all_at_the_same_iteration_and_saves_once(tmp_path, sig, status):
    args = TINY + ["--backend", "numpy", "--dropout", "0.3", "--checkpoint", "m.npz"]
    out = _run(2, args + ["--epochs", "2"], tmp_path, DRIVER, timeout=120, extra_env={"TROUBLE": sig})
    assert out.returncode == status, out.stderr
    assert out.stderr.count("stopped") == 1, out.stderr
    assert "interrupted at epoch 1, iteration 41; resume with --resume" in out.stderr
    with np.load(tmp_path / "m.last.npz") as f:
        assert json.loads(str(f["meta"]))["trainer"]["iteration"] == 41
    out = _run(2, ["--checkpoint", "m.npz", "--resume", "--quiet", "--metrics", "a.json"], tmp_path)
    assert out.returncode == 0, out.stderr
    straight = _run(0, args[:-1] + ["b.npz", "--epochs", "2", "--metrics", "b.json"], tmp_path)
    assert straight.returncode == 0, straight.stderr
    a, b = _metrics(tmp_path / "a.json"), _metrics(tmp_path / "b.json")
    assert a["test_ppl"] == pytest.approx(b["test_ppl"], rel=1e-5)


# rank 0 writes "started" after its 20th forward pass; from then on each pass takes 20 ms more,
# so the run is still going when mpiexec is signalled, and an iteration stays far below the
# half second Open MPI's mpiexec leaves the ranks before it SIGKILLs them
SLOW_DRIVER = textwrap.dedent("""
    import os, sys, time
    from rnncore import models
    from rnncore.app.cli import main

    forward, calls = models.RecurrentLM.forward, [0]

    def slow(self, xs, ts):
        calls[0] += 1
        if os.environ.get("OMPI_COMM_WORLD_RANK") == "0" and calls[0] >= 20:
            if calls[0] == 20:
                open("started", "w").close()
            time.sleep(0.02)
        return forward(self, xs, ts)

    models.RecurrentLM.forward = slow
    sys.exit(main())
""")


def _mpi_flavour():
    out = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True, check=False)
    return "openmpi" if "Open MPI" in out.stdout + out.stderr else "other"


def _signal_slow_run(folder, extra, *signals):
    """``mpiexec -n 2`` training (SLOW_DRIVER, two epochs) in ``folder``, sent ``signals`` half a
    second apart once it has started; returns the process (ended) and its stderr."""
    args = TINY + ["--backend", "numpy", "--epochs", "2", *extra]
    command = ["mpiexec", "-n", "2", "--oversubscribe", sys.executable, "-c", SLOW_DRIVER, "train", *args]
    proc = subprocess.Popen(command, cwd=folder, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (folder / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        for k, sig in enumerate(signals):
            time.sleep(0.5 if k else 0)
            proc.send_signal(sig)
        return proc, proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@needs_mpi
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_to_mpiexec_stops_all_ranks_and_rank_0_saves_once(tmp_path, sig):
    """Ctrl-C (or SIGTERM, as ``timeout`` or a scheduler sends) to Open MPI 5's mpiexec itself:
    it passes neither on but sends the ranks SIGCONT, SIGTERM and SIGKILL 0.25 s apart and exits
    1. On the SIGCONT the ranks save at the next iteration, on the SIGTERM they stop at the next
    and save again; rank 0 says so in one line; the run then resumes to the end."""
    if _mpi_flavour() != "openmpi":
        pytest.skip("the launcher's signal handling tested here is Open MPI's")
    proc, stderr = _signal_slow_run(tmp_path, ["--checkpoint", "m.npz"], getattr(signal, sig))
    assert proc.returncode == 1, stderr  # Open MPI's mpiexec: 1 after any Ctrl-C or SIGTERM
    assert stderr.count("stopped") == 1, stderr
    stopped = [line for line in stderr.splitlines() if "stopped" in line]
    assert stopped[0].startswith("rnncore train: stopped: interrupted at epoch 1, iteration "), stderr
    assert stopped[0].endswith("; resume with --resume (state saved in m.last.npz)"), stderr
    saved = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npz" or ".part" in p.name)
    assert saved == ["m.last.npz"], saved  # one checkpoint, no leftover part-written file
    with np.load(tmp_path / "m.last.npz") as f:
        iteration = json.loads(str(f["meta"]))["trainer"]["iteration"]
    assert 20 <= iteration < 100 and f"iteration {iteration};" in stopped[0]
    out = _run(2, ["--checkpoint", "m.npz", "--resume", "--quiet", "--metrics", "a.json"], tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(_metrics(tmp_path / "a.json")["epochs"]) == 2


@needs_mpi
def test_ctrl_z_then_fg_on_mpiexec_saves_and_goes_on(tmp_path):
    """Job control: Ctrl-Z (SIGTSTP) then ``fg`` (SIGCONT) to Open MPI's mpiexec stops the ranks
    and lets them go on; the SIGCONT that reaches them asks for one save, not for a stop."""
    if _mpi_flavour() != "openmpi":
        pytest.skip("the launcher's signal handling tested here is Open MPI's")
    proc, stderr = _signal_slow_run(tmp_path, ["--checkpoint", "m.npz", "--metrics", "m.json"], signal.SIGTSTP,
                                    signal.SIGCONT)
    assert proc.returncode == 0 and "stopped" not in stderr, stderr
    assert len(_metrics(tmp_path / "m.json")["epochs"]) == 2


@pytest.mark.gpu
def test_nccl_sums_the_ranks_gradients():
    """Needs CuPy, a GPU per rank and mpiexec; not run on this project's machines so far."""
    pytest.importorskip("cupy")
    if not HAVE_MPI:
        pytest.skip("needs mpiexec and mpi4py")
    code = textwrap.dedent("""
        import cupy, numpy as np
        from rnncore import get_backend
        from rnncore.app import distributed
        comm = distributed.communicator(); comm.bind_gpu(); be = get_backend("cupy")
        grads = [cupy.full((3, 4), comm.rank + 1.0, dtype=cupy.float32), cupy.ones(5, dtype=cupy.float32)]
        loss, stop, _ = comm.reduce_iteration(grads, cupy.float32(comm.rank), 0, be)
        assert float(loss) == 1.0 and stop == 0
        assert float(grads[0][0, 0]) == 3.0 and float(grads[1][0]) == 2.0
    """)
    out = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@needs_mpi
def test_the_bench_sweep_is_dealt_over_the_ranks_and_merged(tmp_path):
    """Two ranks run the (runner, cell) pairs between them; rank 0 writes one result holding
    the rows one process writes, in its order, with the same gradients (timings differ)."""
    args = ["bench", "--quick", "--length", "40", "--batch", "2", "--hidden", "8", "--vocab", "20", "--repeats", "1",
            "--backend", "numpy", "--cell", "rnn,lstm", "--no-peers", "--no-isolate"]
    code = "import sys; from rnncore.app.cli import main; sys.exit(main())"
    results = {}
    for k in (1, 2):
        command = [sys.executable, "-c", code, *args, "--json", f"b{k}.json"]
        command = ["mpiexec", "-n", "2", "--oversubscribe"] + command if k == 2 else command
        out = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("summary:") == 1, out.stdout  # one table: rank 0's
        results[k] = json.loads((tmp_path / f"b{k}.json").read_text())
    one, two = results[1]["rows"], results[2]["rows"]
    assert [(r["cell"], r["T"]) for r in two] == [(r["cell"], r["T"]) for r in one] == [
        ("rnn", 5), ("rnn", 35), ("rnn", 40), ("lstm", 5), ("lstm", 35), ("lstm", 40)]
    assert [r["grad_cosine"] for r in two] == pytest.approx([r["grad_cosine"] for r in one], abs=1e-6)
    assert [c["cell"] for c in results[2]["summary"]] == ["rnn", "lstm"]
