"""rnncore bench: the sweep's rows and their keys, warm-up and noise, the summary, progress, the
checkpointed full-BPTT rows, the truncation schemes' gradient bias and spread over draws; the
textbook peer (its GRU in the books' form)."""
import importlib.util
import io
import itertools
import json

import numpy as np
import pytest

from rnncore.app import bench, textbook
from rnncore.app.cli import main

KEYS = {"backend", "cell", "N", "H", "T", "truncation", "time_per_token_s", "tokens_per_s", "peak_bytes",
        "analytic_bytes", "grad_cosine", "L", "checkpoint", "time_spread_s", "noisy", "warm_up_s",
        "draws", "grad_bias_cosine", "grad_spread"}
TINY = ["--hidden", "8", "--batch", "2", "--length", "40", "--repeats", "2"]


def run_bench(tmp_path, *args):
    out = tmp_path / "b.json"
    assert main(["bench", *TINY, "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


def expected_summary(rows, backends, T, L):
    """The summary worked out from the rows afresh, as a reader of the table would."""
    out = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        sweep = [r for r in rows if r["cell"] == cell and r["L"] == L and r["truncation"] == "regular"
                 and r["checkpoint"] is None]
        at = {r["backend"]: r for r in sweep if r["T"] == T}
        fastest = min(at, key=lambda name: at[name]["time_per_token_s"])
        ours = min((name for name in at if name in backends), key=lambda name: at[name]["time_per_token_s"])
        torch = [name for name in at if name.startswith("torch")]
        cosines = {r["T"]: r["grad_cosine"] for r in sweep if r["backend"] == ours}
        out[cell] = {
            "fastest": fastest, "time_per_token_s": at[fastest]["time_per_token_s"],
            "speedup_over_textbook": at["textbook"]["time_per_token_s"] / at[fastest]["time_per_token_s"]
            if "textbook" in at else None,
            "speedup_over_torch": at[torch[0]]["time_per_token_s"] / at[fastest]["time_per_token_s"] if torch else None,
            "memory_runner": ours, "truncated_peak_bytes": at[ours]["peak_bytes"],
            "full_peak_bytes": next(r["peak_bytes"] for r in sweep if r["backend"] == ours and r["T"] == L),
            "shortest_T_reaching": min(t for t, c in cosines.items() if c >= 0.99)}
    return out


def test_quick_sweep_rows_summary_and_plot(tmp_path, capsys):
    report = run_bench(tmp_path, "--quick", "--backend", "numpy", "--cell", "rnn,lstm", "--no-isolate",
                       "--plot", str(tmp_path / "b.png"))
    rows = report["rows"]
    assert all(set(r) == KEYS for r in rows)
    assert [(r["cell"], r["T"]) for r in rows if r["backend"] == "numpy"] == [
        ("rnn", 5), ("rnn", 35), ("rnn", 40), ("lstm", 5), ("lstm", 35), ("lstm", 40)]
    assert {r["truncation"] for r in rows} == {"regular"} and not any(r["checkpoint"] for r in rows)
    assert {r["backend"] for r in rows} >= {"numpy", "textbook"}
    for r in rows:
        assert r["time_per_token_s"] > 0 and r["tokens_per_s"] > 0 and r["warm_up_s"] > 0
        assert r["time_spread_s"][0] <= r["time_per_token_s"] <= r["time_spread_s"][1]
        assert r["peak_bytes"] is None if r["backend"].startswith("torch-cpu") else r["peak_bytes"] > 0
        if r["T"] == r["L"]:
            assert r["grad_cosine"] == pytest.approx(1.0, abs=1e-5)
        # regular truncation is deterministic: one draw, no spread, its bias its cosine
        assert (r["draws"], r["grad_spread"], r["grad_bias_cosine"]) == (1, 0.0, r["grad_cosine"])
    short = next(r for r in rows if r["backend"] == "numpy" and r["T"] == 5)
    assert short["grad_cosine"] < 0.9999

    summary = {c["cell"]: c for c in report["summary"]}
    assert list(summary) == ["rnn", "lstm"] and all(c["T"] == 35 and c["L"] == 40 for c in summary.values())
    for cell, want in expected_summary(rows, ["numpy"], 35, 40).items():
        got = {k: summary[cell][k] for k in want}
        assert got == pytest.approx(want)
    out = capsys.readouterr().out
    assert "runner" in out and "summary:" in out
    assert f"rnn: at T=35 the fastest is {summary['rnn']['fastest']}" in out
    assert summary["rnn"]["schemes"] == {"regular": {"grad_bias_cosine": next(
        r["grad_cosine"] for r in rows if r["backend"] == "numpy" and r["cell"] == "rnn" and r["T"] == 35),
        "grad_spread": 0.0, "draws": 1}}
    assert "bias at T=35 (numpy; cosine of the mean gradient with full BPTT's): regular " in out
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "b.png").stat().st_size > 1000


def test_gru_in_its_own_process(tmp_path, capsys):
    """--cell gru through the default path: the runners in processes of their own."""
    report = run_bench(tmp_path, "--quick", "--backend", "numpy", "--cell", "gru")
    assert {r["cell"] for r in report["rows"]} == {"gru"}
    assert {r["backend"] for r in report["rows"]} >= {"numpy", "textbook"}
    assert [c["cell"] for c in report["summary"]] == ["gru"]
    assert "books' form" in capsys.readouterr().out  # the textbook GRU is said to be another function


def test_full_sweep_kinds_and_checkpointed_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "SWEEP", (5, 35))
    monkeypatch.setattr(bench, "FULL_LENGTHS", (64,))
    rows = run_bench(tmp_path, "--backend", "numpy", "--cell", "lstm", "--no-peers", "--no-isolate")["rows"]
    sweep = [r for r in rows if r["L"] == 40]
    assert {(r["truncation"], r["T"]) for r in sweep} == {
        ("regular", 5), ("regular", 35), ("regular", 40), ("random", 5), ("random", 35),
        ("randomized", 5), ("randomized", 35)}
    randomized = next(r for r in sweep if r["truncation"] == "randomized" and r["T"] == 35)
    assert randomized["analytic_bytes"] == bench.analytic_bytes("lstm", 2, 8, 64, 40, 4)  # keeps the whole stream
    checkpointed = [r for r in rows if r["L"] == 64]
    assert [r["checkpoint"] for r in checkpointed] == [None, 8]
    assert all(r["grad_cosine"] == pytest.approx(1.0, abs=1e-5) for r in checkpointed)
    for r in rows:  # draws: --draws (default bench.DRAWS) for the random schemes, one for the deterministic
        random = r["truncation"] != "regular"
        assert r["draws"] == (bench.DRAWS if random else 1)
        assert r["grad_spread"] > 0 if random else r["grad_spread"] == 0.0


