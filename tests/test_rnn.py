"""Masked RNNs: every strategy of every framework against the NumPy float64 reference.

Outputs, h_n, c_n and every gradient (input and each weight), float64 (tight) and float32 (tolerance table), two
stacked layers, uni- and bidirectional, left and right padding, a zero-length row, NaN in padding.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import adapters
from adapters.spec import CELLS, RnnSpec, init_params, map_params, valid_mask
from harness.compare import close, flat_grads
from harness.data import cotangents, padded
from harness.families.rnn import RNN_T, compare_rnn, rnn_case
from harness.tolerances import tolerance
from tests.conftest import on_device, strategy_params
from tests.strategies import ragged_batches, rnn_shapes

STRATS = strategy_params()


def up(a):
    return np.asarray(a).astype("float64")


def reference(spec, params, x, L, cot, side):
    return adapters.get("numpy").rnn_vjp(spec, map_params(up, params), up(x), L, {k: up(v) for k, v in cot.items()},
                                         side=side)


def adapter_for(name, strategy, cell, device="cpu", dtype="float64"):
    """The adapter, or a skip with the reason the strategy's precondition gives for this cell, device and dtype."""
    fw = adapters.get(name)
    why = fw.why_not("rnn", strategy, cell=cell, device=device, dtype=dtype)
    if why is not None:
        pytest.skip(f"{name} {strategy!r} does not run here ({cell}, {device}, {dtype}): {why}")
    return fw


