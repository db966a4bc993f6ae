"""rnncore bench: where BPTT's time and memory go as the truncation length T grows.

A synthetic token stream of L steps and N rows (no download) trains a language model
(embedding -> tanh RNN, LSTM or GRU -> affine -> softmax; D = H) through one pass: forward
and backward over the stream in chunks of T steps, the state carried between chunks,
the gradient cut at each chunk start. Every row of the sweep processes the same tokens.
T runs over 5, 10, 20, 35, 70, 140, 280, 560 and L (full BPTT), cut regularly, at random
lengths with mean T, or by randomized truncation (d2l 9.7, unbiased: rnncore's backends
only). Full BPTT is also run with checkpointing (keep every sqrt(L)-th state, recompute the
rest) at growing L, to show memory ~ sqrt(L). --quick runs the LSTM only, regular cuts at
T = 5, 35, 140 and full BPTT over L = 280 (float32, as always).

Runners: each rnncore backend available here, and the peers where installed: PyTorch
(cuDNN on a GPU, else the CPU) and the textbook layers (rnncore.app.textbook: one NumPy
layer object per time step, as the books write them; its GRU is the books' form, r applied
before the product, a different function from rnncore's and PyTorch's at the same cost).
Each runner runs in a process of its own; Numba's compiled kernels are cached on disk, so
only the first run compiles them (the progress line says so while it does).

Each row (also the keys of --json's "rows"):
  backend        runner: numpy, numba, cupy, torch-cpu, torch-cuda, textbook
  cell           rnn, lstm or gru;  N, H: batch rows and hidden size;  L: stream length
  T              truncation length (T = L: full BPTT)
  truncation     regular, random (chunk lengths drawn around T) or randomized (d2l 9.7)
  checkpoint     segment length of checkpointed full BPTT, else null
  time_per_token_s   median seconds per token of forward+backward over the stream, over
                 the timed passes (after an untimed warm-up pass, device-synchronized);
                 time_spread_s: [fastest, slowest] timed pass, per token
  noisy          the timed passes range over more than 25% of their median: do not quote it
  warm_up_s      seconds of the untimed warm-up pass (Numba compiles in a cell's first)
  tokens_per_s   N*L / median time
  peak_bytes     peak memory allocated during one pass (a separate, untimed run;
                 null where the runner cannot report it, e.g. PyTorch on the CPU)
  analytic_bytes what backward needs kept for one chunk: T*N*(H + kH + V) values,
                 k = 1 (RNN: h), 6 (LSTM: h, c, 4 gates) or 5 (GRU: h, 3 gates, h Wh_n),
                 plus, when checkpointed, L/segment saved states
  grad_cosine    cosine between this pass's gradient of Wh and full BPTT's, same runner (one
                 draw: the timed pass's, seeded by --seed)
  draws          gradient draws behind the next two keys: --draws (default 8) for random and
                 randomized truncation, draw i seeded by --seed + i (draw 0 is the timed pass's;
                 the others are extra gradient-only passes, untimed); 1 for regular truncation
                 and full BPTT, which are deterministic
  grad_bias_cosine  the scheme's bias: cosine between the MEAN of the draws' gradients of Wh and
                 full BPTT's (regular: equal to grad_cosine). An unbiased scheme's (randomized)
                 nears 1 only as draws grow, about 1/sqrt(1 + grad_spread^2/draws)
  grad_spread    the draws' spread: the mean over draws i of ||g_i - mean|| / ||mean||, g_i the
                 draws' gradients of Wh, mean their mean (exactly 0 where draws = 1)

After the table, a summary per cell (--json's "summary"): at T = 35 (the books' truncation),
the fastest runner's time per token and its speedup over the textbook peer and PyTorch; the
peak memory of that truncation against full BPTT's; the shortest T whose gradient cosine
with full BPTT reaches 0.99; and, for the same rnncore backend at that T, each truncation
scheme's bias cosine and spread ("schemes": truncation -> grad_bias_cosine, grad_spread, draws).
"""
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import bptt
from ..backends import available_backends, get_backend
from ..cells import CELLS
from ..models import RecurrentLM
from . import distributed, textbook
from .options import positive

