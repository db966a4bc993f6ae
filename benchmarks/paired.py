"""Paired ratios to PyTorch: an rnncore call and a PyTorch call back to back, many times.

    python benchmarks/paired.py                          # the CPU targets: numba and numpy
    python benchmarks/paired.py --only lstm-650 --pairs 61 --json paired.json
    python benchmarks/paired.py --only gru-650-floor     # against the machine's peak instead

A ``-floor`` comparison pairs the layer with NumPy's 2048 x 2048 float32 product instead of
PyTorch: its ratio is the layer's time over the time its products (``steps.layer_flops``) would
take at the speed that product ran at in the same pair, the SGEMM peak of the machine's cores.

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

from steps import (  # noqa: E402
    THREADS,
    configure_torch,
    iteration_step,
    layer_flops,
    layer_step,
    set_numba_threads,
    sgemm_step,
    torch_iteration_step,
    torch_layer_step,
)

import rnncore  # noqa: E402

# name: (what is timed, its arguments, the CPU target per backend: at most this times PyTorch,
# or for a "floor" comparison this times the layer's products at the SGEMM peak)
COMPARISONS = {
    "lstm-650": ("layer", ("lstm", (20, 35, 650)), {"numba": 0.85, "numpy": 1.5}),
    "rnn-650": ("layer", ("rnn", (20, 35, 650)), {"numba": 0.75}),
    "lstm-100": ("layer", ("lstm", (20, 35, 100)), {"numba": 0.75}),
    "gru-650": ("layer", ("gru", (20, 35, 650)), {"numba": None}),
    "gru-100": ("layer", ("gru", (20, 35, 100)), {"numba": 0.4}),
    "gru-650-floor": ("floor", ("gru", (20, 35, 650)), {"numba": 1.15}),
    "lstm-650-floor": ("floor", ("lstm", (20, 35, 650)), {"numba": None}),
    "rnnlm": ("iteration", ("rnnlm",), {"numba": 1.0}),
}


def build(kind, args, backend):
    """(rnncore step, peer step, factor), each step synchronized with its device: PyTorch on the
    GPU beside CuPy, on the CPU beside the CPU backends; for "floor", NumPy's SGEMM. The ratio
    of a pair is ours / peer * factor."""
    ours = iteration_step(backend, *args) if kind == "iteration" else layer_step(backend, *args)

    def synced():
        ours()
        backend.synchronize()

    if kind == "floor":
        sgemm, flops = sgemm_step()
        return synced, sgemm, flops / layer_flops(*args)
    device = "cuda" if backend.name == "cupy" else "cpu"
    peer = (torch_layer_step if kind == "layer" else torch_iteration_step)(torch, device, *args)
    torch_sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return synced, (lambda: (peer(), torch_sync())), 1.0


def timed(step, pause):
    """Seconds of the second of two calls back to back, after ``pause`` seconds idle."""
    time.sleep(pause)
    step()
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(ours, peer, pairs, pause, factor=1.0, warmups=3):
    """Seconds of each side and their ratio (times ``factor``), per pair; the side that goes first alternates."""
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
        rows.append((a, b / factor, a / b * factor))
    return rows


def summary(name, backend, target, rows, peer_name="torch"):
    """A row of the report; ``{peer_name}_ms``: the peer's median (for "floor": the time the layer's
    products take at the peak the pairs measured)."""
    ours, peer, ratios = zip(*rows)
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    median = statistics.median(ratios)
    return {"comparison": name, "backend": backend, "pairs": len(rows), "ms": statistics.median(ours) * 1e3,
            f"{peer_name}_ms": statistics.median(peer) * 1e3, "ratio": median, "quartiles": [q1, q3],
            "target": target, "met": None if target is None else median <= target}


def print_row(r):
    target = "-" if r["target"] is None else f"<= {r['target']:.2f} {'met' if r['met'] else 'NOT met'}"
    peer_ms = r.get("torch_ms", r.get("floor_ms"))
    print(f"{r['comparison'] + ' ':<10}{r['backend']:<8}{r['ms']:>10.2f}{peer_ms:>10.2f}{r['ratio']:>8.3f}"
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
    print(f"{THREADS} threads; ratio = rnncore / PyTorch (or / floor), median of {a.pairs} pairs, and its quartiles")
    print(f"{'':<18}{'ms':>10}{'peer ms':>10}{'ratio':>8}{'quartiles':>12}")
    rows = []
    for name in names:
        kind, args, targets = COMPARISONS[name]
        for backend_name in backends or targets:
            backend = rnncore.get_backend(backend_name)
            ours, peer, factor = build(kind, args, backend)
            target = targets.get(backend_name) if backend.name != "cupy" else None
            rows.append(summary(name, backend_name, target, measure(ours, peer, a.pairs, a.pause, factor),
                                "floor" if kind == "floor" else "torch"))
            print_row(rows[-1])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(threads=THREADS, pause=a.pause, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
