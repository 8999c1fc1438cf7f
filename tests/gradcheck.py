"""Central finite differences, shared by the gradient tests of the reference and of the adapters."""
from __future__ import annotations

import numpy as np
import pytest

EPS, RTOL, ATOL = 1e-6, 1e-6, 1e-8


def fd_check(name: str, array: np.ndarray, grad: np.ndarray, loss, entries) -> None:
    """Central differences of `loss()` w.r.t. the given entries of `array` (perturbed in place, then restored),
    each against the analytic `grad` at that entry (float64 inputs)."""
    for idx in entries:
        keep = array[idx]
        array[idx] = keep + EPS
        up = loss()
        array[idx] = keep - EPS
        down = loss()
        array[idx] = keep
        fd = (up - down) / (2 * EPS)
        assert grad[idx] == pytest.approx(fd, rel=RTOL, abs=ATOL), f"{name}{idx}: analytic {grad[idx]} vs FD {fd}"
