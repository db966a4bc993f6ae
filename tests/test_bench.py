"""rnncore bench: the sweep's rows, their keys and the checkpointed full-BPTT rows; the textbook peer."""
import importlib.util
import json

import numpy as np
import pytest

from rnncore.app import bench, textbook
from rnncore.app.cli import main

KEYS = {"backend", "cell", "N", "H", "T", "truncation", "time_per_token_s", "tokens_per_s", "peak_bytes",
        "analytic_bytes", "grad_cosine", "L", "checkpoint", "time_spread_s"}


def test_quick_sweep_writes_rows_and_plot(tmp_path, capsys):
    out = tmp_path / "b.json"
    code = main(["bench", "--quick", "--backend", "numpy", "--hidden", "8", "--batch", "2", "--length", "40",
                 "--repeats", "1", "--no-isolate", "--json", str(out), "--plot", str(tmp_path / "b.png"), "--no-peers"])
    assert code == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert all(set(r) == KEYS for r in rows)
    sweep = [r for r in rows if r["L"] == 40]
    assert sorted({r["T"] for r in sweep}) == [5, 35, 40]
    assert {r["truncation"] for r in sweep} == {"regular", "randomized"}
    for r in rows:
        assert r["time_per_token_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_bytes"] > 0
        if r["T"] == r["L"]:
            assert r["grad_cosine"] == pytest.approx(1.0, abs=1e-5)  # full BPTT, checkpointed or not
    short = next(r for r in sweep if r["T"] == 5 and r["truncation"] == "regular")
    assert short["grad_cosine"] < 0.9999
    checkpointed = {r["L"]: r for r in rows if r["checkpoint"]}
    assert sorted(checkpointed) == [500, 2000]
    assert checkpointed[2000]["checkpoint"] == 45
    assert "runner" in capsys.readouterr().out
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "b.png").stat().st_size > 1000


def test_analytic_memory():
    assert bench.analytic_bytes("rnn", 2, 10, 5, 7, 4) == 7 * 2 * (10 + 10 + 5) * 4
    assert bench.analytic_bytes("lstm", 2, 10, 5, 7, 4) == 7 * 2 * (10 + 60 + 5) * 4
    assert bench.analytic_bytes("lstm", 2, 10, 5, 100, 4, L=100, checkpoint=10) == 10 * 2 * 75 * 4 + 10 * 2 * 10 * 2 * 4


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_textbook_layers_compute_what_rnncore_computes(kind):
    """The peer must be a fair one: the same function and gradients as rnncore's layers."""
    import rnncore

    rng = np.random.default_rng(0)
    N, T, D, H = 3, 6, 4, 5
    G = H if kind == "rnn" else 4 * H
    params = [rng.standard_normal(s) * 0.5 for s in ((D, G), (H, G), (G,))]
    ours = (rnncore.TimeRNN if kind == "rnn" else rnncore.TimeLSTM)(*[p.copy() for p in params], backend="numpy")
    theirs = (textbook.TimeRNN if kind == "rnn" else textbook.TimeLSTM)(*textbook.from_rnncore_params(kind, *params))
    xs, dhs = rng.standard_normal((N, T, D)), rng.standard_normal((N, T, H))
    np.testing.assert_allclose(theirs.forward(xs), ours.forward(xs), rtol=1e-12)
    np.testing.assert_allclose(theirs.backward(dhs), ours.backward(dhs), rtol=1e-10, atol=1e-12)
    back = textbook.from_rnncore_params(kind, *ours.grads)
    for a, b in zip(theirs.grads, back):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bad_cell_is_refused(capsys):
    assert main(["bench", "--cell", "gru", "--no-isolate"]) == 2
    assert "--cell takes rnn, lstm or both" in capsys.readouterr().err
