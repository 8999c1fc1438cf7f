"""CPU memory: peak resident set size of one call above a baseline, per case, in the measuring worker process.

A fresh process per case would pay the framework's import (7 s for TensorFlow) every time, and its first call
would also count compilation memory. Instead, after the warm calls, freed heap memory is handed back to the OS
(glibc `malloc_trim`), the process's high-water mark is reset (write "5" to /proc/self/clear_refs), and one call
runs: the new high-water mark above the RSS just before the call is that call's working set, as a fresh process
would see it once compiled, with the previous cases' peaks out of the way. Where that is not possible (non-Linux,
no glibc) the figure is None rather than a wrong number.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from pathlib import Path


def _trim() -> None:
    """Return freed heap memory to the OS, so a call's allocations show up in RSS again."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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


def faulted_bytes() -> int | None:
    """Bytes this process (every thread) has faulted in so far: its minor page faults times the page size, None
    where the OS does not count them. Over a timed loop, the difference per call is the memory each call had
    faulted in afresh: memory the allocator handed back to the OS after the previous call, whose faulting the
    call's time includes (a lower bound: a fault that maps a transparent huge page counts once, as NumPy's large
    arrays ask for)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt) * resource.getpagesize()


def peak_rss_above_baseline(call) -> int | None:
    """Bytes by which one `call()` raised the peak RSS above the RSS just before it."""
    gc.collect()
    _trim()
    if not reset_peak():
        return None
    base = _status_kb("VmRSS")
    call()
    peak = _status_kb("VmHWM")
    return None if base is None or peak is None else max(peak - base, 0)