SWEEP = (5, 10, 20, 35, 70, 140, 280, 560)
QUICK_SWEEP = (5, 35, 140)
FULL_LENGTHS = (1000, 2000, 4000)
TRUNCATIONS = ("regular", "random", "randomized")
# one cell: each cell's first Numba run compiles its own recurrence kernels
QUICK_CELLS = "lstm"
SUMMARY_T = 35  # the books' truncation: the summary compares runners and memory there
GOOD_COSINE = 0.99
DRAWS = 8  # gradient draws per random / randomized truncation row: its bias and spread
NOISY_SPREAD = 0.25  # (slowest - fastest) / median of a row's timed passes above this: noisy
LOG_INTERVAL = 10  # seconds between progress lines on a stream that is not a terminal
COMPILING = "compiling Numba kernels, first run only"
clock = time.perf_counter  # tests swap in a fake clock


def add_arguments(p):
    p.add_argument("--quick", action="store_true",
                   help="the LSTM, regular truncation at T = 5, 35, 140 and full BPTT over L = 280, N = 8, "
                        "H = 64: under a minute on 2 cores, compiling included")
    p.add_argument("--backend", help="comma-separated backends (default: every one available here)")
    p.add_argument("--cell", help="comma-separated cells: rnn, lstm, gru (default rnn,lstm; quick lstm)")
    p.add_argument("--hidden", type=positive(int), help="hidden size H (default 128; quick 64)")
    p.add_argument("--batch", type=positive(int), help="rows N (default 16; quick 8)")
    p.add_argument("--length", type=positive(int), help="stream length L (default 1120; quick 280)")
    p.add_argument("--vocab", type=positive(int), default=64, help="synthetic vocabulary size (default 64)")
    p.add_argument("--repeats", type=positive(int), help="timed passes per row (default 5; quick 3)")
    p.add_argument("--no-peers", action="store_true", help="skip PyTorch and the textbook layers")
    p.add_argument("--json", help="write the rows, the summary and the machine as JSON here")
    p.add_argument("--plot", help="write time and memory against T as a PNG here (needs matplotlib)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream and the weights (default 0)")
    p.add_argument("--draws", type=positive(int), default=DRAWS,
                   help="gradient draws (seeds seed, seed+1, ...) of each random and randomized truncation "
                        "row, for its bias (cosine of the draws' mean gradient with full BPTT's) and spread "
                        "(mean ||g_i - mean|| / ||mean||); untimed gradient-only passes; regular truncation "
                        f"is deterministic, one draw (default {DRAWS}; --quick runs regular truncation only)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="run every runner in this process (default: one subprocess per runner)")


def run(args):
    settings = _settings(args)
    names = _runner_names(settings)
    comm = distributed.communicator()
    rows, info = _collect(names, settings, args.isolate, comm)
    if comm.rank > 0:  # rank 0 writes the merged result
        return 0
    summary = summarize(rows, settings)
    print(format_table(rows))
    print()
    print(format_summary(summary))
    report = {"machine": {**machine(), **info}, "settings": settings, "rows": rows, "summary": summary}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"rows written to {args.json}", file=sys.stderr)
    if args.plot and plot(rows, args.plot):
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _settings(args):
    q = args.quick
    cells = args.cell or (QUICK_CELLS if q else "rnn,lstm")
    s = {"N": args.batch or (8 if q else 16), "H": args.hidden or (64 if q else 128), "V": args.vocab,
         "L": args.length or (280 if q else 1120), "repeats": args.repeats or (3 if q else 5), "seed": args.seed,
         "draws": getattr(args, "draws", None) or DRAWS,
         "quick": q, "cells": [c.strip() for c in cells.split(",") if c.strip()], "peers": not args.no_peers,
         "backends": [b.strip() for b in args.backend.split(",")] if args.backend else available_backends()}
    if not set(s["cells"]) <= set(CELLS) or not s["cells"]:
        raise ValueError(f"--cell takes {', '.join(CELLS)} or several, comma-separated; got {cells!r}")
    s["sweep"] = [T for T in (QUICK_SWEEP if q else SWEEP) if T < s["L"]] + [s["L"]]
    # the quick sweep leaves out what its summary does not use: random and randomized cuts,
    # and checkpointed full BPTT (streams of up to 4000 steps)
    s["truncations"] = ["regular"] if q else list(TRUNCATIONS)
    s["full_lengths"] = [] if q else list(FULL_LENGTHS)
    return s


