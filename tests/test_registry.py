"""The registry: availability without importing frameworks, clear errors for unknown / missing frameworks."""
from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys

import numpy as np
import pytest

import adapters
from adapters.spec import (
    CELLS,
    DEVICES,
    EMBEDDING_MODES,
    FLOAT_DTYPES,
    LOSS_KINDS,
    LOSS_REDUCTIONS,
    STRATEGY_SPEC,
    attention_spec,
)


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


def test_strategies_accept_every_spec_keyword_their_callers_pass(any_adapter):
    """`STRATEGY_SPEC` has one row per family with strategies, and every keyword the base class's ops (and the
    harness) pass, with each value they pass, is accepted: validating the spec breaks no legitimate caller."""
    assert set(STRATEGY_SPEC) == set(adapters.STRATEGY_FAMILIES)
    a, L = any_adapter, np.array([2, 3])
    for device, dtype in itertools.product(DEVICES, FLOAT_DTYPES):
        for cell in CELLS:
            a.strategies("rnn", cell=cell, device=device, dtype=dtype)
        for kind, reduction in itertools.product(LOSS_KINDS, LOSS_REDUCTIONS):
            a.strategies("loss", kind=kind, reduction=reduction, device=device, dtype=dtype)
        for op, mode in (("embed", None), *(("embedding_bag", mode) for mode in EMBEDDING_MODES)):
            a.strategies("embedding", op=op, mode=mode, device=device, dtype=dtype)
        for causal, side in itertools.product((False, True), ("right", "left")):
            a.strategies("attention", **attention_spec(device, dtype, causal, 4, 2, side, L, L[::-1], 3, 4, 8))
    assert a.strategies("rnn", cell="gru", device="cpu") and a.strategies("embedding", device="cpu")


def test_concat_rows_gives_its_own_reason_for_the_tanh_rnn():
    """torch's concat_rows refuses the tanh RNN for want of a gate to reset the state between the sequences of a
    row, not saturated_gate's reason (no gate to saturate on padding)."""
    from tests.conftest import require

    require("torch")
    fw = adapters.get("torch")
    spec = dict(cell="rnn", device="cpu", dtype="float32")
    concat, saturated = fw.why_not("rnn", "concat_rows", **spec), fw.why_not("rnn", "saturated_gate", **spec)
    assert concat and saturated and "concat_rows" not in fw.rnn_strategies("rnn")
    assert "saturate" not in concat and "reset" in concat, concat
    assert concat.split(";")[0] != saturated.split(";")[0], (concat, saturated)
