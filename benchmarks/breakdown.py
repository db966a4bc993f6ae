"""Where a recurrent layer's forward+backward time goes on a backend: each backend call timed.

    python benchmarks/breakdown.py --backend numba --cell lstm --hidden 650

Wraps the backend's methods with ``time.perf_counter`` (after a device sync) and prints the
median of each call position per pass, e.g. "matmul 17.35" for the one dA Wx^T product;
with PyTorch installed, PyTorch's time for the same layer in the same process.
"""
import argparse
import collections
import statistics
import time

try:  # PyTorch first: its OpenMP runtime must start before Numba's (see conftest.py)
    import torch
except ImportError:
    torch = None
from steps import configure_torch, layer_step, median_ms_of, set_numba_threads, torch_layer_step

import rnncore

METHODS = ("linear", "matmul", "matmuls", "sum_rows", "recurrence_forward", "recurrence_backward")


def timed(backend, times):
    """Replace the backend's methods by ones that record their time in ``times``."""
    for name in METHODS:
        method = getattr(backend, name)

        def wrapper(*args, _method=method, _name=name, **kwargs):
            start = time.perf_counter()
            result = _method(*args, **kwargs)
            backend.synchronize()
            times[_name].append(time.perf_counter() - start)
            return result

        setattr(backend, name, wrapper)


def median_ms(samples):
    return statistics.median(samples) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--cell", choices=("lstm", "rnn", "gru"), default="lstm")
    parser.add_argument("--hidden", type=int, default=650)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--passes", type=int, default=20)
    a = parser.parse_args()
    set_numba_threads()  # the thread counts of the suites and paired.py
    if torch is not None:
        configure_torch(torch)
    be = rnncore.get_backend(a.backend)
    shape = (a.batch, a.steps, a.hidden)
    step = layer_step(be, a.cell, shape)
    times = collections.defaultdict(list)
    timed(be, times)
    total = median_ms_of(lambda: (step(), be.synchronize()), a.passes, after_warmup=times.clear)
    print(f"{a.backend} {a.cell} N={a.batch} T={a.steps} H={a.hidden}: total {total:.2f} ms")
    for name, samples in times.items():
        per_pass = len(samples) // a.passes
        print(f"  {name:<14}" + " ".join(f"{median_ms(samples[j::per_pass]):.2f}" for j in range(per_pass)))
    if torch is not None:
        peer = median_ms_of(torch_layer_step(torch, "cpu", a.cell, shape), a.passes)
        print(f"torch cpu, {torch.get_num_threads()} threads: {peer:.2f} ms")


if __name__ == "__main__":
    main()
