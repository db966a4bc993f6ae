"""Variable lengths on the numba backend: what the mask costs, and what padding costs.

    python benchmarks/lengths.py                 # both, LSTM at H = 100 and 650
    python benchmarks/lengths.py --only mask --pairs 41

``mask``: a layer's forward+backward with lengths against the same call without them, back to
back in alternating order (the pairing of ``paired.py``); the report is the median and quartiles
of the per-pair ratio masked / unmasked (target: <= 1.05). Twice: every length T (the layer sees
nothing to mask and takes the plain path), and one row one step short (the masked kernels, and
the dense products: too little padding to gather the live steps).

``padding``: batches sorted by length, longest first (as ``rnncore.sequences`` makes them), with
a growing fraction of padded steps, 1 - sum(lengths) / (N T); the time of the whole layer and of
its recurrence alone (``recurrence_forward`` + ``recurrence_backward``, the sequential part),
each over the unpadded batch's. The recurrence skips the padded rows at the end of each step's
rows, so its time follows 1 - padding; the input and output products (x Wx and its gradients)
are dense over N T.
"""
import argparse
import json
import statistics
import time

import numpy as np
from steps import layer_step, set_numba_threads

from rnncore import get_backend
from rnncore.models import CELLS as CELL_LAYERS

SHAPES = {"lstm-100": ("lstm", (20, 35, 100)), "lstm-650": ("lstm", (20, 35, 650))}
PADDING = (0.0, 0.25, 0.5, 0.75)


def timed(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def mask_ratio(backend, cell, shape, pairs, lengths):
    """Quartiles of masked / unmasked over ``pairs`` alternating pairs."""
    plain, masked = layer_step(backend, cell, shape), layer_step(backend, cell, shape, lengths)
    for step in (plain, masked, plain, masked):
        step()  # compiled and warm
    ratios = []
    for k in range(pairs):
        first, second = (plain, masked) if k % 2 == 0 else (masked, plain)
        a, b = timed(first), timed(second)
        ratios.append(b / a if k % 2 == 0 else a / b)
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return dict(median=median, q1=q1, q3=q3, pairs=pairs)


def sorted_lengths(N, T, padding):
    """N lengths in [1, T], longest first, whose padded fraction of N T is about ``padding``:
    evenly spread from T down to the length that gives that mean."""
    low = max(1, round(T * (1 - 2 * padding))) if padding <= 0.5 else 1
    high = T if padding <= 0.5 else max(1, round(2 * T * (1 - padding)))
    return np.linspace(high, low, N).round().astype(np.int64)


def recurrence_step(backend, cell_name, shape, lengths):
    """The recurrence alone, forward then backward, with the layer's own arrays."""
    N, T, H = shape
    cell = CELL_LAYERS[cell_name].cell
    G = cell.gates * H
    rng = np.random.default_rng(0)
    Wh = backend.asarray((rng.standard_normal((H, G)) * 0.05).astype(np.float32))
    xw = backend.asarray(rng.standard_normal((T, N, G)).astype(np.float32))  # overwritten by the gates: the
    # next call starts from those values, which time the same (no copy in the timed call)
    dhs = backend.asarray(rng.standard_normal((T, N, H)).astype(np.float32))
    states0 = tuple(backend.asarray(np.zeros((N, H), np.float32)) for _ in cell.states)
    lengths = backend.asarray(lengths)
    bh = backend.asarray(np.zeros(G, np.float32)) if cell.recurrent_bias else None

    def step():
        hs, gates, saved = backend.recurrence_forward(cell, xw, states0, Wh, bh, lengths)
        backend.recurrence_backward(cell, dhs, hs, gates, saved, states0, Wh, None, None, lengths)

    return step


def padding_times(backend, cell, shape, repeats):
    """Per padding fraction: the layer's and the recurrence's median time over the unpadded ones."""
    N, T, _ = shape
    rows, base = [], None
    for padding in PADDING:
        lengths = sorted_lengths(N, T, padding)
        layer, recurrence = layer_step(backend, cell, shape, lengths), recurrence_step(backend, cell, shape, lengths)
        for step in (layer, recurrence):
            step()
        times = [statistics.median(timed(step) for _ in range(repeats)) for step in (layer, recurrence)]
        base = base or times
        rows.append(dict(padding=round(1 - lengths.sum() / (N * T), 3), layer=times[0] / base[0],
                         recurrence=times[1] / base[1], layer_ms=times[0] * 1e3, recurrence_ms=times[1] * 1e3))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("mask", "padding"), help="one of the two measurements")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--pairs", type=int, default=41, help="alternating pairs per mask ratio")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per padding row")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    set_numba_threads()
    backend = get_backend("numba")
    results = {}
    for name in args.shapes.split(","):
        cell, shape = SHAPES[name]
        N, T, _ = shape
        one_short = np.full(N, T)
        one_short[-1] = T - 1
        for case, lengths in (("mask, all T", np.full(N, T)), ("mask, one row T-1", one_short)):
            if args.only in (None, "mask"):
                r = results.setdefault(name, {})[case] = mask_ratio(backend, cell, shape, args.pairs, lengths)
                print(f"{name}  {case:18} masked / unmasked: median {r['median']:.3f}  quartiles {r['q1']:.3f} .. "
                      f"{r['q3']:.3f}  ({r['pairs']} pairs; target <= 1.05)")
        if args.only in (None, "padding"):
            rows = results.setdefault(name, {})["padding"] = padding_times(backend, cell, shape, args.repeats)
            print(f"{name}  padding  layer / unpadded  recurrence / unpadded  (1 - padding)")
            for r in rows:
                print(f"{'':10}{r['padding']:7.2f}  {r['layer']:16.2f}  {r['recurrence']:21.2f}  {1 - r['padding']:14.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
