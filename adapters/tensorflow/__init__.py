"""TensorFlow 2 / Keras 3 adapter (`ops.py`, `rnn.py`).

TensorFlow is imported in `TensorflowAdapter.__init__` (with KERAS_BACKEND=tensorflow), never at module level.
TF32 is turned off there (`enable_tensor_float_32_execution(False)`) so float32 correctness runs compare tightly,
and GPUs get memory growth so the allocator's peak reflects what the work needed.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Any

import numpy as np

from adapters.base import Adapter
from adapters.spec import forget_packings
from adapters.tensorflow import attention, embedding, loss, rnn
from adapters.tensorflow.attention import TensorflowAttention
from adapters.tensorflow.embedding import TensorflowEmbedding
from adapters.tensorflow.loss import TensorflowLoss
from adapters.tensorflow.ops import TensorflowOps
from adapters.tensorflow.rnn import TensorflowRnn


class TensorflowAdapter(TensorflowOps, TensorflowLoss, TensorflowRnn,
                        TensorflowEmbedding, TensorflowAttention, Adapter):
    """TensorFlow / Keras 3 behind the contract (see the module docstring for the RNN strategies)."""

    name = "tensorflow"
    STRATEGIES = {"rnn": rnn.STRATEGIES,
                  "loss": loss.STRATEGIES,
                  "embedding": embedding.STRATEGIES,
                  "attention": attention.STRATEGIES}
    NATIVES = {"loss": loss.NATIVES, "embedding": embedding.NATIVES, "attention": attention.NATIVES}

    def __init__(self) -> None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with native_log() as seen:
            import keras
            import tensorflow as tf

            self._gpus = tf.config.list_physical_devices("GPU")
            seen["gpus"] = len(self._gpus)
        if keras.backend.backend() != "tensorflow":
            raise ImportError(f"the tensorflow adapter needs KERAS_BACKEND=tensorflow; keras runs "
                              f"{keras.backend.backend()!r} in this process")
        self.tf, self.keras = tf, keras
        self.version = f"tensorflow {tf.__version__}, keras {keras.__version__}"
        for gpu in self._gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # the GPU was initialised before this adapter; growth can no longer change
                pass
        tf.config.experimental.enable_tensor_float_32_execution(False)
        self._traces = 0
        self._fns: dict = {}
        self._nets: dict = {}
        self._kernels: dict = {}

    # -- helpers ----------------------------------------------------------------------------------------------
    def devices(self) -> list[str]:
        return ["cpu", "gpu"] if self._gpus else ["cpu"]

    def device_name(self, device: str = "cpu") -> str | None:
        if device != "gpu" or not self._gpus:
            return None
        return self.tf.config.experimental.get_device_details(self._gpus[0]).get("device_name")

    @staticmethod
    def _dev(device: str) -> str:
        return "/GPU:0" if device == "gpu" else "/CPU:0"

    def _asarray(self, x: Any, device: str) -> Any:
        tf = self.tf
        if not isinstance(x, tf.Tensor):
            x = np.asarray(x)  # NumPy's dtype rules (int64, float64) for lists, like the reference
        with tf.device(self._dev(device)):
            t = tf.convert_to_tensor(x)
            return t if t.device.endswith(self._dev(device)[1:]) else tf.identity(t)

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, self.tf.Tensor) and x.dtype == self.tf.bfloat16:
            x = self.tf.cast(x, self.tf.float32)
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    def dtype_name(self, x: Any) -> str:
        if isinstance(x, (self.tf.Tensor, self.tf.Variable)):
            return x.dtype.name
        return super().dtype_name(x)

    def device_report(self) -> str:
        return (f"tensorflow {self.tf.__version__} sees {self.devices()} (GPUs: {len(self._gpus)}; "
                f"built with CUDA: {self.tf.test.is_built_with_cuda()})")

    def sync(self, device: str = "cpu") -> None:
        """Eager CPU ops return when done; on GPU a device->host copy of a fresh value waits for the stream."""
        if device == "gpu":
            with self.tf.device("/GPU:0"):
                (self.tf.zeros(()) + 1).numpy()

    def clear_compiled(self) -> None:
        self._fns.clear()
        self._kernels.clear()
        self.__dict__.pop("_bucket_shapes", None)
        self.__dict__.pop("_sliced_compiled", None)
        forget_packings()

    def compile_count(self) -> int:
        return self._traces

    def call_peak(self, call, device: str = "cpu") -> int | None:
        """The allocator's own statistics (peak reset, then peak - current before the call), on the GPU and on the
        CPU: TensorFlow's CPU allocator keeps the memory its first calls took, so after them a masked CE forward +
        backward over [64, 128, 1024] logits raised the process's RSS by 0.3 MiB while its gradient alone is 32 MiB.
        None where the allocator keeps no statistics."""
        if device == "gpu" and not self._gpus:
            return None
        mem, name = self.tf.config.experimental, "GPU:0" if device == "gpu" else "CPU:0"
        try:
            mem.reset_memory_stats(name)
            before = mem.get_memory_info(name)["current"]
        except (ValueError, RuntimeError):  # an allocator without statistics
            return None
        call()
        return max(int(mem.get_memory_info(name)["peak"]) - int(before), 0)

    # -- primitives of the shared algorithms and the floors ---------------------------------------------------
    def _arange(self, n, like):
        return self.tf.range(n, dtype=like.dtype)

    def _take_time(self, x, index):
        return self.tf.gather(x, index, batch_dims=1)

    def _take_rows(self, x, index):
        return self.tf.gather(x, index)

    def _regather(self, parts, index, shape):
        tf = self.tf  # `shape` may be a tensor (inside a graph whose batch and time are of unknown length)
        flat = [tf.reshape(p, (-1, *p.shape[2:])) for p in parts]
        flat.append(tf.zeros_like(flat[0][:1]))
        return tf.reshape(tf.gather(tf.concat(flat, 0), index), shape)

    def _native_lengths(self, lengths, like):
        return self.tf.constant(lengths) if isinstance(lengths, np.ndarray) else lengths

    def _where(self, cond, a, b):
        return self.tf.where(cond, a, b)

    def _copy(self, x):
        return self.tf.identity(x + 0)

    def _matmul(self, a, b):
        return self.tf.linalg.matmul(a, b)

    def _wait(self, x, device):
        (self.tf.reshape(x, [-1])[:1] + 0).numpy()  # a host copy of one element waits for x


__all__ = ["TensorflowAdapter"]


#: a native log line: absl's "I0000 00:00:1796524660.606256    6486 port.cc:153] ..." (before InitializeLog the
#: seconds field holds the Unix time) or TSL's older
#: "2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ..."; group 1 is the severity letter
_LOG_LINE = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) )")
_SEVERITY = "IWEF"


def kept_log(text: str, min_level: int, gpus: int | None) -> str:
    """What of TensorFlow's native start-up log to show: the lines at or above TF_CPP_MIN_LOG_LEVEL (0 INFO,
    1 WARNING, 2 ERROR, 3 FATAL) and everything that is not a native log line (a Python warning, a traceback).
    Dropped besides: absl's "All log messages before absl::InitializeLog() ..." preamble, and the failed cuInit
    error when TensorFlow found no GPU (that failure is how a machine without a CUDA driver says so)."""
    kept = []
    for line in text.splitlines():
        if line.startswith("WARNING: All log messages before absl::InitializeLog()"):
            continue
        m = _LOG_LINE.match(line)
        if m:
            if _SEVERITY.index(m.group(1) or m.group(2)) < min_level:
                continue
            if gpus == 0 and "failed call to cuInit" in line:
                continue
        kept.append(line)
    return "".join(f"{line}\n" for line in kept)


@contextlib.contextmanager
def native_log():
    """Hold back TensorFlow's native (C++) log while it loads and lists its GPUs, then show `kept_log` of it.

    Since TF 2.17 its C++ libraries log through absl before anyone calls absl::InitializeLog, and that path
    ignores TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#79029, #100442): every import printed INFO lines and, on
    a machine without a CUDA driver, a cuInit ERROR. File descriptor 2 is sent to a temporary file meanwhile (a
    native library writes there, past sys.stderr); if loading fails, the whole log is shown. Yields a dict the
    caller sets "gpus" in."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    seen: dict = {"gpus": None}
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield seen
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            shown = text if failed else kept_log(text, int(level) if level.isdigit() else 0, seen["gpus"])
            if shown:
                sys.stderr.write(shown)
                sys.stderr.flush()
