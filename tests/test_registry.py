"""The registry: availability without importing frameworks, clear errors for unknown / missing frameworks."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import adapters


def test_import_harness_and_adapters_imports_no_framework():
    code = ("import sys, harness, adapters, harness.cli, harness.check, harness.idioms, harness.profiles, "
            "harness.bench, harness.report, harness.overhead, suites.axes, suites.bench_rnn, suites.bench_ops; "
            "adapters.available(); bad = {'torch', 'tensorflow', 'jax', 'keras'} & set(sys.modules); "
            "assert not bad, bad")
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
    strategies = any_adapter.rnn_strategies("lstm")
    assert strategies and len(set(strategies)) == len(strategies), f"{any_adapter.name}: {strategies}"
