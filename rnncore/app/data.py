"""Corpora, vocabularies and truncated-BPTT batching.

Corpora download once from the public mirrors the book (PTB) and d2l (The Time
Machine) use, are checked against a SHA-256, and are cached under ``~/.cache/rnncore``
(``RNNCORE_DATA_DIR`` or ``data_dir=`` overrides). A folder that already holds the
files (``ptb/ptb.train.txt`` or ``ptb.train.txt``) is used as it is.
"""
import collections
import functools
import hashlib
import json
import numbers
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

# name -> (sub-folder, mirror URL, SHA-256)
DATASETS = {
    "ptb.train.txt": (
        "ptb",
        "https://raw.githubusercontent.com/tomsercu/lstm/master/data/ptb.train.txt",
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    ),
    "ptb.valid.txt": (
        "ptb",
        "https://raw.githubusercontent.com/tomsercu/lstm/master/data/ptb.valid.txt",
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    ),
    "ptb.test.txt": (
        "ptb",
        "https://raw.githubusercontent.com/tomsercu/lstm/master/data/ptb.test.txt",
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    ),
    "timemachine.txt": (
        "timemachine",
        "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
    ),
}
SPLITS = ("train", "valid", "test")
CORPORA = {"ptb": [f"ptb.{split}.txt" for split in SPLITS], "timemachine": ["timemachine.txt"]}


class DataError(RuntimeError):
    """A corpus could not be found, downloaded or read."""


# files -------------------------------------------------------------------------
def data_dir(path=None):
    """The data folder: ``path``, else ``$RNNCORE_DATA_DIR``, else ``~/.cache/rnncore``."""
    chosen = path or os.environ.get("RNNCORE_DATA_DIR") or Path.home() / ".cache" / "rnncore"
    return Path(chosen).expanduser()


def dataset_path(name, directory=None, mirror=None, progress=True):
    """Path to a known corpus file, downloading and verifying it on first use."""
    folder, url, sha256 = DATASETS[name]
    root = data_dir(directory)
    found = _find_dataset(name, root)
    if found:
        return found
    if mirror:
        url = f"{mirror.rstrip('/')}/{name}"
    return download(url, root / folder / name, sha256, progress=progress)


def _find_dataset(name, root):
    """A known corpus file already under ``root`` (in its sub-folder or at the top), else None."""
    folder = DATASETS[name][0]
    return next((p for p in (root / folder / name, root / name) if p.is_file()), None)


def corpus_files(name, directory=None):
    """The files corpus ``name`` would be read from that exist now (nothing is downloaded)."""
    if name not in CORPORA:
        return [Path(name)] if Path(name).is_file() else []
    found = (_find_dataset(f, data_dir(directory)) for f in CORPORA[name])
    return [p for p in found if p]


