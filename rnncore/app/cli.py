"""The ``rnncore`` command: train, eval, generate, bench, and the commands of COMMAND_MODULES.

Every error is one line on stderr, ``rnncore <command>: error: ...``; the exit statuses are
EXIT_STATUSES, which ``rnncore --help`` shows.
"""
import argparse
import contextlib
import functools
import importlib
import importlib.util
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import distributed
from .options import positive

EXIT_STATUSES = """\
exit status:
  0    done
  1    training diverged (NaN or infinite loss; the last good checkpoint is kept),
       or a bug in rnncore (RNNCORE_DEBUG=1 shows its traceback)
  2    bad options, or a file rnncore cannot use: missing, corrupt, of another corpus,
       in use by another run, or one that the run would overwrite
  130  Ctrl-C (SIGINT) during training: the state was saved; continue with --resume
  143  SIGTERM during training: the same
"""

PRESETS = {
    "ch05": dict(corpus="ptb", limit=1000, model="simple", wordvec=100, hidden=100, batch_size=10, time_size=5,
                 lr=0.1, epochs=100, max_grad=0, lr_decay=0, batching="sequential", eval_interval=19),
    "ch06-rnnlm": dict(corpus="ptb", model="rnnlm", wordvec=100, hidden=100, batch_size=20, time_size=35, lr=20.0,
                       epochs=4, max_grad=0.25, lr_decay=0, batching="sequential"),
    "ch06-better": dict(corpus="ptb", model="better", wordvec=650, hidden=650, layers=2, dropout=0.5, tie=True,
                        batch_size=20, time_size=35, lr=20.0, epochs=40, max_grad=0.25, lr_decay=4.0,
                        batching="sequential"),
    # d2l 1.0 (RNNLMScratch, LSTMScratch, GRUScratch): one-hot input, hidden 32, windows of 32 + 1
    # characters at every position, the first 10000 train, the next 5000 validate (data.d2l_split),
    # batches of 1024 (~10 an epoch), clip 1; RNN (9.5): lr 1, 100 epochs; LSTM and GRU (10.1, 10.2): lr 4, 50
    "d2l-rnn": dict(corpus="timemachine", level="char", model="simple", one_hot=True, hidden=32, batch_size=1024,
                    time_size=32, lr=1.0, epochs=100, max_grad=1.0, lr_decay=0, batching="d2l-windows",
                    eval_interval=10),
    "d2l-lstm": dict(corpus="timemachine", level="char", model="rnnlm", one_hot=True, hidden=32, batch_size=1024,
                     time_size=32, lr=4.0, epochs=50, max_grad=1.0, lr_decay=0, batching="d2l-windows",
                     eval_interval=10),
    "d2l-gru": dict(corpus="timemachine", level="char", model="rnnlm", cell="gru", one_hot=True, hidden=32,
                    batch_size=1024, time_size=32, lr=4.0, epochs=50, max_grad=1.0, lr_decay=0,
                    batching="d2l-windows", eval_interval=10),
    # beats the best add-one n-gram (the trigram, valid ppl 6.40) by 25%+ within 10 minutes on 2 cores
    "timemachine-lstm": dict(corpus="timemachine", level="char", model="rnnlm", wordvec=32, hidden=256,
                             batch_size=32, time_size=64, lr=0.005, optimizer="adam", epochs=10, max_grad=1.0,
                             lr_decay=2.0, batching="sequential", eval_interval=20),
}
DEFAULTS = dict(corpus="ptb", level=None, limit=None, model="rnnlm", cell=None, wordvec=100, hidden=100, layers=1,
                dropout=0.0, tie=False, batch_size=20, time_size=35, lr=20.0, optimizer="sgd", epochs=4, max_grad=0.25,
                lr_decay=0, batching="sequential", eval_interval=20, dtype="float32", one_hot=False)
