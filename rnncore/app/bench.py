"""rnncore bench: where BPTT's time and memory go as the truncation length T grows.

A synthetic token stream of L steps and N rows (no download) trains a language model
(embedding -> tanh RNN or LSTM -> affine -> softmax; D = H) through one pass: forward
and backward over the stream in chunks of T steps, the state carried between chunks,
the gradient cut at each chunk start. Every row of the sweep processes the same tokens.
T runs over 5, 10, 20, 35, 70, 140, 280, 560 and L (full BPTT), cut regularly or at
random lengths with mean T (d2l 9.7). Full BPTT is also run with checkpointing (keep
every sqrt(L)-th state, recompute the rest) at growing L, to show memory ~ sqrt(L).

Runners: each rnncore backend available here, and the peers where installed: PyTorch
(cuDNN on a GPU, else the CPU) and the textbook layers (rnncore.app.textbook: one NumPy
layer object per time step, as the book writes them).

Each row (also the keys of --json's "rows"):
  backend        runner: numpy, numba, cupy, torch-cpu, torch-cuda, textbook
  cell           rnn or lstm;  N, H: batch rows and hidden size;  L: stream length
  T              truncation length (T = L: full BPTT)
  truncation     regular or randomized
  checkpoint     segment length of checkpointed full BPTT, else null
  time_per_token_s   median seconds per token of forward+backward over the stream
                 (after a warm-up, device-synchronized); time_spread_s: [25th, 75th] percentile
  tokens_per_s   N*L / median time
  peak_bytes     peak memory allocated during one pass (a separate, untimed run;
                 null where the runner cannot report it, e.g. PyTorch on the CPU)
  analytic_bytes what backward needs kept for one chunk: T*N*(H + kH + V) values,
                 k = 1 (RNN: h) or 6 (LSTM: h, c, 4 gates), plus, when checkpointed,
                 L/segment saved states
  grad_cosine    cosine between this pass's gradient of Wh and full BPTT's, same runner
"""
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import bptt
from ..backends import available_backends, get_backend
from ..models import RecurrentLM
from .options import positive

