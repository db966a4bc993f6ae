"""Paired ratios to PyTorch: an rnncore call and a PyTorch call back to back, many times.

    python benchmarks/paired.py                          # the CPU targets: numba and numpy
    python benchmarks/paired.py --only lstm-650 --pairs 61 --json paired.json

pytest-benchmark times every round of one runner, then every round of the other, a minute
or more apart. A shared VM's speed drifts by 20-40% over such spans (turbo, other tenants),
so the ratio of those two medians carries the drift as well as the code. Here each pair runs
the two steps back to back, in alternating order, and the ratio is taken inside the pair: the
report is the median of the per-pair ratios and their quartiles, beside each side's median.

Each step is timed on its second of two calls, after a pause (``--pause``, 20 ms): PyTorch's
OpenMP threads keep spinning for a while after its step, and on two cores a step started in
that while shares a core with them. Without the pause the LSTM at 100 measured 3-4% slower
against PyTorch (0.80 against 0.77, 0.86 against 0.84: two runs, each timing both ways in
turn in one process), while PyTorch's own time barely changed. A training process runs one
runtime, so the pause is what a user sees; ``--pause 0`` measures back to back.
"""
import argparse
import json
import statistics
import sys
import time

try:  # PyTorch first: its OpenMP runtime must start before Numba's (see conftest.py)
    import torch
except ImportError:
    sys.exit("paired.py compares against PyTorch: pip install torch")

import rnncore  # noqa: E402
from steps import (THREADS, configure_torch, iteration_step, layer_step, set_numba_threads,  # noqa: E402
                   torch_iteration_step, torch_layer_step)

# name: (what is timed, its arguments, the CPU target per backend: at most this times PyTorch)
COMPARISONS = {
    "lstm-650": ("layer", ("lstm", (20, 35, 650)), {"numba": 0.85, "numpy": 1.5}),
    "rnn-650": ("layer", ("rnn", (20, 35, 650)), {"numba": 0.75}),
    "lstm-100": ("layer", ("lstm", (20, 35, 100)), {"numba": 0.75}),
    "rnnlm": ("iteration", ("rnnlm",), {"numba": 1.0}),
}


def build(kind, args, backend):
    """(rnncore step, PyTorch step), each synchronized with its device: PyTorch on the GPU
    beside CuPy, on the CPU beside the CPU backends."""
    device = "cuda" if backend.name == "cupy" else "cpu"
    ours = layer_step(backend, *args) if kind == "layer" else iteration_step(backend, *args)
    peer = (torch_layer_step if kind == "layer" else torch_iteration_step)(torch, device, *args)
    torch_sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return (lambda: (ours(), backend.synchronize())), (lambda: (peer(), torch_sync()))


def timed(step, pause):
    """Seconds of the second of two calls back to back, after ``pause`` seconds idle."""
    time.sleep(pause)
    step()
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(ours, peer, pairs, pause, warmups=3):
    """Seconds of each side and their ratio, per pair; the side that goes first alternates."""
    for _ in range(warmups):
        ours()
        peer()
    rows = []
    for i in range(pairs):
        if i % 2:
            a = timed(ours, pause)
            b = timed(peer, pause)
        else:
            b = timed(peer, pause)
            a = timed(ours, pause)
        rows.append((a, b, a / b))
    return rows


def summary(name, backend, target, rows):
    ours, peer, ratios = zip(*rows)
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    median = statistics.median(ratios)
    return dict(comparison=name, backend=backend, pairs=len(rows), ms=statistics.median(ours) * 1e3,
                torch_ms=statistics.median(peer) * 1e3, ratio=median, quartiles=[q1, q3], target=target,
                met=None if target is None else median <= target)


def print_row(r):
    target = "-" if r["target"] is None else f"<= {r['target']:.2f} {'met' if r['met'] else 'NOT met'}"
    print(f"{r['comparison']:<10}{r['backend']:<8}{r['ms']:>10.2f}{r['torch_ms']:>10.2f}{r['ratio']:>8.3f}"
          f"{r['quartiles'][0]:>7.2f}-{r['quartiles'][1]:.2f}  {target}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", help="comma-separated (default: each backend with a target here)")
    p.add_argument("--only", help=f"comma-separated comparisons (default all: {', '.join(COMPARISONS)})")
    p.add_argument("--pairs", type=int, default=31, help="pairs per comparison (default 31)")
    p.add_argument("--pause", type=float, default=0.02, help="seconds idle before each side's two calls (default 0.02)")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    names = a.only.split(",") if a.only else list(COMPARISONS)
    unknown = [n for n in names if n not in COMPARISONS]
    if unknown:
        p.error(f"unknown comparison {unknown}; choose from {list(COMPARISONS)}")
    if a.pairs < 2 or not a.pause >= 0:
        p.error("--pairs must be >= 2" if a.pairs < 2 else "--pause must be >= 0 seconds")
    backends = a.backend.split(",") if a.backend else None
    for name in backends or []:
        try:
            rnncore.get_backend(name)
        except (ValueError, rnncore.BackendNotAvailable) as exc:
            p.error(str(exc))
    set_numba_threads()
    configure_torch(torch)
    print(f"{THREADS} threads; ratio = rnncore / PyTorch, median of {a.pairs} pairs, and its quartiles")
    print(f"{'':<18}{'ms':>10}{'torch ms':>10}{'ratio':>8}{'quartiles':>12}")
    rows = []
    for name in names:
        kind, args, targets = COMPARISONS[name]
        for backend_name in backends or targets:
            backend = rnncore.get_backend(backend_name)
            ours, peer = build(kind, args, backend)
            target = targets.get(backend_name) if backend.name != "cupy" else None
            rows.append(summary(name, backend_name, target, measure(ours, peer, a.pairs, a.pause)))
            print_row(rows[-1])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(threads=THREADS, pause=a.pause, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
