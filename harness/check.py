"""`varlen check`: the equivalence matrix (framework x family/strategy x case x device) and the verdicts on the
recipes and native behaviours, from every op family of the registry (`harness.families`).

Each (framework, device) runs in its own worker process (`python -m harness.check FRAMEWORK DEVICE OUT`), which
appends one record per result as soon as it has it and prints one progress line per family; a worker that crashes
is recorded as failed and the others go on. The worker records that it started and, after each family, that the
family is done (with its number of cells): a strategy whose worker was killed (a timeout around `varlen check`, a
crash, a lost machine) before its family was done is unchecked, not exact on the cells it happened to reach.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

from adapters import STRATEGY_FAMILIES
from harness import records, results
from harness.families import FAMILIES
from harness.proc import die_with_parent, spawn, stderr_tail


def worker(framework: str, device: str, out: str, families: str = "", strategies: str = "") -> None:
    """Check one framework on one device, appending each record to `out` as soon as it exists; `families`: the
    comma-separated families to check (default: all); `strategies`: only these strategies' equivalence cells
    (comma-separated; default: every strategy, the ops, and the recipes' and native behaviours' verdicts), in the
    families that have strategies (`STRATEGY_FAMILIES`); a family's "done" marker then names them."""
    import adapters

    fw, ref = adapters.get(framework), adapters.get("numpy")
    marker = dict(framework=framework, version=fw.version, device=device, case="", equivalent=True,
                  max_abs_err=0.0, kernel="")
    results.append(out, records.make("check", **marker, kind="started", op="check", name="worker", quantity="run"))
    chosen = families.split(",") if families else list(FAMILIES)
    only = frozenset(strategies.split(",")) if strategies else None
    for name, family in FAMILIES.items():
        if name not in chosen or only is not None and name not in STRATEGY_FAMILIES:
            continue
        n = 0
        for rec in family.check_records(fw, ref, device, **({} if only is None else {"strategies": only})):
            results.append(out, records.make(**rec))
            n += 1
        results.append(out, records.make("check", **marker, kind="done", op=name, name="family", quantity="cells",
                                         cells=n, **({} if only is None else {"strategies": ",".join(sorted(only))})))
        print(f"DONE {name} {n}", flush=True)


def default_jobs() -> int:
    """Frameworks checked at once on the CPU by default: one per core. A check worker is mostly single-threaded
    Python and tracing (`make demo`'s check on 2 cores: 263 s two at a time, 333 s one at a time)."""
    return os.cpu_count() or 1


#: families whose check takes minutes per framework (the RNN matrix traces and compiles every strategy x cell x side
#: x direction x dtype, plus the skewed case): with several workers at once, each gets a worker of its own
HEAVY = ("rnn",)
#: the frameworks whose heavy families take longest, started first so that the short workers fill the other cores
#: meanwhile (`make demo` on 2 cores: JAX's RNN family 303 s, TF's 246 s, torch's 3 s; the other families together
#: 60-85 s for JAX, ~30 s for TF, ~12 s for torch)
SLOWEST_FIRST = ("jax", "tensorflow")


def units(frameworks: list[str], families: list[str] | None, split: bool) -> list[tuple[str, list[str]]]:
    """The workers to run, (framework, families; [] = all), in the order they start. One per framework, unless
    `split` (several at once on the CPU): then each framework's `HEAVY` families get a worker of their own, and
    those start first, the slowest frameworks' first. A worker imports its framework (TF ~7 s), so the light
    families stay together."""
    chosen = list(families or FAMILIES)
    heavy, light = [f for f in chosen if f in HEAVY], [f for f in chosen if f not in HEAVY]
    if not (split and heavy and light):
        return [(fw, list(families or [])) for fw in frameworks]
    order = sorted(frameworks, key=lambda fw: SLOWEST_FIRST.index(fw) if fw in SLOWEST_FIRST else len(SLOWEST_FIRST))
    return [(fw, heavy) for fw in order] + [(fw, light) for fw in order]


