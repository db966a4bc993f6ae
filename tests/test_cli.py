"""The rnncore command end to end: train -> checkpoint -> resume -> eval -> generate, and its errors.

Most runs train a tiny LSTM on a small generated text (``book``); the first test does it on PTB."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import HAS_NUMBA, REPO

from rnncore.app import checkpoint
from rnncore.app.cli import PRESETS, build_parser, main, train_settings


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


SMALL = ["--corpus", "ptb", "--limit", "4000", "--model", "rnnlm", "--wordvec", "16", "--hidden", "16",
         "--batch-size", "4", "--time-size", "10", "--lr", "5", "--quiet"]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_train_resume_eval_generate(backend, shared_data, tmp_path, capsys):
    if backend == "numba" and not HAS_NUMBA:
        pytest.skip("needs numba")
    ckpt = tmp_path / "lm.npz"
    common = ["--backend", backend, "--data-dir", shared_data]
    code, _, err = run(["train", *SMALL, *common, "--epochs", "1", "--checkpoint", ckpt, "--save-every", "40"], capsys)
    assert code == 0, err
    assert "epoch 1 | train ppl" in err and "test perplexity" in err
    assert ckpt.exists() and (tmp_path / "lm.last.npz").exists()

    metrics = tmp_path / "m.json"
    code, _, err = run(["train", *common, "--checkpoint", ckpt, "--resume", "--epochs", "2", "--metrics", metrics,
                        "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(metrics.read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    assert report["epochs"][1]["train_ppl"] < report["epochs"][0]["train_ppl"]
    assert report["settings"]["hidden"] == 16 and report["test_ppl"] > 1

    code, out, err = run(["eval", "--checkpoint", ckpt, *common, "--ngram", "1,2"], capsys)
    assert code == 0, err
    assert "test perplexity" in out and "1-gram baseline" in out and "2-gram baseline" in out

    code, out, err = run(["generate", "--checkpoint", ckpt, "--backend", backend, "--prefix", "the company",
                          "--length", "12", "--top-k", "20", "--seed", "1"], capsys)
    assert code == 0, err
    assert out.startswith("the company") and "<unk>" not in out
    assert len(out.split()) >= 12


def test_a_checkpoint_from_one_backend_generates_on_another(book, tmp_path, capsys):
    ckpt = tmp_path / "lm.npz"
    assert run(["train", "--corpus", book, *TINY, "--epochs", "1", "--checkpoint", ckpt], capsys)[0] == 0
    outs = {run(["generate", "--checkpoint", ckpt, "--backend", be, "--greedy", "--length", "8"], capsys)[1]
            for be in (["numpy", "numba"] if HAS_NUMBA else ["numpy"])}
    assert len(outs) == 1


def test_preset_options_are_overridden_by_explicit_ones():
    args = build_parser().parse_args(["train", "--preset", "ch06-better", "--epochs", "2", "--dropout", "0.1"])
    settings = train_settings(args)
    assert settings["epochs"] == 2 and settings["dropout"] == 0.1
    assert settings["hidden"] == PRESETS["ch06-better"]["hidden"] == 650 and settings["tie"]


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "-1"], "argument --lr: must be a positive finite number, got -1"),
    (["train", "--lr", "nan"], "argument --lr: must be a positive finite number, got nan"),
    (["train", "--lr", "inf"], "argument --lr: must be a positive finite number, got inf"),
    (["generate", "--checkpoint", "x.npz", "--temperature", "nan"], "argument --temperature: must be a positive"),
    (["bench", "--hidden", "0"], "argument --hidden: must be a positive finite number, got 0"),
    (["bench", "--batch", "-1"], "argument --batch: must be a positive finite number, got -1"),
    (["bench", "--repeats", "x"], "argument --repeats: invalid int value: 'x'"),
    (["eval", "--checkpoint", "/no/such.npz", "--ngram", "a"], "argument --ngram: must be comma-separated positive"),
    (["eval", "--checkpoint", "/no/such.npz", "--ngram", "1,0"], "argument --ngram: must be comma-separated positive"),
    (["train", "--preset", "nope"], "invalid choice: 'nope'"),
    (["train", "--dropout", "1.5", "--data-dir", "/nonexistent"], "--dropout must be in [0, 1)"),
    (["train", "--tie", "--wordvec", "10", "--hidden", "20"], "--tie needs --wordvec equal to --hidden"),
    (["train", "--corpus", "/no/such/file.txt"], "--corpus must be ptb, timemachine or a text file"),
    (["train", "--backend", "tpu"], "unknown backend 'tpu'"),
    (["eval", "--checkpoint", "/no/such.npz"], "checkpoint not found: /no/such.npz"),
    (["generate"], "the following arguments are required: --checkpoint"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_usage_is_one_line_and_status_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(args, capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    command = "rnncore" if args[0] == "frobnicate" else f"rnncore {args[0]}"
    assert err.startswith(f"{command}: error: "), err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    code, _, err = run(["generate", "--checkpoint", bad], capsys)
    assert code == 2 and "is not a readable rnncore checkpoint" in err and err.count("\n") == 1
    assert err.startswith(f"rnncore generate: error: {bad} ")


def test_resume_without_a_saved_state(tmp_path, capsys):
    code, _, err = run(["train", "--checkpoint", tmp_path / "x.npz", "--resume"], capsys)
    assert code == 2 and "x.last.npz" in err


def test_sine_prints_k_step_errors(capsys):
    code, out, _ = run(["sine", "--backend", "numpy", "--iterations", "150"], capsys)
    assert code == 0
    rows = [line.split("|") for line in out.splitlines() if line.strip()[:1].isdigit()]
    table = {int(k): (float(a), float(r)) for k, a, r in rows}  # linear AR, RNN
    assert list(table) == [1, 4, 16, 64]
    assert all(table[1][m] < 0.1 and table[64][m] > table[1][m] for m in (0, 1))


def test_console_script_help_explains_options():
    out = subprocess.run([sys.executable, "-m", "rnncore.app.cli", "train", "--help"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0
    for option in ("--preset", "--backend", "--corpus", "--model", "--checkpoint", "--data-dir", "--metrics",
                   "--seed", "--resume"):
        assert option in out.stdout


@pytest.fixture
def book(tmp_path):
    """A small word-level text: 30 words, 100 lines of 12."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    path = tmp_path / "book.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, size=12)) for _ in range(100)) + "\n", encoding="utf-8")
    return path


