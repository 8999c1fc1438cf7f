"""Shared fixtures: the adapter registry, parametrized over the frameworks.

A framework that is not installed is skipped with a reason naming it, unless VARLEN_REQUIRE_ALL=1 (set by
`make test`, hence CI), where it fails instead. A session in which no test passed fails: a run that executed
nothing is not a green run.
"""
from __future__ import annotations

import os

import pytest

import adapters

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FRAMEWORKS = ("torch", "tensorflow", "jax")
REQUIRE_ALL = os.environ.get("VARLEN_REQUIRE_ALL") == "1"


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


@pytest.fixture(params=framework_params())
def fw(request):
    """Each framework adapter in turn (not the reference)."""
    return adapters.get(request.param)


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


def strategy_params():
    """(framework, strategy) pairs for every installed framework's declared RNN strategies."""
    out = []
    for p in framework_params():
        name = p.values[0]
        if p.marks or name not in adapters.available():
            out.append(pytest.param(name, "default", id=f"{name}-default", marks=p.marks))
            continue
        for strategy in adapters.get(name).rnn_strategies("lstm"):
            out.append(pytest.param(name, strategy, id=f"{name}-{strategy}"))
    return out
