"""Corpora, vocabularies, downloads (over a loopback HTTP server) and BPTT batching."""
import collections
import hashlib
import http.server
import threading

import numpy as np
import pytest

from rnncore.app import data


# vocabulary and tokens ---------------------------------------------------------------
def test_vocab_orders_by_frequency_with_unk_first():
    vocab = data.Vocab("b a c a b a".split(), reserved=["<eos>"])
    assert vocab.idx_to_token == ["<unk>", "<eos>", "a", "b", "c"]
    assert list(vocab.encode(["a", "zzz", "c"])) == [2, 0, 4]
    assert vocab.decode([3, 2]) == ["b", "a"]
    assert vocab.encode(["a"]).dtype == np.int32


def test_vocab_min_freq_maps_rare_tokens_to_unk():
    vocab = data.Vocab("x x x y z z".split(), min_freq=2)
    assert vocab.idx_to_token == ["<unk>", "x", "z"]
    assert list(vocab.encode(["y"])) == [0]


def test_vocab_token_freqs_are_the_counts_of_the_text(shared_data):
    """d2l's token_freqs, held against collections.Counter on the raw text: every token with its
    count, most frequent first, ties in order of first appearance."""
    raw = (shared_data / "ptb" / "ptb.train.txt").read_text()
    counts = collections.Counter(raw.split())
    counts["<eos>"] = raw.count("\n")
    vocab = data.Vocab(data.tokenize(raw), reserved=["<eos>"])
    assert dict(vocab.token_freqs) == counts and len(vocab.token_freqs) == len(counts)
    assert [n for _, n in vocab.token_freqs] == sorted(counts.values(), reverse=True)
    first_seen = {}
    for token in data.tokenize(raw):
        first_seen.setdefault(token, len(first_seen))
    for (a, n), (b, m) in zip(vocab.token_freqs, vocab.token_freqs[1:]):
        assert n > m or first_seen[a] < first_seen[b]
    assert data.Vocab(list("abcab")).token_freqs == [("a", 2), ("b", 2), ("c", 1)]


def test_vocab_indexing_and_to_tokens():
    text = "the cat sat on the mat the end"
    vocab = data.Vocab(text.split())
    ids = vocab[text.split()]
    assert vocab.to_tokens(ids) == text.split() and vocab.to_tokens(ids[0]) == "the"
    assert vocab["the"] == ids[0] and vocab[("cat", "dog")] == [vocab["cat"], 0]
    assert vocab["dog"] == vocab["<unk>"] == 0
    assert vocab.to_tokens(np.int64(ids[1])) == "cat" and vocab.to_tokens(np.array(ids)) == text.split()
    assert list(vocab.encode(["mat", "dog"])) == vocab[["mat", "dog"]]
    with pytest.raises(IndexError, match="id 99 is outside the vocabulary"):
        vocab.to_tokens(99)
    no_unk = data.Vocab.from_dict({"tokens": ["a", "b"]})
    assert no_unk[["b", "a"]] == [1, 0]
    with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
        no_unk["zebra"]
    with pytest.raises(KeyError, match="'zebra'"):
        no_unk.encode(["a", "zebra"])


def test_vocab_save_and_load(tmp_path):
    vocab = data.Vocab(list("hello world"))
    vocab.save(tmp_path / "v.json")
    assert data.Vocab.load(tmp_path / "v.json").idx_to_token == vocab.idx_to_token


def test_word_tokens_turn_newlines_into_eos():
    assert data.tokenize(" a b \n c\n") == ["a", "b", "<eos>", "c", "<eos>"]


def test_char_tokens_follow_d2l():
    assert data.tokenize("The Time-Machine, 1895!\nIt", "char") == list("the time machine it")


# corpora ------------------------------------------------------------------------------
def test_ptb_loads_the_usual_way(shared_data):
    corpus = data.ptb_corpus(shared_data)
    assert {s: len(corpus[s]) for s in data.SPLITS} == {"train": 929589, "valid": 73760, "test": 82430}
    assert len(corpus.vocab) == 10000
    assert corpus.vocab.decode(corpus["train"][:3]) == ["aer", "banknote", "berlitz"]
    assert corpus.vocab.token_to_idx["<eos>"] == 1


