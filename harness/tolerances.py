"""The one tolerance table: keyed by dtype and device.

A result passes when max|actual - expected| <= atol + rtol * max|expected| over the compared quantity, a norm-wise
criterion (elementwise rtol is meaningless for entries that cancel to ~0). float32 values follow from ~1e-7 rounding
per operation accumulated over tens of recurrent steps; float64 is tight. TF32 is off in every adapter, so GPU
float32 shares the CPU row's order of magnitude.
"""
from __future__ import annotations

from typing import NamedTuple


class Tol(NamedTuple):
    rtol: float
    atol: float


TABLE = {
    ("float64", "cpu"): Tol(rtol=1e-9, atol=1e-11),
    ("float64", "gpu"): Tol(rtol=1e-9, atol=1e-11),
    ("float32", "cpu"): Tol(rtol=1e-4, atol=1e-5),
    ("float32", "gpu"): Tol(rtol=2e-4, atol=2e-5),
}


def tolerance(dtype: str, device: str = "cpu") -> Tol:
    key = (str(dtype), device)
    if key not in TABLE:
        raise ValueError(f"no tolerance for dtype/device {key}; known: {sorted(TABLE)}")
    return TABLE[key]
