"""Optimizers (SGD, Momentum, Adam) and gradient clipping, in place on backend arrays.

None of these reads a value back to the host, so a GPU training step never waits.
"""
import math

import numpy as np


def clip_grads(grads, max_norm, backend):
    """Scale all gradients together so their global L2 norm is at most ``max_norm`` (the book's rule)."""
    xp = backend.xp
    norm = xp.sqrt(backend.sum_of_squares(grads))
    scale = xp.minimum(max_norm / (norm + 1e-6), 1.0)
    for g in grads:
        backend.scale_(g, scale)


class Optimizer:
    """``update(params, grads)`` changes params in place; ``lr`` may be changed between updates."""

    slots = ()  # names of per-parameter state arrays

    def __init__(self, lr):
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr}")
        self.lr = float(lr)
        self.state = {}

    def _slot(self, name, k, like, backend):
        key = f"{name}{k}"
        if key not in self.state:
            self.state[key] = backend.xp.zeros_like(like)
        return self.state[key]

    def state_dict(self, backend):
        """Host copies of the optimizer's arrays and scalars, for checkpoints."""
        arrays = {k: np.array(backend.to_numpy(v)) for k, v in self.state.items() if k != "t"}  # a snapshot
        return {"lr": self.lr, "t": self.state.get("t", 0), "arrays": arrays}

    def load_state_dict(self, d, backend):
        self.lr = float(d["lr"])
        self.state = {k: backend.asarray(np.array(v)) for k, v in d["arrays"].items()}
        self.state["t"] = int(d["t"])


class SGD(Optimizer):
    def update(self, params, grads, backend):
        for p, g in zip(params, grads):
            backend.axpy_(-self.lr, g, p)


class Momentum(Optimizer):
    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr)
        self.momentum = momentum

    def update(self, params, grads, backend):
        for k, (p, g) in enumerate(zip(params, grads)):
            v = self._slot("v", k, p, backend)
            v *= self.momentum
            v -= self.lr * g
            p += v


class Adam(Optimizer):
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def update(self, params, grads, backend):
        t = self.state["t"] = self.state.get("t", 0) + 1
        step = self.lr * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        for k, (p, g) in enumerate(zip(params, grads)):
            m = self._slot("m", k, p, backend)
            v = self._slot("v", k, p, backend)
            m += (1 - self.beta1) * (g - m)
            v += (1 - self.beta2) * (g * g - v)
            p -= step * m / (backend.xp.sqrt(v) + self.eps)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}