SWEEP = (5, 10, 20, 35, 70, 140, 280, 560)
QUICK_SWEEP = (5, 35, 140)
FULL_LENGTHS = (1000, 2000, 4000)
QUICK_FULL_LENGTHS = (500, 2000)


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="a smaller sweep that runs in under a minute on 2 cores")
    p.add_argument("--backend", help="comma-separated backends (default: every one available here)")
    p.add_argument("--cell", default="rnn,lstm", help="rnn, lstm or both (default rnn,lstm)")
    p.add_argument("--hidden", type=positive(int), help="hidden size H (default 128; quick 64)")
    p.add_argument("--batch", type=positive(int), help="rows N (default 16; quick 8)")
    p.add_argument("--length", type=positive(int), help="stream length L (default 1120; quick 280)")
    p.add_argument("--vocab", type=positive(int), default=64, help="synthetic vocabulary size (default 64)")
    p.add_argument("--repeats", type=positive(int), help="timed passes per row (default 5; quick 3)")
    p.add_argument("--no-peers", action="store_true", help="skip PyTorch and the textbook layers")
    p.add_argument("--json", help="write the rows (and the machine) as JSON here")
    p.add_argument("--plot", help="write time and memory against T as a PNG here (needs matplotlib)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="run every runner in this process (default: one subprocess per runner)")


def run(args):
    settings = _settings(args)
    names = _runner_names(settings)
    total = sum(len(_specs(name, settings)) for name in names) * len(settings["cells"])
    rows, done = [], 0
    for name in names:
        # One process per runner: two thread pools (Numba's OpenMP, PyTorch's) left spinning
        # in one process would slow whichever runs next and skew the comparison.
        task = dict(runner=name, settings=settings, offset=done, total=total)
        rows += _in_subprocess(task) if args.isolate else _run_runner(task)
        done += len(_specs(name, settings)) * len(settings["cells"])
    print(format_table(rows))
    report = {"machine": machine(), "settings": settings, "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"rows written to {args.json}", file=sys.stderr)
    if args.plot and plot(rows, args.plot):
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _in_subprocess(task):
    result = subprocess.run([sys.executable, "-m", "rnncore.app.bench", json.dumps(task)], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the {task['runner']} runner failed (exit status {result.returncode})")
    return json.loads(result.stdout)


def _run_runner(task):
    s, name = task["settings"], task["runner"]
    runner = _make_runner(name)
    progress = _Progress(task["total"], task["offset"])
    rows, full_grads = [], {}
    for cell in s["cells"]:
        for spec in _specs(name, s):
            progress.show(f"{runner.name} {cell} L={spec['L']} T={spec['T']} {spec['truncation']}")
            rows.append(_measure(runner, cell, spec, s, full_grads))
    progress.done()
    return rows


def _settings(args):
    q = args.quick
    s = dict(N=args.batch or (8 if q else 16), H=args.hidden or (64 if q else 128), V=args.vocab,
             L=args.length or (280 if q else 1120), repeats=args.repeats or (3 if q else 5), seed=args.seed,
             cells=[c.strip() for c in args.cell.split(",") if c.strip()], peers=not args.no_peers,
             backends=[b.strip() for b in args.backend.split(",")] if args.backend else available_backends())
    for name, option in (("N", "batch"), ("H", "hidden"), ("L", "length"), ("V", "vocab"), ("repeats", "repeats")):
        if s[name] < 1:
            raise ValueError(f"--{option} must be positive")
    if not set(s["cells"]) <= {"rnn", "lstm"} or not s["cells"]:
        raise ValueError(f"--cell takes rnn, lstm or both, got {args.cell!r}")
    s["sweep"] = [T for T in (QUICK_SWEEP if q else SWEEP) if T < s["L"]] + [s["L"]]
    s["full_lengths"] = list(QUICK_FULL_LENGTHS if q else FULL_LENGTHS)
    return s


def _specs(runner_name, s):
    specs = [dict(T=T, truncation=kind, L=s["L"], checkpoint=None)
             for kind in ("regular", "randomized") for T in s["sweep"] if not (kind == "randomized" and T == s["L"])]
    if runner_name in s["backends"]:  # checkpointed full BPTT is rnncore's
        for L in s["full_lengths"]:
            specs.append(dict(T=L, truncation="regular", L=L, checkpoint=None))
            specs.append(dict(T=L, truncation="regular", L=L, checkpoint=max(1, int(round(math.sqrt(L))))))
    return specs


def synthetic_stream(N, L, V, seed):
    """Tokens with long-range structure: each row repeats its own motif with noise."""
    rng = np.random.default_rng(seed)
    motif = rng.integers(0, V, size=(N, 50))
    ids = np.tile(motif, (1, L // 50 + 2))[:, : L + 1]
    noise = rng.random(ids.shape) < 0.2
    ids[noise] = rng.integers(0, V, size=noise.sum())
    return ids[:, :-1].astype(np.int32), ids[:, 1:].astype(np.int32)


def analytic_bytes(cell, N, H, V, T, itemsize, L=None, checkpoint=None):
    kept = 1 if cell == "rnn" else 6
    per_step = N * (H + kept * H + V) * itemsize
    if checkpoint:
        return int(min(checkpoint, L) * per_step + math.ceil(L / checkpoint) * N * H * (1 if cell == "rnn" else 2) * itemsize)
    return int(T * per_step)


def _measure(runner, cell, spec, s, full_grads):
    L, N = spec["L"], s["N"]
    xs, ts = synthetic_stream(N, L, s["V"], s["seed"])
    model = runner.build(cell, s)
    if spec["truncation"] == "regular":
        lengths = bptt.regular_lengths(L, spec["T"])
    else:
        lengths = bptt.randomized_lengths(L, spec["T"], s["seed"])

    def one_pass():
        return runner.run(model, xs, ts, lengths, spec["checkpoint"])

    grad = runner.grad_wh(model, one_pass())  # also the warm-up
    times = []
    for _ in range(s["repeats"]):
        start = time.perf_counter()
        runner.run(model, xs, ts, lengths, spec["checkpoint"])
        runner.sync()
        times.append(time.perf_counter() - start)
    key = (runner.name, cell, L)
    if spec["T"] == L and spec["checkpoint"] is None:
        full_grads[key] = grad
    reference = full_grads.get(key)
    if reference is None:  # the sweep for this L has not reached full BPTT yet: compute it
        reference = full_grads[key] = runner.grad_wh(model, runner.run(model, xs, ts, [L], None))
    median = statistics.median(times)
    q = np.percentile(times, [25, 75])
    return dict(backend=runner.name, cell=cell, N=N, H=s["H"], L=L, T=spec["T"], truncation=spec["truncation"],
                checkpoint=spec["checkpoint"], time_per_token_s=median / (N * L),
                time_spread_s=[q[0] / (N * L), q[1] / (N * L)], tokens_per_s=N * L / median,
                peak_bytes=runner.peak_bytes(one_pass),
                analytic_bytes=analytic_bytes(cell, N, s["H"], s["V"], spec["T"], 4, L, spec["checkpoint"]),
                grad_cosine=_cosine(grad, reference))


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float("nan")


# runners -----------------------------------------------------------------------------------
class BackendRunner:
    """An rnncore backend running RecurrentLM through rnncore.bptt."""

    def __init__(self, name):
        self.backend = get_backend(name)
        self.name = self.backend.name

    def build(self, cell, s):
        return RecurrentLM(s["V"], s["H"], s["H"], cell=cell, backend=self.backend, seed=s["seed"])

    def run(self, model, xs, ts, lengths, checkpoint):
        xs, ts = self.backend.asarray(xs), self.backend.asarray(ts)
        if checkpoint:
            return bptt.checkpointed_pass(model, xs, ts, checkpoint)
        return bptt.truncated_pass(model, xs, ts, lengths)

    def grad_wh(self, model, result):
        _, grads = result
        wh = model.rnn_layers[0].params[1]
        index = next(k for k, p in enumerate(model.params) if p is wh)
        return self.backend.to_numpy(grads[index])

    def sync(self):
        self.backend.synchronize()

    def peak_bytes(self, one_pass):
        with self.backend.peak_memory() as report:
            one_pass()
        return report.peak_bytes


class TextbookRunner(BackendRunner):
    """The book's per-step layers inside the same model, on NumPy."""

    def __init__(self):
        super().__init__("numpy")
        self.name = "textbook"

    def build(self, cell, s):
        from . import textbook

        model = super().build(cell, s)
        ours = model.rnn_layers[0]
        layer_cls = textbook.TimeRNN if cell == "rnn" else textbook.TimeLSTM
        theirs = layer_cls(*textbook.from_rnncore_params(cell, *ours.params), stateful=True)
        model.layers[model.layers.index(ours)] = theirs
        model.rnn_layers[0] = theirs
        for k, p in enumerate(model.params):
            for j, q in enumerate(ours.params):
                if p is q:
                    model.params[k], model.grads[k] = theirs.params[j], theirs.grads[j]
        return model

    def grad_wh(self, model, result):
        _, grads = result
        wh = model.rnn_layers[0].params[1]
        return next(g for p, g in zip(model.params, grads) if p is wh)


class TorchRunner:
    """The same model in PyTorch: cuDNN on a GPU, else the CPU; strict float32 (no TF32)."""

    def __init__(self, torch, device):
        self.torch, self.device = torch, device
        self.name = f"torch-{device}"
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def build(self, cell, s):
        torch = self.torch
        torch.manual_seed(s["seed"])
        rnn_cls = torch.nn.RNN if cell == "rnn" else torch.nn.LSTM
        return torch.nn.ModuleDict(dict(
            embed=torch.nn.Embedding(s["V"], s["H"]), rnn=rnn_cls(s["H"], s["H"], batch_first=True),
            out=torch.nn.Linear(s["H"], s["V"]))).to(self.device)

    def run(self, model, xs, ts, lengths, checkpoint):
        torch = self.torch
        xs = torch.as_tensor(xs, dtype=torch.long, device=self.device)
        ts = torch.as_tensor(ts, dtype=torch.long, device=self.device)
        model.zero_grad(set_to_none=True)
        state, t0, L = None, 0, xs.shape[1]
        for T in lengths:
            h, state = model["rnn"](model["embed"](xs[:, t0 : t0 + T]), state)
            scores = model["out"](h)
            loss = torch.nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), ts[:, t0 : t0 + T].reshape(-1))
            (loss * (T / L)).backward()
            state = state.detach() if isinstance(state, torch.Tensor) else tuple(x.detach() for x in state)
            t0 += T
        return model

    def grad_wh(self, model, result):
        return model["rnn"].weight_hh_l0.grad.detach().cpu().numpy()

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def peak_bytes(self, one_pass):
        if self.device != "cuda":
            return None  # PyTorch's CPU allocator is invisible to tracemalloc
        torch = self.torch
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        one_pass()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before


def _runner_names(s):
    names = list(s["backends"])
    for name in names:
        get_backend(name)  # fail early, with the install hint, on a backend that is not here
    if s["peers"]:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            names.append("torch-cuda" if torch.cuda.is_available() else "torch-cpu")
        names.append("textbook")
    return names


def _make_runner(name):
    if name == "textbook":
        return TextbookRunner()
    if name.startswith("torch-"):
        import torch

        return TorchRunner(torch, name.split("-", 1)[1])
    return BackendRunner(name)


# output ----------------------------------------------------------------------------------
def machine():
    import os

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "numpy": np.__version__}
    try:
        import numba

        info["numba"], info["numba_threads"] = numba.__version__, numba.get_num_threads()
    except ImportError:
        pass
    if "cupy" in available_backends():
        import cupy

        info["cupy"] = cupy.__version__
        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    try:
        import torch

        info["torch"], info["torch_threads"] = torch.__version__, torch.get_num_threads()
    except ImportError:
        pass
    return info


def format_table(rows):
    head = f"{'runner':<11}{'cell':<5}{'trunc':<11}{'L':>6}{'T':>6}{'ckpt':>5}{'us/token':>10}{'spread':>15}" \
           f"{'tokens/s':>11}{'peak MB':>9}{'need MB':>9}{'cos':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        spread = f"{r['time_spread_s'][0] * 1e6:.2f}-{r['time_spread_s'][1] * 1e6:.2f}"
        lines.append(f"{r['backend']:<11}{r['cell']:<5}{r['truncation']:<11}{r['L']:>6}{r['T']:>6}"
                     f"{r['checkpoint'] or '-':>5}{r['time_per_token_s'] * 1e6:>10.2f}{spread:>15}"
                     f"{r['tokens_per_s']:>11.0f}{peak:>9}{r['analytic_bytes'] / 2**20:>9.1f}{r['grad_cosine']:>7.3f}")
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    L = rows[0]["L"]  # the sweep's stream length (the checkpointed rows come after it)
    sweep = [r for r in rows if r["truncation"] == "regular" and r["checkpoint"] is None and r["L"] == L]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in sorted({(r["backend"], r["cell"]) for r in sweep}):
        mine = sorted((r for r in sweep if (r["backend"], r["cell"]) == key), key=lambda r: r["T"])
        Ts = [r["T"] for r in mine]
        label = f"{key[0]} {key[1]}"
        ax_t.plot(Ts, [r["time_per_token_s"] * 1e6 for r in mine], "o-", label=label)
        if all(r["peak_bytes"] is not None for r in mine):
            ax_m.plot(Ts, [r["peak_bytes"] / 2**20 for r in mine], "o-", label=label)
    for cell in sorted({r["cell"] for r in sweep}):
        mine = sorted({r["T"]: r for r in sweep if r["cell"] == cell}.values(), key=lambda r: r["T"])
        ax_m.plot([r["T"] for r in mine], [r["analytic_bytes"] / 2**20 for r in mine], "k--", lw=0.8,
                  label=f"needed by backward ({cell})")
    ax_t.set(xscale="log", yscale="log", xlabel="truncation length T", ylabel="us per token (fwd+bwd)",
             title=f"time, L={L}")
    ax_m.set(xscale="log", yscale="log", xlabel="truncation length T", ylabel="peak MiB of one pass", title="memory")
    ax_t.legend(fontsize=7)
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


class _Progress:
    def __init__(self, total, offset=0, stream=sys.stderr):
        self.total, self.done_count, self.stream = total, offset, stream
        self.started, self.offset = time.perf_counter(), offset
        self.tty = stream.isatty()

    def show(self, label):
        self.done_count += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(self.done_count - self.offset - 1, 1) * (self.total - self.done_count + 1)
        bar = "#" * int(20 * (self.done_count - 1) / self.total)
        line = f"[{bar:<20}] {self.done_count}/{self.total} {label:<40} ETA {int(eta)}s"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)

    def done(self):
        if self.tty:
            print(file=self.stream)


if __name__ == "__main__":  # a runner's worker process: the task as JSON in, its rows as JSON out
    print(json.dumps(_run_runner(json.loads(sys.argv[1]))))
