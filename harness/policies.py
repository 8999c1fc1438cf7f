"""Batching policies: how a dataset of N sequences is cut into batches, which decides a batch's padding before any
model runs. Each policy turns (lengths, batch size or token budget, seed) into a list of index batches, computed
once here, on the host, so every framework sees identical batches. A policy only reorders work: every sequence
appears in exactly one batch.

- random: a seeded permutation cut into batches of `batch_size` (what a plain shuffled DataLoader does);
- sorted: sorted by length, cut into batches, the batch order shuffled (minimal padding, no randomness inside);
- bucketed: megabatch-then-sort, as the common trainers' length-grouped samplers do: a seeded permutation cut into
  megabatches of `batch_size * MEGABATCH` sequences, each sorted by length (longest first) and cut into batches;
- token_budget: sorted by length, batches grown while batch size x longest length stays within `budget` padded
  tokens (translation toolkits' max_tokens), the batch order shuffled.
"""
from __future__ import annotations

import numpy as np

POLICIES = ("random", "sorted", "bucketed", "token_budget")
MEGABATCH = 50  # the megabatch multiplier of the usual length-grouped samplers


def batches(policy: str, lengths: np.ndarray, *, batch_size: int, seed: int = 0,
            budget: int | None = None) -> list[np.ndarray]:
    """Index batches covering range(len(lengths)) exactly once."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if policy not in POLICIES:
        raise ValueError(f"unknown batching policy {policy!r}; expected one of {list(POLICIES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng([seed, POLICIES.index(policy)])
    n = lengths.size
    if policy == "random":
        return _cut(rng.permutation(n), batch_size)
    if policy == "sorted":
        out = _cut(np.argsort(-lengths, kind="stable"), batch_size)
        return [out[i] for i in rng.permutation(len(out))]
    if policy == "bucketed":
        out = []
        for mega in _cut(rng.permutation(n), batch_size * MEGABATCH):
            out += _cut(mega[np.argsort(-lengths[mega], kind="stable")], batch_size)
        return out
    budget = budget or batch_size * int(max(lengths.max(), 1))
    order = np.argsort(-lengths, kind="stable")
    out, current, longest = [], [], 0
    for i in order:
        grown = max(longest, int(lengths[i]), 1)
        if current and (len(current) + 1) * grown > budget:
            out.append(np.array(current))
            current, grown = [], max(int(lengths[i]), 1)
        current.append(int(i))
        longest = grown
    if current:
        out.append(np.array(current))
    return [out[i] for i in rng.permutation(len(out))]


def _cut(order: np.ndarray, size: int) -> list[np.ndarray]:
    return [order[i:i + size] for i in range(0, order.size, size)]


def realised_padding(lengths: np.ndarray, index_batches: list[np.ndarray]) -> float:
    """Share of padded steps when every batch is padded to its own longest sequence."""
    padded = sum(len(b) * int(lengths[b].max(initial=0)) for b in index_batches)
    return float(1 - lengths.sum() / padded) if padded else 0.0


def shapes(lengths: np.ndarray, index_batches: list[np.ndarray]) -> set[tuple[int, int]]:
    """The distinct (batch, padded length) shapes: what a jit-compiling framework compiles once each."""
    return {(len(b), int(lengths[b].max(initial=0))) for b in index_batches}