MODEL_CELLS = {"simple": "rnn", "rnnlm": "lstm", "better": "lstm"}  # --cell overrides
# what --model brings with it (a preset or explicit options still override)
MODEL_DEFAULTS = {"simple": {}, "rnnlm": {}, "better": dict(wordvec=650, hidden=650, layers=2, dropout=0.5, tie=True)}
# settings that a resumed run may change; the rest are the checkpoint's
RESUME_MAY_CHANGE = {"epochs", "lr", "max_grad", "lr_decay", "eval_interval"}


# each module has register(subparsers, add_common_options), which adds its parser and sets
# ``run`` (args -> exit status) as a default
COMMAND_MODULES = ("sine", "stats", "grads", "seqtask")


class UsageError(Exception):
    """A bad option or argument: reported as one line, exit status 2. ``prog``: the command whose
    parser found it (argparse's own errors), else the one running."""

    def __init__(self, message, prog=None):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message, self.prog)


def _orders(text):
    """'1,2,3' -> [1, 2, 3]; '' -> []."""
    try:
        orders = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}") from None
    if any(n < 1 for n in orders):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return orders


DATA_DIR_HELP = "folder holding (or to cache) the corpora (default: $RNNCORE_DATA_DIR, else ~/.cache/rnncore)"


def _common(p, seed_help="seed of every random draw (default 0)", data_dir_help=DATA_DIR_HELP):
    """--backend, and --data-dir and --seed unless their help is None."""
    p.add_argument("--backend", help="numpy, numba, cupy or auto (default: $RNNCORE_BACKEND, else auto)")
    if data_dir_help:
        p.add_argument("--data-dir", help=data_dir_help)
    if seed_help:
        p.add_argument("--seed", type=int, default=0, help=seed_help)


