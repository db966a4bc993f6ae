"""Language models built from the Time layers: the book's SimpleRnnlm, Rnnlm and BetterRnnlm.

All three are one class, ``RecurrentLM``: embedding -> (dropout) -> recurrent layers ->
(dropout) -> affine -> softmax loss; ``embedding=False`` feeds the first recurrent layer one-hot
vectors of the vocabulary instead, as d2l's ``RNNLMScratch`` does. Weights are drawn on the host
from a seeded NumPy generator with the book's scales, so a seed gives the same model on every backend.
"""
import numpy as np

from .backends import get_backend
from .layers import TimeAffine, TimeDropout, TimeEmbedding, TimeGRU, TimeLSTM, TimeRNN, TimeSoftmaxWithLoss

CELLS = {"rnn": TimeRNN, "lstm": TimeLSTM, "gru": TimeGRU}


class TimeOneHot:
    """Ids (N, T) -> one-hot rows (N, T, V) in the model's dtype: d2l's ``F.one_hot`` input.
    No parameters; its input gradient is None, like an embedding's."""

    params, grads = [], []

    def __init__(self, vocab_size, backend, dtype="float32"):
        self.vocab_size, self.backend, self.dtype = vocab_size, backend, dtype

    def forward(self, ids):
        xp = self.backend.xp
        return (ids[..., None] == xp.arange(self.vocab_size)).astype(self.dtype)

    def backward(self, dout):
        return None


