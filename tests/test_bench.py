"""rnncore bench: the sweep's rows and their keys, warm-up and noise, the summary, progress, the
checkpointed full-BPTT rows; the textbook peer (its GRU in the books' form)."""
import importlib.util
import io
import json

import numpy as np
import pytest

from rnncore.app import bench, textbook
from rnncore.app.cli import main

KEYS = {"backend", "cell", "N", "H", "T", "truncation", "time_per_token_s", "tokens_per_s", "peak_bytes",
        "analytic_bytes", "grad_cosine", "L", "checkpoint", "time_spread_s", "noisy", "warm_up_s"}
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
        out[cell] = dict(
            fastest=fastest, time_per_token_s=at[fastest]["time_per_token_s"],
            speedup_over_textbook=at["textbook"]["time_per_token_s"] / at[fastest]["time_per_token_s"]
            if "textbook" in at else None,
            speedup_over_torch=at[torch[0]]["time_per_token_s"] / at[fastest]["time_per_token_s"] if torch else None,
            memory_runner=ours, truncated_peak_bytes=at[ours]["peak_bytes"],
            full_peak_bytes=next(r["peak_bytes"] for r in sweep if r["backend"] == ours and r["T"] == L),
            shortest_T_reaching=min(t for t, c in cosines.items() if c >= 0.99))
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
        return None

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
    s = dict(N=2, H=4, V=8, seed=0, repeats=repeats)
    spec = dict(T=10, truncation="regular", L=10, checkpoint=None)
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
    def row(backend, T, us, peak=None, cos=1.0, noisy=False):
        return dict(backend=backend, cell="lstm", L=280, T=T, truncation="regular", checkpoint=None,
                    time_per_token_s=us * 1e-6, peak_bytes=peak, grad_cosine=cos, noisy=noisy)

    rows = [row("numpy", 5, 30, 100, 0.9), row("numpy", 35, 20, 300, 0.995), row("numpy", 280, 15, 2000),
            row("numba", 5, 12, 110, 0.9), row("numba", 35, 8, 310, 0.991), row("numba", 280, 6, 2100),
            row("torch-cpu", 35, 4, noisy=True), row("torch-cpu", 280, 3), row("textbook", 35, 40, 500)]
    s = dict(cells=["lstm"], L=280, sweep=[5, 35, 280], backends=["numpy", "numba"])
    (c,) = bench.summarize(rows, s)
    assert (c["fastest"], c["torch"], c["noisy"]) == ("torch-cpu", "torch-cpu", ["torch-cpu"])
    assert c["speedup_over_textbook"] == pytest.approx(10.0) and c["speedup_over_torch"] == pytest.approx(1.0)
    assert (c["memory_runner"], c["truncated_peak_bytes"], c["full_peak_bytes"]) == ("numba", 310, 2100)
    assert c["shortest_T_reaching"] == 35
    text = bench.format_summary([c])
    assert "10.0x faster than the textbook peer" in text and "(noisy: torch-cpu)" in text


def test_progress_eta_counts_timed_passes_only_and_logs_lines():
    stream = io.StringIO()  # not a terminal
    with bench._Progress([100, 100, 100], repeats=3, stream=stream) as progress:
        progress.start(f"numba lstm: {bench.COMPILING}", compiling=True)
        progress.start("numba lstm T=100 regular", compiling=False)  # after a warm-up of any length
        progress.finish(100, seconds=4.0, passes=4)
        # 4 s for 400 token-passes; two rows left of 5 passes each (warm-up, 3 timed, peak)
        assert progress.eta() == pytest.approx(4.0 / 400 * 1000)
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and all(line.strip() and "\r" not in line for line in lines[:-1])
    assert any(bench.COMPILING in line for line in lines)
    assert all(a != b for a, b in zip(lines, lines[1:]))  # no line twice in a row


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
