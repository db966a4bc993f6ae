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
import numpy as np

import rnncore

METHODS = ("linear", "matmul", "matmul_pair", "sum_rows", "lstm_forward", "lstm_backward", "rnn_forward",
           "rnn_backward")


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
    parser.add_argument("--cell", choices=("lstm", "rnn"), default="lstm")
    parser.add_argument("--hidden", type=int, default=650)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--passes", type=int, default=20)
    a = parser.parse_args()
    be = rnncore.get_backend(a.backend)
    N, T, H = a.batch, a.steps, a.hidden
    G = 4 * H if a.cell == "lstm" else H
    rng = np.random.default_rng(0)
    params = [be.asarray((rng.standard_normal(s) * 0.05).astype(np.float32)) for s in ((H, G), (H, G), (G,))]
    layer = (rnncore.TimeLSTM if a.cell == "lstm" else rnncore.TimeRNN)(*params, backend=be)
    xs, dhs = (be.asarray(rng.standard_normal((N, T, H)).astype(np.float32)) for _ in range(2))
    times, totals = collections.defaultdict(list), []
    timed(be, times)
    for i in range(a.passes + 3):
        if i == 3:  # warm-ups dropped
            times.clear()
            totals.clear()
        start = time.perf_counter()
        layer.forward(xs)
        layer.backward(dhs)
        be.synchronize()
        totals.append(time.perf_counter() - start)
    print(f"{a.backend} {a.cell} N={N} T={T} H={H}: total {median_ms(totals):.2f} ms")
    for name, samples in times.items():
        per_pass = len(samples) // len(totals)
        print(f"  {name:<14}" + " ".join(f"{median_ms(samples[j::per_pass]):.2f}" for j in range(per_pass)))
    if torch is not None:
        print(f"torch cpu, {torch.get_num_threads()} threads: {torch_ms(a, N, T, H):.2f} ms")


def torch_ms(a, N, T, H):
    net = (torch.nn.LSTM if a.cell == "lstm" else torch.nn.RNN)(H, H, batch_first=True)
    x, dout = torch.randn(N, T, H, requires_grad=True), torch.randn(N, T, H)
    samples = []
    for _ in range(a.passes + 3):
        start = time.perf_counter()
        out, _ = net(x)
        out.backward(dout)
        samples.append(time.perf_counter() - start)
    return median_ms(samples[3:])


if __name__ == "__main__":
    main()