def wh_grad(model, grads):
    wh = model.rnn_layers[0].params[1]
    return next(g for p, g in zip(model.params, grads) if p is wh).astype(np.float64).ravel()


def bias_and_spread(draws, full):
    """Worked out afresh: the cosine of the draws' mean with full BPTT's gradient, and the mean
    over draws of ||g_i - mean|| / ||mean||."""
    mean = np.mean(draws, axis=0)
    cosine = mean @ full / (np.linalg.norm(mean) * np.linalg.norm(full))
    return cosine, np.mean([np.linalg.norm(g - mean) for g in draws]) / np.linalg.norm(mean)


def test_bias_and_spread_of_the_truncation_schemes(tmp_path, monkeypatch, capsys):
    """On the synthetic stream (long-range motifs) the LSTM's gradient at T=5 is visibly cut by
    truncation; the mean over many draws of randomized truncation (unbiased) is much nearer full
    BPTT's than regular truncation's. Every number is worked out again from rnncore.bptt with
    the same seeds (draw i: --seed + i)."""
    import rnncore
    from rnncore import bptt

    monkeypatch.setattr(bench, "SWEEP", (5,))
    monkeypatch.setattr(bench, "FULL_LENGTHS", ())
    draws, seed, L, T = 32, 3, 40, 5
    report = run_bench(tmp_path, "--backend", "numpy", "--cell", "lstm", "--no-peers", "--no-isolate",
                       "--draws", str(draws), "--seed", str(seed))
    rows = {(r["truncation"], r["T"]): r for r in report["rows"]}
    assert set(rows) == {("regular", 5), ("regular", L), ("random", 5), ("randomized", 5)}
    assert report["settings"]["draws"] == draws

    model = rnncore.RecurrentLM(64, 8, 8, cell="lstm", backend="numpy", seed=seed)
    xs, ts = bench.synthetic_stream(2, L, 64, seed)
    full = wh_grad(model, bptt.truncated_pass(model, xs, ts, [L])[1])
    regular = wh_grad(model, bptt.truncated_pass(model, xs, ts, bptt.regular_lengths(L, T))[1])
    randomized = [wh_grad(model, bptt.randomized_pass(model, xs, ts, T, seed + i)[1]) for i in range(draws)]
    random = [wh_grad(model, bptt.truncated_pass(model, xs, ts, bptt.random_lengths(L, T, seed + i))[1])
              for i in range(draws)]

    reg = rows["regular", 5]
    cosine = regular @ full / (np.linalg.norm(regular) * np.linalg.norm(full))
    assert (reg["draws"], reg["grad_spread"]) == (1, 0.0)
    assert reg["grad_bias_cosine"] == reg["grad_cosine"] == pytest.approx(cosine, rel=1e-6)
    assert rows["regular", L]["grad_bias_cosine"] == pytest.approx(1.0, abs=1e-6)
    for kind, mine in (("random", random), ("randomized", randomized)):
        row = rows[kind, 5]
        bias, spread = bias_and_spread(mine, full)
        assert row["draws"] == draws
        assert row["grad_bias_cosine"] == pytest.approx(bias, rel=1e-9)
        assert row["grad_spread"] == pytest.approx(spread, rel=1e-9)
        assert row["grad_cosine"] == pytest.approx(  # one pass: the first draw's
            mine[0] @ full / (np.linalg.norm(mine[0]) * np.linalg.norm(full)), rel=1e-6)
        assert row["grad_spread"] > 0.1
    # unbiased: the mean of the randomized draws nears full BPTT's gradient; regular cuts stay off
    assert rows["randomized", 5]["grad_bias_cosine"] > 0.99 > reg["grad_bias_cosine"]
    assert rows["randomized", 5]["grad_bias_cosine"] > rows["random", 5]["grad_bias_cosine"]
    # ... at the price of a larger spread than random-length cuts'
    assert rows["randomized", 5]["grad_spread"] > rows["random", 5]["grad_spread"]

    (c,) = report["summary"]
    assert c["T"] == 5 and c["memory_runner"] == "numpy"
    assert list(c["schemes"]) == ["regular", "random", "randomized"]
    for kind, got in c["schemes"].items():
        assert got == {key: rows[kind, 5][key] for key in ("grad_bias_cosine", "grad_spread", "draws")}
    out = capsys.readouterr().out
    x = c["schemes"]
    assert (f"bias at T=5 (numpy; cosine of the mean gradient with full BPTT's): "
            f"regular {x['regular']['grad_bias_cosine']:.3f} (deterministic); "
            f"random {x['random']['grad_bias_cosine']:.3f} (spread {x['random']['grad_spread']:.2f}, 32 draws); "
            f"randomized {x['randomized']['grad_bias_cosine']:.3f} "
            f"(spread {x['randomized']['grad_spread']:.2f}, 32 draws)") in out
    assert "over 32 draws" in out  # the table's legend of its bias and g-sprd columns


