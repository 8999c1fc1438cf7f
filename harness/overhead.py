"""The adapter's overhead over calling the framework directly (the default RNN strategy, forward).

Both callables run interleaved in one process (alternating which goes first), so machine noise hits both alike;
the figure is the ratio of the medians. Frameworks whose adapter offers no `raw_rnn` are skipped.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from harness import results
from harness.data import padded
from harness.profiles import lengths_for
from harness.spec import RnnSpec, init_params, map_params
from suites.axes import HEADLINE


def measure(framework: str, repeats: int = 40) -> dict | None:
    import adapters

    a = adapters.get(framework)
    B, T, H = HEADLINE["batch"], HEADLINE["max_len"], HEADLINE["hidden"]
    spec = RnnSpec(HEADLINE["cell"], H, H)
    L = lengths_for("lognormal", B, T)
    x = a.asarray(padded(L, T, (H,), dtype="float32"))
    params = map_params(a.asarray, init_params(spec))
    try:
        raw = a.raw_rnn(spec, params, x, L)
    except NotImplementedError:
        return None
    ours = lambda: a.rnn(spec, params, x, L)
    calls = {"raw": lambda: (raw(), a.sync()), "adapter": lambda: (ours(), a.sync())}
    times: dict[str, list[float]] = {"raw": [], "adapter": []}
    for name in calls:  # warm-up
        calls[name]()
        calls[name]()
    for i in range(repeats):
        for name in (("raw", "adapter") if i % 2 else ("adapter", "raw")):
            t = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t)
    raw_s, ours_s = float(np.median(times["raw"])), float(np.median(times["adapter"]))
    return {"source": "overhead", "framework": framework, "version": a.version,
            "strategy": a.rnn_strategies(spec.cell)[0], "op": "rnn_forward", "batch": B, "max_len": T, "hidden": H,
            "cell": spec.cell, "profile": "lognormal", "raw_median_s": raw_s, "adapter_median_s": ours_s,
            "overhead_ratio": ours_s / raw_s, "repeats": repeats, **results.machine(), "time": time.time()}


if __name__ == "__main__":
    rec = measure(sys.argv[1])
    if rec is not None:
        results.append(sys.argv[2], rec)
        print(f"{rec['framework']} {rec['strategy']}: adapter {rec['adapter_median_s'] * 1e3:.2f} ms vs raw "
              f"{rec['raw_median_s'] * 1e3:.2f} ms -> ratio {rec['overhead_ratio']:.3f}")
    else:
        print(f"{sys.argv[1]}: no raw baseline (adapter offers no raw_rnn)")
