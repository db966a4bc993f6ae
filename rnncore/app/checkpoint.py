"""Checkpoints: one ``.npz`` file (a zip of ``.npy`` members, as ``np.savez`` writes it) with the
parameters, the model config, the vocabulary, the optimizer state and the trainer's position.
Arrays are stored on the host, so a checkpoint trained on one backend loads on any other.

Writing never loses data: a checkpoint is written to a ``.part`` file beside it, synced, then
renamed over the old one, so a crash leaves the old checkpoint or the new one, never half of
one; ``lock`` keeps a second run off a checkpoint that a live run owns; ``remove_leftovers``
clears the ``.part`` files of a run that was killed mid-save.

Reading trusts nothing in the file. ``load`` reads only the members the model and its state
need, and checks each one's ``.npy`` header against the shape and dtype the model config
implies, and against the member's own size, before it allocates anything. Members must be
stored uncompressed (as ``np.savez`` writes them) and together fit in the file, so memory stays
within a small multiple of the file's size, whatever the file claims. Other members are never
read. Every malformed file raises ``CheckpointError`` naming the file and what is wrong.
"""
import fcntl
import io
import json
import math
import os
import re
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .data import Vocab, _default_mode
from ..models import CELLS, build_model

FORMAT = "rnncore-checkpoint-1"
DTYPES = ("float32", "float64")
OPTIMIZER_TYPES = ("SGD", "Momentum", "Adam")
# what reading hostile bytes can raise from zipfile, numpy's header parser, json or the decoders
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, TypeError, SyntaxError, struct.error, zipfile.BadZipFile,
               NotImplementedError, OverflowError, RecursionError)


class CheckpointError(RuntimeError):
    """The file is missing, unreadable, or not an rnncore checkpoint."""


class CheckpointLocked(CheckpointError):
    """Another live run holds the checkpoint."""


# writing ---------------------------------------------------------------------------
def save(path, model, vocab, optimizer=None, trainer_state=None, run=None):
    """``run``: how the data was made (corpus, level, batching...), so eval and generate can redo it."""
    be = model.backend
    arrays = {f"param{k}": be.to_numpy(p) for k, p in enumerate(model.params)}
    meta = {
        "format": FORMAT,
        "model": model.config,
        "vocab": vocab.to_dict(),
        "trainer": trainer_state,
        "run": run or {},
        "optimizer": None,
    }
    if optimizer is not None:
        opt = optimizer.state_dict(be)
        arrays.update({f"opt.{k}": v for k, v in opt.pop("arrays").items()})
        meta["optimizer"] = {"type": type(optimizer).__name__, **opt}
    for k, layer_states in enumerate(model.get_state()):
        for name, value in zip(("h", "c"), layer_states):
            if value is not None:
                arrays[f"state{k}.{name}"] = value
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    _write_atomically(Path(path), buffer.getvalue())


