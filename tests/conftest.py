"""Shared fixtures: the adapter registry, parametrized over the frameworks, and the device under test.

A framework that is not installed is skipped with a reason naming it, unless VARLEN_REQUIRE_ALL=1 (set by
`make test`, hence CI), where it fails instead. A session in which no test passed fails: a run that executed
nothing is not a green run.

The device: `pytest --device gpu` (or VARLEN_DEVICE=gpu) runs the device-aware gates (ops, RNN, every family) on
the GPU; a framework that sees no GPU is skipped with a reason naming what it sees.
"""
from __future__ import annotations

import os

import pytest

import adapters
from adapters.jax import FAST_COMPILE_ENV  # a constant: imports no framework
from harness.axes import FRAMEWORKS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `make test` runs one xdist worker per core; each worker's PyTorch would start an OpenMP thread per core, and its
# threads wait for one another at every op's barrier while the other worker holds the core they need: the per-case
# peak test took 40 s in the suite and 3.3 s alone on 2 cores. Each worker gets its share of the cores (before any
# framework is imported; the processes the gates spawn inherit it; an OMP_NUM_THREADS of your own wins).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

#: VARLEN_XLA_FAST_COMPILE as given to pytest (None: pytest_configure decides)
USER_FAST_COMPILE = os.environ.get(FAST_COMPILE_ENV)

REQUIRE_ALL = os.environ.get("VARLEN_REQUIRE_ALL") == "1"


def pytest_addoption(parser):
    parser.addoption("--device", choices=["cpu", "gpu"], default=os.environ.get("VARLEN_DEVICE", "cpu"),
                     help="device the gates run on (default: cpu, or $VARLEN_DEVICE)")


def require(name: str) -> None:
    """Skip (or, under VARLEN_REQUIRE_ALL=1, fail) unless framework `name` is installed: the one helper every
    test module uses instead of a stray importorskip."""
    if name in adapters.available():
        return
    msg = f"framework {name} is not installed: pip install 'varlen[{name}]'"
    if REQUIRE_ALL:
        pytest.fail(msg + " (VARLEN_REQUIRE_ALL=1: none may be skipped)")
    pytest.skip(msg)


def framework_params(names=FRAMEWORKS):
    """pytest params for `names`: present ones run; missing ones skip loudly (or fail under REQUIRE_ALL)."""
    present = adapters.available()
    out = []
    for name in names:
        marks = ()
        if name not in present and not REQUIRE_ALL:
            marks = pytest.mark.skip(reason=f"framework {name} is not installed: pip install 'varlen[{name}]'")
        out.append(pytest.param(name, id=name, marks=marks))
    return out


def pytest_configure(config):
    """The CPU gates time nothing: JAX's programs compile with XLA's fast-compile options (adapters/jax:
    FAST_COMPILE; the whole suite took 865 s instead of 1080 s on 2 cores, JAX's RNN gates 244 s instead of 359).
    Not under `--benchmark-enable` (`make bench` times the programs users get), not on the GPU (LLVM -O0 would
    reach XLA:GPU's kernels), and timing workers turn it off (harness/proc.py); VARLEN_XLA_FAST_COMPILE=0 of your
    own wins. Set here, before any test makes an adapter (the env var is read when the JAX adapter is made)."""
    benchmarking = config.getoption("benchmark_enable", default=False)
    if config.getoption("--device") == "cpu" and not benchmarking:
        os.environ.setdefault(FAST_COMPILE_ENV, "1")


@pytest.fixture(scope="session")
def device(request) -> str:
    return request.config.getoption("--device")


def on_device(adapter, device: str):
    """The adapter, or a skip naming what it sees when `device` is not visible to it."""
    if device not in adapter.devices():
        pytest.skip(f"no {device} visible: {adapter.device_report()}")
    return adapter


@pytest.fixture(params=framework_params())
def fw(request, device):
    """Each framework adapter in turn (not the reference), on the device under test."""
    return on_device(adapters.get(request.param), device)


@pytest.fixture(params=framework_params(("numpy", *FRAMEWORKS)))
def any_adapter(request):
    """Every adapter, the NumPy reference included (bad-input tests)."""
    return adapters.get(request.param)


@pytest.fixture(scope="session")
def ref():
    return adapters.get("numpy")


_passed = 0


def pytest_runtest_logreport(report):
    global _passed
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0 and _passed == 0 and not session.config.option.collectonly:
        print("\nvarlen: no test passed (all skipped or none collected) -- failing the run")
        session.exitstatus = 1


def strategy_params(family: str = "rnn"):
    """(framework, strategy) pairs for every framework's declared strategies of `family` (collecting imports no
    framework: `adapters.declared_strategies` reads the family modules' tables)."""
    out = []
    for p in framework_params():
        name = p.values[0]
        for strategy in adapters.declared_strategies(name, family):
            out.append(pytest.param(name, strategy, id=f"{name}-{strategy}", marks=p.marks))
    return out
