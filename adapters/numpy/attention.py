"""The NumPy float64 reference attention: the oracle every framework's attention strategies are compared with.

Obvious on purpose: one (row, query head) at a time on that row's valid steps only (padding, even NaN, is never
read), a plain softmax, and a hand-written backward (dV = Pᵀ dO, dS = P ∘ (dP − rowsum(dP ∘ P)), dQ = s·dS K,
dK = s·dSᵀ Q), independent of every framework's autodiff. A query with no readable key gets output 0 and no
gradient, as the contract says.
"""
from __future__ import annotations

import numpy as np

from adapters.spec import AttnOut, Strategy, strategy_table


def _steps(T: int, n: int, side: str) -> slice:
    """The valid steps of a row of length n padded to T."""
    return slice(0, n) if side == "right" else slice(T - n, T)


def _head(q, k, v, scale: float, causal: bool, dout=None):
    """One (row, head): q [n, Dh], k/v [m, Dh] -> (out, (dq, dk, dv) or None). Causal: key j <= query i."""
    n, m = q.shape[0], k.shape[0]
    out = np.zeros_like(q)
    grads = (np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)) if dout is not None else None
    if n == 0 or m == 0:
        return out, grads
    s = scale * (q @ k.T)
    allowed = np.tril(np.ones((n, m), bool)) if causal else np.ones((n, m), bool)
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out = p @ v
    if dout is None:
        return out, None
    dv = p.T @ dout
    dp = dout @ v.T
    ds = p * (dp - (dp * p).sum(axis=1, keepdims=True))
    return out, (scale * ds @ k, scale * ds.T @ q, dv)


def _run(q, k, v, q_lengths, kv_lengths, cotangent, causal, side, scale):
    """Every row and query head in float64; results written back aligned like q, in q's dtype."""
    q, k, v = (np.asarray(x) for x in (q, k, v))
    dtype = q.dtype
    B, Tq, Hq, _ = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    out = np.zeros(q.shape)
    grads = None if cotangent is None else {"q": np.zeros(q.shape), "k": np.zeros(k.shape), "v": np.zeros(v.shape)}
    for b in range(B):
        sq, sk = _steps(Tq, int(q_lengths[b]), side), _steps(Tk, int(kv_lengths[b]), side)
        for h in range(Hq):
            kh = h // group
            dout = None if cotangent is None else np.asarray(cotangent[b, sq, h], np.float64)
            o, g = _head(q[b, sq, h].astype(np.float64), k[b, sk, kh].astype(np.float64),
                         v[b, sk, kh].astype(np.float64), scale, causal, dout)
            out[b, sq, h] = o
            if g is not None:
                grads["q"][b, sq, h] += g[0]
                grads["k"][b, sk, kh] += g[1]
                grads["v"][b, sk, kh] += g[2]
    result = AttnOut(out.astype(dtype), "numpy-loop")
    return result, None if grads is None else {name: g.astype(dtype) for name, g in grads.items()}


def _forward(adapter, q, k, v, q_lengths, kv_lengths, causal, side, scale, device):
    return _run(q, k, v, q_lengths, kv_lengths, None, causal, side, scale)[0]


def _vjp(adapter, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, scale, device):
    return _run(q, k, v, q_lengths, kv_lengths, np.asarray(cotangent), causal, side, scale)


STRATEGIES = strategy_table(
    Strategy("reference", _forward, _vjp, doc="per-row, per-head loop on valid steps, hand-written backward, float64",
             kernel="numpy-loop"),
)

#: the reference has no native behaviours: it *is* the contract
NATIVES: dict = {}


class NumpyAttention:
    """Mixin marker: the reference's attention lives in `STRATEGIES` (nothing per-instance to hold)."""
