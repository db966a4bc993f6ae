"""The ``rnncore`` command: train, eval, generate, bench, sine.

Bad options, missing files and corrupt checkpoints print one line on stderr and exit
with status 2; a diverged run exits 1; Ctrl-C saves the training state and exits 130.
"""
import argparse
import importlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from .options import positive

PRESETS = {
    "ch05": dict(corpus="ptb", limit=1000, model="simple", wordvec=100, hidden=100, batch_size=10, time_size=5,
                 lr=0.1, epochs=100, max_grad=0, lr_decay=0, batching="sequential", eval_interval=19),
    "ch06-rnnlm": dict(corpus="ptb", model="rnnlm", wordvec=100, hidden=100, batch_size=20, time_size=35, lr=20.0,
                       epochs=4, max_grad=0.25, lr_decay=0, batching="sequential"),
    "ch06-better": dict(corpus="ptb", model="better", wordvec=650, hidden=650, layers=2, dropout=0.5, tie=True,
                        batch_size=20, time_size=35, lr=20.0, epochs=40, max_grad=0.25, lr_decay=4.0,
                        batching="sequential"),
    # d2l's epoch is 10 batches of overlapping windows over 10k characters; ours is one
    # random-offset pass over the whole training text (about 4.7 batches of 1024), so the
    # d2l presets run 2x d2l's epoch count to make about as many updates (1000 and 500).
    "d2l-rnn": dict(corpus="timemachine", level="char", model="simple", wordvec=32, hidden=32, batch_size=1024,
                    time_size=32, lr=1.0, epochs=200, max_grad=1.0, lr_decay=0, batching="random", eval_interval=5),
    "d2l-lstm": dict(corpus="timemachine", level="char", model="rnnlm", wordvec=32, hidden=32, batch_size=1024,
                     time_size=32, lr=4.0, epochs=100, max_grad=1.0, lr_decay=0, batching="random", eval_interval=5),
}
DEFAULTS = dict(corpus="ptb", level=None, limit=None, model="rnnlm", wordvec=100, hidden=100, layers=1, dropout=0.0,
                tie=False, batch_size=20, time_size=35, lr=20.0, optimizer="sgd", epochs=4, max_grad=0.25,
                lr_decay=0, batching="sequential", eval_interval=20, dtype="float32")
MODEL_CELLS = {"simple": "rnn", "rnnlm": "lstm", "better": "lstm"}
# what --model brings with it (a preset or explicit options still override)
MODEL_DEFAULTS = {"simple": {}, "rnnlm": {}, "better": dict(wordvec=650, hidden=650, layers=2, dropout=0.5, tie=True)}
# settings that a resumed run may change; the rest are the checkpoint's
RESUME_MAY_CHANGE = {"epochs", "lr", "max_grad", "lr_decay", "eval_interval"}


# each module has register(subparsers, add_common_options), which adds its parser and sets
# ``run`` (args -> exit status) as a default
COMMAND_MODULES = ("sine",)


