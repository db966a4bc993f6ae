"""Central finite differences on backend arrays, in place (works for device arrays too)."""
import numpy as np


def numerical_grad(loss, x, backend, eps=1e-6):
    """d loss() / d x by central differences; ``loss`` re-runs the forward and returns a scalar."""
    host = backend.to_numpy(x).copy()
    grad = np.zeros_like(host)
    for idx in np.ndindex(host.shape):
        x[idx] = host[idx] + eps
        plus = float(loss())
        x[idx] = host[idx] - eps
        minus = float(loss())
        x[idx] = host[idx]
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def assert_close_grad(numeric, analytic, what, rtol=1e-6):
    """Norm-wise relative error, so near-zero entries do not blow up the ratio."""
    analytic = np.asarray(analytic)
    scale = max(np.linalg.norm(numeric), np.linalg.norm(analytic), 1e-12)
    err = np.linalg.norm(numeric - analytic) / scale
    assert err <= rtol, f"{what}: relative gradient error {err:.2e} > {rtol:.0e}"
