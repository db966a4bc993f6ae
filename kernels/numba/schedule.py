"""How threads share work: even ranges, ranges on cache-line boundaries, a recurrence step's shares."""
import numpy as np

from .jit import kernel


@kernel
def even_chunks(n, parts):
    """Bounds of ``parts`` nearly equal ranges of range(n)."""
    bounds = np.empty(parts + 1, dtype=np.int64)
    for c in range(parts + 1):
        bounds[c] = c * n // parts
    return bounds


@kernel
def line_chunks(n, threads):
    """Bounds splitting n columns between threads on 64-byte boundaries (for 4-byte elements;
    16 columns of 8 bytes are two lines): a cache line two cores keep writing bounces between
    them, which made a column sum 10x slower."""
    lines = (n + 15) // 16
    parts = max(1, min(threads, lines))
    bounds = np.empty(parts + 1, dtype=np.int64)
    for c in range(parts + 1):
        bounds[c] = min(n, c * lines // parts * 16)
    return bounds


@kernel(inline="always")
def share(c, rows, units):
    """Thread c's part of a recurrence step: rows r0..r1 of the batch and unit group g.

    ``rows`` and ``units`` are bounds (``even_chunks``); one of them has a single range: the
    threads split either the batch rows or the hidden units."""
    Q = len(units) - 1
    r = c // Q
    return rows[r], rows[r + 1], c % Q


@kernel(inline="always")
def thread_columns(H, gates, units, C):
    """The columns of each group of units, gate by gate, padded to whole panels.

    Returns (cols, first): group g owns panels first[g] .. first[g+1] and in them the columns
    q*H + u for each gate q and unit units[g] <= u < units[g+1], in that order."""
    Q = len(units) - 1
    first = np.zeros(Q + 1, dtype=np.int64)
    for g in range(Q):
        first[g + 1] = first[g] + (gates * (units[g + 1] - units[g]) + C - 1) // C
    cols = np.full(first[Q] * C, -1, dtype=np.int64)
    for g in range(Q):
        at = first[g] * C
        for q in range(gates):
            for u in range(units[g], units[g + 1]):
                cols[at] = q * H + u
                at += 1
    return cols, first
