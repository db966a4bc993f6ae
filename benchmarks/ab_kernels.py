"""The numba kernels of another commit against this tree's, both loaded in one process.

    python benchmarks/ab_kernels.py --old 4ccd841 --cell lstm --hidden 100

Two processes run seconds apart and this VM's speed drifts between them by more than a kernel
change is worth, so both versions run in one process: the old commit's ``kernels/`` is
extracted (``git archive``) as a package of its own, and the numba backend's kernel modules
are switched between the two from turn to turn (this tree's backend calls both, so their
entry points must take the same arguments). Each turn times ``--steps`` layer steps
(forward+backward) and keeps their median; the report is the median over the turns of
new / old. The old kernels go to build/ab-kernels/<commit>/ and compile on first use (about
two minutes; cached there for the next run).
"""
import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import rnncore
from rnncore.backends import numba_backend
from steps import layer_step, median_ms_of, set_numba_threads

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("_common", "_rnn", "_lstm", "_training")  # the backend's globals, in this order
FILES = ("common_numba", "rnn_numba", "lstm_numba", "training_numba")


def commit_sha(commit):
    """The full hash of ``commit`` in this checkout, or "" if it names none."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                           capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else ""


def old_kernels(sha):
    """The commit's kernels/ imported as the package ``oldkernels`` (extracted once per commit)."""
    folder = ROOT / "build" / "ab-kernels" / sha
    if not (folder / "oldkernels").is_dir():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "kernels"], capture_output=True)
        if archive.returncode != 0:
            raise SystemExit(f"ab_kernels.py: no kernels/ at {sha}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(folder, filter="data")
        (folder / "kernels").rename(folder / "oldkernels")
    sys.path.insert(0, str(folder))
    return tuple(importlib.import_module(f"oldkernels.{name}") for name in FILES)


def use(modules):
    for name, module in zip(MODULES, modules):
        setattr(numba_backend, name, module)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="the commit whose kernels/ to compare against")
    p.add_argument("--cell", choices=("lstm", "rnn"), default="lstm")
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--steps", type=int, default=30, help="layer steps timed per turn (default 30)")
    p.add_argument("--turns", type=int, default=12, help="turns of each version (default 12)")
    a = p.parse_args(argv)
    if min(a.hidden, a.batch, a.steps, a.turns) < 1:
        p.error("--hidden, --batch, --steps and --turns must be >= 1")
    sha = commit_sha(a.old)
    if not sha:
        p.error(f"--old {a.old!r} is not a commit of {ROOT}")
    set_numba_threads()
    be = rnncore.get_backend("numba")
    new = tuple(getattr(numba_backend, name) for name in MODULES)
    old = old_kernels(sha)
    step = layer_step(be, a.cell, (a.batch, 35, a.hidden))
    for version in (old, new):  # compile and warm both
        use(version)
        median_ms_of(step, 3, warmups=0)
    times = {"old": [], "new": []}
    for _ in range(a.turns):
        for name, version in (("old", old), ("new", new)):
            use(version)
            times[name].append(median_ms_of(step, a.steps, warmups=0))
    use(new)
    ratio = statistics.median(n / o for n, o in zip(times["new"], times["old"]))
    print(f"{a.cell} N={a.batch} T=35 H={a.hidden}: old {statistics.median(times['old']):.3f} ms, "
          f"new {statistics.median(times['new']):.3f} ms; new / old {ratio:.3f} (median of {a.turns} turns)")


if __name__ == "__main__":
    main()
