"""Checkpoints: one ``.npz`` file with the parameters, the model config, the vocabulary,
the optimizer state and the trainer's position, written atomically (temp file, fsync,
rename) so a crash never leaves a half-written checkpoint. Arrays are stored on the host,
so a checkpoint trained on one backend loads on any other.
"""
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .data import Vocab, _default_mode
from ..models import build_model

FORMAT = "rnncore-checkpoint-1"


class CheckpointError(RuntimeError):
    """The file is missing, unreadable, or not an rnncore checkpoint."""


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


class Checkpoint:
    """What ``load`` returns: ``model`` (on the chosen backend), ``vocab``, and the raw states."""

    def __init__(self, model, vocab, optimizer_state, trainer_state, run):
        self.model, self.vocab, self.run = model, vocab, run
        self.optimizer_state, self.trainer_state = optimizer_state, trainer_state


def load(path, backend=None):
    """Load a checkpoint onto ``backend`` (any backend, whatever it was trained on)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with loaded as f:
            meta = json.loads(str(f["meta"]))
            arrays = {k: f[k] for k in f.files if k != "meta"}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable rnncore checkpoint ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rnncore checkpoint")
    try:
        model = build_model(meta["model"], backend=backend)
        for k, p in enumerate(model.params):
            value = arrays[f"param{k}"]
            if value.shape != p.shape:
                raise ValueError(f"param{k} has shape {value.shape}, the model needs {p.shape}")
            p[...] = model.backend.asarray(value)
        states = [[arrays.get(f"state{k}.{s}") for s in r.state_names] for k, r in enumerate(model.rnn_layers)]
        model.set_state(states)
        vocab = Vocab.from_dict(meta["vocab"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is damaged or from another version ({exc})") from exc
    optimizer_state = meta["optimizer"]
    if optimizer_state is not None:
        optimizer_state["arrays"] = {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}
    return Checkpoint(model, vocab, optimizer_state, meta["trainer"], meta.get("run", {}))
