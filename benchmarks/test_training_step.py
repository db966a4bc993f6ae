"""One whole PTB training iteration (batch 20, bptt 35, vocab 10000, SGD, clip 0.25):
the book's Rnnlm (LSTM 100) and BetterRnnlm (2 LSTMs 650, tied, dropout 0.5), rnncore
against the same model in PyTorch."""
import pytest
from conftest import record_peak, record_torch_peak, run_synced
from steps import MODELS, iteration_step, torch_iteration_step


@pytest.mark.parametrize("name", list(MODELS))
def test_rnncore_iteration(benchmark, backend, name):
    if name == "better" and backend.name == "numpy":
        pytest.skip("the 650-unit model on NumPy takes long; its layers are in test_layers")
    step = iteration_step(backend, name)
    benchmark.group = f"train iteration {name}"
    record_peak(benchmark, backend, step)
    run_synced(benchmark, step, backend.synchronize, rounds=10)


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_iteration(benchmark, torch_device, name):
    torch, device = torch_device
    step = torch_iteration_step(torch, device, name)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    benchmark.group = f"train iteration {name}"
    benchmark.extra_info["peer"] = f"torch-{device}"
    record_torch_peak(benchmark, torch, device, step)
    run_synced(benchmark, step, sync, rounds=10)
