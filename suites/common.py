"""What every asv benchmark class shares: building a case through the harness, skipping what cannot run here."""
from __future__ import annotations

import os

import adapters
from harness import bench, floors, memory, timing
from suites import axes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

_FLOORS: dict = {}


def impls(rnn: bool) -> list[str]:
    """asv's implementation axis: "framework" for ops, "framework:strategy" for RNNs (no framework imported)."""
    if not rnn:
        return list(axes.FRAMEWORKS)
    return [f"{fw}:{s}" for fw in axes.FRAMEWORKS for s in adapters.declared_strategies(fw)]


def machine_floors() -> dict:
    if not _FLOORS:
        _FLOORS.update(floors.measure())
    return _FLOORS


def setup_case(impl: str, **case) -> tuple[object, bench.Prepared]:
    """(adapter, prepared case); NotImplementedError (asv: skipped) when the framework or device is missing."""
    framework, _, strategy = impl.partition(":")
    if framework not in adapters.available():
        raise NotImplementedError(f"{framework} is not installed")
    adapter = adapters.get(framework)
    if case.get("device", "cpu") not in adapter.devices():
        raise NotImplementedError(f"{framework} sees no {case['device']}")
    full = {"framework": framework, "strategy": strategy or case["op"], "device": "cpu", "dtype": "float32",
            "seed": 0, **case}
    return adapter, bench.prepare(adapter, full)


def sec_per_million_valid_tokens(adapter, p: bench.Prepared) -> float:
    return timing.measure(p.call, compile_count=adapter.compile_count).median_s / p.valid_tokens * 1e6


def times_floor(adapter, p: bench.Prepared) -> float:
    """Measured time over the floor time (>= ~1; lower is better, as asv assumes): 1 / fraction of floor."""
    rate = machine_floors()["copy_bytes_per_s" if p.floor == "copy" else "gemm_flop_per_s"]
    return timing.measure(p.call, compile_count=adapter.compile_count).median_s / (p.work / rate)


def peak_bytes(adapter, p: bench.Prepared, device: str) -> float:
    if device == "cpu":
        return float(memory.peak_rss_above_baseline(p.call) or 0)
    adapter.reset_peak_memory(device)
    p.call()
    return float(adapter.peak_memory(device) or 0)
