"""TensorFlow's native start-up log: TF_CPP_MIN_LOG_LEVEL honoured although TF 2.17+ ignores it before absl
initialises (adapters.tensorflow.native_log / kept_log)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from adapters.tensorflow import kept_log
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[1]

# what `import tensorflow` and list_physical_devices wrote to fd 2 on this CPU machine (TF 2.21), plus an older
# TSL-format line, a Python warning and a traceback line that are no native log lines
PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
INFO = ("I0000 00:00:1796524721.717537    7208 port.cc:153] oneDNN custom operations are on. You may see slightly "
        "different numerical results due to floating-point round-off errors from different computation orders.")
STUB = "I0000 00:00:1796524721.717930    7208 cudart_stub.cc:31] Could not find cuda drivers on your machine."
CUINIT = ("E0000 00:00:1796524724.974840    7208 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)")
WARN = "W1206 02:39:18.041012    7648 gpu_device.cc:2344] Cannot dlopen some GPU libraries."
OLD_ERROR = ("2025-09-17 14:44:05.176998: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:467] Unable to "
             "register cuFFT factory")
PYTHON = "/usr/lib/python3.11/site-packages/keras/src/x.py:12: UserWarning: something the user should read"
LOG = "\n".join([PREAMBLE, INFO, STUB, PYTHON, WARN, CUINIT, OLD_ERROR]) + "\n"


def test_level_two_keeps_errors_and_python_lines_only():
    assert kept_log(LOG, 2, gpus=1) == "\n".join([PYTHON, CUINIT, OLD_ERROR]) + "\n"


def test_cuinit_failure_is_dropped_only_when_no_gpu_was_found():
    assert kept_log(LOG, 2, gpus=0) == "\n".join([PYTHON, OLD_ERROR]) + "\n"
    assert CUINIT in kept_log(LOG, 2, gpus=None)  # loading did not get as far as listing GPUs


def test_levels_zero_one_three():
    assert kept_log(LOG, 0, gpus=1) == "\n".join([INFO, STUB, PYTHON, WARN, CUINIT, OLD_ERROR]) + "\n"
    assert kept_log(LOG, 1, gpus=1) == "\n".join([PYTHON, WARN, CUINIT, OLD_ERROR]) + "\n"
    assert kept_log(LOG, 3, gpus=1) == PYTHON + "\n"
    assert kept_log("", 2, gpus=0) == ""


def test_loading_tensorflow_prints_nothing_at_level_two():
    """The adapter in a fresh process (the import is what logs): stderr stays empty on this machine."""
    require("tensorflow")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", "import adapters; print(adapters.get('tensorflow').version)"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tensorflow "), proc.stdout
    assert proc.stderr == "", proc.stderr
