"""rnncore seqtask: the tasks' answers, padding that changes nothing, and tiny runs that learn."""
import json

import numpy as np
import pytest

from rnncore.app import seqtask
from rnncore.app.cli import main
from rnncore.sequences import pad

QUIET = {"backend": "numpy", "progress": False, "out": lambda line: None}


def test_parity_labels_count_the_ones():
    sequences, labels = seqtask.parity_data(300, 1, 9, np.random.default_rng(0))
    assert {len(s) for s in sequences} == set(range(1, 10))
    for s, y in zip(sequences, labels):
        assert set(s.tolist()) <= {0, 1}
        assert y == s.tolist().count(1) % 2


def test_adding_targets_sum_the_two_marked_values():
    sequences, targets = seqtask.adding_data(300, 2, 9, np.random.default_rng(0))
    assert {len(s) for s in sequences} == set(range(2, 10))
    for s, y in zip(sequences, targets):
        assert 0 <= s.min() and s.max() < 2 * seqtask.LEVELS
        marked = s[s % 2 == 1]
        assert len(marked) == 2
        assert y == pytest.approx((marked // 2).sum() / (seqtask.LEVELS - 1), rel=1e-6)


def model_and_data(task, bidirectional, seed=3):
    model = seqtask.SequenceModel(seqtask.TASKS[task], cell="lstm", hidden=6, layers=2, bidirectional=bidirectional,
                                  backend="numpy", seed=seed)
    sequences, targets = seqtask.TASKS[task].make(9, 2, 7, np.random.default_rng(seed))
    return model, sequences, targets


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_changes_neither_the_predictions_nor_the_gradients(bidirectional):
    """The same rows padded to T = 7 with id 0 and to T = 19 with id 1, in another row order."""
    model, sequences, targets = model_and_data("parity", bidirectional)
    short, lengths = pad(sequences, pad_id=0)
    order = np.random.default_rng(0).permutation(len(sequences))
    long_, long_lengths = pad([sequences[r] for r in order], pad_id=1, length=19)
    assert short.shape[1] == 7

    scores = model.scores(short, lengths)[:, 0, :]
    np.testing.assert_allclose(model.scores(long_, long_lengths)[:, 0, :], scores[order], rtol=1e-5, atol=1e-6)

    loss, _ = model.loss_and_grads(short, lengths, targets)
    grads = [g.copy() for g in model.grads]
    loss_long, _ = model.loss_and_grads(long_, long_lengths, targets[order])
    assert loss_long == pytest.approx(loss, rel=1e-5)
    for g, g_long in zip(grads, model.grads):
        np.testing.assert_allclose(g_long, g, rtol=1e-4, atol=1e-6)
    assert all(np.abs(g).sum() > 0 for g in grads)  # every parameter takes part


@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_readout_is_each_directions_final_state(bidirectional):
    """What PyTorch's h_n holds: the top layer's state after each row's last valid step, and
    bidirectionally the backward layer's state after it has read the row back to step 0."""
    model, sequences, _ = model_and_data("adding", bidirectional)
    ids, lengths = pad(sequences, length=10)
    hs = model.stack.forward(model.embed.forward(ids), lengths)
    top = model.stack.layers[-1]
    finals = [layer.h for layer in top.layers] if bidirectional else [top.h]
    np.testing.assert_array_equal(model.readout(hs, lengths), np.concatenate(finals, axis=1))
    # and the gradient goes back to exactly those places
    d = np.random.default_rng(0).standard_normal((len(sequences), hs.shape[2])).astype(np.float32)
    dhs = model.readout_backward(d)
    H = model.hidden
    for n, L in enumerate(lengths):
        np.testing.assert_array_equal(dhs[n, L - 1, :H], d[n, :H])
        assert not np.delete(dhs[n, :, :H], L - 1, axis=0).any()
        if bidirectional:
            np.testing.assert_array_equal(dhs[n, 0, H:], d[n, H:])
            assert not dhs[n, 1:, H:].any()


def test_tiny_parity_run_beats_chance_by_far():
    results = seqtask.main("parity", hidden=16, epochs=4, train_size=1500, test_size=500, max_length=8,
                           longer_max_length=12, seed=0, **QUIET)
    assert results["test"]["accuracy"] >= 0.9
    assert results["longer"]["accuracy"] >= 0.75
    assert abs(results["test"]["baseline"]["accuracy"] - 0.5) < 0.06  # what chance gives here


def test_tiny_adding_run_beats_the_mean_by_far():
    results = seqtask.main("adding", hidden=16, epochs=3, train_size=1000, test_size=500, max_length=8,
                           longer_max_length=12, seed=0, **QUIET)
    assert results["test"]["mse"] < 0.15 * results["test"]["baseline"]["mse"]


def test_same_seed_same_run():
    runs = [seqtask.main("adding", hidden=4, epochs=1, train_size=200, test_size=50, max_length=6,
                         longer_max_length=8, seed=5, **QUIET) for _ in range(2)]
    for run in runs:
        run.pop("train_seconds")
    assert runs[0] == runs[1]


def test_command_trains_a_bidirectional_stack_and_writes_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["seqtask", "--task", "parity", "--cell", "lstm", "--bidirectional", "--layers", "2", "--hidden", "8",
            "--epochs", "4", "--train-size", "1500", "--test-size", "300", "--max-length", "8",
            "--longer-max-length", "12", "--backend", "numpy", "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["settings"]["bidirectional"] and saved["settings"]["layers"] == 2
    assert len(saved["epochs"]) == 4
    assert f"test (300 sequences of 1..8 steps): accuracy {saved['test']['accuracy']:.4f}" in printed
    assert saved["test"]["accuracy"] >= 0.9


@pytest.mark.parametrize("argv, message", [
    (["--task", "adding", "--min-length", "1"], "adding needs sequences of at least 2 steps"),
    (["--max-length", "30", "--longer-max-length", "30"], "< --longer-max-length"),
    (["--clip", "-1"], "--clip must be >= 0"),
])
def test_bad_settings_exit_2_with_one_line(argv, message, capsys):
    assert main(["seqtask", "--backend", "numpy", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_row_without_steps_is_refused_rather_than_read_at_its_padding():
    model, sequences, _ = model_and_data("parity", False)
    ids, lengths = pad(sequences[:2] + [[]])
    with pytest.raises(ValueError, match="at least one step"):
        model.scores(ids, lengths)
