"""The rnncore command end to end: train -> checkpoint -> resume -> eval -> generate, and its errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import HAS_NUMBA, REPO

from rnncore import checkpoint
from rnncore.cli import PRESETS, build_parser, main, train_settings


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

    code, out, err = run(["generate", "--checkpoint", ckpt, *common, "--prefix", "the company", "--length", "12",
                          "--top-k", "20", "--seed", "1"], capsys)
    assert code == 0, err
    assert out.startswith("the company") and "<unk>" not in out
    assert len(out.split()) >= 12


def test_a_checkpoint_from_one_backend_generates_on_another(shared_data, tmp_path, capsys):
    ckpt = tmp_path / "lm.npz"
    assert run(["train", *SMALL, "--epochs", "1", "--backend", "numpy", "--data-dir", shared_data,
                "--checkpoint", ckpt], capsys)[0] == 0
    outs = {run(["generate", "--checkpoint", ckpt, "--backend", be, "--greedy", "--length", "8"], capsys)[1]
            for be in (["numpy", "numba"] if HAS_NUMBA else ["numpy"])}
    assert len(outs) == 1


def test_preset_options_are_overridden_by_explicit_ones():
    args = build_parser().parse_args(["train", "--preset", "ch06-better", "--epochs", "2", "--dropout", "0.1"])
    settings = train_settings(args)
    assert settings["epochs"] == 2 and settings["dropout"] == 0.1
    assert settings["hidden"] == PRESETS["ch06-better"]["hidden"] == 650 and settings["tie"]


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "-1"], "argument --lr: must be positive, got -1"),
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


def test_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    code, _, err = run(["generate", "--checkpoint", bad], capsys)
    assert code == 2 and "is not a readable rnncore checkpoint" in err and err.count("\n") == 1


def test_resume_without_a_saved_state(tmp_path, capsys):
    code, _, err = run(["train", "--checkpoint", tmp_path / "x.npz", "--resume"], capsys)
    assert code == 2 and "x.last.npz" in err


def test_sine_prints_k_step_errors(capsys):
    code, out, _ = run(["sine", "--backend", "numpy", "--iterations", "150"], capsys)
    assert code == 0
    rows = [line.split("|") for line in out.splitlines() if line.strip()[:1].isdigit()]
    errors = {int(k): float(v) for k, v in rows}
    assert list(errors) == [1, 4, 16, 64]
    assert errors[1] < 0.1 and errors[64] > errors[1]


def test_console_script_help_explains_options():
    out = subprocess.run([sys.executable, "-m", "rnncore.cli", "train", "--help"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0
    for option in ("--preset", "--backend", "--corpus", "--model", "--checkpoint", "--data-dir", "--metrics",
                   "--seed", "--resume"):
        assert option in out.stdout
