"""Text generation from a trained language model: temperature, top-k or greedy sampling."""
import numpy as np

from .data import Vocab, tokenize


def generate(model, vocab, prefix, length=50, temperature=1.0, top_k=None, greedy=False, exclude_unk=True,
             level="word", seed=None):
    """Continue ``prefix`` (text) by ``length`` tokens; returns the generated text, prefix included.

    The prefix is run through the model once to set its state, then one token at a
    time is drawn from softmax(scores / temperature), restricted to the ``top_k`` most
    likely if given (``greedy`` takes the most likely). ``<unk>`` is never drawn when
    ``exclude_unk``. Word-level ``<eos>`` is written as a newline.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    tokens = prefix_tokens(prefix, level)
    unknown = [t for t in tokens if t not in vocab]
    if unknown:
        raise ValueError(f"the prefix has tokens the vocabulary lacks: {', '.join(map(repr, unknown[:5]))}")
    be = model.backend
    rng = np.random.default_rng(seed)
    model.reset_state()
    ids = vocab.encode(tokens)
    out = list(ids)
    try:
        scores = _last_scores(model, be, ids)
        for _ in range(length):
            next_id = pick(scores, rng, temperature, top_k, greedy, Vocab.UNK in vocab and exclude_unk)
            out.append(next_id)
            scores = _last_scores(model, be, np.array([next_id], dtype=np.int32))
    finally:
        model.reset_state()  # a batch of one must not linger into training
    return join_tokens(vocab.decode(out), level)


def _last_scores(model, be, ids):
    scores = model.predict(be.asarray(np.asarray(ids, dtype=np.int32)[None, :]))
    return be.to_numpy(scores[0, -1]).astype(np.float64)


def pick(scores, rng, temperature=1.0, top_k=None, greedy=False, exclude_unk=True):
    """One id from a vector of scores. ``<unk>`` is id 0 in every rnncore vocabulary."""
    scores = scores.copy()
    if exclude_unk and len(scores) > 1:
        scores[0] = -np.inf
    if greedy:
        return int(np.argmax(scores))
    if top_k is not None and top_k < len(scores):
        cutoff = np.partition(scores, -top_k)[-top_k]
        scores[scores < cutoff] = -np.inf
    z = scores / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(len(p), p=p))


def prefix_tokens(prefix, level):
    if level == "word":
        return [t for line in prefix.splitlines() for t in line.split()] if prefix.strip() else ["<eos>"]
    return tokenize(prefix, "char") or [" "]


def join_tokens(tokens, level):
    if level == "char":
        return "".join(tokens)
    return " ".join(tokens).replace(" <eos> ", "\n").replace("<eos>", "\n").strip(" ")
