"""Exploding and vanishing gradients (d2l 9.7): the norm of dL/dh_{T-k} against the lag k.

L is the cross-entropy of the next token at the last step only, through a random affine
head; the stream (``synthetic``: uniform random tokens; or a corpus) enters through a random
embedding (N(0, 1) entries, D = H). The recurrent layer has the init rnncore's models use,
Wx ~ N(0, 1/D), Wh ~ N(0, 1/H), zero biases, with Wh times ``--scale``: each H x H block of
Wh (the whole Wh for the RNN; each gate's block, i f g o or r z n, for the LSTM and GRU) then
has a spectral radius near ``--scale`` (the circular law); the radii printed are measured.

Backpropagated through the tanh RNN, the gradient is multiplied at every step by
diag(1 - h_t^2) Wh^T: its norm shrinks geometrically when Wh's radius is below about 1 and
grows when it is well above. The LSTM's reaches back through c with a factor f_t (the forget
gate) per step, and the GRU's through h with z_t, which Wh does not multiply.
``--gate-bias`` sets the input bias of those gates (the LSTM's f, the GRU's z): at 0, as in
rnncore's models, they sit near 0.5 and both cells forget about as fast as the RNN at init;
at 3 they sit near 0.95.

Everything runs in float64, so vanished gradients of 1e-30 and below still show.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from ..backends import get_backend
from ..layers import TimeAffine, TimeSoftmaxWithLoss
from ..models import CELLS
from .options import positive

SYNTHETIC_VOCAB = 64


def recurrent_layer(cell, D, H, scale, rng, backend, gate_bias=0.0, dtype=np.float64):
    """A stateful layer of ``cell`` with rnncore's init, Wh times ``scale``; the input bias of the
    LSTM's forget gate and of the GRU's update gate z (block 1 of both) set to ``gate_bias``."""
    layer = CELLS[cell]
    G = layer.cell.gates * H
    Wx = rng.standard_normal((D, G)) / np.sqrt(D)
    Wh = rng.standard_normal((H, G)) * (scale / np.sqrt(H))
    biases = [np.zeros(G) for _ in layer.cell.param_names[2:]]
    if cell != "rnn":
        biases[0][H : 2 * H] = gate_bias
    return layer(*(backend.asarray(p.astype(dtype)) for p in (Wx, Wh, *biases)), stateful=True, backend=backend)


def gate_radii(layer):
    """Spectral radius of each H x H gate block of Wh (one block for the RNN)."""
    Wh = layer.backend.to_numpy(layer.params[1])
    return [float(np.max(np.abs(np.linalg.eigvals(block)))) for block in np.split(Wh, layer.cell.gates, axis=1)]


def state_gradients(layer, xs, dh_last):
    """[dL/dh_T, dL/dh_{T-1}, ..., dL/dh_0], each (N, H), for a loss that reads only h_T, whose
    gradient there is ``dh_last``.

    The pass is cut into one-step chunks: forward keeps the states entering each step; backward
    runs each step again from its states and hands the gradient of its start state (``dh``, and
    the LSTM's ``dc``) to the step before as ``dh_next``/``dc_next``: full BPTT, read at every
    step."""
    be, xp = layer.backend, layer.backend.xp
    N, T, _ = xs.shape
    zeros = xp.zeros((N, layer.hidden_size), dtype=dh_last.dtype)
    states = [[zeros] * len(layer.state_names)]
    layer.set_state(*states[0])
    for t in range(T):
        layer.forward(xs[:, t : t + 1])
        states.append([getattr(layer, name) for name in layer.state_names])
    no_output_grad = xp.zeros((N, 1, layer.hidden_size), dtype=dh_last.dtype)
    grads = [dh_last] + [zeros] * (len(layer.state_names) - 1)  # dh, and dc = 0 beyond the last step
    out = [be.to_numpy(dh_last)]
    for t in reversed(range(T)):
        layer.set_state(*states[t])
        layer.forward(xs[:, t : t + 1])
        layer.backward(no_output_grad, *grads)
        grads = [getattr(layer, "d" + name) for name in layer.state_names]
        out.append(be.to_numpy(grads[0]))
    return out


def last_step_loss_grad(h_last, targets, rng, backend):
    """dL/dh_T of the mean cross-entropy of ``targets`` through a random affine head (H -> V)."""
    H, V = h_last.shape[1], int(targets.max()) + 1
    head = TimeAffine(backend.asarray(rng.standard_normal((H, V)) / np.sqrt(H)), backend.xp.zeros(V), backend=backend)
    loss = TimeSoftmaxWithLoss(backend=backend)
    loss.forward(head.forward(h_last[:, None, :]), backend.asarray(targets[:, None]))
    return head.backward(loss.backward())[:, 0, :]


def token_windows(corpus, rows, length, rng, data_dir=None, level=None):
    """(rows, length + 1) token ids: uniform random over 64 symbols, or windows at random offsets
    of a corpus's training split (``ptb``, ``timemachine`` or a text file)."""
    if corpus == "synthetic":
        return rng.integers(0, SYNTHETIC_VOCAB, size=(rows, length + 1))
    from . import data

    ids = data.load_corpus(corpus, data_dir, level)["train"]
    if len(ids) <= length + 1:
        raise ValueError(f"the {corpus} training split has {len(ids)} tokens, too few for --length {length}")
    starts = rng.integers(0, len(ids) - length - 1, size=rows)
    return ids[starts[:, None] + np.arange(length + 1)]


def measure(cell, hidden=64, length=100, scale=1.0, rows=16, corpus="synthetic", backend=None, seed=0,
            data_dir=None, level=None, gate_bias=0.0):
    """{"cell", "spectral_radius" (per gate block), "norms" (||dL/dh_{T-k}|| for k = 0..T),
    "rate" (the per-step factor, a least-squares fit of log norm against k)}."""
    be = get_backend(backend)
    rng = np.random.default_rng(seed)
    ids = token_windows(corpus, rows, length, rng, data_dir, level)
    embedding = rng.standard_normal((int(ids.max()) + 1, hidden))
    layer = recurrent_layer(cell, hidden, hidden, scale, rng, be, gate_bias)
    xs = be.asarray(embedding[ids[:, :-1]])
    h_last = layer.forward(xs)[:, -1, :]
    grads = state_gradients(layer, xs, last_step_loss_grad(h_last, ids[:, -1], rng, be))
    norms = [float(np.linalg.norm(g)) for g in grads]
    return {"cell": cell, "spectral_radius": gate_radii(layer), "norms": norms, "rate": growth_rate(norms)}


def growth_rate(norms):
    """exp of the slope of log norm against the lag: the factor the gradient changes by per step
    (nonzero norms only; 0 if fewer than two)."""
    k = np.flatnonzero(np.asarray(norms) > 0)
    if len(k) < 2:
        return 0.0
    return float(np.exp(np.polyfit(k, np.log(np.asarray(norms)[k]), 1)[0]))


def format_rows(results, lags):
    head = "cell | spectral radius of Wh's blocks | " + " | ".join(f"k={k}" for k in lags) + " | per step"
    lines = [head]
    for r in results:
        radii = " ".join(f"{x:.2f}" for x in r["spectral_radius"])
        norms = " | ".join(f"{r['norms'][k]:.2e}" for k in lags)
        lines.append(f"{r['cell']} | {radii} | {norms} | {r['rate']:.3f}")
    return "\n".join(lines)


def plot(results, path, title):
    from .stats import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(np.arange(len(r["norms"])), r["norms"], label=f"{r['cell']} (x{r['rate']:.3f} a step)")
    ax.set(yscale="log", xlabel="lag k", ylabel=r"$\|\partial L / \partial h_{T-k}\|$", title=title)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cells(text):
    cells = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if not cells or unknown:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of {', '.join(CELLS)}, got {text!r}")
    return cells


def register(sub, common):
    """The ``rnncore grads`` command."""
    g = sub.add_parser("grads", help="d2l 9.7: how the gradient of the last step's loss vanishes or explodes "
                       "with the lag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(g)
    g.add_argument("--cell", type=_cells, default="rnn,lstm,gru", help="rnn, lstm, gru or a comma-separated list "
                   "(default all three)")
    g.add_argument("--hidden", type=positive(int), default=64, help="hidden size H (default 64)")
    g.add_argument("--length", type=positive(int), default=100, help="steps T back from the loss (default 100)")
    g.add_argument("--scale", type=positive(float), default=1.0,
                   help="Wh times this: its blocks' spectral radius is about SCALE (default 1)")
    g.add_argument("--gate-bias", type=float, default=0.0, help="bias of the LSTM's forget gate and the GRU's "
                   "update gate z (default 0: each about 0.5; 3: about 0.95, a longer memory)")
    g.add_argument("--rows", type=positive(int), default=16, help="sequences N (default 16)")
    g.add_argument("--corpus", default="synthetic", help="synthetic (default), ptb, timemachine or a text file")
    g.add_argument("--level", choices=["word", "char"], help="tokens of a corpus (default: as rnncore train)")
    g.add_argument("--plot", help="write the norms against the lag (log scale) as a PNG here")
    g.add_argument("--json", help="write the numbers as JSON here")
    g.set_defaults(run=_run)


def _run(args):
    results = [measure(cell, args.hidden, args.length, args.scale, args.rows, args.corpus, args.backend, args.seed,
                       args.data_dir, args.level, args.gate_bias) for cell in args.cell]
    title = f"{args.corpus}, H {args.hidden}, T {args.length}, Wh x {args.scale:g}, gate bias {args.gate_bias:g}"
    print(f"||dL/dh_(T-k)||, loss at the last step; {title}, N {args.rows}, seed {args.seed}")
    T = args.length
    print(format_rows(results, sorted({0, 1, min(10, T), T // 4, T // 2, T})))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        settings = {k: getattr(args, k) for k in ("hidden", "length", "scale", "gate_bias", "rows", "corpus", "level",
                                                  "seed")}
        Path(args.json).write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    if args.plot:
        plot(results, args.plot, title)
    return 0
