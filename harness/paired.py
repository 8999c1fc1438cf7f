"""Speedups timed side by side.

A sweep times every case on its own, one after another, so a strategy and the padded baseline it is compared with
may be timed minutes apart; on a shared machine the same call drifts by up to ~20-30% over such a gap (measured on
the 2-core CI machine: one torch LSTM call 24-29 ms across three runs of a minute). The ratios a sweep ends with
(`harness.speedups`) are therefore timed again in pairs: for each (shape, length profile) the fastest strategy and
the framework's padded baseline (its fastest strategy on `equal` lengths), and on `equal` lengths each profile's
winner against that baseline (what it costs with no padding to skip), are prepared in one worker process and
called in alternation (blocks of calls, each after one untimed call of its own), the order flipped every round, so
whatever slows the machine down slows both alike. The ratio is the median of the per-round ratios (each round's
baseline time over its strategy time, timed moments apart: drift common to both cancels), the spread their
25th-75th percentile; the two medians are kept as the times. (Up to 2026-12-05 the ratio was that of the two
medians, which pairs nothing: in a CPU run of JAX's zipf LSTM it read 7.64x while its rounds read 9.37-10.35x.)
One `paired` record per pair, appended as soon as it is measured; the CLI prints it beside the sweep's ratio and
the report shows it beside the recommendation.

The parent never imports a framework: one worker per framework (`python -m harness.paired worker FW OUT`, the pairs
as JSON on stdin, a `DONE i` / `SKIP i why` line per pair). A pair that fails is skipped with its reason (the
sweep's own ratio still stands); a worker that dies or outlasts its time loses only the pairs not yet recorded.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from harness import records, results
from harness.proc import die_with_parent, spawn, stderr_tail
from harness.speedups import SHAPE

#: how long one pair is timed (after its first calls), and the bounds on its rounds
BUDGET_S, MIN_ROUNDS, MAX_ROUNDS = 2.0, 8, 30
#: a sample (one call or several) lasts at least this long, so that tiny ops stay well above the timer's noise
MIN_SAMPLE_S = 2e-3
#: case fields a paired record carries over from the fastest strategy's bench record
CARRIED = ("cell", "hidden", "input_size", "num_layers", "bidirectional", "padding_fraction", "ideal_share")


def interleave(base: Callable[[], object], best: Callable[[], object], *, budget_s: float = BUDGET_S,
               min_rounds: int = MIN_ROUNDS, max_rounds: int = MAX_ROUNDS,
               clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time `base` and `best` (each ends in a sync) in alternating rounds, the order flipped every round:
    `summary` of the samples and {"rounds", "number" (calls per sample)}. Each is called once first (warm), and in
    every round each block of timed calls follows one untimed call of the same callable: the first call after the
    other one runs on caches and allocator free lists the other left, which measured JAX's time_sliced zipf 12%
    slower than back to back (ratio 4.96 alternating plainly, 5.71 with the untimed switch call, 5.61 timed one
    after the other; medians of 6 repeats, B=64 T=128 LSTM)."""
    calls = {"base": base, "best": best}
    warm = {}
    for name, call in calls.items():
        t = clock()
        call()
        warm[name] = max(clock() - t, 1e-9)
    number = max(1, math.ceil(MIN_SAMPLE_S / min(warm.values())))  # the same count for both: one shared sample
    samples: dict[str, list[float]] = {"base": [], "best": []}
    start = clock()
    rounds = 0
    while rounds < min_rounds or (rounds < max_rounds and clock() - start < budget_s):
        for name in (("base", "best") if rounds % 2 == 0 else ("best", "base")):
            calls[name]()  # the switch, untimed: the first call after the other one pays its cache/allocator effects
            t = clock()
            for _ in range(number):
                calls[name]()
            samples[name].append((clock() - t) / number)
        rounds += 1
    return {**summary(samples["base"], samples["best"]), "rounds": rounds, "number": number}


