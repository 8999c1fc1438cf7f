"""JAX adapter: vectorised jnp ops (`ops.py`) and jit-compiled masked `lax.scan` RNNs (`rnn.py`).

Global JAX settings made when the adapter is created (they apply to the whole process, which is why the harness
runs each framework in its own process when it times or measures): `jax_enable_x64` (float64 stays float64) and
`jax_default_matmul_precision = "highest"` (no TF32 on GPU); see `adapters/jax/rnn.py`.

`VARLEN_XLA_FAST_COMPILE=1` (set by the CPU gates, `tests/conftest.py`: they time nothing) compiles every `jax.jit`
of the adapter with XLA's fast-compile options (`FAST_COMPILE`): XLA:CPU's FAST_COMPILE preset and LLVM at -O0.
The programs mean the same; on 2 cores the RNN vjps compiled 1.6-3.5x faster (scan 1.5 -> 0.95 s, scan_unroll8
5.9-7.0 -> 1.7 s; LSTM H=16, 2 layers both ways) and run slower. Records of such a process carry "xla_options":
"fast_compile". Timing workers turn it off (`harness/proc.py`: TIMING_ENV) and `varlen check` does not set it:
what the bench times and the check verifies is XLA's default compile.

JAX cannot reset its allocator's peak (`peak_resettable = False`): the harness measures each GPU case in a fresh
process so that the peak it reports is that case's own.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from adapters.base import Adapter
from adapters.jax import attention, embedding, loss, rnn
from adapters.jax.attention import JaxAttention
from adapters.jax.embedding import JaxEmbedding
from adapters.jax.loss import JaxLoss
from adapters.jax.ops import JaxOps
from adapters.jax.rnn import JaxRnn
from adapters.spec import forget_packings

#: the environment variable that turns `FAST_COMPILE` on ("1")
FAST_COMPILE_ENV = "VARLEN_XLA_FAST_COMPILE"
#: XLA's compile options under FAST_COMPILE_ENV: XLA:CPU's fast-compile preset (XLA:GPU ignores it) and LLVM's -O0
#: (both backends); a jit's own options win
FAST_COMPILE = {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_COMPILE", "xla_backend_optimization_level": 0}


class _FastCompile:
    """The `jax` module, but its `jit` compiles with `FAST_COMPILE` (the adapter's `self.jax` under
    FAST_COMPILE_ENV=1: every jit of the adapter goes through it)."""

    def __init__(self, jax) -> None:
        self._jax = jax

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jax, name)

    def jit(self, fn, **kw):
        kw["compiler_options"] = {**FAST_COMPILE, **(kw.get("compiler_options") or {})}
        return self._jax.jit(fn, **kw)


class JaxAdapter(JaxOps, JaxLoss, JaxRnn, JaxEmbedding, JaxAttention, Adapter):
    """The contract on JAX (see the module docstring for the global settings this changes)."""

    name = "jax"
    STRATEGIES = {"rnn": rnn.STRATEGIES,
                  "loss": loss.STRATEGIES,
                  "embedding": embedding.STRATEGIES,
                  "attention": attention.STRATEGIES}
    NATIVES = {"loss": loss.NATIVES, "embedding": embedding.NATIVES, "attention": attention.NATIVES}
    peak_resettable = False

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_default_matmul_precision", "highest")
        self.jax, self.jnp, self.lax = jax, jnp, jax.lax
        self.fast_compile = os.environ.get(FAST_COMPILE_ENV) == "1"
        if self.fast_compile:
            self.jax = _FastCompile(jax)
        self.version = jax.__version__
        self._compiles = 0
        self._jitted: dict[tuple, Any] = {}
        self._last: Any = None
        self._devices = ["cpu", "gpu"] if self._has_gpu() else ["cpu"]

    # -- helpers ---------------------------------------------------------------------------------------------
    def _has_gpu(self) -> bool:
        try:
            return bool(self.jax.devices("gpu"))
        except RuntimeError:  # no GPU backend in this jaxlib, or no device
            return False

    def devices(self) -> list[str]:
        return list(self._devices)

    def device_fields(self, device: str) -> dict:
        """The base's, plus "xla_options": "fast_compile" where this process compiles with `FAST_COMPILE` (every
        record of its work says so)."""
        return {**super().device_fields(device), **({"xla_options": "fast_compile"} if self.fast_compile else {})}

    def device_name(self, device: str = "cpu") -> str | None:
        return getattr(self._device(device), "device_kind", None) if device == "gpu" and device in self._devices \
            else None

    def device_report(self) -> str:
        return f"jax {self.version} sees {self.devices()} (backends' devices: {self.jax.devices()})"

    def _device(self, device: str):
        return self.jax.devices(device)[0]

    def _asarray(self, x: Any, device: str) -> Any:
        """One transfer straight to `device` (jnp.asarray would first land on the default device)."""
        if not isinstance(x, (np.ndarray, self.jax.Array)):
            x = np.asarray(x)
        return self.jax.device_put(x, self._device(device))

    def to_numpy(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        return x.astype(np.float32) if x.dtype.name == "bfloat16" else x

    def _native(self, x: Any) -> Any:
        """Native arrays stay where they are; NumPy input (ops without a device argument) goes to the CPU."""
        return x if isinstance(x, self.jax.Array) else self.asarray(x, "cpu")

    def _keep(self, result: Any) -> Any:
        """Remember the latest result: JAX dispatches asynchronously and `sync` waits on it (its buffers stay alive
        until the next op replaces it)."""
        self._last = result
        return result

    def sync(self, device: str = "cpu") -> None:
        if self._last is not None:
            self.jax.block_until_ready(self._last)

    def _wait(self, x: Any, device: str) -> None:
        self.jax.block_until_ready(x)

    def compile_count(self) -> int:
        return self._compiles

    def call_peak(self, call, device: str = "cpu") -> int | None:
        """GPU: the allocator's peak since the process started above what it held just before one call (JAX cannot
        reset the peak: in a process that ran only this case, that is the case's own calls' working set, its
        first, compiling call's included). CPU: None (no statistics there; RSS measures it)."""
        if device != "gpu" or "gpu" not in self._devices:
            return None
        stats = lambda: self._device("gpu").memory_stats() or {}  # noqa: E731
        self.sync(device)
        before = stats().get("bytes_in_use")
        call()
        self.sync(device)
        peak = stats().get("peak_bytes_in_use")
        return None if before is None or peak is None else max(int(peak) - int(before), 0)

    def clear_compiled(self) -> None:
        self._jitted.clear()
        self.__dict__.pop("_bucket_shapes", None)
        self.__dict__.pop("_sliced_compiled", None)
        self.jax.clear_caches()
        forget_packings()

    def _cached(self, key: tuple, build):
        if key not in self._jitted:
            self._jitted[key] = build()
        return self._jitted[key]

    # -- primitives of the shared algorithms and the floors ---------------------------------------------------
    def _arange(self, n, like):
        return self.jnp.arange(n, dtype=like.dtype)

    def _take_time(self, x, index):
        return self.jnp.take_along_axis(x, index.reshape(*index.shape, *([1] * (x.ndim - 2))), axis=1)

    def _take_rows(self, x, index):
        return self.jnp.take(x, index, axis=0)

    def _regather(self, parts, index, shape):
        jnp = self.jnp
        flat = [p.reshape(-1, *shape[2:]) for p in parts]
        flat.append(jnp.zeros_like(flat[0][:1]))
        return jnp.take(jnp.concatenate(flat), index, axis=0).reshape(shape)

    def _native_lengths(self, lengths, like):
        if not isinstance(lengths, np.ndarray):
            return lengths
        if isinstance(like, self.jax.core.Tracer):
            return self.jnp.asarray(lengths)
        return self.jax.device_put(lengths, next(iter(like.devices())))

    def _where(self, cond, a, b):
        return self.jnp.where(cond, a, b)

    def _copy(self, x):
        """x written into a buffer kept between calls (donated to the jitted copy and returned by it): the copy's
        bandwidth. A fresh 256 MiB output per call measured the allocator's page faults instead: 3-7 GB/s on a
        CPU whose copy runs at 30-40 GB/s (NumPy's and torch's)."""
        out = self.__dict__.get("_floor_out")
        if out is None or out.shape != x.shape or out.dtype != x.dtype or out.devices() != x.devices():
            out = self.jax.device_put(self.jnp.zeros(x.shape, x.dtype), next(iter(x.devices())))
        into = self._cached(("floor_copy",), lambda: self.jax.jit(lambda out, x: out.at[:].set(x), donate_argnums=0))
        self._floor_out = into(out, x)
        return self._floor_out

    def _matmul(self, a, b):
        return self.jnp.matmul(a, b, precision="highest")


__all__ = ["JaxAdapter"]