class UsageError(Exception):
    """A bad option or argument: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _orders(text):
    """'1,2,3' -> [1, 2, 3]; '' -> []."""
    try:
        orders = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}") from None
    if any(n < 1 for n in orders):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return orders


def _common(p):
    p.add_argument("--backend", help="numpy, numba, cupy or auto (default: $RNNCORE_BACKEND, else auto)")
    p.add_argument("--data-dir", help="folder holding (or to cache) the corpora (default: $RNNCORE_DATA_DIR, "
                   "else ~/.cache/rnncore)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, batch order and dropout (default 0)")


def build_parser():
    parser = _Parser(prog="rnncore", description="Recurrent language models on NumPy, Numba or CuPy.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a language model with truncated BPTT",
                       description="Train a language model. A --preset sets the book's or d2l's settings; any "
                                   "option given beside it overrides the preset.")
    _common(t)
    t.add_argument("--preset", choices=sorted(PRESETS), help="a known configuration (see README)")
    t.add_argument("--corpus", help="ptb, timemachine, or a UTF-8 text file (default ptb)")
    t.add_argument("--level", choices=["word", "char"], help="tokens are words or characters (default: word; "
                   "char for timemachine)")
    t.add_argument("--limit", type=positive(int), help="train on the first LIMIT tokens only (vocabulary too)")
    t.add_argument("--model", choices=sorted(MODEL_CELLS), help="simple (tanh RNN), rnnlm (LSTM), better "
                   "(2 LSTMs of 650, dropout 0.5, tied weights); its sizes can be overridden")
    t.add_argument("--wordvec", type=positive(int), help="embedding size")
    t.add_argument("--hidden", type=positive(int), help="hidden size")
    t.add_argument("--layers", type=positive(int), help="number of recurrent layers")
    t.add_argument("--dropout", type=float, help="dropout ratio in [0, 1)")
    t.add_argument("--tie", action=argparse.BooleanOptionalAction, default=None,
                   help="share the embedding with the output layer (needs --wordvec == --hidden)")
    t.add_argument("--batch-size", type=positive(int), help="rows per batch")
    t.add_argument("--time-size", type=positive(int), help="truncation length T of BPTT")
    t.add_argument("--batching", choices=["sequential", "random"],
                   help="sequential: the book's stateful layout; random: d2l's random-offset windows")
    t.add_argument("--optimizer", choices=["sgd", "momentum", "adam"], help="default sgd")
    t.add_argument("--lr", type=positive(float), help="learning rate")
    t.add_argument("--max-grad", type=float, help="clip the global gradient norm to this (0: no clipping)")
    t.add_argument("--lr-decay", type=float, help="divide the learning rate by this when validation perplexity "
                   "does not improve (0: never)")
    t.add_argument("--epochs", type=positive(int), help="passes over the training split")
    t.add_argument("--eval-interval", type=positive(int), help="iterations between progress reports")
    t.add_argument("--dtype", choices=["float32", "float64"], help="parameter precision (default float32)")
    t.add_argument("--checkpoint", help="best model goes here, resumable state beside it as NAME.last.npz "
                   "(default runs/<preset or model>.npz)")
    t.add_argument("--resume", action="store_true", help="continue from the .last checkpoint of --checkpoint "
                   "(only --epochs, --lr, --max-grad, --lr-decay, --eval-interval may change)")
    t.add_argument("--overwrite", action="store_true", help="start afresh even if --checkpoint holds a run")
    t.add_argument("--save-every", type=positive(int), help="also save the resumable state every N iterations")
    t.add_argument("--metrics", help="write per-epoch perplexities and the test perplexity as JSON here")
    t.add_argument("--plot", help="write the perplexity curve as a PNG here (needs matplotlib)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(seed=None)  # 0, or the resumed run's own (see _train_seed)

    e = sub.add_parser("eval", help="perplexity of a checkpoint, beside n-gram baselines")
    _common(e)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", choices=["train", "valid", "test"], default="test")
    e.add_argument("--corpus", help="default: the corpus the checkpoint was trained on")
    e.add_argument("--ngram", type=_orders, default="1,2,3",
                   help="orders of the add-one n-gram baselines, e.g. 1,2 ('' for none)")

    g = sub.add_parser("generate", help="sample text from a checkpoint")
    _common(g)
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--prefix", default="", help="text to continue")
    g.add_argument("--length", type=positive(int), default=100, help="tokens to generate (default 100)")
    g.add_argument("--temperature", type=positive(float), default=1.0, help="below 1 sharpens, above 1 flattens")
    g.add_argument("--top-k", type=positive(int), help="draw only from the K most likely tokens")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
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
                raise UsageError(f"rnncore train: {option} cannot change when resuming "
                                 f"(the checkpoint was trained with {saved.get(key)!r})")
    settings.update(given)
    if not 0 <= settings["dropout"] < 1:
        raise UsageError(f"rnncore train: --dropout must be in [0, 1), got {settings['dropout']}")
    if settings["tie"] and settings["wordvec"] != settings["hidden"]:
        raise UsageError("rnncore train: --tie needs --wordvec equal to --hidden")
    if not (math.isfinite(settings["max_grad"]) and settings["max_grad"] >= 0):
        raise UsageError(f"rnncore train: --max-grad must be 0 (no clipping) or positive, got {settings['max_grad']}")
    if not (settings["lr_decay"] == 0 or (math.isfinite(settings["lr_decay"]) and settings["lr_decay"] >= 1)):
        raise UsageError(f"rnncore train: --lr-decay must be 0 (never) or at least 1, got {settings['lr_decay']}")
    return settings


def _train_seed(given, resume_from):
    """--seed, 0 by default; a resumed run keeps its own (its weights and batch order came from it)."""
    if resume_from is None:
        return 0 if given is None else given
    saved = resume_from.run.get("seed", 0)
    if given is not None and given != saved:
        raise UsageError(f"rnncore train: --seed cannot change when resuming (the checkpoint was trained with {saved})")
    return saved


def _checkpoint_target(path, resume, overwrite):
    """Refuse to clobber an earlier run, and find out now (not after an epoch) if we cannot write."""
    from .train import last_checkpoint_path

    if not resume and not overwrite and (path.exists() or last_checkpoint_path(path).exists()):
        raise UsageError(f"rnncore train: {path} already holds a run; continue it with --resume, "
                         "or pass --overwrite to start over")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise UsageError(f"rnncore train: cannot write checkpoints to {path.parent} ({exc.strerror})") from exc


def cmd_train(args):
    from . import checkpoint, data
    from .. import optim
    from ..backends import get_backend
    from ..models import RecurrentLM
    from .train import Trainer, evaluate_perplexity, evaluation_rows, last_checkpoint_path

    name = args.preset or args.model or DEFAULTS["model"]
    ckpt_path = Path(args.checkpoint or f"runs/{name}.npz")
    _checkpoint_target(ckpt_path, args.resume, args.overwrite)
    be = get_backend(args.backend)
    resume_from = checkpoint.load(last_checkpoint_path(ckpt_path), backend=be) if args.resume else None
    cfg = train_settings(args, resume_from.run.get("settings") if resume_from else None)
    seed = _train_seed(args.seed, resume_from)
    be.seed(seed)
    corpus = data.load_corpus(cfg["corpus"], args.data_dir, cfg["level"], cfg["limit"],
                              vocab=resume_from.vocab if resume_from else None)
    batches_cls = data.SequentialBatches if cfg["batching"] == "sequential" else data.RandomBatches
    extra = {} if cfg["batching"] == "sequential" else {"seed": seed}
    batches = batches_cls(corpus["train"], cfg["batch_size"], cfg["time_size"], **extra)
    model = resume_from.model if resume_from else RecurrentLM(
        len(corpus.vocab), cfg["wordvec"], cfg["hidden"], cell=MODEL_CELLS[cfg["model"]], num_layers=cfg["layers"],
        dropout=cfg["dropout"], tie_weights=cfg["tie"], backend=be, dtype=cfg["dtype"], seed=seed)
    optimizer = optim.OPTIMIZERS[cfg["optimizer"]](cfg["lr"])
    run = {"settings": cfg, "level": corpus.level, "seed": seed}
    trainer = Trainer(model, optimizer, batches, corpus.vocab, valid_ids=corpus["valid"],
                      max_grad=cfg["max_grad"] or None, eval_interval=cfg["eval_interval"],
                      lr_decay=cfg["lr_decay"] or None, checkpoint_path=ckpt_path, save_every=args.save_every,
                      progress=not args.quiet, run=run)
    if resume_from:
        trainer.resume(resume_from)
        if args.lr is not None:  # the one optimizer setting a resumed run may change
            trainer.optimizer.lr = args.lr
    _log(f"training {args.preset or cfg['model']} on {cfg['corpus']} ({len(corpus['train'])} tokens, "
         f"vocabulary {len(corpus.vocab)}) with the {be.name} backend; checkpoint {ckpt_path}")
    test_rows = evaluation_rows(corpus["test"], cfg["time_size"], stateful=batches.stateful, split="the test split")
    history = trainer.fit(cfg["epochs"])
    best = checkpoint.load(ckpt_path, backend=be).model
    test_ppl = evaluate_perplexity(best, corpus["test"], test_rows, cfg["time_size"], batches.stateful)
    _log(f"test perplexity {test_ppl:.2f} (best checkpoint: {ckpt_path})")
    if args.metrics:
        _write_json(args.metrics, {"settings": cfg, "backend": be.name, "epochs": history, "test_ppl": test_ppl,
                                   "checkpoint": str(ckpt_path)})
    plot_path = args.plot or ckpt_path.with_suffix(".png")
    if _plot_curve(history, trainer.interval_ppl, len(batches), cfg["eval_interval"], plot_path):
        _log(f"perplexity curve: {plot_path}")
    return 0


def _plot_curve(history, interval_ppl, per_epoch, interval, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
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
    return True


def cmd_eval(args):
    from . import checkpoint, data
    from ..backends import get_backend
    from .ngram import ngram_perplexity
    from .train import evaluate_perplexity, evaluation_rows

    ckpt = checkpoint.load(args.checkpoint, backend=get_backend(args.backend))
    settings = ckpt.run.get("settings", {})
    corpus_name = args.corpus or settings.get("corpus")
    if not corpus_name:
        raise UsageError("rnncore eval: the checkpoint does not name its corpus; give --corpus")
    corpus = data.load_corpus(corpus_name, args.data_dir, ckpt.run.get("level"), settings.get("limit"),
                              vocab=ckpt.vocab)
    ids = corpus[args.split]
    stateful = settings.get("batching", "sequential") == "sequential"
    time_size = settings.get("time_size", 35)
    ppl = evaluate_perplexity(ckpt.model, ids, evaluation_rows(ids, time_size, stateful=stateful,
                                                               split=f"the {args.split} split"), time_size, stateful)
    print(f"{args.checkpoint}: {args.split} perplexity {ppl:.2f} ({len(ids)} tokens)")
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
    print(message, file=sys.stderr, flush=True)


def _write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2))


def main(argv=None):
    from ..backends import BackendNotAvailable
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import TrainingDiverged, TrainingInterrupted

    try:
        args = build_parser().parse_args(argv)
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
        message = str(exc) if isinstance(exc, UsageError) else f"error: {exc}"
        print(" ".join(message.split()), file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        print(f"stopped: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line, and the way to see more
        if os.environ.get("RNNCORE_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(set RNNCORE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
