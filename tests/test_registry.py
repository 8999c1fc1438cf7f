"""The registry: availability without importing frameworks, clear errors for unknown / missing frameworks."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import adapters


def test_import_harness_and_adapters_imports_no_framework():
    code = ("import sys, harness, adapters, harness.cli, harness.check, harness.idioms, harness.profiles, "
            "harness.bench, harness.report, harness.overhead, harness.axes, harness.families, suites.bench_rnn, "
            "suites.bench_ops; adapters.available(); harness.cli.build_parser(); "
            "[adapters.declared_strategies(f, fam) for f in adapters.KNOWN for fam in adapters.STRATEGY_FAMILIES]; "
            "bad = {'torch', 'tensorflow', 'jax', 'keras', 'optax'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_available_is_sorted_subset_of_known():
    names = adapters.available()
    assert names == sorted(names) and set(names) <= set(adapters.KNOWN) and "numpy" in names


def test_unknown_adapter_lists_known():
    with pytest.raises(ValueError, match="known adapters: \\['jax', 'numpy', 'tensorflow', 'torch'\\]"):
        adapters.get("mxnet")


def test_missing_framework_raises_framework_unavailable(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "jax" else real(n, *a))
    adapters.get.cache_clear()
    try:
        assert "jax" not in adapters.available()
        with pytest.raises(adapters.FrameworkUnavailable, match=r"pip install 'varlen\[jax\]'"):
            adapters.get("jax")
        assert issubclass(adapters.FrameworkUnavailable, ImportError)
    finally:
        adapters.get.cache_clear()


def test_every_adapter_reports_name_version_devices(any_adapter):
    assert any_adapter.name in adapters.KNOWN and any_adapter.version
    assert any_adapter.devices()[0] == "cpu"
    for family in adapters.STRATEGY_FAMILIES:
        strategies = any_adapter.strategies(family)
        assert strategies and len(set(strategies)) == len(strategies), f"{any_adapter.name} {family}: {strategies}"
        assert strategies[0] == adapters.declared_strategies(any_adapter.name, family)[0] or family != "rnn"


def test_dispatch_is_a_table_lookup_of_strategy_units(any_adapter):
    """Every declared strategy is one Strategy unit with a name, precondition, forward and vjp."""
    from adapters.spec import Strategy

    for family, table in any_adapter.STRATEGIES.items():
        for name, unit in table.items():
            assert isinstance(unit, Strategy) and unit.name == name, (any_adapter.name, family, name)
            assert callable(unit.forward) and callable(unit.vjp) and callable(unit.supports)


def test_a_kernel_per_variant_is_named_apart_and_listed_once():
    """`kernel_fields` keeps one name per variant for the records and lists them joined, a shared "... + " head
    once; a variant it does not name falls back to the listing."""
    from adapters.spec import Strategy, kernel_fields

    unit = Strategy("s", print, print, **kernel_fields({"a": "rows gathered + F.x", "b": "rows gathered + F.y"}))
    assert unit.kernel == "rows gathered + F.x | F.y"
    assert (unit.kernel_for("a"), unit.kernel_for("b"), unit.kernel_for(None)) == \
        ("rows gathered + F.x", "rows gathered + F.y", "rows gathered + F.x | F.y")
    plain = Strategy("p", print, print, **kernel_fields({"a": "optax.f(where)", "b": "optax.g"}))
    assert plain.kernel == "optax.f(where) | optax.g" and Strategy("q", print, print, kernel="k").kernel_for("a") == "k"
