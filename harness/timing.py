"""The one timing module every entry point uses (varlen bench, asv, pytest-benchmark).

`measure` expects a callable whose first (compiling) call already happened in setup (`harness.bench.prepare`
times that call: it is the compile figure). It warms up once more, then times repeats of `number` calls each,
every one ending in the adapter's `sync`. The adapter's compile counter is read around the timed region: a retrace
there is reported, never silently timed.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: how long a case's timed calls last (at least `min_repeats` samples): a sweep's default, and `varlen bench
#: --quick`'s (`make demo`: its sweep took ~100 s less on 2 cores; the speedups it prints are timed again side by
#: side, harness.paired, for their own 2 s a pair). A bench record carries its own (`budget_s`).
BUDGET_S, QUICK_BUDGET_S = 1.5, 0.75


@dataclass
class Timing:
    median_s: float
    p25_s: float
    p75_s: float
    repeats: int
    number: int
    retraced: bool


def measure(call: Callable[[], object], *, compile_count: Callable[[], int] = lambda: 0, min_repeats: int = 5,
            max_repeats: int = 30, budget_s: float = BUDGET_S, min_sample_s: float = 2e-3) -> Timing:
    """Median seconds of one `call()` (which must end in a sync), with its spread."""
    t = time.perf_counter()
    call()
    warm = max(time.perf_counter() - t, 1e-9)
    number = max(1, math.ceil(min_sample_s / warm))  # batch tiny ops so a sample is well above timer noise
    before = compile_count()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_repeats or (time.perf_counter() - start < budget_s and len(samples) < max_repeats):
        t = time.perf_counter()
        for _ in range(number):
            call()
        samples.append((time.perf_counter() - t) / number)
    retraced = compile_count() != before
    p25, med, p75 = np.percentile(samples, [25, 50, 75])
    return Timing(float(med), float(p25), float(p75), len(samples), number, retraced)
