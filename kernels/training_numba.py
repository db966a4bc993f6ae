"""The rest of a training step for the numba backend: embedding scatter-add, softmax + cross-entropy."""
import numpy as np
from numba import njit


@njit(cache=True)
def embedding_scatter_add(dW, ids, dout):
    """dW[ids[m]] += dout[m] for every m (repeated ids accumulate)."""
    for m in range(ids.shape[0]):
        row = dW[ids[m]]
        src = dout[m]
        for d in range(src.shape[0]):
            row[d] += src[d]


@njit(cache=True)
def softmax_cross_entropy(scores, labels, dscores):
    """One pass per row: returns the mean loss over labels != -1; dscores gets its gradient."""
    M, V = scores.shape
    count = 0
    for m in range(M):
        if labels[m] != -1:
            count += 1
    scale = 1.0 / max(count, 1)
    total = 0.0
    for m in range(M):
        row = scores[m]
        out = dscores[m]
        label = labels[m]
        if label == -1:
            out[:] = 0
            continue
        top = row.max()
        s = 0.0
        for v in range(V):
            e = np.exp(row[v] - top)
            out[v] = e
            s += e
        total += np.log(s) - (row[label] - top)
        inv = scale / s
        for v in range(V):
            out[v] *= inv
        out[label] -= scale
    return total * scale
