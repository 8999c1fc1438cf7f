"""The adapter's overhead over calling the framework directly: the default RNN strategy, forward and forward +
backward, against the same framework code written the way a user would (compiled where users compile:
`jax.jit`, `tf.function`), `Adapter.raw_rnn`.

Both callables run interleaved in one process (alternating which goes first), so machine noise hits both alike;
the figure is the median of the per-round ratios, adapter over raw (`harness.paired.summary`; records before
2026-12-05 hold the ratio of the medians). Frameworks whose adapter offers no `raw_rnn` are skipped.
"""
from __future__ import annotations

import sys
import time

from adapters.spec import RnnSpec, init_params, map_params
from harness import records, results
from harness.axes import HEADLINE
from harness.data import cotangents, padded
from harness.paired import summary
from harness.proc import die_with_parent
from harness.profiles import lengths_for


def measure(framework: str, device: str = "cpu", backward: bool = False, repeats: int = 30) -> dict | None:
    import adapters

    a = adapters.get(framework)
    B, T, H = HEADLINE["batch"], HEADLINE["max_len"], HEADLINE["hidden"]
    spec = RnnSpec(HEADLINE["cell"], H, H)
    L = lengths_for("lognormal", B, T)
    x = a.asarray(padded(L, T, (H,), dtype="float32"), device)
    params = map_params(lambda v: a.asarray(v, device), init_params(spec))
    cot = {k: a.asarray(v, device) for k, v in cotangents(spec, B, T).items()}
    try:
        raw = a.raw_rnn(spec, params, x, L, device, backward=backward, cotangents=cot)
    except NotImplementedError:
        return None
    if backward:
        ours = lambda: a.rnn_vjp(spec, params, x, L, cot, device=device)
    else:
        ours = lambda: a.rnn(spec, params, x, L, device=device)
    calls = {"raw": lambda: (raw(), a.sync(device)), "adapter": lambda: (ours(), a.sync(device))}
    times: dict[str, list[float]] = {"raw": [], "adapter": []}
    warm = {name: [call(), call()][-1][0] for name, call in calls.items()}  # warm-up, compiles included
    kernel = (warm["adapter"][0] if backward else warm["adapter"]).kernel  # rnn_vjp: (RnnOut, grads)
    for i in range(repeats):
        for name in (("raw", "adapter") if i % 2 else ("adapter", "raw")):
            t = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t)
    timed = summary(times["adapter"], times["raw"])  # "base" = the adapter: its ratio is adapter over raw
    raw_s, ours_s = timed["median_s"], timed["base_median_s"]
    return records.make("overhead", framework=framework, version=a.version, device=device,
                        strategy=a.rnn_strategies(spec.cell)[0], kernel=kernel,
                        op="rnn_forward_backward" if backward else "rnn_forward", batch=B, max_len=T, hidden=H,
                        cell=spec.cell, profile="lognormal", raw_median_s=raw_s, adapter_median_s=ours_s,
                        overhead_ratio=timed["ratio"], repeats=repeats, **a.device_fields(device))


def line(rec: dict) -> str:
    """The printed line of an overhead record: which strategy and kernel the adapter ran, on which device."""
    return (f"overhead {rec['framework']} {rec['strategy']} [{rec['kernel']}] {rec['op']} ({rec['device']}): "
            f"adapter {rec['adapter_median_s'] * 1e3:.2f} ms vs raw {rec['raw_median_s'] * 1e3:.2f} ms -> ratio "
            f"{rec['overhead_ratio']:.3f}")


if __name__ == "__main__":
    die_with_parent()
    framework, out, device = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "cpu"
    for backward in (False, True):
        rec = measure(framework, device, backward)
        if rec is None:
            print(f"{framework}: no raw baseline (adapter offers no raw_rnn)")
            break
        results.append(out, rec)
        print(line(rec))
