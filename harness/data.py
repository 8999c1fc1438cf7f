"""Deterministic NumPy inputs for every op, built from a seed; the edge cases every gate runs."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from adapters.spec import RnnSpec, valid_mask


class Edge(NamedTuple):
    lengths: tuple[int, ...]
    maxlen: int


# name -> (lengths, padded length T). Unsorted with ties on purpose: packing must sort stably.
EDGE_CASES: dict[str, Edge] = {
    "zero_length": Edge((3, 0, 4, 0, 1), 4),
    "length_one": Edge((1, 1, 1), 1),
    "all_equal": Edge((4, 4, 4, 4), 4),
    "one_outlier": Edge((1, 1, 7, 1, 1, 1), 7),
    "batch_one": Edge((5,), 5),
    "ties_unsorted": Edge((2, 5, 2, 3, 5, 1), 6),
    "longer_T": Edge((2, 3, 1), 6),
}


def rng_for(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, *salt])


def ragged(lengths, feat: tuple[int, ...] = (3,), *, seed: int = 0, dtype: str = "float32") -> list[np.ndarray]:
    """One array [L_i, *feat] per length, standard normal values."""
    rng = rng_for(seed, 1)
    return [rng.standard_normal((int(n), *feat)).astype(dtype) for n in lengths]


def padded(lengths, maxlen: int, feat: tuple[int, ...] = (3,), *, side: str = "right", seed: int = 0,
           dtype: str = "float32", fill: float = 0.0) -> np.ndarray:
    """[B, maxlen, *feat] with the `ragged` values at valid steps and `fill` (e.g. NaN) in padding."""
    lengths = np.asarray(lengths, dtype=np.int64)
    valid = valid_mask(lengths, maxlen, side)
    out = np.full((lengths.size, maxlen, *feat), fill, dtype=dtype)
    rows = ragged(lengths, feat, seed=seed, dtype=dtype)
    for b, row in enumerate(rows):
        out[b, valid[b]] = row
    return out


def cotangents(spec: RnnSpec, batch: int, maxlen: int, *, seed: int = 0, dtype: str = "float32") -> dict:
    """Random cotangents for outputs, h_n (and c_n), padding included: values there must be ignored."""
    rng = rng_for(seed, 2)
    D, H, L = spec.num_directions, spec.hidden_size, spec.num_layers
    cot = {"outputs": rng.standard_normal((batch, maxlen, D * H)).astype(dtype),
           "h_n": rng.standard_normal((L * D, batch, H)).astype(dtype)}
    if spec.cell == "lstm":
        cot["c_n"] = rng.standard_normal((L * D, batch, H)).astype(dtype)
    return cot
