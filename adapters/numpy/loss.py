"""The NumPy float64 reference masked losses: the oracle every framework's loss strategies are compared with.

Only valid steps are ever read (each row's valid slice, one row at a time), so nothing in padding can leak; the
per-step loss is the log-sum-exp-stable textbook formula and its gradient is written by hand (softmax - onehot,
sigmoid - label), independent of every framework's autodiff. Each reduction is spelled out as its definition
(sum / N, mean of row means), not through the frameworks' shared weights. Results come back in the logits' dtype.
"""
from __future__ import annotations

import numpy as np

from adapters.spec import Strategy, strategy_table


def _valid(T: int, n: int, side: str) -> slice:
    """The valid time slice of a row of length n."""
    return slice(0, n) if side == "right" else slice(T - n, T)


def _step_loss_grad(kind: str, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loss per step [L], d loss / d x [L, ...]) of one row's valid steps, float64."""
    if kind == "softmax_ce":
        m = x.max(axis=-1, keepdims=True)
        e = np.exp(x - m)
        s = e.sum(axis=-1, keepdims=True)
        loss = (m[:, 0] + np.log(s[:, 0])) - np.take_along_axis(x, z[:, None], axis=-1)[:, 0]
        grad = e / s
        grad[np.arange(len(z)), z] -= 1.0
        return loss, grad
    # sigmoid_bce, stable: max(x, 0) - x*z + log(1 + exp(-|x|)); d/dx = sigmoid(x) - z; a step sums its C labels
    loss = np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))
    grad = 1.0 / (1.0 + np.exp(-x)) - z
    return (loss.sum(axis=-1) if loss.ndim == 2 else loss), grad


def _run(logits, targets, lengths, kind, reduction, side):
    """(loss, grad) in logits' dtype."""
    x = np.asarray(logits)
    x64 = x.astype(np.float64)
    z = np.asarray(targets)
    z = z.astype(np.int64) if kind == "softmax_ce" else z.astype(np.float64)
    B, T = x.shape[:2]
    row_sum, grad = np.zeros(B), np.zeros(x.shape)
    for b, n in enumerate(lengths):
        if n:
            t = _valid(T, int(n), side)
            loss, grad[b, t] = _step_loss_grad(kind, x64[b, t], z[b, t])
            row_sum[b] = loss.sum()
    n = lengths.astype(np.float64)
    if reduction == "sum":
        scale = np.ones(B)
    elif reduction == "token_mean":  # sum over valid tokens / their count; 0 when there is none
        scale = np.full(B, 1.0 / n.sum() if n.sum() else 0.0)
    else:  # sequence_mean: mean over non-empty rows of each row's own mean
        nonempty = n > 0
        scale = np.where(nonempty, 1.0 / np.where(nonempty, n, 1.0), 0.0) / max(int(nonempty.sum()), 1)
    total = float((row_sum * scale).sum())
    grad *= scale.reshape(B, *([1] * (x.ndim - 1)))
    return np.asarray(total, dtype=x.dtype), grad.astype(x.dtype)


def _forward(adapter, logits, targets, lengths, kind, reduction, side, device):
    return _run(logits, targets, lengths, kind, reduction, side)[0]


def _vjp(adapter, logits, targets, lengths, kind, reduction, side, device):
    return _run(logits, targets, lengths, kind, reduction, side)


STRATEGIES = strategy_table(
    Strategy("reference", _forward, _vjp, doc="float64 per-row loop, hand-written gradient", kernel="numpy-loop"),
)