def _specs(runner_name, s):
    """The rows one runner measures, full BPTT first: its gradient is what the others' cosines
    compare with. Randomized truncation and checkpointing are rnncore's (the peers' layers run a
    whole chunk in one call and cannot scale or restart the gradient within it)."""
    ours = runner_name in s["backends"]
    L = s["L"]
    specs = [{"T": L, "truncation": "regular", "L": L, "checkpoint": None}]
    for kind in s["truncations"]:
        if ours or kind != "randomized":
            specs += [{"T": T, "truncation": kind, "L": L, "checkpoint": None} for T in s["sweep"] if T < L]
    for length in s["full_lengths"] if ours else ():
        segment = max(1, round(math.sqrt(length)))
        specs += [{"T": length, "truncation": "regular", "L": length, "checkpoint": c} for c in (None, segment)]
    return specs


def _runner_names(s):
    """The runners to run. Checked here without importing Numba or PyTorch (a second or three
    each): the runners' own processes import them."""
    names = list(s["backends"])
    for name in names:
        if name not in available_backends():
            get_backend(name)  # raises, naming the extra to install
    if s["peers"]:
        import importlib.util

        if importlib.util.find_spec("torch") is not None:
            names.append("torch")
        names.append("textbook")
    return names


# running ---------------------------------------------------------------------------------
def _collect(names, s, isolate, comm=distributed.SINGLE):
    """Every runner's rows, the progress line fed by their events; and what the runners said of
    the machine (versions, threads). Under mpiexec the (runner, cell) pairs are dealt out over
    the ranks (each pair's rows depend on nothing else) and rank 0 gathers the rows; ranks that
    share a machine's cores slow each other, so spread a timing sweep over machines or GPUs."""
    rows, info = {}, {}  # rows per (runner, cells) pair
    # one process: each runner's cells in one go; ranks: (runner, cell) pairs, for a finer deal
    groups = [[cell] for cell in s["cells"]] if comm.size > 1 else [s["cells"]]
    mine = [(name, tuple(cells)) for name in names for cells in groups][comm.rank::comm.size]
    specs = [spec for name, cells in mine for _ in cells for spec in _specs(name, s)]  # a runner's rows per cell
    with _Progress([spec["L"] for spec in specs], s["repeats"], None if comm.rank == 0 else open(os.devnull, "w"),
                   extra=[_draws(spec, s) - 1 for spec in specs]) as progress:
        for name, cells in mine:
            # One process per runner: two thread pools (Numba's, PyTorch's OpenMP) left spinning
            # in one process slow whichever runs next and skew the comparison. The Numba cache
            # is on disk, so no process compiles what an earlier run compiled.
            task = {"runner": name, "settings": {**s, "cells": list(cells)}}
            rows[name, cells] = []
            for event in _in_subprocess(task) if isolate else _run_runner(task):
                if "machine" in event:
                    info.update(event["machine"])
                elif "row" in event:
                    rows[name, cells].append(event["row"])
                    progress.finish(event["row"]["L"], event["seconds"], event["passes"])
                else:
                    progress.start(event["label"], event["compiling"])
    if comm.size > 1:
        gathered = comm.gather((rows, info))
        if comm.rank > 0:
            return [], {}
        for part_rows, part_info in gathered:
            rows.update(part_rows)
            info.update(part_info)
    # in the order of one process's sweep: by runner, then as _display_order says
    return [row for name in names for row in sorted((r for (n, _), got in rows.items() if n == name for r in got),
                                                    key=lambda r: _display_order(r, s))], info


