"""Runs that never lose data: one writer per checkpoint, no clobbering, loading that is bounded
and total (a fuzz test), consistency checks, resume from anywhere, SIGTERM, kill -9 during saves.

Everything trains a tiny LSTM on a small generated text on the NumPy backend."""
import contextlib
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from rnncore.app import checkpoint, data
from rnncore.app.cli import main, saved_settings
from rnncore.app.train import last_checkpoint_path
from rnncore.models import build_model


def write_book(path, lines=100, words=30, seed=0):
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(words)]
    path.write_text("\n".join(" ".join(rng.choice(vocab, size=12)) for _ in range(lines)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def book(tmp_path):
    return write_book(tmp_path / "book.txt")


def tiny(book, ckpt, *extra):
    return ["train", "--corpus", book, "--wordvec", "8", "--hidden", "8", "--batch-size", "4", "--time-size", "5",
            "--lr", "1", "--epochs", "1", "--backend", "numpy", "--quiet", "--checkpoint", ckpt, *extra]


def resume(ckpt, *extra):
    return ["train", "--checkpoint", ckpt, "--resume", "--backend", "numpy", "--quiet", *extra]


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def start(args, cwd):
    """The command in a process of its own (stderr piped, line by line)."""
    return subprocess.Popen([sys.executable, "-m", "rnncore.app.cli", *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_line(proc, prefix):
    for line in proc.stderr:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"the run ended (status {proc.wait()}) without a line starting {prefix!r}")


def wait_for_a_save(path, proc, timeout=60):
    """Until ``proc`` has replaced ``path`` (each save is a new file) or ended."""
    def identity():
        return (path.stat().st_ino, path.stat().st_mtime_ns) if path.exists() else None

    before, deadline = identity(), time.monotonic() + timeout
    while proc.poll() is None and identity() == before and time.monotonic() < deadline:
        time.sleep(0.002)


def snapshot(*paths):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def part_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# 1. one writer per checkpoint --------------------------------------------------------------
def test_a_run_on_a_locked_checkpoint_is_refused_at_once_and_touches_nothing(book, tmp_path, capsys):
    ckpt = tmp_path / "lm.npz"
    assert run(tiny(book, ckpt), capsys)[0] == 0
    before = snapshot(ckpt, last_checkpoint_path(ckpt))
    (tmp_path / "alias.npz").symlink_to(ckpt)
    with checkpoint.lock(ckpt):
        for args in (tiny(book, ckpt), tiny(book, ckpt, "--overwrite"), resume(ckpt, "--epochs", "2"),
                     tiny(book, tmp_path / "alias.npz", "--overwrite")):
            started = time.perf_counter()
            code, _, err = run(args, capsys)
            assert code == 2 and f"is in use by another rnncore run (pid {os.getpid()}" in err, err
            assert err.startswith("rnncore train: error: ") and err.count("\n") == 1
            assert time.perf_counter() - started < 10  # refused, not waited for
    assert snapshot(*before) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.npz", "book.txt", "lm.last.npz", "lm.npz"]


def test_the_lock_of_a_killed_run_does_not_block(tmp_path):
    ckpt = tmp_path / "lm.npz"
    code = ("import os, sys\nfrom rnncore.app.checkpoint import lock\n"
            "with lock(sys.argv[1]):\n    os.kill(os.getpid(), 9)\n")
    died = subprocess.run([sys.executable, "-c", code, str(ckpt)])
    assert died.returncode == -signal.SIGKILL
    stale = checkpoint.lock_path(ckpt)
    assert stale.read_text().strip().isdigit()  # the dead run's pid, left behind
    with checkpoint.lock(ckpt):
        assert stale.read_text().strip() == str(os.getpid())
    assert not stale.exists()


def test_two_concurrent_runs_one_is_refused_and_sigterm_saves(book, tmp_path, capsys):
    ckpt = tmp_path / "lm.npz"
    first = start(tiny(book, ckpt, "--epochs", "200"), tmp_path)
    try:
        wait_for_line(first, "training ")
        code, _, err = run(tiny(book, ckpt, "--overwrite"), capsys)
        assert code == 2 and f"(pid {first.pid}," in err, err
        time.sleep(0.3)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143
        tail = first.stderr.read().strip().splitlines()[-1]
    finally:
        first.kill()
        first.stderr.close()
    assert tail.startswith("rnncore train: stopped: interrupted at epoch") and "resume with --resume" in tail
    saved = checkpoint.load(last_checkpoint_path(ckpt))
    assert saved.trainer_state["epoch"] + saved.trainer_state["iteration"] > 0
    code, _, err = run(resume(ckpt, "--epochs", str(saved.trainer_state["epoch"] + 1)), capsys)
    assert code == 0, err


# 2. no clobbering ---------------------------------------------------------------------
def test_overwrite_replaces_only_a_checkpoint(book, tmp_path, capsys):
    notes = tmp_path / "notes.npz"
    notes.write_text("my notes")
    code, _, err = run(tiny(book, notes, "--overwrite"), capsys)
    assert code == 2 and "notes.npz is not an rnncore checkpoint; --overwrite replaces only checkpoints" in err
    assert notes.read_text() == "my notes"


@pytest.mark.parametrize("clash, message", [
    (lambda t: ["--metrics", t / "lm.npz"], "--checkpoint and --metrics are the same file"),
    (lambda t: ["--metrics", t / "sub" / ".." / "lm.npz"], "--checkpoint and --metrics are the same file"),
    (lambda t: ["--metrics", t / "lm.last.npz"], "(--checkpoint's .last) and --metrics are the same file"),
    (lambda t: ["--metrics", t / "m.json", "--plot", t / "m.json"], "--metrics and --plot are the same file"),
    (lambda t: ["--checkpoint", t / "book.txt"], "--checkpoint and the corpus are the same file"),
    (lambda t: ["--metrics", _hard_link(t / "book.txt", t / "book.json")], "--metrics and the corpus are the same"),
], ids=["metrics=checkpoint", "another-spelling", "metrics=last", "plot=metrics", "checkpoint=corpus",
        "hard-link-to-corpus"])
def test_every_file_a_run_touches_is_its_own(clash, message, book, tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    args = tiny(book, tmp_path / "lm.npz", *clash(tmp_path))
    before = sorted(tmp_path.iterdir())
    code, _, err = run(args, capsys)
    assert code == 2 and message in err, err
    assert sorted(tmp_path.iterdir()) == before and book.read_text().startswith("w")


def _hard_link(target, link):
    os.link(target, link)
    return link


@pytest.mark.parametrize("option", ["--checkpoint", "--metrics", "--plot", "--corpus"])
def test_a_directory_given_as_a_file_is_refused_up_front(option, book, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    code, _, err = run(tiny(book, tmp_path / "lm.npz", option, folder), capsys)
    assert code == 2 and f"{folder} is a directory" in err, err
    assert not (tmp_path / "lm.npz").exists() and list(folder.iterdir()) == []


# 3. loading is bounded and total ---------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real resumable checkpoint with everything in it: Adam's moments, carried states, run record."""
    folder = tmp_path_factory.mktemp("trained")
    book = write_book(folder / "book.txt", lines=40)
    ckpt = folder / "lm.npz"
    assert main([str(a) for a in tiny(book, ckpt, "--optimizer", "adam", "--lr", "0.01", "--layers", "2")]) == 0
    return last_checkpoint_path(ckpt)


def members_of(blob):
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def zip_of(members, deflated=()):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, content in members.items():
            z.writestr(name, content, zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED)
    return buffer.getvalue()


def npy(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(shape, descr="<f4", data=b"\0" * 16):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def with_members(good, deflated=(), **changes):
    """The checkpoint with members replaced (bytes) or removed (None); names without '.npy'."""
    members = members_of(good)
    for name, content in changes.items():
        members.pop(name + ".npy", None)
        if content is not None:
            members[name + ".npy"] = content
    return zip_of(members, {n + ".npy" for n in deflated})


def with_meta(good, edit):
    meta = json.loads(np.load(io.BytesIO(members_of(good)["meta.npy"])).item())
    meta = edit(meta)
    return with_members(good, meta=npy(np.array(json.dumps(meta))))


def setting(*path_value):
    *path, value = path_value

    def edit(meta):
        node = meta
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return meta

    return edit


_DELETE = object()


def crafted(good):
    """(name, bytes, whether it should load) for files made to break the loader."""
    params = sorted(n[:-4] for n in members_of(good) if n.startswith("param"))
    tokens = json.loads(np.load(io.BytesIO(members_of(good)["meta.npy"])).item())["vocab"]["tokens"]
    V, D = np.load(io.BytesIO(members_of(good)["param0.npy"])).shape
    refused = [
        ("empty file", b""),
        ("a pickle", pickle.dumps({"meta": 1})),
        ("a single .npy", npy(np.zeros(3))),
        ("huge declared shape", with_members(good, param0=npy_header((10**6, 10**6)))),
        ("huge declared 1-d shape", with_members(good, param0=npy_header((2**62,)))),
        ("float64 weights", with_members(good, param0=npy(np.zeros((V, D))))),
        ("int32 weights", with_members(good, param0=npy(np.zeros((V, D), np.int32)))),
        ("big-endian weights", with_members(good, param0=npy(np.zeros((V, D), ">f4")))),
        ("weights in Fortran order", with_members(good, param0=npy(np.asfortranarray(np.zeros((V, D), "f4"))))),
        ("transposed weights", with_members(good, param0=npy(np.zeros((D, V), "f4")))),
        ("object weights (pickle)", with_members(good, param0=npy(np.array([{}, 1], dtype=object), True))),
        ("object meta (pickle)", with_members(good, meta=npy(np.array({"format": 1}, dtype=object), True))),
        ("meta a float array", with_members(good, meta=npy(np.zeros(4)))),
        ("meta not JSON", with_members(good, meta=npy(np.array("{not json")))),
        ("meta nested too deep", with_members(good, meta=npy(np.array("[" * 100_000)))),
        ("meta a list", with_meta(good, lambda m: [m])),
        ("zip bomb weights", with_members(good, deflated=["param0"], param0=npy(np.zeros(5_000_000, "f4")))),
        ("no meta", with_members(good, meta=None)),
        ("half a carried state", with_members(good, **{"state0.c": None})),
        ("a carried state of another size", with_members(good, **{"state0.h": npy(np.zeros((4, 9), "f4"))})),
        ("part of Adam's moments", with_members(good, **{"opt.m0": None})),
        ("vocabulary one token short", with_meta(good, setting("vocab", "tokens", tokens[:-1]))),
        ("vocabulary with a repeat", with_meta(good, setting("vocab", "tokens", tokens[:-1] + tokens[:1]))),
        ("vocabulary of numbers", with_meta(good, setting("vocab", "tokens", list(range(len(tokens)))))),
        ("another format", with_meta(good, setting("format", "rnncore-checkpoint-0"))),
        ("no trainer entry", with_meta(good, setting("trainer", _DELETE))),
        ("huge num_layers", with_meta(good, setting("model", "num_layers", 10**9))),
        ("huge hidden size", with_meta(good, setting("model", "hidden_size", 10**9))),
        ("no cell", with_meta(good, setting("model", "cell", _DELETE))),
        ("unknown cell", with_meta(good, setting("model", "cell", "transformer"))),
        ("float16 model", with_meta(good, setting("model", "dtype", "float16"))),
        ("tied weights of two sizes", with_meta(good, lambda m: setting("model", "wordvec_size", D + 1)(
            setting("model", "tie_weights", True)(m)))),
        ("dropout 1.5", with_meta(good, setting("model", "dropout", 1.5))),
        ("epoch as text", with_meta(good, setting("trainer", "epoch", "1"))),
        ("negative iteration", with_meta(good, setting("trainer", "iteration", -1))),
        ("history of numbers", with_meta(good, setting("trainer", "history", [1, 2]))),
        ("foreign generator state", with_meta(good, setting("trainer", "rng", {"bit_generator": "MT19937"}))),
        ("no batch position", with_meta(good, setting("trainer", "batches", {}))),
        ("unknown optimizer", with_meta(good, setting("optimizer", "type", "Lion"))),
        ("negative learning rate", with_meta(good, setting("optimizer", "lr", -1))),
        ("hidden size as text (settings)", with_meta(good, setting("run", "settings", "hidden", "abc"))),
        ("zero batch size (settings)", with_meta(good, setting("run", "settings", "batch_size", 0))),
        ("tie as text (settings)", with_meta(good, setting("run", "settings", "tie", "yes"))),
        ("dropout 2 (settings)", with_meta(good, setting("run", "settings", "dropout", 2))),
        ("unknown level", with_meta(good, setting("run", "level", "bytes"))),
        ("seed as text", with_meta(good, setting("run", "seed", "0"))),
        ("corpus record of numbers", with_meta(good, setting("run", "corpus", "files", [1]))),
    ]
    refused += [(f"no {name}", with_members(good, **{name: None})) for name in params]
    for v in ("30", -1, 0, 10**12, 1.5, True, None):
        refused.append((f"vocab_size {v!r}", with_meta(good, setting("model", "vocab_size", v))))
    loads = [
        ("a huge member it does not need", with_members(good, junk=npy_header((10**6, 10**6)))),
        ("a zip bomb it does not need", with_members(good, deflated=["junk"], junk=npy(np.zeros(5_000_000, "f4")))),
        ("3000 members it does not need", with_members(good, **{f"x{k}": b"" for k in range(3000)})),
    ]
    return [(name, blob, False) for name, blob in refused] + [(name, blob, True) for name, blob in loads]


def fuzzed(good, seed=0):
    """Random truncations and byte flips."""
    rng = random.Random(seed)
    cases = [(f"truncated to {n}", good[:n], None) for n in sorted(rng.sample(range(len(good)), 100))]
    for _ in range(150):
        at, bit = rng.randrange(len(good)), 1 << rng.randrange(8)
        cases.append((f"bit {bit} of byte {at} flipped", good[:at] + bytes([good[at] ^ bit]) + good[at + 1:], None))
    return cases


def load_fully(path):
    """What eval, generate and resume read of a checkpoint: the model and states, and the settings."""
    ckpt = checkpoint.load(path)
    saved_settings(ckpt, path)
    return ckpt


@pytest.fixture(scope="module")
def crafted_cases(trained):
    return crafted(trained.read_bytes())


def test_malformed_checkpoints_are_refused_in_bounded_memory(trained, crafted_cases, tmp_path):
    """Hundreds of broken files: each either loads or raises CheckpointError (never anything else),
    and loading never takes more memory than a small multiple of the file's size."""
    cases = crafted_cases + fuzzed(trained.read_bytes())
    assert len(cases) > 300
    path = tmp_path / "case.npz"
    for name, blob, _ in cases:  # unmeasured first: the modules a path imports on its first use (the
        path.write_bytes(blob)  # option parser, error formatting: ~27 MB) are not the file's doing
        with contextlib.suppress(checkpoint.CheckpointError):
            load_fully(path)
    tracemalloc.start()
    try:
        for name, blob, should_load in cases:
            path.write_bytes(blob)
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            try:
                load_fully(path)
                loaded = True
            except checkpoint.CheckpointError as exc:
                loaded = False
                assert str(path) in str(exc), (name, exc)
            except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
                pytest.fail(f"{name}: {type(exc).__name__}: {exc}")
            peak = tracemalloc.get_traced_memory()[1] - before
            assert peak < 10 * len(blob) + 2**20, f"{name}: {peak} bytes for a file of {len(blob)}"
            assert should_load in (None, loaded), f"{name}: {'loaded' if loaded else 'refused'}"
    finally:
        tracemalloc.stop()


def test_members_may_not_claim_more_bytes_than_the_file_holds(trained):
    """Overlapping members (one's data holding another) could make the loader read more than the
    file holds; the archive counts what it reads."""
    with checkpoint._open(trained) as archive:
        archive.unread = 100
        with pytest.raises(ValueError, match="its members claim more bytes than the file holds"):
            archive.array("param0", lambda name, shape, dtype: None)


@pytest.mark.parametrize("command, case", [("generate", "truncated"), ("eval", "huge declared shape"),
                                           ("generate", "object weights (pickle)"), ("eval", "vocab_size '30'"),
                                           ("generate", "zip bomb weights")])
def test_malformed_checkpoints_through_the_command_line(command, case, trained, crafted_cases, tmp_path):
    good = trained.read_bytes()
    blob = good[: len(good) // 3] if case == "truncated" else next(b for n, b, _ in crafted_cases if n == case)
    (tmp_path / "bad.npz").write_bytes(blob)
    done = subprocess.run([sys.executable, "-m", "rnncore.app.cli", command, "--checkpoint", "bad.npz"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"rnncore {command}: error: bad.npz ") and done.stderr.count("\n") == 1


def test_param_shapes_is_what_the_model_has():
    for cell in ("rnn", "lstm", "gru"):
        for layers, tie in ((1, False), (2, True), (3, False)):
            config = dict(vocab_size=11, wordvec_size=6, hidden_size=6 if tie else 5, cell=cell, num_layers=layers,
                          dropout=0.0, tie_weights=tie, dtype="float32")
            model = build_model(config, backend="numpy")
            assert checkpoint.param_shapes(config) == [tuple(p.shape) for p in model.params]


# 4. consistency ---------------------------------------------------------------------------
def test_a_vocabulary_that_does_not_fit_the_model_is_refused(trained, tmp_path):
    good = trained.read_bytes()
    tokens = json.loads(np.load(io.BytesIO(members_of(good)["meta.npy"])).item())["vocab"]["tokens"]
    (tmp_path / "bad.npz").write_bytes(with_meta(good, setting("vocab", "tokens", tokens + ["extra"])))
    with pytest.raises(checkpoint.CheckpointError, match=f"its vocabulary has {len(tokens) + 1} tokens, the model "
                                                         f"{len(tokens)}"):
        checkpoint.load(tmp_path / "bad.npz")


def test_eval_on_a_corpus_of_another_vocabulary_stops_unless_told(book, tmp_path, capsys):
    ckpt = tmp_path / "lm.npz"
    assert run(tiny(book, ckpt), capsys)[0] == 0
    other = write_book(tmp_path / "other.txt", words=40, seed=1)  # w30..w39 are new
    code, _, err = run(["eval", "--checkpoint", ckpt, "--corpus", other, "--backend", "numpy"], capsys)
    assert code == 2 and "the corpus's vocabulary differs from the checkpoint's: 10 of its" in err, err
    assert "--allow-vocab-mismatch" in err
    code, out, err = run(["eval", "--checkpoint", ckpt, "--corpus", other, "--backend", "numpy", "--ngram", "",
                          "--allow-vocab-mismatch"], capsys)
    assert code == 0, err
    known = set(checkpoint.load(ckpt).vocab.idx_to_token)
    test_tokens = _test_split(other.read_text())
    unknown = sum(t not in known or t == "<unk>" for t in test_tokens) / len(test_tokens)
    assert f"({len(test_tokens)} tokens, {unknown:.2%} of them <unk>)" in out, out
    assert unknown > 0.1


def _test_split(text):
    """The last 5% of the words (and newlines), counted here without rnncore's splitter."""
    tokens = [t for line in text.splitlines() for t in line.split() + ["<eos>"]]
    return tokens[int(len(tokens) * 0.9) + int(len(tokens) * 0.05):]


# 5. resumable from anywhere ------------------------------------------------------------------
def test_resume_and_eval_from_another_folder_use_the_runs_corpus(book, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(tiny("book.txt", "runs/lm.npz"), capsys)[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(resume("../runs/lm.npz", "--epochs", "2"), capsys)
    assert code == 0 and f"on {book} (" in err, err
    code, out, err = run(["eval", "--checkpoint", "../runs/lm.npz", "--backend", "numpy", "--ngram", ""], capsys)
    assert code == 0 and "test perplexity" in out, err


def test_a_changed_or_missing_corpus_is_named(book, tmp_path, capsys):
    ckpt = tmp_path / "lm.npz"
    assert run(tiny(book, ckpt), capsys)[0] == 0
    text = book.read_text()
    book.write_text(text.replace("w1 ", "w2 ", 1))
    for args in (resume(ckpt, "--epochs", "2"), ["eval", "--checkpoint", ckpt, "--backend", "numpy"]):
        code, _, err = run(args, capsys)
        assert code == 2 and f"the corpus changed since this run was trained on it: {book} no longer" in err, err
    code, _, err = run(["eval", "--checkpoint", ckpt, "--backend", "numpy", "--corpus", book, "--ngram", ""], capsys)
    assert code == 0, err  # told to: the same vocabulary, so it evaluates
    book.unlink()
    code, _, err = run(resume(ckpt, "--epochs", "2"), capsys)
    assert code == 2 and f"the corpus this run was trained on, {book}, is not there any more" in err, err


def test_eval_finds_the_data_dir_the_run_was_trained_with(shared_data, tmp_path, capsys, monkeypatch):
    own = tmp_path / "data" / "timemachine"
    own.mkdir(parents=True)
    (own / "timemachine.txt").write_bytes((shared_data / "timemachine" / "timemachine.txt").read_bytes())
    ckpt = tmp_path / "tm.npz"
    args = ["train", "--corpus", "timemachine", "--data-dir", tmp_path / "data", "--limit", "3000", "--hidden", "8",
            "--wordvec", "8", "--batch-size", "8", "--time-size", "8", "--epochs", "1", "--backend", "numpy",
            "--quiet", "--checkpoint", ckpt]
    assert run(args, capsys)[0] == 0
    monkeypatch.setenv("RNNCORE_DATA_DIR", str(tmp_path / "empty"))  # the default would have to download
    monkeypatch.chdir(tmp_path / "data")
    code, out, err = run(["eval", "--checkpoint", ckpt, "--backend", "numpy", "--ngram", "1"], capsys)
    assert code == 0 and "test perplexity" in out, err


def test_limit_applies_to_text_corpora(book):
    corpus = data.load_corpus(str(book), limit=100)
    tokens = [t for line in book.read_text().splitlines() for t in line.split() + ["<eos>"]]
    assert corpus.vocab.decode(corpus["train"]) == tokens[:100]
    assert set(corpus.vocab.idx_to_token) == set(tokens[:100]) | {"<unk>"}
    assert len(corpus["test"]) == len(_test_split(book.read_text()))


def test_leftover_part_files_of_a_dead_run_are_removed_by_the_next(book, tmp_path, capsys):
    ckpt = tmp_path / "lm.npz"
    assert run(tiny(book, ckpt), capsys)[0] == 0
    ours = [".lm.npz.k3j_x9a2.part", ".lm.last.npz.00000000.part"]
    others = [".lm.npz.other.npz.abcdefgh.part", ".book.txt.abcdefgh.part", ".lm.npz.short.part"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    assert run(resume(ckpt, "--epochs", "2"), capsys)[0] == 0
    assert part_files(tmp_path) == sorted(others)


def test_kill_9_during_saves_leaves_a_loadable_checkpoint_and_an_exact_resume(book, tmp_path, capsys):
    """A run saving every iteration is killed at random moments, ten times, each run resuming
    from what the last one left: every kill leaves checkpoints that load, and the run that
    finally completes ends exactly where an uninterrupted one does."""
    args = ["--epochs", "3", "--optimizer", "adam", "--lr", "0.01", "--dropout", "0.2"]
    straight = tmp_path / "straight" / "lm.npz"
    assert run(tiny(book, straight, *args), capsys)[0] == 0

    ckpt, last = tmp_path / "killed" / "lm.npz", tmp_path / "killed" / "lm.last.npz"
    rng, kills = random.Random(0), 0
    for _ in range(10):
        saving = ["--save-every", "1"]
        proc = start(resume(ckpt, *saving) if last.exists() else tiny(book, ckpt, *args, *saving, "--overwrite"),
                     tmp_path)
        try:
            wait_for_a_save(last, proc)
            time.sleep(rng.uniform(0, 0.05))
            kills += proc.poll() is None
            proc.kill()
            proc.wait()
        finally:
            proc.stderr.close()
        for path in (ckpt, last):
            if path.exists():
                checkpoint.load(path)
    assert kills >= 8
    code, _, err = run(resume(ckpt), capsys)
    assert code == 0, err
    assert part_files(ckpt.parent) == []
    a, b = checkpoint.load(last_checkpoint_path(straight)), checkpoint.load(last)
    for x, y in zip(a.model.params, b.model.params):
        np.testing.assert_array_equal(x, y)
    # the same losses, summed in other groups (a save reads them back): equal to the last bits or so
    assert b.trainer_state["history"] == [{k: pytest.approx(v, rel=1e-12) for k, v in r.items()}
                                          for r in a.trainer_state["history"]]


def test_a_checkpoint_made_on_a_gpu_resumes_on_the_cpu(trained, tmp_path, capsys):
    """The cupy backend saves its generator as CuPy's XORWOW state; the checkpoint loads, and a
    resume on numpy re-seeds from it with a warning instead of refusing or crashing."""
    gpu_state = {"bit_generator": "cupy.XORWOW", "size": 64, "state": "AAECAwQFBgc="}
    ckpt = tmp_path / "lm.npz"
    last_checkpoint_path(ckpt).write_bytes(with_meta(trained.read_bytes(), setting("trainer", "rng", gpu_state)))
    assert checkpoint.load(last_checkpoint_path(ckpt)).trainer_state["rng"] == gpu_state
    with pytest.warns(RuntimeWarning, match="cupy.XORWOW.*re-seeded deterministically"):
        code, _, err = run(resume(ckpt, "--epochs", "2"), capsys)
    assert code == 0, err
