"""Corpus statistics (d2l 9.2-9.3): token frequencies, Zipf's law, n-gram counts.

Counted over the whole text with d2l's preprocessing: every run of characters other
than the letters A-Z, a-z becomes one space and the text is lowercased
(``re.sub('[^A-Za-z]+', ' ', text).lower()``); word tokens are the pieces between
spaces, character tokens every character left (the spaces too), as d2l's
``TimeMachine`` does. Line ends become spaces, so n-grams run across lines.

PTB's three files are counted together (train, valid, test). The rule applies to them as
to any text, which changes PTB's own tokens: ``<unk>`` counts as the word ``unk``, the
number placeholder ``N`` as ``n``, ``'s`` as ``s``, ``u.s.`` as ``u`` ``s``, and there is no
``<eos>``. ``--preprocess none`` counts the text's own whitespace-separated tokens (for PTB,
what the language models read, less ``<eos>``) or every character as it is.

Zipf's law says the frequency n_i of the i-th most frequent token goes as 1 / i^alpha;
alpha is fitted by least squares on (log i, log n_i) over a range of ranks (default
10-1000: the first ranks are stop words, and far out the curve is the flat steps of
tokens seen once or twice).
"""
import argparse
import collections
import json
import re
from pathlib import Path

import numpy as np

from . import data
from .options import positive

ORDERS = (1, 2, 3)
ZIPF_RANKS = (10, 1000)


def d2l_preprocess(text):
    """d2l's rule: letters only (every other run one space), lowercased."""
    return re.sub("[^A-Za-z]+", " ", text).lower()


def tokens_of(text, level="word", preprocess="d2l"):
    if preprocess == "d2l":
        text = d2l_preprocess(text)
    return text.split() if level == "word" else list(text)


def corpus_text(name, data_dir=None):
    """The whole text of ``ptb`` (its three files), ``timemachine``, or a UTF-8 file."""
    if name == "ptb":
        files = [f"ptb.{split}.txt" for split in data.SPLITS]
    elif name == "timemachine":
        files = ["timemachine.txt"]
    else:
        return data.read_text(name)
    return "\n".join(data.read_text(data.dataset_path(f, data_dir)) for f in files)


def ngram_counts(tokens, n):
    """Counter of the n-grams (tuples) of ``tokens``; ties keep the order of first appearance."""
    return collections.Counter(zip(*(tokens[k:] for k in range(n))))


def zipf_exponent(freqs, ranks=ZIPF_RANKS):
    """alpha of freq ~ 1 / rank^alpha, least squares on the log-log points of ``ranks`` (first,
    last; 1-based, clipped to the data). Returns (alpha, (first, last)); alpha None if fewer than
    two ranks are in range."""
    first = max(1, ranks[0])
    last = min(ranks[1], len(freqs))
    if last - first < 1:
        return None, (first, last)
    rank = np.arange(first, last + 1)
    slope = np.polyfit(np.log(rank), np.log(np.asarray(freqs[first - 1 : last], dtype=float)), 1)[0]
    return float(-slope), (first, last)


def corpus_stats(tokens, top=10, ranks=ZIPF_RANKS, orders=ORDERS, sep=" "):
    """The numbers ``rnncore stats`` prints, as a dict, and the sorted frequencies of each order.
    The top n-grams are shown as their tokens joined by ``sep``."""
    report, curves = {"tokens": len(tokens), "ngrams": {}}, {}
    for n in orders:
        counts = ngram_counts(tokens, n)
        ranked = counts.most_common()
        curves[n] = [c for _, c in ranked]
        alpha, fitted = zipf_exponent(curves[n], ranks)
        report["ngrams"][n] = {"distinct": len(counts), "zipf_exponent": alpha, "zipf_ranks": list(fitted),
                               "top": [[sep.join(gram), c] for gram, c in ranked[:top]]}
    return report, curves


def pyplot():
    """matplotlib's pyplot on the file-only backend; a missing matplotlib is a usage error (exit 2)."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'rnncore[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves, path, title):
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for n, freqs in curves.items():
        label = {1: "unigram", 2: "bigram", 3: "trigram"}.get(n, f"{n}-gram")
        ax.plot(np.arange(1, len(freqs) + 1), freqs, label=label)
    ax.set(xscale="log", yscale="log", xlabel="rank", ylabel="frequency", title=title)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_report(report, label):
    lines = [f"{label}: {report['tokens']} tokens"]
    lines.append("n | distinct | Zipf exponent (ranks fitted)")
    for n, row in report["ngrams"].items():
        alpha = "n/a" if row["zipf_exponent"] is None else f"{row['zipf_exponent']:.3f}"
        lines.append(f"{n} | {row['distinct']} | {alpha} ({row['zipf_ranks'][0]}-{row['zipf_ranks'][1]})")
    for n, row in report["ngrams"].items():
        lines.append(f"top {n}-grams: " + ", ".join(f"{gram!r} {c}" for gram, c in row["top"]))
    return "\n".join(lines)


def register(sub, common):
    """The ``rnncore stats`` command."""
    s = sub.add_parser("stats", help="d2l 9.2: token frequencies, Zipf's law, n-gram counts of a corpus",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--corpus", default="timemachine", help="ptb, timemachine (default) or a UTF-8 text file")
    s.add_argument("--level", choices=["word", "char"], default="word", help="word (default) or char tokens")
    s.add_argument("--preprocess", choices=["d2l", "none"], default="d2l",
                   help="d2l: letters only, lowercased (default); none: the text's own tokens")
    s.add_argument("--data-dir", help="folder holding (or to cache) the corpora")
    s.add_argument("--top", type=positive(int), default=10, help="most frequent n-grams to show (default 10)")
    s.add_argument("--zipf-ranks", type=_rank_range, default=ZIPF_RANKS,
                   help="ranks FIRST:LAST the Zipf exponent is fitted over (default 10:1000)")
    s.add_argument("--plot", help="write the frequency-rank curves (log-log) as a PNG here")
    s.add_argument("--json", help="write the numbers as JSON here")
    s.set_defaults(run=_run)


def _rank_range(text):
    try:
        first, last = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be FIRST:LAST ranks, e.g. 10:1000, got {text!r}") from None
    if not 1 <= first < last:
        raise argparse.ArgumentTypeError(f"must be FIRST:LAST with 1 <= FIRST < LAST, got {text!r}")
    return first, last


def _run(args):
    tokens = tokens_of(corpus_text(args.corpus, args.data_dir), args.level, args.preprocess)
    report, curves = corpus_stats(tokens, args.top, args.zipf_ranks, sep=" " if args.level == "word" else "")
    label = f"{args.corpus}, {args.level} level, preprocessing {args.preprocess}"
    print(format_report(report, label))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"corpus": args.corpus, "level": args.level,
                                               "preprocess": args.preprocess, **report}, indent=2))
    if args.plot:
        plot_curves(curves, args.plot, label)
    return 0
