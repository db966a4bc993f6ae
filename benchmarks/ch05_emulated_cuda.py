"""The book's ch05 run (SimpleRnnlm, first 1000 PTB words, 100 epochs) through the cupy backend's
code and CUDA kernels, run on the CPU by the test suite's CUDA emulator: evidence that the cupy
path trains, where no GPU is at hand. About 1.5 min ("cublas") or 9 min ("fused") on 2 cores
for the RNN; the same run with an LSTM or GRU layer (RecurrentLM(cell=...)) takes longer.

    python benchmarks/ch05_emulated_cuda.py [cublas|fused] [rnn|lstm|gru] [DATA_DIR]
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "support")]

from conftest import emulated_cupy  # noqa: E402

from rnncore.app import data  # noqa: E402
from rnncore.models import RecurrentLM  # noqa: E402
from rnncore.optim import SGD  # noqa: E402
from rnncore.app.train import Trainer  # noqa: E402


def main(recurrence="cublas", cell="rnn", data_dir=str(ROOT.parent / "shared" / "data")):
    be = emulated_cupy(recurrence)
    be.seed(0)
    corpus = data.ptb_corpus(data_dir, limit=1000)
    model = RecurrentLM(len(corpus.vocab), 100, 100, cell=cell, backend=be, seed=0)  # SimpleRnnlm for "rnn"
    batches = data.SequentialBatches(corpus["train"], 10, 5)
    start = time.time()
    history = Trainer(model, SGD(0.1), batches, corpus.vocab, eval_interval=19, progress=False,
                      log=lambda message: None).fit(100)
    print(f"ch05 ({cell}) on the emulated cupy backend ({recurrence}): train ppl by epoch 1, 21, 41, 61, 81: "
          f"{[round(h['train_ppl'], 2) for h in history[::20]]}; epoch 100: {history[-1]['train_ppl']:.2f} "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