def files_sha256(paths):
    """One SHA-256 over the files' bytes, in order: what a checkpoint records of its corpus."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def download(url, target, sha256, progress=True, timeout=60):
    """Fetch ``url`` to ``target`` through a temp file; only a verified file is ever renamed into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    _report_download(target.name, done, total)
            if total and done != total:
                raise OSError(f"the connection closed after {done} of {total} bytes")
        if progress:
            print(file=sys.stderr)
        if digest.hexdigest() != sha256:
            raise DataError(
                f"{url} has SHA-256 {digest.hexdigest()}, expected {sha256}; "
                "the file was not kept. The mirror may be serving something else"
            )
        os.chmod(tmp, _default_mode())
        os.replace(tmp, target)
        return target
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(
            f"could not download {url} ({exc}); put the file at {target} yourself, "
            "or point --data-dir / RNNCORE_DATA_DIR at a folder that holds it"
        ) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _default_mode():
    """The mode a plain open() would give (temp files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _report_download(name, done, total):
    size = f"{done / 1e6:.1f}" + (f"/{total / 1e6:.1f}" if total else "")
    print(f"\rdownloading {name}: {size} MB", end="", file=sys.stderr, flush=True)


def read_text(path):
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"corpus file not found: {path}") from exc
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise DataError(f"{path} is not a UTF-8 text file ({exc})") from exc


# tokens and vocabularies ---------------------------------------------------------
def tokenize(text, level="word"):
    """Word level: whitespace tokens, each newline an ``<eos>`` (PTB's convention).

    Char level: d2l's Time Machine convention, letters lowercased and every run of
    anything else one space (letters of any script; for English text that is exactly
    d2l's ``[^A-Za-z]+``).
    """
    if level == "word":
        return [tok for line in text.splitlines() for tok in line.split() + ["<eos>"]]
    if level == "char":
        return list(re.sub(r"[\W\d_]+", " ", text).lower().strip())
    raise ValueError(f"tokenize: level must be 'word' or 'char', got {level!r}")


class Vocab:
    """Token <-> id. Ids follow frequency (ties: first appearance); ``<unk>`` is id 0.

    Tokens seen fewer than ``min_freq`` times map to ``<unk>``. ``reserved`` tokens come
    right after ``<unk>`` whatever their frequency. As in d2l: ``token_freqs`` lists every
    token counted, with its count, most frequent first (ties: first appearance);
    ``vocab["the"]`` and ``vocab[["the", "cat"]]`` give ids, ``to_tokens`` the way back.
    A vocabulary read back (``from_dict``, a checkpoint's) keeps its tokens, not their counts.
    """

    UNK = "<unk>"

    def __init__(self, tokens=(), min_freq=1, reserved=()):
        counts = collections.Counter(tokens)
        self.token_freqs = sorted(counts.items(), key=lambda item: -item[1])  # stable: ties keep first appearance
        fixed = [self.UNK] + [t for t in reserved if t != self.UNK]
        self._set_tokens(fixed + [t for t, n in self.token_freqs if n >= min_freq and t not in fixed])

    def _set_tokens(self, tokens):
        self.idx_to_token = list(tokens)
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    def __len__(self):
        return len(self.idx_to_token)

    def __contains__(self, token):
        return token in self.token_to_idx

    @property
    def unk(self):
        """The id of ``<unk>``, or None for a vocabulary without one."""
        return self.token_to_idx.get(self.UNK)

    def __getitem__(self, tokens):
        """The id of a token, or a list of ids for a list (or tuple) of tokens. An unknown token
        maps to ``<unk>``; in a vocabulary without ``<unk>`` it is a KeyError naming it."""
        if isinstance(tokens, (list, tuple)):
            return [self[t] for t in tokens]
        idx = self.token_to_idx.get(tokens, self.unk)
        if idx is None:
            raise KeyError(f"{tokens!r} is not in the vocabulary (which has no {self.UNK})")
        return idx

    def to_tokens(self, ids):
        """The token of an id, or a list of tokens for a sequence of ids."""
        if isinstance(ids, numbers.Integral):
            if not 0 <= ids < len(self):
                raise IndexError(f"id {ids} is outside the vocabulary [0, {len(self) - 1}]")
            return self.idx_to_token[ids]
        return [self.to_tokens(int(i)) for i in ids]

    def encode(self, tokens):
        """int32 ids, as ``vocab[tokens]`` gives them (fast for long token lists)."""
        unk = self.unk
        ids = (self.token_to_idx.get(t, unk) for t in tokens) if unk is not None else map(self.__getitem__, tokens)
        return np.fromiter(ids, dtype=np.int32, count=len(tokens))

    def decode(self, ids):
        return self.to_tokens(list(ids))

    def to_dict(self):
        return {"tokens": self.idx_to_token}

    @classmethod
    def from_dict(cls, d):
        """The inverse of ``to_dict``; ValueError unless ``d["tokens"]`` is a list of distinct strings."""
        tokens = d["tokens"]
        if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
            raise ValueError("the vocabulary must be a list of strings")
        if len(set(tokens)) != len(tokens):
            raise ValueError("the vocabulary lists a token twice")
        vocab = cls()
        vocab._set_tokens(tokens)
        vocab.token_freqs = []
        return vocab

    def save(self, path):
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


class Corpus:
    """A tokenized corpus: ``vocab`` and int32 id arrays for ``train``, ``valid``, ``test``.

    ``files``: the files it was read from (absolute paths). ``own_vocab``: the vocabulary its
    training split builds, which differs from ``vocab`` when the corpus was encoded with
    another's (a checkpoint's).
    """

    def __init__(self, vocab, splits, level, files=(), own_vocab=None):
        self.vocab = vocab
        self.splits = splits
        self.level = level
        self.files = [Path(f).resolve() for f in files]
        self.own_vocab = own_vocab or vocab

    def __getitem__(self, split):
        if split not in self.splits:
            raise DataError(f"this corpus has no {split!r} split; it has {', '.join(self.splits)}")
        return self.splits[split]

    @functools.cached_property
    def sha256(self):
        return files_sha256(self.files)


def load_ptb(split="train", data_dir=None, mirror=None, limit=None, progress=True):
    """One PTB split as int32 ids, and the vocabulary: ``ids, vocab = load_ptb("test")``.

    Mikolov's 10k-word Penn Treebank, each newline an ``<eos>``; the vocabulary always
    comes from the training split, so ids agree across splits (the book's ``load_data``).
    """
    corpus = ptb_corpus(data_dir, mirror, limit, progress=progress)
    return corpus[split], corpus.vocab


def load_timemachine(split=None, data_dir=None, mirror=None, level="char", progress=True):
    """The Time Machine as ids and vocabulary (d2l's ``load_corpus_time_machine``): the whole
    text by default, or one split of it (first 90% train, 5% valid, 5% test)."""
    corpus = timemachine_corpus(data_dir, mirror, level, progress=progress)
    ids = np.concatenate([corpus[s] for s in SPLITS]) if split is None else corpus[split]
    return ids, corpus.vocab


def ptb_corpus(data_dir=None, mirror=None, limit=None, vocab=None, progress=True):
    """All three PTB splits. ``limit`` keeps the first ``limit`` training words and builds the
    vocabulary from them alone (the book's ch05 run uses 1000). A given ``vocab`` (a
    checkpoint's, say) encodes the text instead."""
    files = [dataset_path(name, data_dir, mirror, progress) for name in CORPORA["ptb"]]
    tokens = {s: tokenize(read_text(f)) for s, f in zip(SPLITS, files)}
    return _corpus(tokens, "word", vocab, limit, files, reserved=["<eos>"])


def timemachine_corpus(data_dir=None, mirror=None, level="char", vocab=None, progress=True, limit=None):
    """The Time Machine, split in order 90/5/5."""
    path = dataset_path("timemachine.txt", data_dir, mirror, progress)
    return split_text(read_text(path), level, vocab, limit=limit, files=[path])


def split_text(text, level, vocab=None, fractions=(0.9, 0.05), limit=None, files=()):
    """Any text as a corpus: tokenized, then split in order, 90/5/5 (``limit``: as ptb_corpus)."""
    tokens = tokenize(text, level)
    if len(tokens) < 20:
        raise DataError(f"the text has only {len(tokens)} {level} tokens; a corpus needs at least 20")
    a = int(len(tokens) * fractions[0])
    b = a + int(len(tokens) * fractions[1])
    parts = {"train": tokens[:a], "valid": tokens[a:b], "test": tokens[b:]}
    return _corpus(parts, level, vocab, limit, files)


def _corpus(tokens, level, vocab, limit, files, reserved=()):
    if limit:
        tokens["train"] = tokens["train"][:limit]
    own = Vocab(tokens["train"], reserved=reserved)
    vocab = vocab or own
    return Corpus(vocab, {s: vocab.encode(t) for s, t in tokens.items()}, level, files, own)


def require_corpus(name):
    """DataError unless ``name`` is a known corpus or a text file."""
    if name in CORPORA:
        return
    if Path(name).is_dir():
        raise DataError(f"--corpus {name} is a directory; give a text file")
    if not Path(name).is_file():
        raise DataError(f"--corpus must be ptb, timemachine or a text file; {name!r} is none of these")


def load_corpus(name, data_dir=None, level=None, limit=None, vocab=None, mirror=None, progress=True):
    """``ptb``, ``timemachine``, or the path of a UTF-8 text file (split 90/5/5). ``limit``: keep
    the first ``limit`` training tokens (the vocabulary is built from them alone)."""
    require_corpus(name)
    if name == "ptb":
        return ptb_corpus(data_dir, mirror, limit, vocab, progress)
    if name == "timemachine":
        return timemachine_corpus(data_dir, mirror, level or "char", vocab, progress, limit)
    return split_text(read_text(name), level or "word", vocab, limit=limit, files=[name])


# batching ----------------------------------------------------------------------
class SequentialBatches:
    """The book's truncated-BPTT layout: row i of every batch reads from offset i*len/N on.

    All rows advance ``time_size`` tokens per batch (wrapping at the end), so a stateful
    model carries each row's hidden state straight into its next chunk.
    """

    stateful = True

    def __init__(self, ids, batch_size, time_size):
        ids = np.asarray(ids)
        if len(ids) < batch_size * time_size + 1:
            raise DataError(
                f"{len(ids)} tokens are too few for batch {batch_size} x time {time_size}; "
                "use a smaller batch or time size"
            )
        self.xs, self.ts = ids[:-1], ids[1:]
        self.batch_size, self.time_size = batch_size, time_size
        self.offsets = np.arange(batch_size) * (len(self.xs) // batch_size)
        self.position = 0  # tokens consumed per row so far

    def __len__(self):
        return len(self.xs) // (self.batch_size * self.time_size)

    def __iter__(self):
        for _ in range(len(self)):
            yield self.next_batch()

    def next_batch(self):
        idx = (self.offsets[:, None] + self.position + np.arange(self.time_size)) % len(self.xs)
        self.position += self.time_size
        return self.xs[idx], self.ts[idx]

    def state(self):
        return {"position": int(self.position)}

    def restore(self, state):
        self.position = state["position"]


class RandomBatches:
    """d2l's random-offset partitioning: each epoch drops a random 0..T-1 prefix, cuts the
    rest into T-token windows and serves them shuffled, ``batch_size`` at a time.

    Windows are independent, so the model's state is reset before every batch.
    """

    stateful = False

    def __init__(self, ids, batch_size, time_size, seed=0):
        ids = np.asarray(ids)
        if len(ids) < 2 * time_size + 1:
            raise DataError(f"{len(ids)} tokens are too few for windows of {time_size}")
        self.ids, self.batch_size, self.time_size = ids, batch_size, time_size
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        windows = (len(self.ids) - self.time_size) // self.time_size
        return max(1, windows // self.batch_size)

    def __iter__(self):
        T = self.time_size
        offset = int(self.rng.integers(0, T))
        starts = offset + T * np.arange((len(self.ids) - 1 - offset) // T)
        self.rng.shuffle(starts)
        n = min(self.batch_size, len(starts))
        for k in range(len(self)):
            rows = starts[k * n : (k + 1) * n, None] + np.arange(T)
            yield self.ids[rows], self.ids[rows + 1]

    def state(self):
        return {"rng": self.rng.bit_generator.state}

    def restore(self, state):
        self.rng.bit_generator.state = state["rng"]


class WindowBatches(RandomBatches):
    """d2l 1.0's ``TimeMachine`` sampling: a window of ``time_size + 1`` tokens starts at every
    position (so windows overlap), and each epoch serves all of them shuffled, ``batch_size`` at
    a time, the last batch short (PyTorch's DataLoader keeps it). ``shuffle=False``: in order,
    for evaluation. Windows are independent: the state is reset before every batch."""

    def __init__(self, ids, batch_size, time_size, seed=0, shuffle=True):
        ids = np.asarray(ids)
        if len(ids) < time_size + 1:
            raise DataError(f"{len(ids)} tokens are too few for a window of {time_size} + 1")
        self.ids, self.batch_size, self.time_size, self.shuffle = ids, batch_size, time_size, shuffle
        self.rng = np.random.default_rng(seed)

    @property
    def windows(self):
        return len(self.ids) - self.time_size

    def __len__(self):
        return -(-self.windows // self.batch_size)

    def __iter__(self):
        starts = np.arange(self.windows)
        if self.shuffle:
            self.rng.shuffle(starts)
        for k in range(len(self)):
            rows = starts[k * self.batch_size : (k + 1) * self.batch_size, None] + np.arange(self.time_size)
            yield self.ids[rows], self.ids[rows + 1]


# d2l 1.0's TimeMachine(batch_size=1024, num_steps=32, num_train=10000, num_val=5000)
D2L_WINDOWS = dict(num_train=10000, num_val=5000)


def d2l_split(corpus, time_size, num_train=None, num_val=None):
    """The corpus re-split as d2l's ``TimeMachine`` does: over the whole text, in order, the
    windows starting at 0..num_train-1 train, the next num_val validate (d2l has no test split;
    here the num_val after those). Each split holds just the tokens its windows cover, so
    ``WindowBatches`` over it gives exactly those windows. d2l's model never sees the rest of
    the text. The vocabulary stays the corpus's."""
    num_train = num_train or D2L_WINDOWS["num_train"]
    num_val = num_val or D2L_WINDOWS["num_val"]
    ids = np.concatenate([corpus[s] for s in SPLITS if s in corpus.splits])
    bounds = {"train": (0, num_train), "valid": (num_train, num_train + num_val),
              "test": (num_train + num_val, num_train + 2 * num_val)}
    if len(ids) < bounds["test"][1] + time_size:
        raise DataError(f"d2l's split needs {bounds['test'][1] + time_size} tokens (windows of {time_size} + 1 "
                        f"at {2 * num_val + num_train} positions); the text has {len(ids)}")
    splits = {s: ids[a : b + time_size] for s, (a, b) in bounds.items()}
    return Corpus(corpus.vocab, splits, corpus.level, corpus.files, corpus.own_vocab)
