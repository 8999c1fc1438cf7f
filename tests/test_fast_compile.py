"""VARLEN_XLA_FAST_COMPILE: the CPU gates compile JAX's programs with XLA's fast-compile options, every jit of the
adapter gets them (a jit's own options win), the records say so, and what times or checks compiles as users do."""
from __future__ import annotations

import os
import sys

import numpy as np

import adapters
from adapters.jax import FAST_COMPILE, FAST_COMPILE_ENV
from adapters.spec import RnnSpec, init_params
from harness import proc
from harness.data import cotangents, padded
from tests.conftest import require


def _adapter(monkeypatch, on: bool):
    require("jax")
    from adapters.jax import JaxAdapter

    monkeypatch.setenv(FAST_COMPILE_ENV, "1" if on else "0")
    return JaxAdapter()  # a fresh one: the env var is read when the adapter is made


def _spy(monkeypatch):
    """The compiler options of every `jax.jit` the adapter makes (a library's own, e.g. optax's at its import,
    are not the adapter's)."""
    import jax

    seen, real = [], jax.jit

    def jit(fn, **kw):
        if f"{os.sep}adapters{os.sep}" in sys._getframe(1).f_code.co_filename:
            seen.append(kw.get("compiler_options"))
        return real(fn, **kw)

    monkeypatch.setattr(jax, "jit", jit)
    return seen


def _run_some(fw):
    """An RNN vjp (a scan and time_sliced's segment programs), a loss, an attention and a masked mean."""
    spec = RnnSpec(cell="gru", input_size=3, hidden_size=4)
    lengths = np.array([5, 0, 2])
    x = padded(lengths, 6, (3,), dtype="float32")
    for strategy in ("scan", "time_sliced"):
        fw.rnn_vjp(spec, init_params(spec, dtype="float32"), fw.asarray(x), lengths,
                   cotangents(spec, 3, 6, dtype="float32"), strategy=strategy)
    fw.masked_mean(fw.asarray(x), lengths)
    logits = np.random.default_rng(0).standard_normal((3, 6, 5)).astype("float32")
    fw.masked_loss(fw.asarray(logits), np.zeros((3, 6), "int64"), lengths, kind="softmax_ce")
    q = np.random.default_rng(1).standard_normal((3, 6, 2, 4)).astype("float32")
    fw.attention(fw.asarray(q), fw.asarray(q), fw.asarray(q), lengths, lengths)


def test_every_jit_of_the_adapter_gets_the_fast_compile_options(monkeypatch):
    fw = _adapter(monkeypatch, True)
    seen = _spy(monkeypatch)
    _run_some(fw)
    assert len(seen) >= 5, seen
    assert all(o is not None and o.items() >= FAST_COMPILE.items() for o in seen), seen
    assert fw.device_fields("cpu")["xla_options"] == "fast_compile"
    seen.clear()
    fw.jax.jit(lambda a: a + 1, compiler_options={"xla_backend_optimization_level": 2})(np.ones(2))
    assert seen == [{**FAST_COMPILE, "xla_backend_optimization_level": 2}], "a jit's own options win"


def test_without_it_the_adapter_compiles_with_xla_defaults(monkeypatch):
    fw = _adapter(monkeypatch, False)
    seen = _spy(monkeypatch)
    _run_some(fw)
    assert seen and all(o is None for o in seen), seen
    assert "xla_options" not in fw.device_fields("cpu")


def test_the_cpu_gates_run_with_it_and_timing_workers_without_it(device):
    from tests import conftest

    require("jax")
    fast = adapters.get("jax").device_fields("cpu").get("xla_options") == "fast_compile"
    if conftest.USER_FAST_COMPILE is None:  # as `make test` runs: tests/conftest.py decides
        assert fast == (device == "cpu"), "VARLEN_XLA_FAST_COMPILE=1 for the CPU gates (tests/conftest.py) only"
    assert fast == (os.environ.get(FAST_COMPILE_ENV) == "1")
    assert proc.worker_env("jax")[FAST_COMPILE_ENV] == "0", "harness/proc.py's TIMING_ENV names the adapter's variable"
    assert proc.worker_env(None).get(FAST_COMPILE_ENV) == os.environ.get(FAST_COMPILE_ENV), \
        "a worker that times nothing keeps it"