def test_peers_draw_random_cuts_but_not_randomized_ones():
    """The textbook peer computes rnncore's LSTM with the books' layers: its random-cut draws give
    the same bias and spread as the numpy backend's. The peers (PyTorch too, where installed: its
    own weights) run no randomized truncation."""
    s = {"N": 2, "H": 8, "V": 64, "L": 40, "seed": 0, "repeats": 1, "draws": 4, "cells": ["lstm"],
         "sweep": [10, 40], "truncations": list(bench.TRUNCATIONS), "full_lengths": [], "backends": ["numpy"]}
    rows = {}
    for name in ("numpy", "textbook") + (("torch",) if importlib.util.find_spec("torch") else ()):
        events = bench._run_runner({"runner": name, "settings": s})
        rows[name] = {(r["truncation"], r["T"]): r for r in (e["row"] for e in events if "row" in e)}
    assert set(rows["textbook"]) == {("regular", 40), ("regular", 10), ("random", 10)}
    assert ("randomized", 10) in rows["numpy"]
    ours, theirs = rows["numpy"]["random", 10], rows["textbook"]["random", 10]
    assert theirs["draws"] == ours["draws"] == 4 and theirs["grad_spread"] > 0
    assert theirs["grad_bias_cosine"] == pytest.approx(ours["grad_bias_cosine"], abs=1e-5)
    assert theirs["grad_spread"] == pytest.approx(ours["grad_spread"], rel=1e-3)
    if "torch" in rows:
        assert set(rows["torch"]) == set(rows["textbook"])
        torch = rows["torch"]["random", 10]
        assert torch["draws"] == 4 and torch["grad_spread"] > 0 and -1 <= torch["grad_bias_cosine"] <= 1


