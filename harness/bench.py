"""`varlen bench`: sweeps over the axes of `harness.axes`, one tidy record per measurement.

The parent process never imports a framework: it runs each (framework) group of cases in a worker process
(`python -m harness.bench FRAMEWORK`, cases as JSON on stdin) that warms the backend up on every device it will
use, measures that device's floors with its own framework (copy bandwidth, float32 GEMM), then appends each record
to the results file as soon as it is measured. The worker announces each case before starting it; a case that
crashes the worker, or outlasts its timeout, is recorded as failed with the reason, and a fresh worker goes on with
the rest. Where a framework cannot reset its GPU allocator's peak (JAX), each GPU case runs in a fresh worker so
that the peak is that case's own (`--shared-worker` runs them in one worker instead: a lent GPU's minutes go to
timing, not to starting processes, and those cases record no peak, since it would not be their own). Workers die
with the parent; Ctrl-C ends the case in flight unrecorded (the finished ones are on disk) and `--resume` picks up
from there.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable

from adapters.spec import Unsupported
from harness import lengths, memory, records, results, timing
from harness.axes import HEADLINE, case_key
from harness.families import family_of, recommended_ops
from harness.families.base import Prepared
from harness.proc import die_with_parent, spawn, stderr_tail
from harness.profiles import case_lengths


class Ready:
    """A prepared case plus the synchronised callable every entry point times (varlen bench, asv, pytest)."""

    def __init__(self, adapter, case: dict, p: Prepared) -> None:
        self.prepared, self.case, self.device = p, case, case["device"]
        self._run, self._sync = p.run, adapter.sync
        t = time.perf_counter()
        first = self.call()
        self.first_call_s = time.perf_counter() - t
        fam = family_of(case["op"])
        variant = getattr(fam, "KERNEL_VARIANT", {}).get(case["op"])  # e.g. a loss's kind: the kernel can follow it
        static = adapter.strategy_kernel(fam.STRATEGY_FAMILY, case["strategy"], variant) if fam.STRATEGY_FAMILY else ""
        self.kernel = getattr(first, "kernel", "") or static or f"{adapter.name}.{case['op']}"

    def call(self):
        out = self._run()
        self._sync(self.device)
        return out

    def __getattr__(self, name):  # valid_tokens, work, floor, ... of the prepared case
        return getattr(self.prepared, name)


def prepare(adapter, case: dict) -> Ready:
    """Build the inputs of `case` for `adapter` (its family's `prepare`) and make the first, compiling call."""
    return Ready(adapter, case, family_of(case["op"]).prepare(adapter, case))


def measure_case(adapter, case: dict, floor_rates: dict, own_peak: bool = True) -> dict:
    """Time, compile time, memory and floor fraction of one case, as the fields of one bench record. `own_peak`
    False: the device allocator's peak cannot be reset and this process already ran other device work, so its
    peak would not be this case's: none is recorded."""
    device = case["device"]
    adapter.reset_peak_memory(device)
    fresh = streams(adapter, case)  # its fresh batches will run: forget what is compiled now, not after timing
    if fresh:
        adapter.clear_compiled()
    c0 = adapter.compile_count()
    t0 = time.perf_counter()
    p = prepare(adapter, case)
    setup_s = time.perf_counter() - t0
    compiles = adapter.compile_count() - c0
    faulted = memory.faulted_bytes()
    t = timing.measure(p.call, compile_count=adapter.compile_count, budget_s=case.get("budget_s", timing.BUDGET_S))
    if faulted is not None:  # per timed call (and the warm-up call measure makes first)
        faulted = (memory.faulted_bytes() - faulted) / (t.repeats * t.number + 1)
    # one call's peak above what was held just before it (the inputs, what earlier cases left alive): the
    # allocator's own where it has one (every GPU; TensorFlow's CPU allocator, which keeps its memory), else RSS
    own = adapter.call_peak(p.call, device) if own_peak else None
    rss_peak = memory.peak_rss_above_baseline(p.call) if device == "cpu" else None
    cpu_peak = rss_peak if own is None else max(own, rss_peak or 0)
    stream = {}
    if streams(adapter, case):
        try:
            stream = stream_compiles(adapter, case, warm=fresh)
            stream.update(planned_compiles(adapter, case))
        except Exception as e:  # noqa: BLE001 - the case's own measurement stands; the stream says why it has none
            stream = {"stream_error": f"{type(e).__name__}: {e}"[:300]}
    rate = floor_rates.get("copy_bytes_per_s" if p.floor == "copy" else "gemm_flop_per_s")
    floor_s = p.work / rate if rate else None
    med = t.median_s
    return {
        **case, **p.extra, **t.__dict__, "status": "ok", "kernel": p.kernel,
        "setup_s": setup_s, "compiles_in_setup": compiles, "first_call_s": p.first_call_s,
        # compile time exists only where this case compiled; a shape compiled by an earlier case of the same
        # worker has none (None, not 0), unless this case's fresh batches run: it then compiled afresh. Eager
        # frameworks never compile: theirs is first-call overhead.
        "compile_s": max(p.first_call_s - med, 0.0) if compiles or adapter.compile_count() == 0 else None,
        "valid_tokens": p.valid_tokens, "padded_tokens": p.padded_tokens, "padding_fraction": p.padding_fraction,
        "ideal_share": p.ideal_share,
        **lengths.truncated(case),  # a file profile's lengths above max_len, truncated to it
        "valid_tokens_per_s": p.valid_tokens / med, "padded_tokens_per_s": p.padded_tokens / med,
        "sec_per_M_valid_tokens": med / p.valid_tokens * 1e6 if p.valid_tokens else None,
        "floor": p.floor, "work": p.work, "floor_s": floor_s, "fraction_of_floor": floor_s / med if floor_s else None,
        "device_peak_bytes": own, "peak_rss_bytes": rss_peak,
        "faulted_bytes_per_call": faulted,
        "peak_bytes": own if device != "cpu" else cpu_peak,
        **stream,
        "memory_method": "RSS high-water mark above baseline" if device == "cpu" and own is None else
        "the larger of the CPU allocator's peak above what it held and the RSS high-water mark above baseline"
        if device == "cpu" else
        "not recorded (the allocator keeps no statistics)" if own is None and own_peak else
        "allocator peak of one call above what it held just before" if adapter.peak_resettable
        else "allocator peak since the process started above what it held before one call (fresh process per case)"
        if own_peak else
        "not recorded (the allocator's peak cannot be reset and this worker ran other device work first)",
    }


#: fresh batches of a case's length distribution that `stream_compiles` runs after timing the case (each costs
#: two calls and its compiles: `make demo`'s bench on 2 cores took ~3.5 min longer with 3); the environment
#: variable overrides it for a whole sweep (its workers inherit it; 0 turns it off: scripts/gpu-check.sh does)
STREAM_BATCHES = 3
STREAM_ENV = "VARLEN_STREAM_BATCHES"


def stream_batches() -> int:
    """How many fresh batches (`STREAM_ENV`, else `STREAM_BATCHES`); ValueError naming the variable when it is
    not a whole number >= 0 (`varlen bench` checks it before any work starts)."""
    raw = os.environ.get(STREAM_ENV, str(STREAM_BATCHES))
    if not raw.strip().isdigit():
        raise ValueError(f"{STREAM_ENV}={raw!r}: give a whole number of fresh batches >= 0 (0: none)")
    return int(raw)


def streams(adapter, case: dict) -> bool:
    """Whether `stream_compiles` runs for `case`: a strategy case of a framework that compiles (it has compiled
    something by now), at the headline batch and length (`axes.HEADLINE`: what the compile-aware ranking reads),
    on lengths that change from batch to batch (not `equal`)."""
    return (case["op"] in recommended_ops() and case["profile"] != "equal" and stream_batches() > 0
            and (case["batch"], case["max_len"]) == (HEADLINE["batch"], HEADLINE["max_len"])
            and adapter.compile_count() > 0)


def stream_compiles(adapter, case: dict, batches: int | None = None, warm: bool = False) -> dict:
    """What new lengths cost in compiles: a jitted padded strategy compiles once per padded shape, but a strategy
    whose plan follows the lengths (bucketed, concat_rows, ...) may compile new shapes for a new batch. With every
    compiled function forgotten (what a fresh process has), the case's own batch runs once (its shapes, as the
    case's compile figure counts them), then `batches` fresh batches of the same length distribution (the case's
    seed + 1, + 2, ...): the compiles they add and their seconds (each compiling batch's first call minus its
    second). `warm`: the case's own batch is all that ran since everything compiled was forgotten (`measure_case`
    forgets it before the case when its stream is due, which spares `make demo` one more compile of each case).
    Record fields stream_batches, stream_compiles, stream_compile_s."""
    batches = stream_batches() if batches is None else batches
    if not warm:
        adapter.clear_compiled()
        prepare(adapter, case)
    before, seconds = adapter.compile_count(), 0.0
    for i in range(1, batches + 1):
        c0 = adapter.compile_count()
        p = prepare(adapter, {**case, "seed": case.get("seed", 0) + i})
        if adapter.compile_count() > c0:
            t = time.perf_counter()
            p.call()
            seconds += max(p.first_call_s - (time.perf_counter() - t), 0.0)
    return {"stream_batches": batches, "stream_compiles": adapter.compile_count() - before,
            "stream_compile_s": seconds}


#: fresh batches whose programs `planned_compiles` counts on the host, and the last ones it counts apart (does a
#: stream still compile after that many batches?)
PLAN_BATCHES, PLAN_TAIL = 300, 100


def planned_compiles(adapter, case: dict, batches: int = PLAN_BATCHES, streamed: int | None = None) -> dict:
    """What a long stream of fresh batches compiles, counted on the host without compiling: the programs each
    batch's plan runs, named by the strategy's own planner (`Adapter.programs`: the gates prove that a batch compiles
    exactly the keys no earlier batch brought; each batch is told the keys named before it, which a strategy that
    runs a compiled program covering a batch reads), over the case's own batch and then `batches` fresh ones of the
    same length distribution (seed + 1, + 2, ...: the first `streamed` are those `stream_compiles` ran and timed). {}
    where the case's programs do not follow its lengths. Record fields plan_batches, plan_programs (the case's own
    batch's), plan_compiles (new programs over the fresh batches), plan_compiles_streamed (over the first
    `streamed` of them: `stream_compiles` measured the same batches), plan_compiles_tail (over the last
    PLAN_TAIL)."""
    named = getattr(family_of(case["op"]), "programs", None)
    B, T, seed = case["batch"], case["max_len"], case.get("seed", 0)
    keys = named(adapter, case, case_lengths(case, B, T)) if named else None
    if keys is None:
        return {}
    streamed, own, news = stream_batches() if streamed is None else streamed, len(keys), []
    for i in range(1, batches + 1):
        batch = named(adapter, case, case_lengths({**case, "seed": seed + i}, B, T), compiled=keys)
        news.append(len(batch - keys))
        keys |= batch
    return {"plan_batches": batches, "plan_programs": own, "plan_compiles": sum(news),
            "plan_compiles_streamed": sum(news[:streamed]), "plan_compiles_tail": sum(news[-PLAN_TAIL:])}


#: the shape of `warm_family`'s untimed call: no grid's (so it compiles nothing a measured case reuses)
WARM_BATCH, WARM_LEN = 2, 4


def warm_family(adapter, case: dict) -> str | None:
    """One untimed call of `case`'s op at a tiny shape (WARM_BATCH x WARM_LEN, equal lengths) through its family's
    default strategy (the next declared one where a precondition declines it), before the first case of each
    (family, device) in a worker: the libraries that family's kernels load on first use (cuDNN's handle
    and its RNN or attention kernels, cuBLASLt, oneDNN, XLA's first compile of a loop) start there instead of
    inside the first measured case. Measured on the H200 at d5b0564 without it: the first attention case of a
    worker recorded 3.55 s of "compile" for eager torch `sdpa` (its own shape's first call; 0.001 s on the next
    profile), and JAX's first RNN case 15.9 s against 1.1 s for the next strategy's. The strategy that warmed it,
    or None where none ran (a warm-up never fails a case: the case itself then says what is wrong)."""
    fam = family_of(case["op"])
    small = {k: v for k, v in case.items() if not k.startswith("lengths_")}
    small.update(batch=WARM_BATCH, max_len=WARM_LEN, profile="equal", seed=0)
    for strategy in adapter.strategies(fam.STRATEGY_FAMILY):
        try:
            prepare(adapter, {**small, "strategy": strategy})  # makes the first call, synchronised
            return strategy
        except Unsupported:
            continue
        except Exception:  # noqa: BLE001 - not this one's job to fail: the measured case reports its own error
            return None
    return None


# -- worker (one framework, in its own process) ---------------------------------------------------------------
def worker(framework: str, out: str, floors_json: str) -> None:
    """Measure the cases given as JSON on stdin, appending each record to `out`; print START/DONE per case and
    FLOORS once per device (the floors are also recorded, per framework and device)."""
    import adapters

    adapter = adapters.get(framework)
    cases = json.loads(sys.stdin.read())
    known = json.loads(floors_json)
    floors = {}
    used = set()  # devices this process already ran work on (warm-up aside): a peak it cannot reset is not a case's
    for device in dict.fromkeys(c["device"] for c in cases):
        if device not in adapter.devices():
            continue
        adapter.warmup(device)
        floors[device] = known.get(f"{framework}:{device}") or adapter.floors(device)
        if f"{framework}:{device}" not in known:
            used.add(device)
            results.append(out, records.make("floors", framework=framework, version=adapter.version,
                                             device=device, **floors[device], **adapter.device_fields(device)))
            print("FLOORS " + json.dumps({f"{framework}:{device}": floors[device]}), flush=True)
    meta = {"version": adapter.version}
    warmed = set()  # (family, device) warmed up by `warm_family`
    for i, case in enumerate(cases):
        print(f"START {i}", flush=True)
        rates = floors.get(case["device"], {})
        fam = family_of(case["op"])
        # epochs are not warmed: their first epoch is meant to pay every start-up cost (RNN cases before them
        # warm the family for the RNN cases after them)
        if fam.STRATEGY_FAMILY and fam.NAME != "epoch" and (fam.NAME, case["device"]) not in warmed \
                and case["device"] in adapter.devices():
            warmed.add((fam.NAME, case["device"]))
            warm_family(adapter, case)  # a peak that cannot be reset then holds its tiny one: below any case's
        try:
            own = adapter.peak_resettable or case["device"] == "cpu" or case["device"] not in used
            used.add(case["device"])
            rec = measure_case(adapter, case, rates, own_peak=own)
        except Unsupported as e:  # the strategy's precondition excludes this case: not a failure, not measured
            rec = {**case, "status": "unsupported", "error": str(e)[:500]}
        except Exception as e:  # noqa: BLE001 - one failing case is a record, not a lost sweep
            rec = {**case, "status": "failed", "error": f"{type(e).__name__}: {e}"[:500]}
        results.append(out, records.make("bench", **rec, **meta, key=case_key(case),
                                         **adapter.device_fields(case["device"]),
                                         **{f"floor_{k}": v for k, v in rates.items()},
                                         floor_source=f"{framework} on {case['device']}" if rates else None))
        print(f"DONE {i}", flush=True)


def _failed(case: dict, why: str) -> dict:
    return records.make("bench", **case, status="failed", error=why, key=case_key(case))


def _run_worker(framework: str, cases: list[dict], out: str, floors: dict, timeout: float,
                progress: Callable[[dict], None]) -> None:
    """Run `cases` in workers, restarting after a crash or a timeout; each lost case becomes a failed record."""
    remaining = list(cases)
    while remaining:
        proc = spawn("harness.bench", "worker", framework, out, json.dumps(floors),
                     stdin_text=json.dumps(remaining), framework=framework)
        tail = stderr_tail(proc)
        current, done, why = None, 0, ""
        deadline = [time.monotonic() + timeout + 180]  # the first case also pays the import, warm-up and floors

        def watchdog():
            while proc.poll() is None:
                if time.monotonic() > deadline[0]:
                    proc.kill()
                    return
                time.sleep(0.2)

        dog = threading.Thread(target=watchdog, daemon=True)
        dog.start()
        stopping = False
        try:
            lines = iter(proc.stdout)
            while True:
                try:
                    line = next(lines, None)
                except KeyboardInterrupt:
                    if stopping or current is None:
                        raise
                    stopping = True  # Ctrl-C: let the case in flight finish and be recorded, then stop
                    print("\nvarlen bench: finishing the case in flight (Ctrl-C again to abandon it) ...",
                          file=sys.stderr)
                    continue
                if line is None:
                    break
                if line.startswith("START"):
                    if stopping:
                        raise KeyboardInterrupt
                    current, deadline[0] = int(line.split()[1]), time.monotonic() + timeout
                elif line.startswith("DONE"):
                    done, current = int(line.split()[1]) + 1, None
                    progress(remaining[done - 1])
                    if stopping:
                        raise KeyboardInterrupt
                elif line.startswith("FLOORS"):
                    floors.update(json.loads(line[len("FLOORS "):]))
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if current is None and done == len(remaining):
            return
        lost = current if current is not None else done
        why = (f"timed out after {timeout:.0f} s" if proc.returncode == -9 and time.monotonic() > deadline[0]
               else f"worker exited with code {proc.returncode}: {tail()[-400:]}")
        results.append(out, _failed(remaining[lost], why))
        progress(remaining[lost])
        remaining = remaining[lost + 1:]


def _groups(cases: list[dict], shared: bool = False) -> list[tuple[str, list[dict]]]:
    """Cases grouped per framework worker; GPU cases of a framework whose allocator peak cannot be reset get a
    worker each (their memory figure must be their own), unless `shared` (one worker; no peak recorded)."""
    import adapters

    groups = []
    for fw in dict.fromkeys(c["framework"] for c in cases):
        mine = [c for c in cases if c["framework"] == fw]
        fresh = not shared and not adapters.peak_resettable(fw)
        together = [c for c in mine if not (fresh and c["device"] == "gpu")]
        if together:
            groups.append((fw, together))
        groups += [(fw, [c]) for c in mine if fresh and c["device"] == "gpu"]
    return groups


def done_keys(out: str) -> set[str]:
    """Case keys whose latest record in `out` is a completed measurement (what --resume skips, with the "unsupported"
    records of this same code: `recorded`)."""
    return {r["key"] for r in results.select(results.read([out])) if r["source"] == "bench" and r["status"] == "ok"}


def installed_version(framework: str) -> str | None:
    """The version string `framework`'s adapter records (torch's and jax's own version; "tensorflow X, keras Y"),
    read from the installed distributions' metadata (no import), or None where one is not installed."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    def installed(module: str) -> str | None:
        for dist in packages_distributions().get(module, []):
            try:
                return version(dist)
            except PackageNotFoundError:
                continue
        return None

    if framework == "tensorflow":
        tf, keras = installed("tensorflow"), installed("keras")
        return f"tensorflow {tf}, keras {keras}" if tf and keras else None
    return installed(framework)


def recorded(out: str, cases: list[dict]) -> tuple[dict[str, str], int]:
    """--resume: ({key: why} of the `cases` already recorded to their end in `out`, how many will run again though
    their latest record says "unsupported"). Finished: the latest record is a measurement (`done_keys`), or
    says "unsupported" and was written by this same code on this host: its commit (clean) and host equal this run's
    and its framework version is the installed one. A strategy's precondition that excluded the case then excludes
    it again, and its record would only be appended once more. One written by another commit, host or framework
    version, or by uncommitted code (a "+dirty" commit: which changes is not recorded), runs again: the code may
    now support it."""
    latest = [r for r in results.select(results.read([out])) if r["source"] == "bench"]
    measured = {r["key"] for r in latest if r["status"] == "ok"}  # `done_keys`, from the one read
    unsupported = {r["key"]: r for r in latest if r["status"] == "unsupported"}
    here = records.machine()
    clean = here["commit"] != "unknown" and not here["commit"].endswith("+dirty")
    versions = {fw: installed_version(fw) for fw in {r["framework"] for r in unsupported.values()}} if clean else {}
    done, again = {}, 0
    for key in map(case_key, cases):
        rec = unsupported.get(key)
        if key in measured:
            done[key] = "measured"
        elif (rec is not None and clean and (rec["commit"], rec["host"]) == (here["commit"], here["host"])
              and versions.get(rec["framework"]) is not None and versions[rec["framework"]] == rec.get("version")):
            done[key] = "not supported"
        elif rec is not None:
            again += 1
    return done, again


def overhead_recorded(out: str, pairs) -> set[tuple[str, str]]:
    """--resume: the (framework, device) `pairs` whose overhead ratios `out` holds already, forward and forward +
    backward both (`harness.overhead` writes them in that order: a run cut off between them runs the pair again)."""
    have = {(r["framework"], r["device"], r["op"]) for r in results.read([out]) if r["source"] == "overhead"}
    return {(fw, dev) for fw, dev in pairs if {(fw, dev, op) for op in ("rnn_forward", "rnn_forward_backward")} <= have}


# -- many machines (ARCHITECTURE "Many machines") ------------------------------------------------------------------
def shard(cases: list[dict], k: int, n: int) -> list[dict]:
    """Shard `k` of `n` (1-based) of `cases`. A case's shard is a stable hash of its key (not Python's salted
    `hash`), so every machine computes the same split even where its selection differs (say, a framework missing
    there): shards 1..n never overlap and together are all the cases."""
    import hashlib

    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: need 1 <= K <= N")
    return [c for c in cases
            if int.from_bytes(hashlib.blake2b(case_key(c).encode(), digest_size=8).digest(), "big") % n == k - 1]


#: `sweep`'s hook for running the groups elsewhere: (cases, out, *, timeout, progress) appends every record to out.
#: `harness.cluster.runner(address)` is one (bench never imports it: cluster builds on bench, not the reverse).
ClusterSweep = Callable[..., None]


def sweep(cases: list[dict], out: str, *, resume: bool = False, timeout: float = 600, quiet: bool = False,
          overhead: tuple[tuple[str, str], ...] = (), cluster_sweep: ClusterSweep | None = None,
          shared_worker: bool = False) -> list[dict]:
    """Run `cases` (one worker process per framework group), appending to `out` (never rewriting it); then, for
    each (framework, device) in `overhead`, the adapter-vs-raw overhead ratios. Returns this run's bench records.
    `resume`: leave out the cases and overhead pairs `out` already holds (`recorded`, `overhead_recorded`).
    `cluster_sweep` (e.g. `harness.cluster.runner(address)`) runs the cases' groups instead of local workers; the
    overhead ratios are still measured here. `shared_worker`: see `_groups`."""
    run = records.run_id()  # before any worker starts: they inherit it (VARLEN_RUN_ID)
    if resume:
        skip = recorded(out, cases)[0]
        cases = [c for c in cases if case_key(c) not in skip]
        have = overhead_recorded(out, overhead)
        overhead = tuple(pair for pair in overhead if pair not in have)
    floors: dict = {}
    from rich.progress import Progress

    with Progress(disable=quiet, transient=False) as bar:
        task = bar.add_task("varlen bench", total=len(cases))
        advance = lambda case: bar.update(task, advance=1, description=f"{case['framework']} {case['op']}")
        if cluster_sweep is not None:
            cluster_sweep(cases, out, timeout=timeout, progress=advance)
        else:
            for fw, group in _groups(cases, shared=shared_worker):
                _run_worker(fw, group, out, floors, timeout, advance)
    for fw, device in overhead:
        proc = spawn("harness.overhead", fw, out, device, framework=fw)
        text, err = proc.communicate(timeout=timeout)
        if not quiet:
            print((text or err[-500:]).strip())
    mine = results.select(results.read([out]), run=run)
    return [r for r in mine if r["source"] == "bench"]


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        die_with_parent()
        worker(*sys.argv[2:5])