def _display_order(row, s):
    """The sweep first (by truncation, then T), then the checkpointed lengths."""
    return (row["L"] != s["L"] or row["checkpoint"] is not None, row["L"], s["cells"].index(row["cell"]),
            TRUNCATIONS.index(row["truncation"]), row["checkpoint"] or 0, row["T"])


def _in_subprocess(task):
    """A runner's events from a process of its own, as it sends them (a JSON object a line)."""
    command = [sys.executable, "-m", "rnncore.app.bench", json.dumps(task)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        yield from (json.loads(line) for line in child.stdout)
    if child.returncode != 0:
        raise RuntimeError(f"the {task['runner']} runner failed (exit status {child.returncode})")


def _run_runner(task):
    """Yield a runner's events: what it says of the machine; then per row a label (before its
    warm-up) and the row."""
    s = task["settings"]
    runner = _make_runner(task["runner"])
    yield {"machine": runner.machine()}
    for cell in s["cells"]:
        reference = {}
        for k, spec in enumerate(_specs(task["runner"], s)):
            # Numba compiles a cell's kernels in its first pass (float32 only; the same kernels
            # serve every truncation, randomized and checkpointed passes included)
            yield from _row_events(runner, cell, spec, s, reference, compiling=k == 0 and runner.name == "numba")


def _draws(spec, s):
    """The gradient draws a row takes: regular truncation (full BPTT and checkpointed passes
    included) is deterministic, one; random and randomized truncation take s["draws"]."""
    return 1 if spec["truncation"] == "regular" else s["draws"]


def _row_events(runner, cell, spec, s, reference, compiling=False):
    """One row: an untimed warm-up pass (where Numba compiles; its gradient is the row's first
    draw), the timed passes, a pass for peak memory, then the other gradient draws (untimed,
    seeds seed+1, seed+2, ...). The row event carries the seconds after the warm-up, from which
    the progress line's ETA is reckoned."""
    label = f"{runner.name} {cell} T={spec['T']} {spec['truncation']}" + (
        f" L={spec['L']} checkpoint={spec['checkpoint']}" if spec["checkpoint"] else "")
    yield {"label": f"{runner.name} {cell}: {COMPILING}" if compiling else label, "compiling": compiling}
    L, N = spec["L"], s["N"]
    model = runner.build(cell, s)
    xs, ts = runner.stream(*synthetic_stream(N, L, s["V"], s["seed"]))
    one_pass = _pass(runner, model, xs, ts, spec, s["seed"])
    start = clock()
    grad = runner.grad_wh(model, one_pass())  # the warm-up, never timed
    warm_up = clock() - start
    if compiling:
        yield {"label": label, "compiling": False}
    start = clock()
    times = []
    for _ in range(s["repeats"]):
        began = clock()
        one_pass()
        runner.sync()
        times.append(clock() - began)
    peak = runner.peak_bytes(one_pass)
    if spec["T"] == L and spec["truncation"] == "regular" and spec["checkpoint"] is None:
        reference[(cell, L)] = grad
    full = reference[(cell, L)]
    draws = _draws(spec, s)
    if draws > 1:
        grads = [grad] + [runner.grad_wh(model, _pass(runner, model, xs, ts, spec, s["seed"] + i)())
                          for i in range(1, draws)]
        bias, spread = draw_stats(grads, full)
    else:
        bias, spread = _cosine(grad, full), 0.0
    median = statistics.median(times)
    row = {"backend": runner.name, "cell": cell, "N": N, "H": s["H"], "L": L, "T": spec["T"],
           "truncation": spec["truncation"], "checkpoint": spec["checkpoint"], "time_per_token_s": median / (N * L),
           "time_spread_s": [min(times) / (N * L), max(times) / (N * L)],
           "noisy": (max(times) - min(times)) > NOISY_SPREAD * median, "warm_up_s": warm_up,
           "tokens_per_s": N * L / median if median > 0 else float("inf"), "peak_bytes": peak,
           "analytic_bytes": analytic_bytes(cell, N, s["H"], s["V"], L if spec["truncation"] == "randomized"
                                            else spec["T"], 4, L, spec["checkpoint"]),
           "grad_cosine": _cosine(grad, full), "draws": draws, "grad_bias_cosine": bias, "grad_spread": spread}
    yield {"row": row, "seconds": clock() - start, "passes": s["repeats"] + draws}


def _pass(runner, model, xs, ts, spec, seed):
    """The row's pass over the stream, as a function of nothing."""
    L, T = spec["L"], spec["T"]
    if spec["checkpoint"]:
        return lambda: runner.checkpointed(model, xs, ts, spec["checkpoint"])
    if spec["truncation"] == "randomized":
        return lambda: runner.randomized(model, xs, ts, T, seed)
    lengths = bptt.regular_lengths(L, T) if spec["truncation"] == "regular" else bptt.random_lengths(L, T, seed)
    return lambda: runner.truncated(model, xs, ts, lengths)


def synthetic_stream(N, L, V, seed):
    """Tokens with long-range structure: each row repeats its own motif with noise."""
    rng = np.random.default_rng(seed)
    motif = rng.integers(0, V, size=(N, 50))
    ids = np.tile(motif, (1, L // 50 + 2))[:, : L + 1]
    noise = rng.random(ids.shape) < 0.2
    ids[noise] = rng.integers(0, V, size=noise.sum())
    return ids[:, :-1].astype(np.int32), ids[:, 1:].astype(np.int32)


def analytic_bytes(cell, N, H, V, T, itemsize, L=None, checkpoint=None):
    c = CELLS[cell]
    kept = 1 if c.gates_are_h else 1 + c.gates + len(c.saved)  # h, then the gates and saved arrays
    per_step = N * (H + kept * H + V) * itemsize
    if checkpoint:
        return int(min(checkpoint, L) * per_step + math.ceil(L / checkpoint) * N * H * len(c.states) * itemsize)
    return int(T * per_step)


def draw_stats(grads, full):
    """A scheme's bias and spread from its gradient draws: the cosine between the draws' mean and
    full BPTT's gradient ``full``, and the mean over draws of ||g_i - mean|| / ||mean||."""
    g = np.stack([np.ravel(x).astype(np.float64) for x in grads])
    mean = g.mean(axis=0)
    norm = np.linalg.norm(mean)
    spread = float(np.linalg.norm(g - mean, axis=1).mean() / norm) if norm else float("nan")
    return _cosine(mean, full), spread


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float("nan")


# runners ---------------------------------------------------------------------------------
class BackendRunner:
    """An rnncore backend running RecurrentLM through rnncore.bptt."""

    def __init__(self, name):
        self.backend = get_backend(name)
        self.name = self.backend.name

    def machine(self):
        if self.name == "numba":
            import numba

            return {"numba": numba.__version__, "numba_threads": numba.get_num_threads(),
                    "blas": getattr(self.backend, "blas", None)}
        if self.name == "cupy":
            import cupy

            return {"cupy": cupy.__version__, "gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()}
        return {}

    def build(self, cell, s):
        return RecurrentLM(s["V"], s["H"], s["H"], cell=cell, backend=self.backend, seed=s["seed"])

    def stream(self, xs, ts):
        return self.backend.asarray(xs), self.backend.asarray(ts)

    def truncated(self, model, xs, ts, lengths):
        return bptt.truncated_pass(model, xs, ts, lengths)

    def checkpointed(self, model, xs, ts, segment):
        return bptt.checkpointed_pass(model, xs, ts, segment)

    def randomized(self, model, xs, ts, T, seed):
        return bptt.randomized_pass(model, xs, ts, T, seed)

    def grad_wh(self, model, result):
        _, grads = result
        wh = model.rnn_layers[0].params[1]
        return self.backend.to_numpy(next(g for p, g in zip(model.params, grads) if p is wh))

    def sync(self):
        self.backend.synchronize()

    def peak_bytes(self, one_pass):
        with self.backend.peak_memory() as report:
            one_pass()
        return report.peak_bytes


class TextbookRunner(BackendRunner):
    """The books' per-step layers inside the same model, on NumPy."""

    def __init__(self):
        super().__init__("numpy")
        self.name = "textbook"

    def build(self, cell, s):
        model = super().build(cell, s)
        ours = model.rnn_layers[0]
        layer_cls = {"rnn": textbook.TimeRNN, "lstm": textbook.TimeLSTM, "gru": textbook.TimeGRU}[cell]
        theirs = layer_cls(*textbook.from_rnncore_params(cell, *ours.params), stateful=True)
        model.layers[model.layers.index(ours)] = theirs
        model.rnn_layers[0] = theirs
        # their parameters in place of ours; a parameter of ours with no counterpart (the GRU's
        # second bias, summed into their one) leaves the model
        swap = {id(p): pair for p, pair in zip(ours.params, zip(theirs.params, theirs.grads))}
        mine = {id(p) for p in ours.params}
        pairs = [swap.get(id(p), (p, g)) for p, g in zip(model.params, model.grads)
                 if id(p) in swap or id(p) not in mine]
        model.params, model.grads = [p for p, _ in pairs], [g for _, g in pairs]
        return model


class TorchRunner:
    """The same model in PyTorch: cuDNN on a GPU, else the CPU; strict float32 (no TF32)."""

    def __init__(self):
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.name = f"torch-{self.device}"
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def machine(self):
        return {"torch": self.torch.__version__, "torch_threads": self.torch.get_num_threads()}

    def build(self, cell, s):
        torch = self.torch
        torch.manual_seed(s["seed"])
        rnn_cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
        return torch.nn.ModuleDict({
            "embed": torch.nn.Embedding(s["V"], s["H"]), "rnn": rnn_cls(s["H"], s["H"], batch_first=True),
            "out": torch.nn.Linear(s["H"], s["V"])}).to(self.device)

    def stream(self, xs, ts):
        torch = self.torch
        return (torch.as_tensor(xs, dtype=torch.long, device=self.device),
                torch.as_tensor(ts, dtype=torch.long, device=self.device))

    def truncated(self, model, xs, ts, lengths):
        torch = self.torch
        model.zero_grad(set_to_none=True)
        state, t0, L = None, 0, xs.shape[1]
        for T in lengths:
            h, state = model["rnn"](model["embed"](xs[:, t0 : t0 + T]), state)
            scores = model["out"](h)
            loss = torch.nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]),
                                                     ts[:, t0 : t0 + T].reshape(-1))
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


def _make_runner(name):
    if name == "textbook":
        return TextbookRunner()
    if name == "torch":
        return TorchRunner()
    return BackendRunner(name)


# the summary -----------------------------------------------------------------------------
def summary_T(s):
    """The truncation the summary compares at: 35 if the sweep has it, else its longest cut."""
    cuts = [T for T in s["sweep"] if T < s["L"]]
    return SUMMARY_T if SUMMARY_T in cuts else max(cuts, default=s["L"])


def summarize(rows, s):
    """Per cell, from the table's regular rows over the sweep's stream: at T = ``summary_T``, the
    fastest runner's time per token and its speedup over the textbook peer and PyTorch; for
    rnncore's fastest backend there, its peak memory against full BPTT's, the shortest T whose
    gradient cosine with full BPTT reaches GOOD_COSINE, and each truncation scheme's bias cosine,
    spread and draws at T ("schemes", in TRUNCATIONS' order; the schemes it ran). None where a
    runner or value is missing."""
    T, L = summary_T(s), s["L"]
    out = []
    for cell in s["cells"]:
        sweep = [r for r in rows if r["cell"] == cell and r["L"] == L and r["truncation"] == "regular"
                 and r["checkpoint"] is None]
        at_T = {r["backend"]: r for r in sweep if r["T"] == T}
        if not at_T:
            continue
        fastest = min(at_T.values(), key=lambda r: r["time_per_token_s"])
        peers = {"textbook": at_T.get("textbook"),
                 "torch": next((r for name, r in at_T.items() if name.startswith("torch-")), None)}
        ours = [r for name, r in at_T.items() if name in s["backends"]]
        best = min(ours, key=lambda r: r["time_per_token_s"]) if ours else fastest
        full = next(r for r in sweep if r["backend"] == best["backend"] and r["T"] == L)
        reaching = [r["T"] for r in sweep if r["backend"] == best["backend"] and r["grad_cosine"] >= GOOD_COSINE]
        cuts = {r["truncation"]: r for r in rows if r["cell"] == cell and r["L"] == L and r["T"] == T
                and r["checkpoint"] is None and r["backend"] == best["backend"]}
        schemes = {kind: {key: cuts[kind].get(key) for key in ("grad_bias_cosine", "grad_spread", "draws")}
                   for kind in TRUNCATIONS if kind in cuts}
        out.append({
            "cell": cell, "T": T, "L": L, "fastest": fastest["backend"],
            "time_per_token_s": fastest["time_per_token_s"],
            "speedup_over_textbook": _ratio(peers["textbook"], fastest),
            "speedup_over_torch": _ratio(peers["torch"], fastest),
            "torch": peers["torch"] and peers["torch"]["backend"],
            "noisy": sorted({r["backend"] for r in (fastest, *peers.values()) if r and r["noisy"]}),
            "memory_runner": best["backend"], "truncated_peak_bytes": best["peak_bytes"],
            "full_peak_bytes": full["peak_bytes"],
            "cosine_threshold": GOOD_COSINE, "shortest_T_reaching": min(reaching, default=None), "schemes": schemes})
    return out


def _ratio(slow, fast):
    return slow["time_per_token_s"] / fast["time_per_token_s"] if slow else None


# output ----------------------------------------------------------------------------------
def machine():
    """This process's part: Python, platform, NumPy (the runners add Numba's, PyTorch's, CuPy's)."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "numpy": np.__version__}


def format_table(rows):
    head = f"{'runner':<11}{'cell':<5}{'trunc':<11}{'L':>6}{'T':>6}{'ckpt':>5}{'us/token':>10}{'spread':>8}" \
           f"{'tokens/s':>11}{'peak MB':>9}{'need MB':>9}{'cos':>8}{'bias':>8}{'g-sprd':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        lo, hi = r["time_spread_s"]
        spread = f"{(hi - lo) / r['time_per_token_s'] * 100:.0f}%" + ("!" if r["noisy"] else " ")
        lines.append(f"{r['backend']:<11}{r['cell']:<5}{r['truncation']:<11}{r['L']:>6}{r['T']:>6}"
                     f"{r['checkpoint'] or '-':>5}{r['time_per_token_s'] * 1e6:>10.2f}{spread:>8}"
                     f"{r['tokens_per_s']:>11.0f}{peak:>9}{r['analytic_bytes'] / 2**20:>9.1f}{r['grad_cosine']:>8.4f}"
                     f"{r['grad_bias_cosine']:>8.4f}{r['grad_spread']:>7.2f}")
    draws = sorted({r["draws"] for r in rows if r["draws"] > 1})
    if draws:
        lines.append(f"cos: one pass; bias: cosine of the mean gradient over {'/'.join(map(str, draws))} draws with "
                     "full BPTT's; g-sprd: mean ||g_i - mean|| / ||mean|| over the draws (regular: one draw)")
    if any(r["noisy"] for r in rows):
        lines.append(f"! noisy: the timed passes range over more than {NOISY_SPREAD:.0%} of their median "
                     "(another process on the cores?)")
    return "\n".join(lines)


def format_summary(summary):
    lines = []
    for c in summary:
        peers = ((c["speedup_over_textbook"], "textbook", "the textbook peer"),
                 (c["speedup_over_torch"], c["torch"], c["torch"]))
        vs = [f"{x:.1f}x faster than {name}" for x, runner, name in peers if x and runner != c["fastest"]]
        noisy = f" (noisy: {', '.join(c['noisy'])})" if c["noisy"] else ""
        lines.append(f"{c['cell']}: at T={c['T']} the fastest is {c['fastest']}, "
                     f"{c['time_per_token_s'] * 1e6:.2f} us/token" + (f"; {', '.join(vs)}" if vs else "") + noisy)
        truncated, full = c["truncated_peak_bytes"], c["full_peak_bytes"]
        if truncated and full:
            lines.append(f"  memory ({c['memory_runner']}): T={c['T']} peaks at {truncated / 2**20:.1f} MB, "
                         f"full BPTT (T={c['L']}) at {full / 2**20:.1f} MB ({full / truncated:.1f}x)")
        lines.append(f"  gradient ({c['memory_runner']}): cosine with full BPTT reaches {c['cosine_threshold']} "
                     f"from T={c['shortest_T_reaching']} on")
        if c.get("schemes"):
            lines.append(f"  bias at T={c['T']} ({c['memory_runner']}; cosine of the mean gradient with full BPTT's): "
                         + "; ".join(_scheme_text(kind, x) for kind, x in c["schemes"].items()))
        if c["cell"] == "gru" and c["speedup_over_textbook"]:
            lines.append("  (the textbook GRU is the books' form, (r*h) Wh_n: another function at the same cost)")
    return "\n".join(["summary:"] + lines)


def _scheme_text(kind, x):
    if x["draws"] == 1:
        return f"{kind} {x['grad_bias_cosine']:.3f} (deterministic)"
    return f"{kind} {x['grad_bias_cosine']:.3f} (spread {x['grad_spread']:.2f}, {x['draws']} draws)"


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
    """The sweep's progress line (tqdm). Its ETA is reckoned from timed passes only: seconds per
    token-pass of the finished rows after their warm-ups, times the token-passes left, so time
    spent compiling never enters it (an ETA from elapsed time would grow by the compile's
    length). On a stream that is not a terminal: a plain line at most every LOG_INTERVAL
    seconds, and one as compiling starts. ``extra``: each row's gradient draws beyond its first
    (passes after the warm-up, so counted like the timed ones)."""

    def __init__(self, lengths, repeats, stream=None, extra=None):
        stream = sys.stderr if stream is None else stream
        self.tty = stream.isatty()
        self.repeats, self.seconds, self.done = repeats, 0.0, 0
        extra = extra or [0] * len(lengths)
        # a row's passes: warm-up, timed, peak memory, extra draws
        self.left = sum(L * (repeats + 2 + e) for L, e in zip(lengths, extra))
        self.bar = tqdm(total=len(lengths), file=stream if self.tty else _Lines(stream), ascii=not self.tty,
                        mininterval=0.1 if self.tty else LOG_INTERVAL, dynamic_ncols=self.tty,
                        bar_format="{n_fmt}/{total_fmt} {bar:20} {desc}{postfix}", desc="starting", postfix="ETA ?")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def start(self, label, compiling):
        self.bar.set_description_str(label, refresh=self.tty or compiling)

    def finish(self, L, seconds, passes):
        """A row done: ``passes`` after its warm-up took ``seconds``."""
        self.seconds += seconds
        self.done += L * passes
        self.left -= L * (passes + 1)
        self.bar.set_postfix_str(f"ETA {self.eta():.0f}s", refresh=False)
        self.bar.update()

    def eta(self):
        return self.seconds / self.done * self.left if self.done else float("nan")


class _Lines:
    """A file for tqdm that writes each redraw as a line of its own, a log getting no carriage
    returns; a redraw of the line just written (tqdm redraws unchanged lines, on close for
    one) is left out."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text):
        text = text.strip("\r\n").rstrip()
        if text and text != self.last:
            self.stream.write(text + "\n")
            self.last = text

    def flush(self):
        self.stream.flush()


def _worker(task):
    """A runner's process: its events as JSON lines on the real stdout; anything else printed
    (by a library, even from C) goes to stderr."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for event in _run_runner(task):
        out.write(json.dumps(event) + "\n")
        out.flush()


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
