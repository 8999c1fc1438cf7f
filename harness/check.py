"""`varlen check`: the equivalence matrix (framework x family/strategy x case x device) and the verdicts on the
recipes and native behaviours, from every op family of the registry (`harness.families`).

Each (framework, device) runs in its own worker process (`python -m harness.check FRAMEWORK DEVICE OUT`), which
appends one record per result as soon as it has it and prints one progress line per family; a worker that crashes
is recorded as failed and the others go on. The worker records that it started and, after each family, that the
family is done (with its number of cells): a strategy whose worker was killed (a timeout around `varlen check`, a
crash, a lost machine) before its family was done is unchecked, not exact on the cells it happened to reach.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from harness import records, results
from harness.families import FAMILIES
from harness.proc import die_with_parent, spawn


def worker(framework: str, device: str, out: str, families: str = "") -> None:
    """Check one framework on one device, appending each record to `out` as soon as it exists; `families`: the
    comma-separated families to check (default: all)."""
    import adapters

    fw, ref = adapters.get(framework), adapters.get("numpy")
    marker = dict(framework=framework, version=fw.version, device=device, case="", equivalent=True,
                  max_abs_err=0.0, kernel="")
    results.append(out, records.make("check", **marker, kind="started", op="check", name="worker", quantity="run"))
    chosen = families.split(",") if families else list(FAMILIES)
    for name, family in FAMILIES.items():
        if name not in chosen:
            continue
        n = 0
        for rec in family.check_records(fw, ref, device):
            results.append(out, records.make(**rec))
            n += 1
        results.append(out, records.make("check", **marker, kind="done", op=name, name="family", quantity="cells",
                                         cells=n))
        print(f"DONE {name} {n}", flush=True)


def run(frameworks: list[str], devices: list[str], out: str, *, families: list[str] | None = None,
        progress: Callable[[str, str, str], None] = lambda fw, device, family: None,
        timeout: float = 3600) -> list[dict]:
    """Check each (framework, device) in its own process (`families`: only these; default all); a crash or timeout
    becomes an error record. Returns this run's records."""
    run = records.run_id()  # before any worker starts: they inherit it (VARLEN_RUN_ID)
    for device in devices:
        for name in frameworks:
            proc = spawn("harness.check", name, device, out, ",".join(families or []))
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                for line in proc.stdout:
                    if line.startswith("DONE"):
                        progress(name, device, line.split()[1])
                proc.wait()
            finally:
                timer.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if proc.returncode != 0:
                why = (f"timed out after {timeout:.0f} s" if proc.returncode == -9 else
                       f"worker exited with code {proc.returncode}: {proc.stderr.read()[-1500:]}")
                results.append(out, records.make(
                    "check", framework=name, version="", device=device, kind="error", op="check", name="worker",
                    case="", quantity="run", equivalent=False, max_abs_err=float("inf"), kernel="", error=why))
    return results.select(results.read([out]), run=run)


def failures(recs: list[dict]) -> list[dict]:
    """The records that make `varlen check` fail: a strategy or op cell that is not equivalent, a crashed
    worker. (A recipe or native behaviour being wrong is a finding, not a failure.)"""
    return [r for r in recs if r["kind"] in ("op", "strategy", "error") and not r["equivalent"]]


if __name__ == "__main__":
    die_with_parent()
    worker(*sys.argv[1:5])
