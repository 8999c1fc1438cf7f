"""Worker processes that die with their parent and report progress on stdout.

`spawn` starts `python -m MODULE ARGS` with the input on stdin (no temp files) in a session of its own (a terminal's
Ctrl-C reaches only the parent, which decides what to finish); the worker's first act is `die_with_parent()`:
SIGKILL when its parent dies (Linux `PR_SET_PDEATHSIG`), so a killed `varlen bench` never leaves a worker
appending to its results file. Framework log noise (TF's CUDA probing, XLA's banners) is kept out of varlen's
output: the worker's stderr is captured and only its tail is shown, with the reason, when the worker fails.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
#: environment every worker gets: quiet frameworks, no GPU memory grabbed up front
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
              "TF_FORCE_GPU_ALLOW_GROWTH": "true", "KERAS_BACKEND": "tensorflow", "PYTHONUNBUFFERED": "1"}


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


def spawn(module: str, *args: str, stdin_text: str = "") -> subprocess.Popen:
    """A worker `python -m module *args`, fed `stdin_text`, stdout/stderr piped (text)."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args],
                            stdin=subprocess.PIPE if stdin_text else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **WORKER_ENV, "VARLEN_PARENT_PID": str(os.getpid())})
    if stdin_text:
        proc.stdin.write(stdin_text)
        proc.stdin.close()
    return proc
