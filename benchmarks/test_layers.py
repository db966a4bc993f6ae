"""One Time layer, forward + backward, float32: rnncore's backends against PyTorch (cuDNN or CPU).

Shapes: the book's PTB sizes (N=20, T=35, D=H=650 and D=H=100) and, on a GPU, latency
(N=1 and 8) and throughput (N=128, H=1024) shapes.
"""
import pytest
from conftest import record_peak, record_torch_peak, run_synced
from steps import layer_step, torch_layer_step

SHAPES = [(20, 35, 650), (20, 35, 100)]
GPU_SHAPES = [(1, 35, 650), (8, 35, 650), (128, 35, 1024)]


def all_shapes():
    return SHAPES + GPU_SHAPES


@pytest.mark.parametrize("cell", ["lstm", "rnn", "gru"])
@pytest.mark.parametrize("shape", all_shapes(), ids=lambda s: f"N{s[0]}-T{s[1]}-H{s[2]}")
def test_rnncore_layer(benchmark, backend, cell, shape):
    if shape in GPU_SHAPES and backend.name != "cupy":
        pytest.skip("latency and throughput shapes are measured on the GPU")
    N, T, H = shape
    step = layer_step(backend, cell, shape)
    benchmark.group = f"{cell} N={N} T={T} H={H}"
    record_peak(benchmark, backend, step)
    run_synced(benchmark, step, backend.synchronize)


@pytest.mark.parametrize("cell", ["lstm", "rnn", "gru"])
@pytest.mark.parametrize("shape", all_shapes(), ids=lambda s: f"N{s[0]}-T{s[1]}-H{s[2]}")
def test_torch_layer(benchmark, torch_device, cell, shape):
    torch, device = torch_device
    if shape in GPU_SHAPES and device != "cuda":
        pytest.skip("latency and throughput shapes are measured on the GPU")
    N, T, H = shape
    step = torch_layer_step(torch, device, cell, shape)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    benchmark.group = f"{cell} N={N} T={T} H={H}"
    benchmark.extra_info["peer"] = f"torch-{device}"
    record_torch_peak(benchmark, torch, device, step)
    run_synced(benchmark, step, sync)