class RecurrentLM:
    """A word or character language model trained with truncated BPTT.

    ``predict(xs)`` gives scores (N, T, V); ``forward(xs, ts)`` the mean loss;
    ``backward()`` fills ``grads``. ``params``/``grads`` list each array once: with
    ``tie_weights`` the output layer uses the embedding's transpose, and its gradient is
    added into the embedding's, so an optimizer updates the shared weight once.
    """

    def __init__(
        self,
        vocab_size,
        wordvec_size=100,
        hidden_size=100,
        cell="lstm",
        num_layers=1,
        dropout=0.0,
        tie_weights=False,
        backend=None,
        dtype="float32",
        seed=0,
        embedding=True,
    ):
        if not embedding:  # the first layer reads one-hot vectors: its input width is the vocabulary's
            wordvec_size = vocab_size
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
        if tie_weights and not embedding:
            raise ValueError("tie_weights needs an embedding to tie")
        if tie_weights and wordvec_size != hidden_size:
            raise ValueError(f"tie_weights needs wordvec_size == hidden_size, got {wordvec_size} and {hidden_size}")
        if num_layers < 1 or vocab_size < 1:
            raise ValueError("vocab_size and num_layers must be at least 1")
        self.config = dict(
            vocab_size=int(vocab_size),
            wordvec_size=int(wordvec_size),
            hidden_size=int(hidden_size),
            cell=cell,
            num_layers=int(num_layers),
            dropout=float(dropout),
            tie_weights=bool(tie_weights),
            dtype=str(np.dtype(dtype)),
            embedding=bool(embedding),
        )
        self.backend = be = get_backend(backend)
        rng = np.random.default_rng(seed)
        V, D, H = vocab_size, wordvec_size, hidden_size

        def draw(shape, scale):
            return be.asarray((rng.standard_normal(shape) * scale).astype(dtype))

        def zeros(n):
            return be.xp.zeros(n, dtype=dtype)

        layer = CELLS[cell]
        G = layer.cell.gates * H
        embed_W = draw((V, D), 1 / 100) if embedding else None
        self.embed = TimeEmbedding(embed_W, backend=be) if embedding else TimeOneHot(V, be, dtype)
        biases = len(layer.cell.param_names) - 2
        self.rnn_layers = [
            layer(draw((D if k == 0 else H, G), 1 / np.sqrt(D if k == 0 else H)), draw((H, G), 1 / np.sqrt(H)),
                  *(zeros(G) for _ in range(biases)), stateful=True, backend=be)
            for k in range(num_layers)
        ]
        affine_W = embed_W.T if tie_weights else draw((H, V), 1 / np.sqrt(H))
        self.affine = TimeAffine(affine_W, zeros(V), backend=be)
        self.loss_layer = TimeSoftmaxWithLoss(backend=be)
        self.dropouts = [TimeDropout(dropout, backend=be) for _ in range(num_layers + 1)] if dropout else []
        self.layers = [self.embed]
        for k, rnn in enumerate(self.rnn_layers):
            self.layers += ([self.dropouts[k]] if dropout else []) + [rnn]
        self.layers += ([self.dropouts[-1]] if dropout else []) + [self.affine]
        tied = [id(affine_W)] if tie_weights else []
        pairs = [(p, g) for layer in self.layers for p, g in zip(layer.params, layer.grads) if id(p) not in tied]
        self.params = [p for p, _ in pairs]
        self.grads = [g for _, g in pairs]

    @property
    def dtype(self):
        return np.dtype(self.config["dtype"])

    def predict(self, xs, train=False):
        for drop in self.dropouts:
            drop.train_flg = train
        for layer in self.layers:
            xs = layer.forward(xs)
        return xs

    def forward(self, xs, ts):
        return self.loss_layer.forward(self.predict(xs, train=True), ts)

    def backward(self, dout=1, state_grads=None, scale=None):
        """Fill ``grads``. ``state_grads``: per recurrent layer, the gradients reaching its last
        state from beyond this chunk, ``(dh, dc)`` (None: truncated BPTT, the usual case).
        ``scale``: per step, a factor on the gradient each recurrent layer's step t sends back to
        step t-1 (randomized truncation, ``bptt.randomized_pass``)."""
        d = self.loss_layer.backward(dout)
        incoming = dict(zip(map(id, self.rnn_layers), state_grads or []))
        for layer in reversed(self.layers):
            if id(layer) in incoming or (scale is not None and layer in self.rnn_layers):
                d = layer.backward(d, *(incoming.get(id(layer)) or (None, None))[: len(layer.state_names)],
                                   scale=scale)
            else:
                d = layer.backward(d)
        if self.config["tie_weights"]:
            self.embed.grads[0] += self.affine.grads[0].T
        return d

    def reset_state(self):
        for rnn in self.rnn_layers:
            rnn.reset_state()

    def share_rows(self, r0, r1, total):
        """Train on rows r0..r1 of batches of ``total`` rows (data parallel: one rank's share). The
        dropout masks are drawn for the whole batch and cut to these rows, so K ranks train
        exactly as one process would; the loss and gradients are this share's mean, which the
        caller weights by (r1 - r0) / total before summing over ranks."""
        if not 0 <= r0 < r1 <= total:
            raise ValueError(f"rows must satisfy 0 <= r0 < r1 <= total, got {r0}, {r1}, {total}")
        for drop in self.dropouts:
            drop.rows = None if (r0, r1) == (0, total) else (r0, r1, total)

    # recurrent state, for checkpoints that resume mid-stream --------------------
    def snapshot(self):
        """Copies of each recurrent layer's carried states and the backend's generator state:
        ``restore`` puts both back, so a recomputed or resumed forward repeats exactly (dropout
        masks included). The generator's state is None where the backend cannot read it back."""
        states = [[None if getattr(r, s) is None else getattr(r, s).copy() for s in r.state_names]
                  for r in self.rnn_layers]
        return states, self.backend.rng_state()

    def restore(self, snapshot):
        states, rng_state = snapshot
        self.set_state(states)
        if rng_state is not None:
            self.backend.set_rng_state(rng_state)
        elif self.dropouts and any(d.ratio for d in self.dropouts):
            raise ValueError(f"the {self.backend.name} backend cannot restore its generator, so the dropout "
                             "masks of a repeated forward would differ")

    def get_state(self):
        """Host copies of each recurrent layer's carried h (and c); None where unset."""
        be = self.backend
        return [[None if getattr(r, s) is None else be.to_numpy(getattr(r, s)) for s in r.state_names]
                for r in self.rnn_layers]

    def set_state(self, states):
        """Carried states per layer, as ``get_state`` or ``snapshot`` gives them (host or backend arrays)."""
        for rnn, st in zip(self.rnn_layers, states):
            if st[0] is None:
                rnn.reset_state()
            else:
                rnn.set_state(*(s if self.backend.owns(s) else self.backend.asarray(s) for s in st))

    def load_torch(self, state_dict, prefix=""):
        """Take the recurrent weights of a ``torch.nn.RNN``/``LSTM``/``GRU`` state dict (tensors or arrays)."""
        for k, rnn in enumerate(self.rnn_layers):
            rnn.load_torch(state_dict, index=k, prefix=prefix)


def SimpleRnnlm(vocab_size, wordvec_size=100, hidden_size=100, **kw):
    """The book's ch05 model: embedding, one tanh RNN, affine."""
    return RecurrentLM(vocab_size, wordvec_size, hidden_size, cell="rnn", **kw)


def Rnnlm(vocab_size, wordvec_size=100, hidden_size=100, **kw):
    """The book's ch06 model: embedding, one LSTM, affine."""
    return RecurrentLM(vocab_size, wordvec_size, hidden_size, cell="lstm", **kw)


def BetterRnnlm(vocab_size, wordvec_size=650, hidden_size=650, dropout=0.5, **kw):
    """The book's improved model: two LSTMs, dropout 0.5, embedding tied to the output layer."""
    kw = {"num_layers": 2, "tie_weights": True, **kw}
    return RecurrentLM(vocab_size, wordvec_size, hidden_size, cell="lstm", dropout=dropout, **kw)


def build_model(config, backend=None, seed=0):
    """A RecurrentLM from its ``config`` dict (as stored in checkpoints)."""
    keys = ("vocab_size", "wordvec_size", "hidden_size", "cell", "num_layers", "dropout", "tie_weights", "dtype")
    # checkpoints from before the one-hot option have an embedding
    return RecurrentLM(**{k: config[k] for k in keys}, embedding=config.get("embedding", True), backend=backend,
                       seed=seed)
