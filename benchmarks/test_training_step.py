"""One whole PTB training iteration (batch 20, bptt 35, vocab 10000, SGD, clip 0.25):
the book's Rnnlm (LSTM 100) and BetterRnnlm (2 LSTMs 650, tied, dropout 0.5), rnncore
against the same model in PyTorch."""
import numpy as np
import pytest
from conftest import record_peak, record_torch_peak, run_synced

from rnncore.models import BetterRnnlm, Rnnlm
from rnncore.optim import SGD, clip_grads

V, N, T = 10000, 20, 35
MODELS = {"rnnlm": dict(size=100, layers=1, dropout=0.0, tie=False),
          "better": dict(size=650, layers=2, dropout=0.5, tie=True)}


def tokens(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, size=(N, T)), rng.integers(0, V, size=(N, T))


@pytest.mark.parametrize("name", list(MODELS))
def test_rnncore_iteration(benchmark, backend, name):
    if name == "better" and backend.name == "numpy":
        pytest.skip("the 650-unit model on NumPy takes long; its layers are in test_layers")
    model = (Rnnlm if name == "rnnlm" else BetterRnnlm)(V, backend=backend)
    opt = SGD(20.0)
    xs, ts = (backend.asarray(a) for a in tokens(0))

    def step():
        model.forward(xs, ts)
        model.backward()
        clip_grads(model.grads, 0.25, backend)
        opt.update(model.params, model.grads, backend)

    benchmark.group = f"train iteration {name}"
    record_peak(benchmark, backend, step)
    run_synced(benchmark, step, backend.synchronize, rounds=10)


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_iteration(benchmark, torch_device, name):
    torch, device = torch_device
    cfg = MODELS[name]
    H = cfg["size"]

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(V, H)
            self.drop = torch.nn.Dropout(cfg["dropout"])
            self.rnn = torch.nn.LSTM(H, H, num_layers=cfg["layers"], dropout=cfg["dropout"] if cfg["layers"] > 1 else 0,
                                     batch_first=True)
            self.out = torch.nn.Linear(H, V)
            if cfg["tie"]:
                self.out.weight = self.embed.weight

        def forward(self, x, state):
            h, state = self.rnn(self.drop(self.embed(x)), state)
            return self.out(self.drop(h)), state

    model = LM().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    xs, ts = (torch.as_tensor(a, device=device) for a in tokens(0))
    state = [None]

    def step():
        opt.zero_grad(set_to_none=True)
        if state[0] is not None:
            state[0] = tuple(s.detach() for s in state[0])
        scores, state[0] = model(xs, state[0])
        torch.nn.functional.cross_entropy(scores.reshape(-1, V), ts.reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    benchmark.group = f"train iteration {name}"
    benchmark.extra_info["peer"] = f"torch-{device}"
    record_torch_peak(benchmark, torch, device, step)
    run_synced(benchmark, step, sync, rounds=10)
