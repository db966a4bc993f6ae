"""One Time layer, forward + backward, float32: rnncore's backends against PyTorch (cuDNN or CPU).

Shapes: the book's PTB sizes (N=20, T=35, D=H=650 and D=H=100) and, on a GPU, latency
(N=1 and 8) and throughput (N=128, H=1024) shapes.
"""
import numpy as np
import pytest
from conftest import record_peak, record_torch_peak, run_synced

import rnncore

SHAPES = [(20, 35, 650), (20, 35, 100)]
GPU_SHAPES = [(1, 35, 650), (8, 35, 650), (128, 35, 1024)]


def shapes_for(on_gpu):
    return SHAPES + (GPU_SHAPES if on_gpu else [])


def all_shapes():
    return SHAPES + GPU_SHAPES


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("shape", all_shapes(), ids=lambda s: f"N{s[0]}-T{s[1]}-H{s[2]}")
def test_rnncore_layer(benchmark, backend, cell, shape):
    if shape in GPU_SHAPES and backend.name != "cupy":
        pytest.skip("latency and throughput shapes are measured on the GPU")
    N, T, H = shape
    G = 4 * H if cell == "lstm" else H
    rng = np.random.default_rng(0)
    params = [backend.asarray((rng.standard_normal(s) * 0.05).astype(np.float32)) for s in ((H, G), (H, G), (G,))]
    layer = (rnncore.TimeLSTM if cell == "lstm" else rnncore.TimeRNN)(*params, backend=backend)
    xs = backend.asarray(rng.standard_normal((N, T, H)).astype(np.float32))
    dhs = backend.asarray(rng.standard_normal((N, T, H)).astype(np.float32))

    def step():
        layer.forward(xs)
        layer.backward(dhs)

    benchmark.group = f"{cell} N={N} T={T} H={H}"
    record_peak(benchmark, backend, step)
    run_synced(benchmark, step, backend.synchronize)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("shape", all_shapes(), ids=lambda s: f"N{s[0]}-T{s[1]}-H{s[2]}")
def test_torch_layer(benchmark, torch_device, cell, shape):
    torch, device = torch_device
    if shape in GPU_SHAPES and device != "cuda":
        pytest.skip("latency and throughput shapes are measured on the GPU")
    N, T, H = shape
    net = (torch.nn.LSTM if cell == "lstm" else torch.nn.RNN)(H, H, batch_first=True).to(device)
    x = torch.randn(N, T, H, device=device, requires_grad=True)
    dout = torch.randn(N, T, H, device=device)

    def step():
        net.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = net(x)
        out.backward(dout)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    benchmark.group = f"{cell} N={N} T={T} H={H}"
    benchmark.extra_info["peer"] = f"torch-{device}"
    record_torch_peak(benchmark, torch, device, step)
    run_synced(benchmark, step, sync)
