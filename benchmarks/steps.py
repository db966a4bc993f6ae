"""The timed steps, built once for the pytest-benchmark suites, paired.py and breakdown.py.

Each builder returns a function of no arguments that runs one step (not device-synchronized):
a layer's forward+backward, or one whole PTB training iteration, in rnncore or in PyTorch.
"""
import importlib.util
import os
import statistics
import time

import numpy as np

from rnncore.checks import expect_ids, trusted_ids
from rnncore.models import CELLS as CELL_LAYERS
from rnncore.models import BetterRnnlm, Rnnlm
from rnncore.optim import SGD, clip_grads

V, N_LM, T_LM = 10000, 20, 35  # the book's PTB iteration: vocabulary, batch, bptt
MODELS = {"rnnlm": dict(size=100, layers=1, dropout=0.0, tie=False),
          "better": dict(size=650, layers=2, dropout=0.5, tie=True)}
THREADS = int(os.environ.get("RNNCORE_BENCH_THREADS", os.cpu_count()))  # every runner gets as many


def configure_torch(torch):
    """PyTorch at THREADS CPU threads and, on a GPU, strict float32 (no TF32, as rnncore's
    kernels); returns the device the suites compare on: "cuda" where there is one, else "cpu"."""
    torch.set_num_threads(THREADS)
    if not torch.cuda.is_available():
        return "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return "cuda"


def set_numba_threads():
    if importlib.util.find_spec("numba") is not None:
        import numba

        numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))


def median_ms_of(step, calls, warmups=3, after_warmup=lambda: None):
    """Median milliseconds of ``calls`` calls of step, after warm-ups (then ``after_warmup()``)."""
    for _ in range(warmups):
        step()
    after_warmup()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def layer_step(backend, cell, shape, lengths=None):
    """TimeRNN, TimeLSTM or TimeGRU (D = H) forward+backward on random float32 input, rnncore;
    ``lengths``: each row's valid steps (host array), or None (the unmasked path)."""
    N, T, H = shape
    layer_class = CELL_LAYERS[cell]
    G = layer_class.cell.gates * H
    rng = np.random.default_rng(0)
    shapes = [(H, G), (H, G)] + [(G,)] * (len(layer_class.cell.param_names) - 2)
    params = [backend.asarray((rng.standard_normal(s) * 0.05).astype(np.float32)) for s in shapes]
    layer = layer_class(*params, backend=backend)
    xs, dhs = (backend.asarray(rng.standard_normal((N, T, H)).astype(np.float32)) for _ in range(2))

    lengths = None if lengths is None else backend.asarray(np.asarray(lengths, dtype=np.int64))

    def step():
        layer.forward(xs, lengths)
        layer.backward(dhs)

    return step


def torch_layer_step(torch, device, cell, shape):
    """The same layer in PyTorch (nn.RNN / nn.LSTM / nn.GRU, batch first), gradients to the input too."""
    N, T, H = shape
    net = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](H, H, batch_first=True).to(device)
    x = torch.randn(N, T, H, device=device, requires_grad=True)
    dout = torch.randn(N, T, H, device=device)

    def step():
        net.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = net(x)
        out.backward(dout)

    return step


def sgemm_step(n=2048):
    """NumPy's float32 n x n x n product (its BLAS, all its threads): how the suites measure the
    machine's peak. Returns (the step, its FLOPs)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    return (lambda: np.matmul(a, b, out=out)), 2 * n**3


def layer_flops(cell, shape):
    """The FLOPs of a layer step's products (D = H): the input and recurrent products forward,
    and backward the gradients of the weights (two), of the input and of h (four more)."""
    N, T, H = shape
    return 6 * 2 * T * N * H * CELL_LAYERS[cell].cell.gates * H


def tokens(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, size=(N_LM, T_LM)), rng.integers(0, V, size=(N_LM, T_LM))


def iteration_step(backend, name):
    """One SGD iteration of the book's Rnnlm or BetterRnnlm (clip 0.25), rnncore."""
    model = (Rnnlm if name == "rnnlm" else BetterRnnlm)(V, backend=backend)
    opt = SGD(20.0)
    xs, ts = (backend.asarray(a) for a in tokens(0))
    # checked once here: inside the timed step a check reads the id range back (a device sync)
    expect_ids("iteration_step", "xs", xs, 0, V)
    expect_ids("iteration_step", "ts", ts, -1, V)

    def step():
        with trusted_ids():
            model.forward(xs, ts)
            model.backward()
            clip_grads(model.grads, 0.25, backend)
            opt.update(model.params, model.grads, backend)

    return step


def torch_iteration_step(torch, device, name):
    """The same iteration in PyTorch: embedding, LSTM, linear, cross-entropy, clip, SGD; state carried."""
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

    return step