def test_draw_stats_by_hand():
    # two draws, e1 and e2: mean (1/2, 1/2), each ||g_i - mean|| = ||mean|| = 1/sqrt(2)
    bias, spread = bench.draw_stats([np.array([1.0, 0.0]), np.array([0.0, 1.0])], np.array([2.0, 2.0]))
    assert (bias, spread) == (pytest.approx(1.0), pytest.approx(1.0))
    bias, spread = bench.draw_stats([np.array([3.0, 4.0])], np.array([1.0, 0.0]))  # one draw: no spread
    assert (bias, spread) == (pytest.approx(0.6), 0.0)


class FakeRunner:
    """A runner whose passes take the times given (on the fake clock): the first is the warm-up."""

    name = "fake"

    def __init__(self, clock, durations):
        self.clock, self.durations = clock, list(durations)

    def build(self, cell, s):
        return None

    def stream(self, xs, ts):
        return xs, ts

    def truncated(self, model, xs, ts, lengths):
        self.clock.now += self.durations.pop(0) if self.durations else 0.0

    def grad_wh(self, model, result):
        return np.ones(3)

    def sync(self):
        pass

    def peak_bytes(self, one_pass):
        one_pass()
        return 1


class FakeClock:
    now = 0.0

    def __call__(self):
        return self.now


def fake_row(monkeypatch, durations, repeats):
    clock = FakeClock()
    monkeypatch.setattr(bench, "clock", clock)
    s = {"N": 2, "H": 4, "V": 8, "seed": 0, "repeats": repeats}
    spec = {"T": 10, "truncation": "regular", "L": 10, "checkpoint": None}
    events = list(bench._row_events(FakeRunner(clock, durations), "rnn", spec, s, {}))
    return events[-1]


def test_warm_up_is_not_timed(monkeypatch):
    event = fake_row(monkeypatch, [100.0, 2.0], repeats=1)  # the warm-up pass "compiles" for 100 s
    row = event["row"]
    assert row["time_per_token_s"] * row["N"] * row["L"] == pytest.approx(2.0)
    assert row["warm_up_s"] == pytest.approx(100.0)
    assert event["seconds"] == pytest.approx(2.0)  # what the ETA counts: the timed passes, not the warm-up


