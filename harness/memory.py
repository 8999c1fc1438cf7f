"""CPU memory: peak resident set size above a baseline, per case, in the measuring worker process.

Linux lets a process reset its own high-water mark (write "5" to /proc/self/clear_refs), so each case measures
the peak of one call above the memory held just before it, without the previous cases' peaks in the way. Where
that is not possible (non-Linux) the figure is None rather than a wrong number.
"""
from __future__ import annotations

import gc
from pathlib import Path


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_above_baseline(call) -> int | None:
    """Bytes by which one `call()` raised the peak RSS above the RSS just before it."""
    gc.collect()
    if not reset_peak():
        return None
    base = _status_kb("VmRSS")
    call()
    peak = _status_kb("VmHWM")
    return None if base is None or peak is None else max(peak - base, 0)