TINY = ["--model", "rnnlm", "--wordvec", "8", "--hidden", "8", "--batch-size", "4", "--time-size", "5", "--lr", "1",
        "--backend", "numpy", "--quiet"]


def _small_run(tmp_path, book, capsys, *extra):
    ckpt = tmp_path / "lm.npz"
    return ckpt, run(["train", "--corpus", book, *TINY, "--epochs", "1", "--checkpoint", ckpt, *extra], capsys)


@pytest.mark.parametrize("change, message", [
    (["--hidden", "32"], "--hidden cannot change when resuming (the checkpoint was trained with 8)"),
    (["--optimizer", "adam"], "--optimizer cannot change when resuming (the checkpoint was trained with 'sgd')"),
    (["--batch-size", "3"], "--batch-size cannot change when resuming"),
])
def test_resume_refuses_to_change_the_run(change, message, book, tmp_path, capsys):
    ckpt, (code, _, err) = _small_run(tmp_path, book, capsys)
    assert code == 0, err
    code, _, err = run(["train", "--backend", "numpy", "--checkpoint", ckpt, "--resume",
                        "--epochs", "2", *change], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_resume_keeps_the_runs_seed(book, tmp_path, capsys):
    """The weights and batch order came from the first run's seed: another is refused, and
    the resumed run records and reports what it continues."""
    ckpt, (code, _, err) = _small_run(tmp_path, book, capsys, "--seed", "3")
    assert code == 0, err
    code, _, err = run(["train", "--backend", "numpy", "--checkpoint", ckpt, "--resume",
                        "--epochs", "2", "--seed", "5"], capsys)
    assert code == 2 and "--seed cannot change when resuming (the checkpoint was trained with 3)" in err
    code, _, err = run(["train", "--backend", "numpy", "--checkpoint", ckpt, "--resume",
                        "--epochs", "2", "--quiet"], capsys)
    assert code == 0, err
    assert f"training rnnlm (lstm) on {book}" in err
    assert checkpoint.load(ckpt).run["seed"] == 3


def test_resume_may_change_the_learning_rate(book, tmp_path, capsys):
    ckpt, (code, _, err) = _small_run(tmp_path, book, capsys)
    metrics = tmp_path / "m.json"
    code, _, err = run(["train", "--backend", "numpy", "--checkpoint", ckpt, "--resume",
                        "--epochs", "2", "--lr", "0.5", "--metrics", metrics, "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(metrics.read_text())["epochs"][1]["lr"] == 0.5


def test_an_earlier_run_is_not_overwritten_by_accident(book, tmp_path, capsys):
    ckpt, (code, _, _) = _small_run(tmp_path, book, capsys)
    before = ckpt.read_bytes()
    code, _, err = _small_run(tmp_path, book, capsys)[1]
    assert code == 2 and "already holds a run" in err and ckpt.read_bytes() == before
    assert _small_run(tmp_path, book, capsys, "--overwrite")[1][0] == 0


def test_checkpoints_get_the_usual_file_mode(book, tmp_path, capsys):
    import os
    import stat

    ckpt, (code, _, _) = _small_run(tmp_path, book, capsys)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o666 & ~umask


def test_model_better_brings_its_architecture():
    settings = train_settings(build_parser().parse_args(["train", "--model", "better", "--hidden", "64",
                                                          "--wordvec", "64"]))
    assert (settings["layers"], settings["dropout"], settings["tie"], settings["hidden"]) == (2, 0.5, True, 64)


@pytest.mark.parametrize("args, message", [
    (["--max-grad", "-1"], "--max-grad must be 0 (no clipping) or positive"),
    (["--max-grad", "nan"], "--max-grad must be 0"),
    (["--lr-decay", "0.5"], "--lr-decay must be 0 (never) or at least 1"),
])
def test_clipping_and_decay_are_checked(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", *args], capsys)
    assert code == 2 and message in err


def test_an_unwritable_checkpoint_folder_is_found_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run(["train", "--checkpoint", blocker / "sub" / "lm.npz"], capsys)
    assert code == 2 and f"cannot write to {blocker / 'sub'}" in err


def test_an_npy_file_is_not_a_checkpoint(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.arange(3))
    code, _, err = run(["generate", "--checkpoint", tmp_path / "x.npy"], capsys)
    assert code == 2 and "is not a readable rnncore checkpoint" in err


def test_a_validation_split_too_short_for_random_windows_stops_before_training(tmp_path, capsys):
    """Random windows start at an offset below T, so evaluating them needs 2T + 1 tokens: a
    split with fewer is refused up front, by name, not after an epoch."""
    text = tmp_path / "tiny.txt"
    text.write_text("abcdefghij" * 110, encoding="utf-8")  # 1100 characters: the validation split gets 55
    code, _, err = run(["train", "--corpus", text, "--level", "char", "--batching", "random", "--time-size", "32",
                        "--batch-size", "4", "--hidden", "8", "--wordvec", "8", "--backend", "numpy", "--quiet",
                        "--checkpoint", tmp_path / "t.npz"], capsys)
    assert code == 2 and "the validation split of" in err and "it needs at least 65" in err, err
    assert "epoch" not in err and not (tmp_path / "t.npz").exists()


def test_a_small_text_trains_and_evaluates_with_fewer_rows(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text(" ".join(f"w{i % 37}" for i in range(800)), encoding="utf-8")  # valid: 40 tokens
    code, _, err = run(["train", "--corpus", text, "--model", "simple", "--wordvec", "8", "--hidden", "8",
                        "--batch-size", "2", "--time-size", "5", "--epochs", "1", "--backend", "numpy", "--quiet",
                        "--checkpoint", tmp_path / "t.npz"], capsys)
    assert code == 0, err


# one way of doing each thing -----------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_a_diverging_run_has_the_same_prefix_and_status_1(book, tmp_path, capsys):
    ckpt, (code, _, err) = _small_run(tmp_path, book, capsys, "--lr", "1e30", "--max-grad", "0")
    assert code == 1 and err.splitlines()[-1].startswith("rnncore train: error: the "), err
    assert "became" in err


def test_files_are_written_only_when_asked(book, tmp_path, capsys):
    before = set(tmp_path.iterdir())
    ckpt, (code, _, err) = _small_run(tmp_path, book, capsys)
    assert code == 0, err
    assert set(tmp_path.iterdir()) - before == {ckpt, tmp_path / "lm.last.npz"}
    pytest.importorskip("matplotlib")
    code, _, err = run(["train", "--checkpoint", ckpt, "--resume", "--epochs", "2", "--backend", "numpy", "--quiet",
                        "--plot", tmp_path / "curve.png"], capsys)
    assert code == 0 and (tmp_path / "curve.png").stat().st_size > 1000, err


def test_help_documents_exit_statuses_and_every_option():
    parser = build_parser()
    assert "exit status:" in parser.format_help() and "143  SIGTERM" in parser.format_help()
    commands = next(action for action in parser._actions if action.dest == "command").choices
    for name in ("train", "eval", "generate"):
        for action in commands[name]._actions:
            assert action.help, f"rnncore {name} {action.option_strings} has no help"
    seed = next(a for a in commands["generate"]._actions if "--seed" in a.option_strings)
    assert "sampling" in seed.help and "weights" not in seed.help
    assert "--data-dir" not in commands["generate"].format_help()  # generate reads no corpus


def test_a_gru_trains_saves_resumes_evaluates_and_generates(book, tmp_path, capsys):
    ckpt, (code, _, err) = _small_run(tmp_path, book, capsys, "--cell", "gru")
    assert code == 0 and "training rnnlm (gru)" in err, err
    assert checkpoint.load(ckpt).model.config["cell"] == "gru"
    code, _, err = run(["train", "--checkpoint", ckpt, "--resume", "--epochs", "2", "--backend", "numpy", "--quiet"],
                       capsys)
    assert code == 0, err
    saved = checkpoint.load(tmp_path / "lm.last.npz")
    assert saved.run["settings"]["cell"] == "gru" and saved.trainer_state["epoch"] == 2
    code, _, err = run(["train", "--checkpoint", ckpt, "--resume", "--epochs", "3", "--cell", "lstm"], capsys)
    assert code == 2 and "--cell cannot change when resuming (the checkpoint was trained with 'gru')" in err
    code, out, err = run(["eval", "--checkpoint", ckpt, "--backend", "numpy", "--ngram", ""], capsys)
    assert code == 0 and "test perplexity" in out, err
    code, out, err = run(["generate", "--checkpoint", ckpt, "--backend", "numpy", "--prefix", "w1", "--length", "5"],
                         capsys)
    assert code == 0 and out.startswith("w1 "), err


def test_the_d2l_gru_preset_is_d2l_lstm_with_a_gru():
    gru = train_settings(build_parser().parse_args(["train", "--preset", "d2l-gru"]))
    lstm = train_settings(build_parser().parse_args(["train", "--preset", "d2l-lstm"]))
    assert gru["cell"] == "gru" and lstm["cell"] == "lstm"
    assert {k: v for k, v in gru.items() if k != "cell"} == {k: v for k, v in lstm.items() if k != "cell"}
