"""Worker processes that die with their parent and report progress on stdout.

`spawn` starts `python -m MODULE ARGS` with the input on stdin (no temp files) in a session of its own (a terminal's
Ctrl-C reaches only the parent, which decides what to finish); the worker's first act is `die_with_parent()`:
SIGKILL when its parent dies (Linux `PR_SET_PDEATHSIG`), so a killed `varlen bench` never leaves a worker
appending to its results file. Framework log noise (TF's CUDA probing, XLA's banners) is kept out of varlen's
output: the worker's stderr is captured (read as it comes, `stderr_tail`) and only its tail is shown, with the
reason, when the worker fails.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
#: environment every worker gets: quiet frameworks, no GPU memory grabbed up front
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
              "TF_FORCE_GPU_ALLOW_GROWTH": "true", "KERAS_BACKEND": "tensorflow", "PYTHONUNBUFFERED": "1"}
#: glibc malloc in every worker (unless the user set GLIBC_TUNABLES): blocks up to 1 GiB come from the heap and
#: freed memory stays mapped, so a repeated call reuses pages already faulted in, the steady state of a long-running
#: process (and what jemalloc/tcmalloc give). With glibc's defaults a large buffer (above the dynamic mmap threshold,
#: which only rises after such a buffer is freed, at most to 32 MiB) is mmapped and faulted in again on every call,
#: depending on the process's history: one torch B=64 T=128 H=128 LSTM forward + backward measured 24 ms or 39 ms.
#: (It was 256 MiB, up to 2026-12-05: the bench records' faulted_bytes_per_call then showed JAX's B=256 and T=512
#: LSTM cases faulting 415-460 MiB a call, blocks above that threshold, mmapped anew every call: the scan at B=64
#: T=512 ran 413 ms a call, 320 ms with 1 GiB; torch's and TensorFlow's headline calls unchanged, 43-45 / 64 ms.)
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
#: per framework, added to MALLOC_TUNABLES. JAX: one arena. XLA's CPU runtime allocates a call's buffers on its
#: worker threads, so from glibc's per-thread arenas, whose heaps are mmapped at most 64 MiB each and unmapped
#: again when their memory is freed: the buffers were faulted in again on every call whatever the thresholds (a JAX
#: B=64 T=128 H=128 LSTM forward + backward on equal lengths: 20 700 minor faults, 81 MiB, a call, 117 ms, vs 1 000
#: and 84 ms in the main arena; the attention baseline 180 MiB, 188 vs 128 ms; only the large padded calls pay it,
#: so JAX's padded baselines looked 1.3-1.5x slower than their steady state and its speedups that much larger).
#: (Most likely XLA's temporaries of one call, one block above the 64 MiB a thread arena's heap can hold, so mmapped
#: and unmapped every call: 2 or 4 arenas faulted 0-104 MiB a call from run to run.) What one arena costs: XLA's
#: compiles take 10-25% longer (the scan case's first call 0.84-0.88 vs 0.75-0.77 s; `make demo`'s JAX check 227
#: vs 177 s), so only the workers that time get it (`spawn(framework=...)`: bench, side by side, overhead), and
#: JAX's compile figures carry that cost. Not for TensorFlow: its step loop allocates from many threads at once and
#: one arena's lock cost the Keras LSTM 17% (61 -> 72 ms, no faults either way); torch faults in neither (41.5 vs
#: 42.7 ms).
FRAMEWORK_TUNABLES = {"jax": "glibc.malloc.arena_max=1"}


def malloc_tunables(framework: str | None = None) -> str:
    """GLIBC_TUNABLES of a worker that runs `framework` (None: no framework's own): the user's own where set, else
    MALLOC_TUNABLES and the framework's FRAMEWORK_TUNABLES."""
    if "GLIBC_TUNABLES" in os.environ:
        return os.environ["GLIBC_TUNABLES"]
    return ":".join(t for t in (MALLOC_TUNABLES, FRAMEWORK_TUNABLES.get(framework or "")) if t)


#: mallopt(3)'s parameter numbers (<malloc.h>) of the GLIBC_TUNABLES varlen sets: glibc applies both through the
#: same setters. mallopt takes an int, so a larger value is clamped to 2**31 - 1 (a trim threshold of 2 GiB for 4:
#: either keeps every freed page mapped in these processes).
MALLOPT = {"glibc.malloc.trim_threshold": -1, "glibc.malloc.mmap_threshold": -3, "glibc.malloc.arena_max": -8}


def adopt_malloc_tunables(framework: str | None = None) -> str | None:
    """Give this process the malloc settings of a worker that times `framework` (`malloc_tunables`), for a process
    that times calls but was not started by varlen: asv starts one process per benchmark with one environment for
    every framework, and glibc reads GLIBC_TUNABLES only at start, so they are set here with mallopt(3). Call it
    before the framework starts its threads: arena_max bounds the arenas created after it. A user's own
    GLIBC_TUNABLES (applied at start) is left alone. Returns the settings adopted (those glibc took), None where
    nothing was done (the user's own, or no glibc)."""
    if "GLIBC_TUNABLES" in os.environ:
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return None
    applied = []
    for item in malloc_tunables(framework).split(":"):
        name, _, value = item.partition("=")
        if mallopt(ctypes.c_int(MALLOPT[name]), ctypes.c_int(min(int(value), 2**31 - 1))):
            applied.append(item)  # a glibc that refuses one (as it ignores a bad GLIBC_TUNABLES) keeps its own
    return ":".join(applied)


#: environment of the workers that time (`spawn(framework=...)`): JAX's persistent compilation cache off. A compile
#: figure is what a fresh process pays; one read from a cache on disk (JAX_COMPILATION_CACHE_DIR, which `make test`
#: and `varlen check` use: they time nothing) would read too low (JAX's RNN check on 2 cores: 175 s compiling
#: afresh, 44 s with every compile in the cache). And XLA's default compile: the gates' fast-compile option
#: (VARLEN_XLA_FAST_COMPILE, adapters/jax) trades the programs' speed for compile time
TIMING_ENV = {"JAX_ENABLE_COMPILATION_CACHE": "false", "VARLEN_XLA_FAST_COMPILE": "0"}


def worker_env(framework: str | None = None) -> dict[str, str]:
    """The environment of a worker process (that times `framework`'s calls; None: one that times nothing): this
    one's, plus WORKER_ENV, the malloc tunables and, for a timing worker, TIMING_ENV."""
    return {**os.environ, **WORKER_ENV, **(TIMING_ENV if framework is not None else {}),
            "GLIBC_TUNABLES": malloc_tunables(framework), "VARLEN_PARENT_PID": str(os.getpid())}


def die_with_parent() -> None:
    """Called first thing in a worker: be killed with the parent (and exit now if it is already gone)."""
    parent = int(os.environ.get("VARLEN_PARENT_PID", "0"))
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's own cleanup still kills it
        pass
    if parent and os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it finishes the record


def stderr_tail(proc: subprocess.Popen, keep: int = 200) -> Callable[[], str]:
    """Read `proc`'s stderr as it comes, in a thread of its own, keeping its last `keep` lines, for a parent that
    follows the worker's stdout: a worker whose stderr nobody reads blocks once it has written what a pipe holds
    (64 KiB of framework warnings) and sits there until a timeout kills it. Returns a function that gives the tail
    (all of it once the worker has exited)."""
    lines: list[str] = []

    def drain():
        for line in proc.stderr:
            lines.append(line)
            del lines[:-keep]

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def tail() -> str:
        if proc.poll() is not None:
            reader.join(5)
        return "".join(lines)
    return tail


def spawn(module: str, *args: str, stdin_text: str = "", framework: str | None = None) -> subprocess.Popen:
    """A worker `python -m module *args`, fed `stdin_text`, stdout/stderr piped (text); `framework`: the framework
    whose calls it times (its FRAMEWORK_TUNABLES apply), None for a worker that times nothing."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args],
                            stdin=subprocess.PIPE if stdin_text else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=worker_env(framework))
    if stdin_text:
        proc.stdin.write(stdin_text)
        proc.stdin.close()
    return proc


if __name__ == "__main__":  # `python -m harness.proc FRAMEWORK`: its workers' GLIBC_TUNABLES (for `make bench`)
    print(malloc_tunables(sys.argv[1] if len(sys.argv) > 1 else None))
