"""What every asv benchmark class shares: building a case through the harness, skipping what cannot run here."""
from __future__ import annotations

import itertools
import os

import adapters
from harness import axes, bench, proc
from harness.proc import WORKER_ENV

for _k, _v in WORKER_ENV.items():  # asv runs suites in its own processes: the same quiet framework settings
    os.environ.setdefault(_k, _v)


def impls(family: str | None = None) -> list[str]:
    """asv's implementation axis: "framework" for ops without strategies, "framework:strategy" for a strategy
    family (no framework imported)."""
    if family is None:
        return list(axes.FRAMEWORKS)
    return [f"{fw}:{s}" for fw in axes.FRAMEWORKS for s in adapters.declared_strategies(fw, family)]


def setup_case(impl: str, **case) -> tuple[object, bench.Ready]:
    """(adapter, prepared case); NotImplementedError (asv: skipped) when the framework or device is missing. The
    process first takes the malloc settings `varlen bench`'s workers time this framework with (before the framework
    starts a thread), so asv's time_* and peakmem_* figures are of the same steady state as its records, and its
    environment (`proc.TIMING_ENV`, before the framework is imported): no compile read from a persistent cache that
    the environment names, which would leave the compiler's memory out of peakmem_*."""
    framework = impl.partition(":")[0]
    proc.adopt_malloc_tunables(framework)
    os.environ.update(proc.TIMING_ENV)
    if framework not in adapters.available():
        raise NotImplementedError(f"{framework} is not installed")
    adapter = adapters.get(framework)
    if case.get("device", "cpu") not in adapter.devices():
        raise NotImplementedError(f"{framework} sees no {case['device']}")
    return adapter, bench.prepare(adapter, full_case(impl, **case))


def sweep_records(cases: list[dict]) -> dict[str, dict]:
    """Measure `cases` with `varlen bench`'s runner (one worker process per framework) -> {case_key: record}.

    For asv's `setup_cache`: every track_* figure of a class comes from one sweep instead of one fresh process
    (and one framework import) per parameter set. Frameworks that are not installed are left out.
    """
    import tempfile

    present = [c for c in cases if c["framework"] in adapters.available()]
    with tempfile.TemporaryDirectory() as tmp:
        recs = bench.sweep(present, f"{tmp}/records.jsonl", quiet=True)
    return {r["key"]: r for r in recs}


def measured(cache: dict, case: dict) -> dict:
    """The swept record of `case`; NotImplementedError (asv: skipped, n/a) where it could not be measured."""
    rec = cache.get(axes.case_key(case))
    if rec is None or rec.get("status") != "ok":
        raise NotImplementedError("not measured" if rec is None else rec.get("error", "failed"))
    return rec


# Building blocks of the *Tracks classes (asv discovers methods by name, so these are plain functions that the
# classes bind as attributes; each class defines `case(*params) -> case dict`).
def sweep_all(self) -> dict:
    """For setup_cache: measure every parameter set of the class in one sweep. Each class calls it from a
    setup_cache of its own: asv keys cached results by the setup_cache function's source location."""
    return sweep_records([self.case(*p) for p in itertools.product(*self.params)])


def setup_measured(self, cache, *p) -> None:
    """setup: skip (not fail) parameter sets the sweep could not measure, e.g. no GPU."""
    measured(cache, self.case(*p))


def track(field: str, unit: str, doc: str, invert: bool = False):
    """A track_* method returning `field` of the swept record (its inverse with invert=True)."""

    def method(self, cache, *p):
        value = measured(cache, self.case(*p)).get(field)
        if value is None:
            raise NotImplementedError(f"{field} was not measured for this case")
        return 1.0 / float(value) if invert else float(value)

    method.unit = unit
    method.__doc__ = doc
    return method


def full_case(impl: str, **case) -> dict:
    framework, _, strategy = impl.partition(":")
    return {"framework": framework, "strategy": strategy or case["op"], "device": "cpu", "dtype": "float32",
            "seed": 0, **case}
