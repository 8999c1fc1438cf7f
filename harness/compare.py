"""Comparing a framework's result with the reference, NaN-strict."""
from __future__ import annotations

import numpy as np

from harness.tolerances import Tol


def max_abs_err(actual, expected) -> float:
    """max|actual - expected|; inf on a shape mismatch or a NaN/inf where the reference is finite."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if not np.isfinite(a[np.isfinite(e)]).all():
        return float("inf")
    return float(np.max(np.abs(a - e)))


def close(actual, expected, tol: Tol) -> tuple[bool, float]:
    """(equivalent, max_abs_err) under the norm-wise criterion of `harness.tolerances`."""
    err = max_abs_err(actual, expected)
    e = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    return bool(err <= tol.atol + tol.rtol * scale), err


def exactly_equal(actual, expected) -> tuple[bool, float]:
    """For integer/bool results (masks, lengths, indices): exact equality; error = number of differing entries."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        return False, float("inf")
    diff = int(np.count_nonzero(a != e))
    return diff == 0, float(diff)


PARAM_KEYS = ("w_ih", "w_hh", "b_ih", "b_hh")


def flat_grads(g: list, to_numpy) -> np.ndarray:
    """Every parameter gradient of a params nest in one vector (fixed order), for one max-error figure."""
    return np.concatenate([np.asarray(to_numpy(d[k])).ravel() for layer in g for d in layer for k in PARAM_KEYS])