@pytest.mark.parametrize("durations, noisy", [([1.0, 2.0, 2.2, 2.0], False), ([1.0, 2.0, 3.0, 2.0], True)])
def test_noisy_rows_are_marked(monkeypatch, durations, noisy):
    row = fake_row(monkeypatch, durations, repeats=3)["row"]
    assert row["noisy"] is noisy
    assert row["time_spread_s"] == pytest.approx([min(durations[1:]) / 20, max(durations[1:]) / 20])
    assert ("!" in bench.format_table([row]).splitlines()[2]) is noisy


def test_summary_of_hand_made_rows():
    def row(backend, T, us, peak=None, cos=1.0, noisy=False, truncation="regular", spread=0.0, draws=1):
        return {"backend": backend, "cell": "lstm", "L": 280, "T": T, "truncation": truncation, "checkpoint": None,
                "time_per_token_s": us * 1e-6, "peak_bytes": peak, "grad_cosine": cos, "noisy": noisy,
                "grad_bias_cosine": cos, "grad_spread": spread, "draws": draws}

    rows = [row("numpy", 5, 30, 100, 0.9), row("numpy", 35, 20, 300, 0.995), row("numpy", 280, 15, 2000),
            row("numba", 5, 12, 110, 0.9), row("numba", 35, 8, 310, 0.991), row("numba", 280, 6, 2100),
            row("torch-cpu", 35, 4, noisy=True), row("torch-cpu", 280, 3), row("textbook", 35, 40, 500),
            row("numba", 35, 9, cos=0.993, truncation="randomized", spread=1.8, draws=8),
            row("numpy", 35, 25, cos=0.5, truncation="random", spread=0.3, draws=8),  # not numba's: not summed up
            row("numba", 5, 12, cos=0.95, truncation="random", spread=0.4, draws=8)]  # another T
    s = {"cells": ["lstm"], "L": 280, "sweep": [5, 35, 280], "backends": ["numpy", "numba"]}
    (c,) = bench.summarize(rows, s)
    assert (c["fastest"], c["torch"], c["noisy"]) == ("torch-cpu", "torch-cpu", ["torch-cpu"])
    assert c["speedup_over_textbook"] == pytest.approx(10.0) and c["speedup_over_torch"] == pytest.approx(1.0)
    assert (c["memory_runner"], c["truncated_peak_bytes"], c["full_peak_bytes"]) == ("numba", 310, 2100)
    assert c["shortest_T_reaching"] == 35
    text = bench.format_summary([c])
    assert "10.0x faster than the textbook peer" in text and "(noisy: torch-cpu)" in text
    assert c["schemes"] == {"regular": {"grad_bias_cosine": 0.991, "grad_spread": 0.0, "draws": 1},
                            "randomized": {"grad_bias_cosine": 0.993, "grad_spread": 1.8, "draws": 8}}
    assert ("  bias at T=35 (numba; cosine of the mean gradient with full BPTT's): regular 0.991 (deterministic); "
            "randomized 0.993 (spread 1.80, 8 draws)") in text.splitlines()


def test_progress_eta_counts_timed_passes_only_and_logs_lines():
    stream = io.StringIO()  # not a terminal
    with bench._Progress([100, 100, 100], repeats=3, stream=stream) as progress:
        progress.start(f"numba lstm: {bench.COMPILING}", compiling=True)
        progress.start("numba lstm T=100 regular", compiling=False)  # after a warm-up of any length
        progress.finish(100, seconds=4.0, passes=4)
        # 4 s for 400 token-passes; two rows left of 5 passes each (warm-up, 3 timed, peak)
        assert progress.eta() == pytest.approx(4.0 / 400 * 1000)
    # rows with extra gradient draws: counted like timed passes
    with bench._Progress([100, 100], repeats=3, stream=io.StringIO(), extra=[0, 7]) as progress:
        assert progress.left == 100 * 5 + 100 * 12
        progress.finish(100, seconds=4.0, passes=4)
        assert progress.eta() == pytest.approx(4.0 / 400 * 1200)
        progress.finish(100, seconds=11.0, passes=3 + 8)
        assert progress.left == 0
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and all(line.strip() and "\r" not in line for line in lines[:-1])
    assert any(bench.COMPILING in line for line in lines)
    assert all(a != b for a, b in itertools.pairwise(lines))  # no line twice in a row


