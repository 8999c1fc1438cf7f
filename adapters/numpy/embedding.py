"""The NumPy float64 reference embeddings: the oracle every framework's embedding strategies are compared with.

Each row is handled unpadded: only its valid token ids are ever read, so padded ids (negative, out of range) cannot
leak. Gradients are written by hand (a scatter-add per valid token), independent of every framework's autodiff.
Results come back in the table's dtype, computed in float64.

max: each output entry comes from one valid position; its gradient is split evenly among the valid positions that
attain the maximum (TensorFlow's and JAX's convention). Ties between *different* table rows need equal table
entries; ties of the same token repeated in a row send the same total to that row under any rule.
"""
from __future__ import annotations

import numpy as np

from adapters.spec import Strategy, strategy_table


def _ids(tokens, lengths: np.ndarray, side: str) -> list[np.ndarray]:
    """Each row's valid token ids, unpadded."""
    tokens = np.asarray(tokens)
    T = tokens.shape[1]
    return [tokens[b, :n] if side == "right" else tokens[b, T - n:] for b, n in enumerate(lengths)]


def _steps(T: int, n: int, side: str) -> range:
    """The padded positions of a row's n valid steps."""
    return range(n) if side == "right" else range(T - n, T)


def _embed(tokens, table, lengths, side, cot):
    table = np.asarray(table)
    t64 = table.astype(np.float64)
    B, T = np.shape(tokens)
    out, grad = np.zeros((B, T, table.shape[1])), np.zeros(t64.shape)
    for b, ids in enumerate(_ids(tokens, lengths, side)):
        for i, t in zip(ids, _steps(T, len(ids), side), strict=True):
            out[b, t] = t64[i]
            if cot is not None:
                grad[i] += cot[b, t]
    return out.astype(table.dtype), grad.astype(table.dtype)


def _bag(tokens, table, lengths, side, mode, cot):
    table = np.asarray(table)
    t64 = table.astype(np.float64)
    out, grad = np.zeros((len(lengths), table.shape[1])), np.zeros(t64.shape)
    for b, ids in enumerate(_ids(tokens, lengths, side)):
        if not len(ids):
            continue  # an empty row gives 0 and no gradient
        rows = t64[ids]  # [n, E]
        if mode == "max":
            out[b] = rows.max(axis=0)
            share = (rows == out[b]) / (rows == out[b]).sum(axis=0)  # [n, E], ties split evenly
        else:
            out[b] = rows.sum(axis=0) / (len(ids) if mode == "mean" else 1)
            share = np.full(rows.shape, 1.0 / len(ids) if mode == "mean" else 1.0)
        if cot is not None:
            np.add.at(grad, ids, share * cot[b])
    return out.astype(table.dtype), grad.astype(table.dtype)


def _run(op, tokens, table, lengths, side, mode, cot):
    cot = None if cot is None else np.asarray(cot, dtype=np.float64)
    if op == "embed":
        return _embed(tokens, table, lengths, side, cot)
    return _bag(tokens, table, lengths, side, mode, cot)


def _forward(adapter, op, tokens, table, lengths, side, mode, device):
    return _run(op, tokens, table, lengths, side, mode, None)[0]


def _vjp(adapter, op, tokens, table, lengths, cotangent, side, mode, device):
    return _run(op, tokens, table, lengths, side, mode, cotangent)


STRATEGIES = strategy_table(
    Strategy("reference", _forward, _vjp, doc="per-row loop over valid ids, hand-written scatter-add, float64",
             kernel="numpy-loop"),
)
#: the reference has no native behaviours: it *is* the contract
NATIVES: dict = {}
