"""Corpora, vocabularies and truncated-BPTT batching.

Corpora download once from the public mirrors the book (PTB) and d2l (The Time
Machine) use, are checked against a SHA-256, and are cached under ``~/.cache/rnncore``
(``RNNCORE_DATA_DIR`` or ``data_dir=`` overrides). A folder that already holds the
files (``ptb/ptb.train.txt`` or ``ptb.train.txt``) is used as it is.
"""
import collections
import hashlib
import json
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
    for candidate in (root / folder / name, root / name):
        if candidate.is_file():
            return candidate
    if mirror:
        url = f"{mirror.rstrip('/')}/{name}"
    return download(url, root / folder / name, sha256, progress=progress)


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
    right after ``<unk>`` whatever their frequency.
    """

    UNK = "<unk>"

    def __init__(self, tokens=(), min_freq=1, reserved=()):
        counts = collections.Counter(tokens)
        order = sorted(counts, key=lambda t: -counts[t])  # sorted() is stable: ties keep first appearance
        fixed = [self.UNK] + [t for t in reserved if t != self.UNK]
        self.idx_to_token = fixed + [t for t in order if counts[t] >= min_freq and t not in fixed]
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    def __len__(self):
        return len(self.idx_to_token)

    def __contains__(self, token):
        return token in self.token_to_idx

    def encode(self, tokens):
        """int32 ids; unknown tokens become ``<unk>``."""
        get = self.token_to_idx.get
        return np.fromiter((get(t, 0) for t in tokens), dtype=np.int32, count=len(tokens))

    def decode(self, ids):
        return [self.idx_to_token[int(i)] for i in ids]

    def to_dict(self):
        return {"tokens": self.idx_to_token}

    @classmethod
    def from_dict(cls, d):
        vocab = cls()
        vocab.idx_to_token = list(d["tokens"])
        vocab.token_to_idx = {t: i for i, t in enumerate(vocab.idx_to_token)}
        return vocab

    def save(self, path):
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


class Corpus:
    """A tokenized corpus: ``vocab`` and int32 id arrays for ``train``, ``valid``, ``test``."""

    def __init__(self, vocab, splits, level):
        self.vocab = vocab
        self.splits = splits
        self.level = level

    def __getitem__(self, split):
        if split not in self.splits:
            raise DataError(f"this corpus has no {split!r} split; it has {', '.join(self.splits)}")
        return self.splits[split]


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
    tokens = {s: tokenize(read_text(dataset_path(f"ptb.{s}.txt", data_dir, mirror, progress))) for s in SPLITS}
    if limit:
        tokens["train"] = tokens["train"][:limit]
    return _encode(tokens, vocab or Vocab(tokens["train"], reserved=["<eos>"]), "word")


def timemachine_corpus(data_dir=None, mirror=None, level="char", vocab=None, progress=True):
    """The Time Machine, split in order 90/5/5."""
    return split_text(read_text(dataset_path("timemachine.txt", data_dir, mirror, progress)), level, vocab)


def split_text(text, level, vocab=None, fractions=(0.9, 0.05)):
    """Any text as a corpus: tokenized, then split in order, 90/5/5."""
    tokens = tokenize(text, level)
    if len(tokens) < 20:
        raise DataError(f"the text has only {len(tokens)} {level} tokens; a corpus needs at least 20")
    a = int(len(tokens) * fractions[0])
    b = a + int(len(tokens) * fractions[1])
    parts = {"train": tokens[:a], "valid": tokens[a:b], "test": tokens[b:]}
    return _encode(parts, vocab or Vocab(parts["train"]), level)


def _encode(tokens, vocab, level):
    return Corpus(vocab, {s: vocab.encode(t) for s, t in tokens.items()}, level)


def load_corpus(name, data_dir=None, level=None, limit=None, vocab=None, mirror=None, progress=True):
    """``ptb``, ``timemachine``, or the path of a UTF-8 text file (split 90/5/5)."""
    if name == "ptb":
        return ptb_corpus(data_dir, mirror, limit, vocab, progress)
    if name == "timemachine":
        return timemachine_corpus(data_dir, mirror, level or "char", vocab, progress)
    if not Path(name).is_file():
        raise DataError(f"--corpus must be ptb, timemachine or a text file; {name!r} is none of these")
    return split_text(read_text(name), level or "word", vocab)


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