def build_parser():
    parser = _Parser(prog="rnncore", description="Recurrent language models on NumPy, Numba or CuPy.",
                     epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a language model with truncated BPTT",
                       description="Train a language model. A --preset sets the book's or d2l's settings; any "
                                   "option given beside it overrides the preset.")
    _common(t, "seeds the weights, the batch order and dropout (default 0; a resumed run keeps its own)",
            DATA_DIR_HELP.replace(")", "; a resumed run: the folder it was trained from)"))
    t.add_argument("--preset", choices=sorted(PRESETS), help="a known configuration: the book's ch05/ch06 runs "
                   "or d2l's (see README)")
    t.add_argument("--corpus", help="ptb, timemachine, or a UTF-8 text file, split 90/5/5 (default ptb)")
    t.add_argument("--level", choices=["word", "char"], help="tokens are words or characters (default: word; "
                   "char for timemachine)")
    t.add_argument("--limit", type=positive(int), help="train on the first LIMIT tokens of the training split "
                   "only (the vocabulary is built from them too)")
    t.add_argument("--model", choices=sorted(MODEL_CELLS), help="simple (tanh RNN), rnnlm (LSTM), better "
                   "(2 LSTMs of 650, dropout 0.5, tied weights); its sizes can be overridden")
    t.add_argument("--cell", choices=["rnn", "lstm", "gru"], help="the recurrent cell, in place of the --model's "
                   "(simple: rnn; rnnlm and better: lstm)")
    t.add_argument("--wordvec", type=positive(int), help="embedding size")
    t.add_argument("--hidden", type=positive(int), help="hidden size")
    t.add_argument("--layers", type=positive(int), help="number of recurrent layers")
    t.add_argument("--dropout", type=float, help="dropout ratio in [0, 1) before and after each recurrent layer")
    t.add_argument("--tie", action=argparse.BooleanOptionalAction, default=None,
                   help="share the embedding with the output layer (needs --wordvec == --hidden)")
    t.add_argument("--batch-size", type=positive(int), help="rows per batch")
    t.add_argument("--time-size", type=positive(int), help="truncation length T of BPTT")
    t.add_argument("--batching", choices=["sequential", "random", "d2l-windows"],
                   help="sequential: the book's stateful layout; random: d2l's random-offset windows; d2l-windows: "
                        "d2l 1.0's TimeMachine, a window at every position, 10000 train, the next 5000 validate")
    t.add_argument("--one-hot", action=argparse.BooleanOptionalAction, default=None,
                   help="feed the first recurrent layer one-hot vectors (d2l's RNNLMScratch), no embedding")
    t.add_argument("--optimizer", choices=["sgd", "momentum", "adam"], help="default sgd")
    t.add_argument("--lr", type=positive(float), help="learning rate")
    t.add_argument("--max-grad", type=float, help="clip the global gradient norm to this (0: no clipping)")
    t.add_argument("--lr-decay", type=float, help="divide the learning rate by this when validation perplexity "
                   "does not improve (0: never)")
    t.add_argument("--epochs", type=positive(int), help="passes over the training split")
    t.add_argument("--eval-interval", type=positive(int), help="iterations between progress updates (each one "
                   "reads the losses back from the device)")
    t.add_argument("--dtype", choices=["float32", "float64"], help="parameter precision (default float32)")
    t.add_argument("--checkpoint", help="the best model goes here (default runs/<preset or model>.npz), the "
                   "resumable state beside it as NAME.last.npz; NAME.npz.lock marks the live run that owns them")
    t.add_argument("--resume", action="store_true", help="continue from the .last checkpoint of --checkpoint, "
                   "from any folder (only --epochs, --lr, --max-grad, --lr-decay, --eval-interval may change)")
    t.add_argument("--overwrite", action="store_true", help="start afresh even if --checkpoint holds a run "
                   "(only rnncore checkpoints are ever replaced)")
    t.add_argument("--save-every", type=positive(int), help="also save the resumable state every N iterations")
    t.add_argument("--metrics", help="write per-epoch perplexities and the test perplexity as JSON here")
    t.add_argument("--plot", help="write the perplexity curve as a PNG here (needs matplotlib; no plot without "
                   "this option)")
    t.add_argument("--quiet", action="store_true", help="no progress bar (epoch results are still printed)")
    t.set_defaults(seed=None)  # 0, or the resumed run's own (see _train_seed)

    e = sub.add_parser("eval", help="perplexity of a checkpoint, beside n-gram baselines")
    _common(e, None, "folder holding (or to cache) the corpora (default: the one the run was trained from)")
    e.add_argument("--checkpoint", required=True, help="the checkpoint to evaluate (NAME.npz: the best model; "
                   "NAME.last.npz: the latest)")
    e.add_argument("--split", choices=["train", "valid", "test"], default="test",
                   help="the part of the corpus to evaluate on (default test)")
    e.add_argument("--corpus", help="evaluate on this corpus (ptb, timemachine or a text file) instead of the one "
                   "the checkpoint was trained on")
    e.add_argument("--allow-vocab-mismatch", action="store_true",
                   help="evaluate even if the corpus's vocabulary differs from the checkpoint's: tokens the "
                        "checkpoint does not know count as <unk>, and their share is printed beside the perplexity")
    e.add_argument("--ngram", type=_orders, default="1,2,3",
                   help="orders of the add-one n-gram baselines, e.g. 1,2 ('' for none)")

    g = sub.add_parser("generate", help="sample text from a checkpoint")
    _common(g, "seeds the sampling (default 0: the same options give the same text)", None)
    g.add_argument("--checkpoint", required=True, help="the checkpoint to sample from")
    g.add_argument("--prefix", default="", help="text to continue (default: a new sentence or text)")
    g.add_argument("--length", type=positive(int), default=100, help="tokens to generate (default 100)")
    g.add_argument("--temperature", type=positive(float), default=1.0, help="divides the scores: below 1 "
                   "sharpens the distribution, above 1 flattens it (default 1)")
    g.add_argument("--top-k", type=positive(int), help="draw only from the K most likely tokens")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token (no sampling)")
    g.add_argument("--allow-unk", action="store_true", help="let <unk> be generated")

    for name in COMMAND_MODULES:  # commands that live in a module of their own: register(sub, common)
        importlib.import_module(f"{__package__}.{name}").register(sub, _common)

    from . import bench

    bench.add_arguments(sub.add_parser("bench", help="BPTT memory and speed across truncation lengths",
                                       description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def train_settings(args, saved=None):
    """DEFAULTS, the model's defaults, the preset, a resumed run's settings, then every option given."""
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    preset = PRESETS[args.preset] if args.preset else {}
    model = given.get("model") or preset.get("model") or (saved or {}).get("model") or DEFAULTS["model"]
    settings = {**DEFAULTS, **MODEL_DEFAULTS[model], **preset, **(saved or {})}
    if saved:
        for key, value in given.items():
            if key not in RESUME_MAY_CHANGE and value != saved.get(key):
                option = "--" + key.replace("_", "-")
                raise UsageError(f"{option} cannot change when resuming "
                                 f"(the checkpoint was trained with {saved.get(key)!r})")
    settings.update(given)
    settings["cell"] = settings["cell"] or MODEL_CELLS[settings["model"]]
    if not 0 <= settings["dropout"] < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {settings['dropout']}")
    if settings["tie"] and settings["one_hot"]:
        raise UsageError("--tie needs an embedding; it cannot go with --one-hot")
    if settings["tie"] and settings["wordvec"] != settings["hidden"]:
        raise UsageError("--tie needs --wordvec equal to --hidden")
    if not (math.isfinite(settings["max_grad"]) and settings["max_grad"] >= 0):
        raise UsageError(f"--max-grad must be 0 (no clipping) or positive, got {settings['max_grad']}")
    if not (settings["lr_decay"] == 0 or (math.isfinite(settings["lr_decay"]) and settings["lr_decay"] >= 1)):
        raise UsageError(f"--lr-decay must be 0 (never) or at least 1, got {settings['lr_decay']}")
    return settings


def saved_settings(ckpt, path):
    """A checkpoint's training settings, checked as if they had been given on the command line
    (a checkpoint is input like any other)."""
    from .checkpoint import CheckpointError

    saved = ckpt.run.get("settings", {})
    argv = ["train"] + [_as_option(k, v) for k, v in saved.items() if k in DEFAULTS and v is not None]
    try:
        return train_settings(_parser().parse_args(argv))
    except UsageError as exc:
        raise CheckpointError(f"{path} holds settings rnncore cannot use ({exc})") from None


@functools.cache
def _parser():
    return build_parser()


def _as_option(key, value):
    option = "--" + key.replace("_", "-")
    if key in ("tie", "one_hot") and isinstance(value, bool):
        return option if value else "--no-tie"
    return f"{option}={value}"


def _train_seed(given, resume_from):
    """--seed, 0 by default; a resumed run keeps its own (its weights and batch order came from it)."""
    if resume_from is None:
        return 0 if given is None else given
    saved = resume_from.run.get("seed", 0)
    if given is not None and given != saved:
        raise UsageError(f"--seed cannot change when resuming (the checkpoint was trained with {saved})")
    return saved


# files a run writes: checked before any work, so no run overwrites what it should not ------------
def _outputs(args, ckpt_path):
    from .checkpoint import lock_path
    from .train import last_checkpoint_path

    named = [("--checkpoint", ckpt_path),
             ("the resumable state (--checkpoint's .last)", last_checkpoint_path(ckpt_path)),
             ("the lock file (--checkpoint's .lock)", lock_path(ckpt_path)),
             ("--metrics", args.metrics), ("--plot", args.plot)]
    return [(label, Path(path)) for label, path in named if path]


def _check_outputs(outputs, plot):
    """No output is a directory, each one's folder can be written, and a --plot can be drawn."""
    for label, path in outputs:
        if path.is_dir():
            raise UsageError(f"{label} {path} is a directory; give a file path")
    if plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)")
    for folder in dict.fromkeys(path.parent for _, path in outputs):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise UsageError(f"cannot write to {folder} ({exc.strerror})") from exc


def _refuse_shared_files(named):
    """Every file its own: paths compared resolved (symlinks, '..', the working folder) and by
    inode (hard links)."""
    for k, (label, path) in enumerate(named):
        for other_label, other in named[:k]:
            if _same_file(path, other):
                raise UsageError(f"{other_label} and {label} are the same file ({path}); give each its own")


def _same_file(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _refuse_clobbering(ckpt_path, overwrite):
    """A fresh run writes only where no run is, or, with --overwrite, over rnncore checkpoints only."""
    from .checkpoint import is_checkpoint
    from .train import last_checkpoint_path

    for path in (ckpt_path, last_checkpoint_path(ckpt_path)):
        if not path.exists():
            continue
        if not overwrite:
            raise UsageError(f"{ckpt_path} already holds a run; continue it with --resume, "
                             "or pass --overwrite to start over")
        if not is_checkpoint(path):
            raise UsageError(f"{path} is not an rnncore checkpoint; --overwrite replaces only checkpoints")


# the corpus a run was trained on ---------------------------------------------------------------
def _corpus_record(corpus, data_dir):
    from . import data

    return {"files": [str(f) for f in corpus.files], "sha256": corpus.sha256,
            "data_dir": str(data.data_dir(data_dir).resolve())}


def _run_data_dir(run, given):
    """--data-dir, else the folder the run was trained from while it exists, else the default."""
    recorded = run.get("corpus", {}).get("data_dir")
    return given or (recorded if recorded and Path(recorded).is_dir() else None)


def _same_corpus(run, corpus):
    """Refuse a corpus whose text is not what the run recorded (a checkpoint older than the record passes)."""
    from .data import DataError

    recorded = run.get("corpus", {}).get("sha256")
    if recorded and corpus.sha256 != recorded:
        files = ", ".join(map(str, corpus.files))
        raise DataError(f"the corpus changed since this run was trained on it: {files} no longer holds the same "
                        "text (its SHA-256 differs)")


def _load_run_corpus(settings, run, data_dir, vocab):
    from . import data

    name = settings["corpus"]
    if name not in data.CORPORA and not Path(name).is_file():
        raise data.DataError(f"the corpus this run was trained on, {name}, is not there any more")
    return data.load_corpus(name, data_dir, run.get("level"), settings["limit"], vocab=vocab)


def _check_vocab(corpus, vocab, allow):
    """The corpus's own vocabulary (what its training split builds) must be the checkpoint's."""
    from .data import DataError

    ours, theirs = set(corpus.own_vocab.idx_to_token), set(vocab.idx_to_token)
    if ours == theirs or allow:
        return
    new = sorted(ours - theirs)
    examples = ", ".join(map(repr, new[:3]))
    raise DataError(f"the corpus's vocabulary differs from the checkpoint's: {len(new)} of its {len(ours)} tokens "
                    f"are not in the checkpoint's{' (' + examples + ')' if new else ''}, "
                    f"and {len(theirs - ours)} of the checkpoint's {len(theirs)} are not in it; pass "
                    "--allow-vocab-mismatch to evaluate anyway, with unknown tokens as <unk>")


# the commands ---------------------------------------------------------------------------
def cmd_train(args):
    from . import checkpoint, data
    from ..backends import get_backend

    if distributed.communicator().size > 1:  # under mpiexec: this rank's GPU, before any array is made
        distributed.current().bind_gpu()
    be = get_backend(args.backend)
    if not args.resume:  # bad options are found before a file is touched (a resume's, once it is read)
        data.require_corpus(train_settings(args)["corpus"])
    name = args.preset or args.model or DEFAULTS["model"]
    ckpt_path = Path(args.checkpoint or f"runs/{name}.npz")
    if args.corpus and Path(args.corpus).is_file():  # recorded absolute, so a resume finds it from anywhere
        args.corpus = str(Path(args.corpus).resolve())
    outputs = _outputs(args, ckpt_path)
    _refuse_shared_files(outputs)  # first: a clash is the more specific error
    _check_outputs(outputs, args.plot)
    # under mpiexec rank 0 alone holds the lock and writes (the other ranks would find it taken)
    with checkpoint.lock(ckpt_path) if distributed.communicator().rank == 0 else contextlib.nullcontext():
        return _train(args, be, ckpt_path, outputs)


def _train(args, be, ckpt_path, outputs):
    """The run itself, while it holds the checkpoint's lock."""
    from . import checkpoint, data
    from .. import optim
    from ..models import RecurrentLM
    from .train import Trainer, evaluate_perplexity, evaluation_rows, last_checkpoint_path

    last_path = last_checkpoint_path(ckpt_path)
    resume_from = checkpoint.load(last_path, backend=be) if args.resume else None
    run = resume_from.run if resume_from else {}
    cfg = train_settings(args, saved_settings(resume_from, last_path) if resume_from else None)
    data_dir = _run_data_dir(run, args.data_dir)
    _refuse_shared_files(outputs + [("the corpus", f) for f in data.corpus_files(cfg["corpus"], data_dir)])
    if not args.resume:
        _refuse_clobbering(ckpt_path, args.overwrite)
    for path in (ckpt_path, last_path):
        if distributed.current().rank == 0:  # the lock holder's job
            checkpoint.remove_leftovers(path)
    seed = _train_seed(args.seed, resume_from)
    be.seed(seed)
    if resume_from:
        corpus = _load_run_corpus(cfg, run, data_dir, resume_from.vocab)
        _same_corpus(run, corpus)
    else:
        corpus = data.load_corpus(cfg["corpus"], data_dir, cfg["level"], cfg["limit"])
    corpus = _split(corpus, cfg)
    batches_cls = getattr(data, BATCHINGS[cfg["batching"]])
    extra = {} if cfg["batching"] == "sequential" else {"seed": seed}
    batches = batches_cls(corpus["train"], cfg["batch_size"], cfg["time_size"], **extra)
    model = resume_from.model if resume_from else RecurrentLM(
        len(corpus.vocab), cfg["wordvec"], cfg["hidden"], cell=cfg["cell"], num_layers=cfg["layers"],
        dropout=cfg["dropout"], tie_weights=cfg["tie"], backend=be, dtype=cfg["dtype"], seed=seed,
        embedding=not cfg["one_hot"])
    optimizer = optim.OPTIMIZERS[cfg["optimizer"]](cfg["lr"])
    record = {"settings": cfg, "level": corpus.level, "seed": seed, "corpus": _corpus_record(corpus, data_dir)}
    trainer = Trainer(model, optimizer, batches, corpus.vocab, valid_ids=corpus["valid"],
                      max_grad=cfg["max_grad"] or None, eval_interval=cfg["eval_interval"],
                      lr_decay=cfg["lr_decay"] or None, checkpoint_path=ckpt_path, save_every=args.save_every,
                      progress=not args.quiet, run=record, comm=distributed.current())
    if resume_from:
        trainer.resume(resume_from)
        if args.lr is not None:  # the one optimizer setting a resumed run may change
            trainer.optimizer.lr = args.lr
    _log(f"training {args.preset or cfg['model']} ({cfg['cell']}) on {cfg['corpus']} ({len(corpus['train'])} tokens, "
         f"vocabulary {len(corpus.vocab)}) with the {be.name} backend; checkpoint {ckpt_path}")
    windows = cfg["batching"] == "d2l-windows"
    test_rows = evaluation_rows(corpus["test"], cfg["time_size"], stateful=batches.stateful, split="the test split")
    test_rows = cfg["batch_size"] if windows else test_rows
    history = trainer.fit(cfg["epochs"])
    best = checkpoint.load(ckpt_path, backend=be).model
    test_ppl = evaluate_perplexity(best, corpus["test"], test_rows, cfg["time_size"], batches.stateful, windows,
                                   distributed.current())
    valid = [r["valid_ppl"] for r in history if "valid_ppl" in r]
    if valid:
        _log(f"best valid perplexity {min(valid):.2f}; {_baselines(corpus, 'valid')}")
    _log(f"test perplexity {test_ppl:.2f}; {_baselines(corpus, 'test')} (best checkpoint: {ckpt_path})")
    if distributed.current().rank > 0:  # rank 0 writes the run's files
        return 0
    if args.metrics:
        _write_json(args.metrics, {"settings": cfg, "backend": be.name, "epochs": history, "test_ppl": test_ppl,
                                   "checkpoint": str(ckpt_path)})
    if args.plot:
        _plot_curve(history, trainer.interval_ppl, len(batches), cfg["eval_interval"], args.plot)
        _log(f"perplexity curve: {args.plot}")
    return 0


BATCHINGS = {"sequential": "SequentialBatches", "random": "RandomBatches", "d2l-windows": "WindowBatches"}


def _split(corpus, settings):
    """d2l's windows come with d2l's split of the text (data.d2l_split); the others keep 90/5/5."""
    from . import data

    return data.d2l_split(corpus, settings["time_size"]) if settings["batching"] == "d2l-windows" else corpus


def _baselines(corpus, split, orders=(1, 2, 3)):
    """The add-one n-gram perplexities of ``split``, counted on the training split: one line."""
    from .ngram import ngram_perplexity

    V = len(corpus.vocab)
    orders = [n for n in orders if V**n < 2**63]  # each n-gram is one int64 key
    ppls = [f"{n}-gram {ngram_perplexity(corpus['train'], corpus[split], n, V):.2f}" for n in orders]
    return f"add-one n-gram baselines on {split}: " + ", ".join(ppls)


def _plot_curve(history, interval_ppl, per_epoch, interval, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps_per_epoch = max(1, math.ceil(per_epoch / interval))
    ax.plot([(k + 1) / steps_per_epoch for k in range(len(interval_ppl))], interval_ppl, lw=0.8,
            label="train (running)")
    ax.plot([r["epoch"] for r in history], [r["train_ppl"] for r in history], "o-", label="train (epoch)")
    if history and "valid_ppl" in history[0]:
        ax.plot([r["epoch"] for r in history], [r["valid_ppl"] for r in history], "s-", label="valid")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_eval(args):
    from . import checkpoint, data
    from ..backends import get_backend
    from .ngram import ngram_perplexity
    from .train import evaluate_perplexity, evaluation_rows

    ckpt = checkpoint.load(args.checkpoint, backend=get_backend(args.backend))
    if not (args.corpus or ckpt.run.get("settings")):
        raise UsageError("the checkpoint does not name its corpus; give --corpus")
    settings = saved_settings(ckpt, args.checkpoint)
    data_dir = _run_data_dir(ckpt.run, args.data_dir)
    if args.corpus:  # told otherwise: any corpus, if its vocabulary is the checkpoint's
        corpus = data.load_corpus(args.corpus, data_dir, ckpt.run.get("level"), settings["limit"], vocab=ckpt.vocab)
    else:
        corpus = _load_run_corpus(settings, ckpt.run, data_dir, ckpt.vocab)
        _same_corpus(ckpt.run, corpus)
    _check_vocab(corpus, ckpt.vocab, args.allow_vocab_mismatch)
    corpus = _split(corpus, settings)
    ids = corpus[args.split]
    stateful = settings["batching"] == "sequential"
    windows = settings["batching"] == "d2l-windows"
    time_size = settings["time_size"]
    rows = evaluation_rows(ids, time_size, stateful=stateful, split=f"the {args.split} split")
    ppl = evaluate_perplexity(ckpt.model, ids, settings["batch_size"] if windows else rows, time_size, stateful,
                              windows)
    unk = ""
    if args.allow_vocab_mismatch:
        unk = f", {float((ids == ckpt.vocab.unk).mean()) if ckpt.vocab.unk is not None else 0.0:.2%} of them <unk>"
    print(f"{args.checkpoint}: {args.split} perplexity {ppl:.2f} ({len(ids)} tokens{unk})")
    for n in args.ngram:
        base = ngram_perplexity(corpus["train"], ids, n, len(corpus.vocab))
        print(f"{n}-gram baseline (add-one smoothing): {args.split} perplexity {base:.2f}")
    return 0


def cmd_generate(args):
    from . import checkpoint
    from ..backends import get_backend
    from .generate import generate

    ckpt = checkpoint.load(args.checkpoint, backend=get_backend(args.backend))
    text = generate(ckpt.model, ckpt.vocab, args.prefix, args.length, args.temperature, args.top_k, args.greedy,
                    not args.allow_unk, ckpt.run.get("level", "word"), args.seed)
    print(text)
    return 0


def _log(message):
    if distributed.current().rank > 0:  # under mpiexec, one log: rank 0's
        return
    print(message, file=sys.stderr, flush=True)


def _write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2))


def main(argv=None):
    from ..backends import BackendNotAvailable
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import TrainingDiverged, TrainingInterrupted

    prog = "rnncore"

    comm = distributed.current

    def report(kind, exc, agreed=False):
        """Under mpiexec: what all ranks agreed on (divergence, a stop) is told by rank 0 alone;
        any other error by the rank that met it, naming it. A rank other than 0 waits a moment
        first: if rank 0 met the same error (bad options), its abort ends this rank unheard."""
        where = ""
        if comm().size > 1:
            if comm().rank > 0 and agreed:
                return
            if comm().rank > 0:
                time.sleep(1)
                where = f" (rank {comm().rank} of {comm().size})"
        print(f"{getattr(exc, 'prog', None) or prog}: {kind}{where}: {' '.join(str(exc).split())}", file=sys.stderr)

    def fail(status):
        """An error not every rank agreed on: the others may wait in a collective forever, so
        under mpiexec the whole job ends."""
        if comm().size > 1:
            sys.stderr.flush()
            comm().abort(status)
        return status

    def agreed(status):
        """An end all ranks reached together: none exits (which makes mpiexec end the others)
        before rank 0 has told it."""
        sys.stderr.flush()
        comm().barrier()
        return status

    try:
        args = build_parser().parse_args(argv)
        prog = f"rnncore {args.command}"
        if hasattr(args, "run"):  # a command of its own module (COMMAND_MODULES)
            return args.run(args)
        command = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate}.get(args.command)
        if command is None:
            from . import bench

            return bench.run(args)
        return command(args)
    except (UsageError, BackendNotAvailable, CheckpointError, DataError, ValueError, KeyError, OSError) as exc:
        if os.environ.get("RNNCORE_DEBUG"):
            raise
        report("error", exc)
        return fail(2)
    except TrainingDiverged as exc:  # all ranks see the same reduced loss: they stop together
        report("error", exc, agreed=True)
        return agreed(1)
    except TrainingInterrupted as exc:  # the ranks agreed on the iteration to stop at
        report("stopped", exc, agreed=True)
        return agreed(128 + exc.signal)
    except KeyboardInterrupt:
        report("stopped", "interrupted")
        return fail(128 + signal.SIGINT)
    except Exception as exc:  # a bug of ours: still one line, and the way to see more
        if os.environ.get("RNNCORE_DEBUG"):
            raise
        report("internal error", f"{type(exc).__name__}: {exc} (set RNNCORE_DEBUG=1 for the traceback)")
        return fail(1)


if __name__ == "__main__":
    sys.exit(main())