@pytest.mark.parametrize("name,strategy", STRATS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rnn_matches_reference(name, strategy, cell, side, bidirectional, dtype, device):
    fw = on_device(adapter_for(name, strategy, cell, device, dtype), device)
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    x, L, params, cot = rnn_case(spec, side, dtype)
    want_out, want_grads = reference(spec, params, x, L, cot, side)
    out, grads = fw.rnn_vjp(spec, params, fw.asarray(x, device), L, cot, side=side, strategy=strategy, device=device)
    res = compare_rnn(fw, out, grads, want_out, want_grads, valid_mask(L, RNN_T, side), tolerance(dtype, device))
    bad = {q: err for q, (ok, err) in res.items() if not ok}
    assert not bad, f"{name}/{strategy} {cell} side={side} bi={bidirectional} {dtype} kernel={out.kernel}: {bad}"
    assert (out.c_n is None) == (cell != "lstm")
    every = {"outputs": out.outputs, "h_n": out.h_n, "c_n": out.c_n, "grad_x": grads["x"],
             **{f"grad {k} l{i}d{j}": v for i, dirs in enumerate(grads["params"]) for j, p in enumerate(dirs)
                for k, v in p.items()}}
    dtypes = {q: str(fw.to_numpy(v).dtype) for q, v in every.items() if v is not None}
    assert set(dtypes.values()) == {dtype}, f"{name}/{strategy}: results not all {dtype}: {dtypes}"
    # the forward-only path (what benchmarks time) agrees too
    fwd = fw.rnn(spec, params, fw.asarray(x, device), L, side=side, strategy=strategy, device=device)
    for q in ("outputs", "h_n", "c_n"):
        if getattr(want_out, q) is not None:
            ok, err = close(fw.to_numpy(getattr(fwd, q)), getattr(want_out, q), tolerance(dtype, device))
            assert ok, f"{name}/{strategy} forward-only {q}: max abs err {err}"
    assert isinstance(out.kernel, str) and out.kernel, "kernel must name what ran"


@pytest.mark.parametrize("name,strategy", STRATS)
@pytest.mark.parametrize("cell", CELLS)
def test_padding_values_change_nothing(name, strategy, cell):
    """NaN, huge values or zeros in padding: bit-identical outputs, states (h_n, and c_n of the LSTM) and gradients."""
    fw = adapter_for(name, strategy, cell)
    spec = RnnSpec(cell, input_size=2, hidden_size=3, num_layers=1, bidirectional=True)
    L = np.array([4, 0, 2, 3])
    cot = cotangents(spec, 4, 5, seed=3, dtype="float64")
    params = init_params(spec, seed=3, dtype="float64")
    runs = []
    for side, fill in itertools.product(["right", "left"], [0.0, np.nan, 1e30]):
        x = padded(L, 5, (2,), side=side, seed=3, dtype="float64", fill=fill)
        out, grads = fw.rnn_vjp(spec, params, fw.asarray(x), L, cot, side=side, strategy=strategy)
        states = [fw.to_numpy(out.h_n)] + ([fw.to_numpy(out.c_n)] if cell == "lstm" else [])
        runs.append((side, fill, [fw.to_numpy(out.outputs), *states, fw.to_numpy(grads["x"]),
                                  flat_grads(grads["params"], fw.to_numpy)]))
    whats = ["outputs", "h_n", *(["c_n"] if cell == "lstm" else []), "grad_x", "grad_params"]
    for side, fill, arrays in runs:
        base = next(r for r in runs if r[0] == side and r[1] == 0.0)[2]
        for a, b, what in zip(arrays, base, whats, strict=True):
            assert np.isfinite(a).all(), f"{name}/{strategy} {cell} side={side}: padding {fill} leaked into {what}"
            assert np.array_equal(a, b), f"{name}/{strategy} {cell} side={side}: padding {fill} changed {what}"


FRAMEWORK_NAMES = [p.values[0] for p in strategy_params() if not p.marks]


@pytest.mark.parametrize("pair", list(itertools.combinations(sorted(set(FRAMEWORK_NAMES)), 2)),
                         ids=lambda p: f"{p[0]}-vs-{p[1]}")
@pytest.mark.parametrize("cell", CELLS)
def test_frameworks_agree_pairwise(pair, cell):
    """Default strategies of two frameworks, float64, straight against each other (einops style)."""
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, L, params, cot = rnn_case(spec, "left", "float64", seed=7)
    got = []
    for name in pair:
        fw = adapters.get(name)
        out, grads = fw.rnn_vjp(spec, params, fw.asarray(x), L, cot, side="left")
        got.append([fw.to_numpy(out.outputs), fw.to_numpy(out.h_n), fw.to_numpy(grads["x"]),
                    flat_grads(grads["params"], fw.to_numpy)])
    for a, b, what in zip(*got, ["outputs", "h_n", "grad_x", "grad_params"]):
        ok, err = close(a, b, tolerance("float64"))
        assert ok, f"{pair[0]} vs {pair[1]} {cell} {what}: max abs err {err}"


@pytest.mark.parametrize("name,strategy", STRATS)
@given(batch=ragged_batches(max_batch=4, max_len=5), shape=rnn_shapes(), cell=st.sampled_from(CELLS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rnn_random_batches_and_sizes(name, strategy, batch, shape, cell, device):
    lengths, T, side, seed = batch
    fw = on_device(adapters.get(name), device)
    why = {c: fw.why_not("rnn", strategy, cell=c, device=device, dtype="float64") for c in CELLS}
    if all(why.values()):
        pytest.skip(f"{name} {strategy!r} runs for no cell on {device} in float64: {why}")
    assume(why[cell] is None)  # never a silent pass: Hypothesis fails if no example ran
    I, H, layers, bi = shape
    spec = RnnSpec(cell, I, H, layers, bi)
    L = np.array(lengths)
    x = padded(L, T, (I,), side=side, seed=seed, dtype="float64", fill=np.nan)
    params = init_params(spec, seed=seed, dtype="float64")
    cot = cotangents(spec, L.size, T, seed=seed, dtype="float64")
    want_out, want_grads = reference(spec, params, x, L, cot, side)
    out, grads = fw.rnn_vjp(spec, params, fw.asarray(x, device), L, cot, side=side, strategy=strategy, device=device)
    res = compare_rnn(fw, out, grads, want_out, want_grads, valid_mask(L, T, side), tolerance("float64", device))
    bad = {q: err for q, (ok, err) in res.items() if not ok}
    assert not bad, f"{name}/{strategy} {spec} lengths={lengths} T={T} side={side}: {bad}"