def test_load_ptb_gives_a_split_and_the_shared_vocabulary(shared_data):
    test_ids, vocab = data.load_ptb("test", data_dir=shared_data)
    train_ids, same_vocab = data.load_ptb(data_dir=shared_data)
    assert len(test_ids) == 82430 and len(train_ids) == 929589 and test_ids.dtype == np.int32
    assert vocab.idx_to_token == same_vocab.idx_to_token
    ids, tm_vocab = data.load_timemachine(data_dir=shared_data)
    assert len(tm_vocab) == 28 and "".join(tm_vocab.decode(ids[:8])) == "the time"


def test_ptb_limit_builds_the_vocabulary_from_the_slice(shared_data):
    corpus = data.ptb_corpus(shared_data, limit=1000)
    assert len(corpus["train"]) == 1000
    assert len(corpus.vocab) == len(set(data.tokenize((shared_data / "ptb" / "ptb.train.txt").read_text())[:1000]) | {"<unk>"})


def test_timemachine_is_split_in_order(shared_data):
    corpus = data.timemachine_corpus(shared_data)
    sizes = [len(corpus[s]) for s in data.SPLITS]
    assert len(corpus.vocab) == 28  # 26 letters, space, <unk>
    assert sizes[0] == pytest.approx(0.9 * sum(sizes), abs=2)
    assert "".join(corpus.vocab.decode(corpus["train"][:15])) == "the time machin"


def test_any_text_file_is_a_corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("one two three four five\n" * 10, encoding="utf-8")
    corpus = data.load_corpus(str(path))
    assert len(corpus["train"]) + len(corpus["valid"]) + len(corpus["test"]) == 60


@pytest.mark.parametrize("content, message", [(b"\xff\xfe\x00bad", "not a UTF-8 text file"), (b"too short", "only")])
def test_bad_text_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(data.DataError, match=message):
        data.load_corpus(str(path))


def test_unknown_corpus_name():
    with pytest.raises(data.DataError, match="--corpus must be ptb, timemachine or a text file"):
        data.load_corpus("wikitext")


# downloads over loopback ---------------------------------------------------------------
class _Server:
    """Serves ``files`` (name -> bytes); ``drop`` names files whose connection breaks halfway."""

    def __init__(self, files, drop=()):
        files, drop = dict(files), set(drop)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                if name not in files:
                    self.send_error(404)
                    return
                body = files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in drop else body)
                if name in drop:
                    self.wfile.flush()
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def timemachine_bytes(shared_data):
    return (shared_data / "timemachine" / "timemachine.txt").read_bytes()


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_download_verifies_and_caches(tmp_path, timemachine_bytes, monkeypatch):
    server = _Server({"timemachine.txt": timemachine_bytes})
    monkeypatch.setenv("RNNCORE_DATA_DIR", str(tmp_path))
    try:
        path = data.dataset_path("timemachine.txt", mirror=server.url, progress=False)
    finally:
        server.close()
    assert path == tmp_path / "timemachine" / "timemachine.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data.DATASETS["timemachine.txt"][2]
    assert leftovers(tmp_path) == ["timemachine.txt"]
    # the cache is used from now on: no server needed
    ids, vocab = data.load_timemachine(progress=False)
    assert ids.size > 170000 and len(vocab) == 28


def test_a_wrong_checksum_keeps_nothing(tmp_path, timemachine_bytes):
    server = _Server({"timemachine.txt": timemachine_bytes.replace(b"Time", b"Tame", 1)})
    try:
        with pytest.raises(data.DataError, match="has SHA-256 .* expected .*not kept"):
            data.dataset_path("timemachine.txt", tmp_path, mirror=server.url, progress=False)
    finally:
        server.close()
    assert leftovers(tmp_path) == []


def test_a_dropped_connection_keeps_nothing(tmp_path, timemachine_bytes):
    server = _Server({"timemachine.txt": timemachine_bytes}, drop={"timemachine.txt"})
    try:
        with pytest.raises(data.DataError, match="could not download .*timemachine.txt"):
            data.dataset_path("timemachine.txt", tmp_path, mirror=server.url, progress=False)
    finally:
        server.close()
    assert leftovers(tmp_path) == []


