"""rnncore: recurrent Time layers (RNN, LSTM, GRU) trained with (truncated) BPTT on NumPy, Numba or CuPy.

    import rnncore
    lstm = rnncore.TimeLSTM(Wx, Wh, b, backend="numba")
    with rnncore.use("cupy"): ...

Importing rnncore imports neither numba nor cupy; a backend loads on first use.
"""
from . import bptt, cells, optim, sequences
from .backends import Backend, BackendNotAvailable, available_backends, get_backend, use
from .layers import Bidirectional, Stack, TimeAffine, TimeDropout, TimeEmbedding, TimeGRU, TimeLSTM, TimeMSELoss, TimeRNN, TimeSoftmaxWithLoss
from .models import BetterRnnlm, RecurrentLM, Rnnlm, SimpleRnnlm

__version__ = "0.1.0"

__all__ = [
    "bptt",
    "cells",
    "optim",
    "sequences",
    "Backend",
    "Bidirectional",
    "Stack",
    "BetterRnnlm",
    "RecurrentLM",
    "Rnnlm",
    "SimpleRnnlm",
    "BackendNotAvailable",
    "TimeAffine",
    "TimeDropout",
    "TimeEmbedding",
    "TimeGRU",
    "TimeLSTM",
    "TimeMSELoss",
    "TimeRNN",
    "TimeSoftmaxWithLoss",
    "available_backends",
    "get_backend",
    "use",
]
