"""Named length profiles: how ragged a batch is. Deterministic in (profile, batch, max_len, seed).

Every profile returns int64 lengths in [1, max_len] (edge cases with zero-length rows live in `harness.data`), so a
sweep's padded length T = max_len is meaningful. `padding_fraction` is the share of padded steps in [B, max_len],
the figure that explains most of the speed differences between strategies.
"""
from __future__ import annotations

import numpy as np

PROFILES = ("equal", "uniform", "lognormal", "zipf", "outlier")


def _rng(profile: str, batch: int, max_len: int, seed: int) -> np.random.Generator:
    # Seed from every argument, so two profiles with the same seed do not share draws.
    return np.random.default_rng([seed, batch, max_len, PROFILES.index(profile)])


def lengths_for(profile: str, batch: int, max_len: int, seed: int = 0) -> np.ndarray:
    """Lengths for `batch` sequences of at most `max_len` steps under `profile`."""
    if profile not in PROFILES:
        raise ValueError(f"unknown length profile {profile!r}; expected one of {list(PROFILES)}")
    if batch < 1 or max_len < 1:
        raise ValueError(f"batch and max_len must be >= 1, got batch={batch}, max_len={max_len}")
    rng = _rng(profile, batch, max_len, seed)
    if profile == "equal":
        lengths = np.full(batch, max_len)
    elif profile == "uniform":
        lengths = rng.integers(1, max_len + 1, size=batch)
    elif profile == "lognormal":
        # median a quarter of max_len, a long right tail; typical of sentence lengths
        lengths = np.rint(rng.lognormal(np.log(max(max_len / 4, 1)), 0.6, size=batch))
    elif profile == "zipf":
        # p(L) ~ 1/L^1.2 on 1..max_len: most sequences very short, a few very long
        support = np.arange(1, max_len + 1)
        p = support ** -1.2
        lengths = rng.choice(support, size=batch, p=p / p.sum())
    else:  # outlier: all short but one at the maximum
        lengths = np.full(batch, max(1, max_len // 16))
        lengths[rng.integers(batch)] = max_len
    return np.clip(lengths, 1, max_len).astype(np.int64)


def case_lengths(case: dict, batch: int, max_len: int) -> np.ndarray:
    """The lengths of a bench case: a named profile, or (profile "file:...") draws from the user's file."""
    if case.get("lengths_file"):
        from harness.lengths import sample

        return sample(case, batch, max_len, case.get("seed", 0))
    return lengths_for(case["profile"], batch, max_len, case.get("seed", 0))


def padding_fraction(lengths: np.ndarray, max_len: int) -> float:
    """Share of padded steps in a [B, max_len] batch."""
    lengths = np.asarray(lengths)
    return float(1.0 - lengths.sum() / (lengths.size * max_len))