def test_an_unreachable_mirror_says_where_to_put_the_file(tmp_path):
    server = _Server({})
    url = server.url
    server.close()
    with pytest.raises(data.DataError, match=r"put the file at .*ptb.train.txt yourself"):
        data.dataset_path("ptb.train.txt", tmp_path, mirror=url, progress=False)
    assert leftovers(tmp_path) == []


# batching ------------------------------------------------------------------------------
def book_batches(corpus, batch_size, time_size, iters):
    """The book's RnnlmTrainer.get_batch loop, written out as the book does."""
    xs, ts = corpus[:-1], corpus[1:]
    data_size = len(xs)
    jump = data_size // batch_size
    offsets = [i * jump for i in range(batch_size)]
    time_idx = 0
    for _ in range(iters):
        bx = np.empty((batch_size, time_size), dtype=int)
        bt = np.empty((batch_size, time_size), dtype=int)
        for t in range(time_size):
            for i, offset in enumerate(offsets):
                bx[i, t] = xs[(offset + time_idx) % data_size]
                bt[i, t] = ts[(offset + time_idx) % data_size]
            time_idx += 1
        yield bx, bt


def test_sequential_batches_match_the_book():
    corpus = np.arange(1000) * 7 % 101
    ours = data.SequentialBatches(corpus, 7, 9)
    assert len(ours) == 999 // 63
    for (x, t), (bx, bt) in zip(list(ours) + list(ours), book_batches(corpus, 7, 9, 2 * len(ours))):
        np.testing.assert_array_equal(x, bx)
        np.testing.assert_array_equal(t, bt)


def test_sequential_batches_need_enough_tokens():
    with pytest.raises(data.DataError, match="too few for batch 20 x time 35"):
        data.SequentialBatches(np.arange(100), 20, 35)


def test_random_batches_are_shuffled_nonoverlapping_windows():
    corpus = np.arange(10_000)
    batches = data.RandomBatches(corpus, 16, 10, seed=1)
    starts = []
    for x, t in batches:
        assert x.shape == (16, 10)
        np.testing.assert_array_equal(t, x + 1)
        np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # contiguous windows
        starts += list(x[:, 0])
    assert len(set(starts)) == len(starts)  # no window twice in an epoch
    assert len({s % 10 for s in starts}) == 1  # one random offset per epoch
    assert starts != sorted(starts)


def test_random_batches_restore_replays_an_epoch():
    batches = data.RandomBatches(np.arange(5000), 8, 12, seed=3)
    saved = batches.state()
    first = [x.copy() for x, _ in batches]
    batches.restore(saved)
    again = [x.copy() for x, _ in batches]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_window_batches_serve_a_window_at_every_position_once_per_epoch():
    ids = np.arange(1000) * 3  # distinct tokens, so each window is known by its first token
    batches = data.WindowBatches(ids, 64, 7, seed=2)
    assert len(batches) == 16  # 993 windows: 15 of 64 and a short one of 33, as DataLoader serves them
    seen = []
    for x, t in batches:
        assert x.shape[1] == 7 and len(x) in (64, 33)
        np.testing.assert_array_equal(x[:, 1:], t[:, :-1])  # the target is the input moved by one
        np.testing.assert_array_equal(t[:, -1], x[:, -1] + 3)
        seen += list(x[:, 0] // 3)
    assert sorted(seen) == list(range(993)) and seen != sorted(seen)
    again = [s for x, _ in batches for s in x[:, 0] // 3]
    assert sorted(again) == sorted(seen) and again != seen  # a new order each epoch


def test_window_batches_in_order_for_evaluation_and_restore_replays():
    ordered = data.WindowBatches(np.arange(100), 30, 4, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([x[:, 0] for x, _ in ordered]), np.arange(96))
    batches = data.WindowBatches(np.arange(500), 16, 5, seed=4)
    saved = batches.state()
    first = [x.copy() for x, _ in batches]
    batches.restore(saved)
    for a, (b, _) in zip(first, batches):
        np.testing.assert_array_equal(a, b)