def _write_atomically(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_leftovers(path):
    """Delete the ``.part`` files a killed run left beside ``path``; call it only while holding
    ``lock(path)``, when no live writer can own one. Returns the names removed."""
    path = Path(path)
    # _write_atomically's temp names: "." + name + "." + mkstemp's 8 random characters + ".part"
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.part")
    removed = []
    for entry in os.scandir(path.parent):
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            os.remove(entry.path)
            removed.append(entry.name)
    return removed


def lock_path(path):
    """``NAME.npz.lock`` beside the checkpoint, links resolved: every spelling of it, one lock."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".lock")


@contextmanager
def lock(path):
    """Hold ``path``'s sidecar lock file (``NAME.npz.lock``, holding our pid) for the with-block;
    raise CheckpointLocked at once, naming the holder's pid, if a live process holds it.

    Why ``flock`` on a sidecar: the kernel drops an flock when its process dies, however it dies
    (``kill -9`` included), so the lock of a killed run never blocks the next one, while a lock
    file by its mere presence would. The lock cannot sit on the checkpoint itself, which every
    save replaces with a new file (a new inode). ``flock`` rather than ``fcntl``/``lockf``
    record locks, which a process loses when it closes any descriptor of the file. The lock
    file is removed on the way out; a run that finds it removed under it (by the holder it
    raced) locks the new one.
    """
    where = lock_path(path)
    while True:
        fd = os.open(where, os.O_RDWR | os.O_CREAT, _default_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise CheckpointLocked(f"{path} is in use by another rnncore run ({who}, lock file {where}); "
                                   "wait for it to finish or give another --checkpoint") from None
        if _same_file(fd, where):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.remove(where)  # while still locked, so no one locks a file that is on its way out
        os.close(fd)


def _same_file(fd, path):
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


# reading ---------------------------------------------------------------------------
class Checkpoint:
    """What ``load`` returns: ``model`` (on the chosen backend), ``vocab``, and the raw states."""

    def __init__(self, model, vocab, optimizer_state, trainer_state, run):
        self.model, self.vocab, self.run = model, vocab, run
        self.optimizer_state, self.trainer_state = optimizer_state, trainer_state


def load(path, backend=None):
    """Load a checkpoint onto ``backend`` (any backend, whatever it was trained on)."""
    path = Path(path)
    with _open(path) as archive:
        try:
            meta, vocab = _read_meta(archive)
            config = meta["model"]
            _need(config["num_layers"] < len(archive.zip.NameToInfo), "its model has more layers than it has arrays")
            params = [archive.array(f"param{k}", _exactly(shape, config["dtype"]))
                      for k, shape in enumerate(param_shapes(config))]
            states = _read_states(archive, config)
            optimizer_state = meta["optimizer"]
            if optimizer_state is not None:
                optimizer_state = {**optimizer_state, "arrays": _read_optimizer_arrays(archive, params)}
        except _UNREADABLE as exc:
            raise CheckpointError(f"{path} is not a usable rnncore checkpoint: {_reason(exc)}") from exc
    model = build_model(config, backend=backend)
    for p, value in zip(model.params, params):
        p[...] = model.backend.asarray(value)
    model.set_state(states)
    return Checkpoint(model, vocab, optimizer_state, meta["trainer"], meta["run"])


def is_checkpoint(path):
    """Whether ``path`` is an rnncore checkpoint (its metadata reads and checks out)."""
    try:
        with _open(Path(path)) as archive:
            _read_meta(archive)
        return True
    except (CheckpointError, *_UNREADABLE):
        return False


def param_shapes(config):
    """The shapes of ``build_model(config).params``, in order, worked out without building it
    (tests hold the two together): embedding (V, D), none for one-hot input (``embedding``
    false, D = V); per layer Wx, Wh and the cell's biases; the output layer's W (H, V) unless
    tied to the embedding, and its bias (V,)."""
    V, D, H = config["vocab_size"], config["wordvec_size"], config["hidden_size"]
    cell = CELLS[config["cell"]].cell
    G = cell.gates * H
    shapes = [(V, D)] if config.get("embedding", True) else []
    for k in range(config["num_layers"]):
        shapes += [(D if k == 0 else H, G), (H, G)] + [(G,)] * (len(cell.param_names) - 2)
    return shapes + ([] if config["tie_weights"] else [(H, V)]) + [(V,)]


@contextmanager
def _open(path):
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    try:
        archive = _Archive(path)
    except _UNREADABLE as exc:
        raise CheckpointError(f"{path} is not a readable rnncore checkpoint ({_reason(exc)})") from exc
    with archive.zip:
        yield archive


def _reason(exc):
    return str(exc) if isinstance(exc, ValueError) and str(exc) else f"{type(exc).__name__}: {exc}"


class _Archive:
    """The members of a zip file, each read at most once, stored, within the file, and checked
    against what its ``.npy`` header declares before its data is allocated."""

    def __init__(self, path):
        self.zip = zipfile.ZipFile(path)
        self.unread = os.path.getsize(path)  # members may not overlap: together they fit in the file

    def has(self, name):
        return name + ".npy" in self.zip.NameToInfo

    def array(self, name, check):
        """The array of member ``name``.npy; ``check(name, shape, dtype)`` raises ValueError unless
        its header declares what the caller expects."""
        with self._member(name) as (f, size):
            shape, dtype = _npy_header(f)
            check(name, shape, dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            if f.tell() + nbytes != size:
                raise ValueError(f"{name} declares {shape} {dtype} but holds {size - f.tell()} bytes of data")
            array = np.empty(shape, dtype)
            view = memoryview(array).cast("B")
            done = 0
            while done < nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise ValueError(f"{name} ends early")
                done += got
            f.read()  # reading to the end is what makes zipfile check the CRC
        return array

    def text(self, name):
        """The string of a 0-d unicode member (how ``np.savez`` stores a ``str``)."""
        with self._member(name) as (f, size):
            shape, dtype = _npy_header(f)
            if shape != () or dtype.kind != "U" or f.tell() + dtype.itemsize != size:
                raise ValueError(f"{name} is not a string")
            data = f.read(dtype.itemsize)
            f.read()
        return data.decode("utf-32-le").rstrip("\0")

    @contextmanager
    def _member(self, name):
        info = self.zip.NameToInfo.get(name + ".npy")
        if info is None:
            raise ValueError(f"it has no {name}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{name} is compressed (rnncore writes checkpoints uncompressed)")
        if info.file_size != info.compress_size:
            raise ValueError(f"{name} declares two sizes")
        self.unread -= info.compress_size
        if self.unread < 0:
            raise ValueError("its members claim more bytes than the file holds")
        with self.zip.open(info) as f:
            yield f, info.file_size


def _npy_header(f):
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(f)
    if fortran_order or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"an array of {dtype}{' in Fortran order' if fortran_order else ''} is not a checkpoint's")
    return shape, dtype


def _exactly(shape, dtype):
    def check(name, got_shape, got_dtype):
        if got_shape != tuple(shape) or got_dtype != np.dtype(dtype):
            raise ValueError(f"{name} is {got_shape} {got_dtype}, the model needs {tuple(shape)} {dtype}")

    return check


def _read_states(archive, config):
    """Per layer, the carried (h[, c]) each (N, H), or Nones where the layer carried none."""
    names = CELLS[config["cell"]].cell.states
    H, dtype = config["hidden_size"], np.dtype(config["dtype"])
    rows = []

    def check(name, shape, got_dtype):
        if len(shape) != 2 or shape[1] != H or shape[0] < 1 or got_dtype != dtype:
            raise ValueError(f"{name} is {shape} {got_dtype}, the model needs (N, {H}) {dtype}")
        if rows and shape[0] != rows[0]:
            raise ValueError("the carried states disagree in their number of rows")
        rows.append(shape[0])

    states = []
    for k in range(config["num_layers"]):
        present = [archive.has(f"state{k}.{s}") for s in names]
        if any(present) and not all(present):
            raise ValueError(f"layer {k} carries only part of its state")
        states.append([archive.array(f"state{k}.{s}", check) if all(present) else None for s in names])
    return states


def _read_optimizer_arrays(archive, params):
    """``opt.<slot><k>`` members: per slot, one array per parameter k, shaped like it."""
    slots = {}
    for member in archive.zip.NameToInfo:
        found = re.fullmatch(r"opt\.([a-z]+)(\d+)\.npy", member)
        if found and int(found[2]) < len(params):
            slots.setdefault(found[1], []).append(int(found[2]))
    for slot, ks in slots.items():
        if sorted(ks) != list(range(len(params))):
            raise ValueError(f"the optimizer's {slot!r} state is incomplete")
    return {f"{slot}{k}": archive.array(f"opt.{slot}{k}", _exactly(params[k].shape, params[k].dtype))
            for slot in slots for k in range(len(params))}


# the metadata, checked before anything it describes is allocated --------------------
def _read_meta(archive):
    """The checked metadata, and the vocabulary it holds."""
    meta = json.loads(archive.text("meta"))
    _need(isinstance(meta, dict) and meta.get("format") == FORMAT, f"its format is not {FORMAT}")
    for key in ("model", "vocab", "trainer", "run", "optimizer"):
        _need(key in meta, f"its metadata lacks {key!r}")
    _check_config(meta["model"])
    vocab = Vocab.from_dict(meta["vocab"])
    _need(len(vocab) == meta["model"]["vocab_size"], f"its vocabulary has {len(vocab)} tokens, "
          f"the model {meta['model']['vocab_size']}")
    _check_run(meta["run"])
    if meta["optimizer"] is not None:
        _check_optimizer(meta["optimizer"])
    if meta["trainer"] is not None:
        _check_trainer(meta["trainer"])
    return meta, vocab


def _need(condition, message):
    if not condition:
        raise ValueError(message)


def _is_int(value, least=0):
    return type(value) is int and value >= least


def _is_number(value):
    return type(value) in (int, float)


def _check_config(config):
    _need(isinstance(config, dict), "its model config is not a mapping")
    for key in ("vocab_size", "wordvec_size", "hidden_size", "num_layers"):
        _need(_is_int(config.get(key), 1), f"the model's {key} is not a positive integer")
    _need(config.get("cell") in CELLS, "the model's cell is unknown")
    _need(config.get("dtype") in DTYPES, "the model's dtype is not float32 or float64")
    _need(_is_number(config.get("dropout")) and 0 <= config["dropout"] < 1, "the model's dropout is not in [0, 1)")
    _need(type(config.get("tie_weights")) is bool, "the model's tie_weights is not true or false")
    _need(not config["tie_weights"] or config["wordvec_size"] == config["hidden_size"],
          "the model ties weights of different sizes")


def _check_run(run):
    _need(isinstance(run, dict), "its run record is not a mapping")
    _need(isinstance(run.get("settings", {}), dict), "its run settings are not a mapping")
    _need(run.get("level", "word") in ("word", "char"), "its token level is not word or char")
    _need(type(run.get("seed", 0)) is int, "its seed is not an integer")
    corpus = run.get("corpus", {"files": [], "sha256": ""})
    _need(isinstance(corpus, dict) and isinstance(corpus.get("files"), list)
          and all(isinstance(f, str) for f in corpus["files"]) and isinstance(corpus.get("sha256"), str)
          and isinstance(corpus.get("data_dir", ""), str), "its corpus record is malformed")


def _check_optimizer(state):
    _need(isinstance(state, dict) and state.get("type") in OPTIMIZER_TYPES, "its optimizer is unknown")
    _need(_is_number(state.get("lr")) and 0 < state["lr"] < math.inf, "its learning rate is not positive")
    _need(_is_int(state.get("t")), "its optimizer step count is not a count")


def _check_trainer(state):
    _need(isinstance(state, dict), "its trainer state is not a mapping")
    for key in ("epoch", "iteration", "epoch_count"):
        _need(_is_int(state.get(key)), f"its trainer {key} is not a count")
    _need(_is_number(state.get("epoch_loss")), "its trainer epoch_loss is not a number")
    _need(state.get("best_ppl") is None or _is_number(state["best_ppl"]), "its best perplexity is not a number")
    _need(isinstance(state.get("interval_ppl"), list) and all(map(_is_number, state["interval_ppl"])),
          "its perplexity curve is not a list of numbers")
    history = state.get("history")
    _need(isinstance(history, list) and all(_is_epoch_record(r) for r in history), "its history is malformed")
    batches = state.get("batches")
    _need(isinstance(batches, dict) and (_is_int(batches.get("position")) or _is_rng_state(batches.get("rng"))),
          "its batch position is malformed")
    _need(state.get("rng") is None or _is_rng_state(state["rng"]) or _is_cupy_rng_state(state["rng"]),
          "its random generator state is malformed")


def _is_epoch_record(record):
    return (isinstance(record, dict) and _is_int(record.get("epoch"), 1) and _is_number(record.get("train_ppl"))
            and _is_number(record.get("lr")) and _is_number(record.get("valid_ppl", 0)))


def _is_cupy_rng_state(state):
    """Whether ``state`` has the form of the cupy backend's ``rng_state()`` (a backend that cannot
    continue it re-seeds from it: ``Backend.set_rng_state``)."""
    return (isinstance(state, dict) and set(state) == {"bit_generator", "size", "state"}
            and isinstance(state["bit_generator"], str) and state["bit_generator"].startswith("cupy.")
            and _is_int(state["size"], 1) and isinstance(state["state"], str))


def _is_rng_state(state):
    """Whether NumPy takes ``state`` as the state of the generator it names (PCG64, MT19937, ...:
    a backend whose generator differs re-seeds from it, ``Backend.set_rng_state``)."""
    kind = state.get("bit_generator") if isinstance(state, dict) else None
    generator = getattr(np.random, kind, None) if kind in NUMPY_GENERATORS else None
    if generator is None:
        return False
    try:
        generator().state = state
        return True
    except (TypeError, ValueError, KeyError, OverflowError):
        return False


NUMPY_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