def test_bad_cell_is_refused(capsys):
    assert main(["bench", "--cell", "gru,elman", "--no-isolate"]) == 2
    assert "--cell takes rnn, lstm, gru" in capsys.readouterr().err


def test_analytic_memory():
    assert bench.analytic_bytes("rnn", 2, 10, 5, 7, 4) == 7 * 2 * (10 + 10 + 5) * 4
    assert bench.analytic_bytes("lstm", 2, 10, 5, 7, 4) == 7 * 2 * (10 + 60 + 5) * 4
    assert bench.analytic_bytes("gru", 2, 10, 5, 7, 4) == 7 * 2 * (10 + 50 + 5) * 4
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


def gru_params(rng, D, H):
    return [rng.standard_normal(s) * 0.5 for s in ((D, 3 * H), (H, 3 * H), (3 * H,), (3 * H,))]


def test_textbook_gru_is_rnncores_where_the_two_forms_agree():
    """With a reset gate that is one number for all units (its weights zero) and no recurrent n
    bias, r * (h Wh_n) = (r * h) Wh_n: the books' GRU and rnncore's compute the same thing."""
    import rnncore

    rng = np.random.default_rng(1)
    N, T, D, H = 3, 5, 4, 6
    Wx, Wh, bx, bh = gru_params(rng, D, H)
    Wx[:, :H] = Wh[:, :H] = 0
    bx[:H], bh[:H], bh[2 * H :] = 0.3, 0.1, 0
    ours = rnncore.TimeGRU(Wx.copy(), Wh.copy(), bx.copy(), bh.copy(), backend="numpy")
    theirs = textbook.TimeGRU(*textbook.from_rnncore_params("gru", Wx, Wh, bx, bh))
    xs, dhs = rng.standard_normal((N, T, D)), rng.standard_normal((N, T, H))
    np.testing.assert_allclose(theirs.forward(xs), ours.forward(xs), rtol=1e-12)
    np.testing.assert_allclose(theirs.backward(dhs), ours.backward(dhs), rtol=1e-10, atol=1e-12)
    zn = slice(H, 3 * H)  # the r block's gradients differ: r enters each form at another place
    np.testing.assert_allclose(theirs.grads[0][:, zn], ours.grads[0][:, zn], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(theirs.grads[1][:, zn], ours.grads[1][:, zn], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(theirs.grads[2][zn], ours.grads[2][zn], rtol=1e-10, atol=1e-12)


def test_textbook_gru_gradients_match_finite_differences():
    rng = np.random.default_rng(2)
    N, T, D, H = 2, 4, 3, 4
    layer = textbook.TimeGRU(*textbook.from_rnncore_params("gru", *gru_params(rng, D, H)))
    xs, dhs = rng.standard_normal((N, T, D)), rng.standard_normal((N, T, H))

    def loss():
        return float((layer.forward(xs) * dhs).sum())

    loss()
    dxs = layer.backward(dhs)
    for array, analytic in [*zip(layer.params, [g.copy() for g in layer.grads]), (xs, dxs)]:
        numeric = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            keep = array[idx]
            array[idx] = keep + 1e-6
            plus = loss()
            array[idx] = keep - 1e-6
            numeric[idx] = (plus - loss()) / 2e-6
            array[idx] = keep
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