def run(frameworks: list[str], devices: list[str], out: str, *, families: list[str] | None = None,
        progress: Callable[[str, str, str], None] = lambda fw, device, family: None,
        timeout: float = 3600, jobs: int = 1, strategies: list[str] | None = None) -> list[dict]:
    """Check each (framework, device) in its own processes (`families`: only these; default all); a crash or
    timeout becomes an error record. On the CPU up to `jobs` workers run at once (a check times nothing, and each
    appends its records under the file's lock), a framework's heavy families in a worker of their own (`units`);
    a GPU's run one at a time, one per framework (two frameworks' allocators on one device: JAX takes 75% of its
    memory when it starts). `strategies`: only these strategies' cells (`worker`). Returns this run's records."""
    run = records.run_id()  # before any worker starts: they inherit it (VARLEN_RUN_ID)
    lock = threading.Lock()  # `progress` is called from one thread at a time
    for device in devices:
        stopping = threading.Event()
        width = max(1, jobs if device == "cpu" else 1)
        pending, procs = units(frameworks, families, split=width > 1), []
        width = min(width, len(pending))

        def next_worker():
            while True:
                with lock:
                    if not pending:
                        return
                    name, fams = pending.pop(0)
                    proc = spawn("harness.check", name, device, out, ",".join(fams),
                                 *([",".join(strategies)] if strategies else []))
                    procs.append(proc)
                _supervise(proc, name, device, out, timeout, progress, lock, stopping)

        threads = [threading.Thread(target=next_worker, daemon=True) for _ in range(width)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():  # a join with a timeout lets Ctrl-C through at once
                    t.join(0.1)
        finally:  # Ctrl-C (or any error here): no worker outlives the command, and none is recorded as failed
            stopping.set()
            with lock:
                pending.clear()
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
    return results.select(results.read([out]), run=run)


def _supervise(proc, name: str, device: str, out: str, timeout: float,
               progress: Callable[[str, str, str], None], lock: threading.Lock, stopping: threading.Event) -> None:
    """Follow one check worker to its end: its progress lines, a kill after `timeout`, an error record if it
    did not exit cleanly (unless the command itself is stopping and killed it), with its stderr's tail
    (`stderr_tail`: read as it comes)."""
    timer, tail = threading.Timer(timeout, proc.kill), stderr_tail(proc)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("DONE"):
                with lock:
                    progress(name, device, line.split()[1])
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 and not stopping.is_set():
        why = (f"timed out after {timeout:.0f} s" if proc.returncode == -9 else
               f"worker exited with code {proc.returncode}: {tail()[-1500:]}")
        results.append(out, records.make(
            "check", framework=name, version="", device=device, kind="error", op="check", name="worker",
            case="", quantity="run", equivalent=False, max_abs_err=float("inf"), kernel="", error=why))


def failures(recs: list[dict]) -> list[dict]:
    """The records that make `varlen check` fail: a strategy or op cell that is not equivalent, a crashed
    worker. (A recipe or native behaviour being wrong is a finding, not a failure.)"""
    return [r for r in recs if r["kind"] in ("op", "strategy", "error") and not r["equivalent"]]


def unfinished(recs: list[dict], frameworks: list[str], devices: list[str], families: list[str]) -> list[str]:
    """"framework/device/family" of each one asked for whose worker recorded no "done" for it in `recs`: checked
    partly or not at all (a worker that crashed has its error record too; one whose records could not be written,
    or that exited 0 without checking, has nothing else), so `varlen check` cannot say it passed."""
    done = {(r["framework"], r["device"], r["op"]) for r in recs if r["kind"] == "done"}
    return [f"{fw}/{dev}/{fam}" for dev in devices for fw in frameworks for fam in families
            if (fw, dev, fam) not in done]


if __name__ == "__main__":
    die_with_parent()
    worker(*sys.argv[1:6])