def summary(base_s, best_s) -> dict:
    """Round by round samples of the baseline and the strategy -> {"base_median_s", "median_s" (each one's median),
    "ratio", "ratio_p25", "ratio_p75" (the median and quartiles of the per-round ratios base / best), "ratio_of":
    "rounds" (how `ratio` was formed: records without it hold the ratio of the medians)}."""
    base_s, best_s = np.asarray(base_s, dtype=float), np.asarray(best_s, dtype=float)
    p25, mid, p75 = np.percentile(base_s / best_s, [25, 50, 75])
    return {"base_median_s": float(np.median(base_s)), "median_s": float(np.median(best_s)), "ratio": float(mid),
            "ratio_p25": float(p25), "ratio_p75": float(p75), "ratio_of": "rounds"}


def measure(adapter, base: dict, best: dict) -> dict:
    """Prepare both bench cases (a sweep's record carries every field of its case, and its case `key`) and time
    them side by side: the fields of one `paired` record."""
    from harness.bench import prepare

    a, b = prepare(adapter, base), prepare(adapter, best)
    timed = interleave(a.call, b.call)
    return {**{k: best.get(k) for k in SHAPE + CARRIED}, "profile": best["profile"], "strategy": best["strategy"],
            "kernel": b.kernel, "base_strategy": base["strategy"], "base_kernel": a.kernel, "key": best["key"],
            "base_key": base["key"], "version": adapter.version, **timed}


def worker(framework: str, out: str) -> None:
    """Time the [base, best] pairs given as JSON on stdin, appending each `paired` record to `out`."""
    import adapters

    adapter = adapters.get(framework)
    warmed = set()
    for i, (base, best) in enumerate(json.loads(sys.stdin.read())):
        try:
            if best["device"] not in warmed:
                adapter.warmup(best["device"])
                warmed.add(best["device"])
            results.append(out, records.make("paired", **measure(adapter, base, best),
                                             **adapter.device_fields(best["device"])))
            print(f"DONE {i}", flush=True)
        except Exception as e:  # noqa: BLE001 - one pair that fails is skipped with its reason, not a lost run
            print(f"SKIP {i} {type(e).__name__}: {e}"[:500], flush=True)


def run(pairs: list[tuple[dict, dict]], out: str, *, timeout: float = 600, quiet: bool = False) -> list[dict]:
    """Time `pairs` side by side, one worker per framework; returns the `paired` records this run appended.
    `timeout`: seconds per pair (plus 180 s for the worker's imports and warm-up) before the worker is killed."""
    run_id = records.run_id()
    by_fw: dict[str, list] = {}
    for base, best in pairs:
        by_fw.setdefault(best["framework"], []).append([base, best])
    from rich.progress import Progress

    with Progress(disable=quiet, transient=True) as bar:
        task = bar.add_task("varlen bench: side by side", total=len(pairs))
        for fw, mine in by_fw.items():
            proc = spawn("harness.paired", "worker", fw, out, stdin_text=json.dumps(mine), framework=fw)
            tail = stderr_tail(proc)
            killer = threading.Timer(180 + timeout * len(mine), proc.kill)
            killer.start()
            try:
                for line in proc.stdout:
                    if line.startswith(("DONE", "SKIP")):
                        bar.update(task, advance=1)
                    if line.startswith("SKIP") and not quiet:
                        _, i, why = line.rstrip().split(" ", 2)
                        print(f"varlen bench: not timed side by side: {mine[int(i)][1]['key']}: {why}",
                              file=sys.stderr)
                proc.wait()
            finally:
                killer.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if proc.returncode and not quiet:
                print(f"varlen bench: side-by-side worker for {fw} exited with code {proc.returncode}: "
                      f"{tail().strip()[-300:]}", file=sys.stderr)
    return [r for r in results.select(results.read([out]), run=run_id) if r["source"] == "paired"]


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        die_with_parent()
        worker(*sys.argv[2:4])
