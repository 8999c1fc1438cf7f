"""The JAX adapter's params conversion: canonical (PyTorch-layout) params <-> the jax pytree, and gradients that
come back in the canonical layout.

Oracles independent of the adapter's scan code: a plain jnp loop over each sequence's valid steps (differentiated
with jax.grad) for every gradient entry, and central finite differences of the adapter's own forward pass for a few
entries picked across gate blocks and off the diagonal, so a transposed weight or a permuted gate block fails.
"""
from __future__ import annotations

import numpy as np
import pytest

import adapters
from adapters.spec import RnnSpec, init_params, valid_mask
from tests.conftest import require
from tests.gradcheck import fd_check

LENGTHS = np.array([3, 0, 4, 1])  # unsorted, a zero-length row and a full-length one
B, T, IN, H = 4, 4, 3, 2
SPEC_KW = {"input_size": IN, "hidden_size": H, "num_layers": 2, "bidirectional": True}


@pytest.fixture(scope="module")
def jx():
    require("jax")
    return adapters.get("jax")


def _problem(spec: RnnSpec, side: str, dtype: str = "float64"):
    """params, x with NaN in padding (must never matter), cotangents."""
    rng = np.random.default_rng(7)
    params = init_params(spec, seed=1, dtype=dtype)
    x = rng.normal(size=(B, T, IN)).astype(dtype)
    x[~valid_mask(LENGTHS, T, side)] = np.nan
    D, L = spec.num_directions, spec.num_layers
    cot = {"outputs": rng.normal(size=(B, T, D * H)).astype(dtype),
           "h_n": rng.normal(size=(L * D, B, H)).astype(dtype)}
    if spec.cell == "lstm":
        cot["c_n"] = rng.normal(size=(L * D, B, H)).astype(dtype)
    return params, x, cot


def _loop_loss(jnp, sigmoid, spec: RnnSpec, params, x, cot, side: str):
    """The objective, one sequence at a time over its valid steps only, canonical params used as they are."""
    total = 0.0
    D = spec.num_directions
    for b, n in enumerate(LENGTHS):
        rows = range(n) if side == "right" else range(T - n, T)
        seq = [x[b, t] for t in rows]
        for layer, dirs in enumerate(params):
            outs = []
            for d, p in enumerate(dirs):
                h = c = jnp.zeros(H, x.dtype)
                ys = [None] * n
                for t in (range(n) if d == 0 else reversed(range(n))):
                    g = p["w_ih"] @ seq[t] + p["b_ih"]
                    gh = p["w_hh"] @ h + p["b_hh"]
                    if spec.cell == "rnn":
                        h = jnp.tanh(g + gh)
                    elif spec.cell == "lstm":
                        i, f, gg, o = jnp.split(g + gh, 4)
                        c = sigmoid(f) * c + sigmoid(i) * jnp.tanh(gg)
                        h = sigmoid(o) * jnp.tanh(c)
                    else:
                        r, z = sigmoid(g[:H] + gh[:H]), sigmoid(g[H:2 * H] + gh[H:2 * H])
                        nn = jnp.tanh(g[2 * H:] + r * gh[2 * H:])
                        h = (1 - z) * nn + z * h
                    ys[t] = h
                total = total + jnp.sum(h * cot["h_n"][layer * D + d, b])
                if spec.cell == "lstm":
                    total = total + jnp.sum(c * cot["c_n"][layer * D + d, b])
                outs.append(ys)
            seq = [jnp.concatenate([o[t] for o in outs]) for t in range(n)]
        for k, t in enumerate(rows):
            total = total + jnp.sum(seq[k] * cot["outputs"][b, t])
    return total


def _entries(shape: tuple, H: int) -> list[tuple]:
    """A few entries across gate blocks (rows g*H + j) and off the diagonal."""
    rows = [g * H + (g % H) for g in range(shape[0] // H)]
    return [(r, (r + 1) % shape[1]) if len(shape) == 2 else (r,) for r in rows]


def test_params_to_jax_keeps_canonical_layout_and_casts(jx):
    spec = RnnSpec("lstm", **SPEC_KW)
    params = init_params(spec, dtype="float32")
    tree = jx.params_to_jax(params, np.float64)
    assert len(tree) == spec.num_layers and all(len(d) == spec.num_directions for d in tree)
    for layer, dirs in enumerate(params):
        for d, p in enumerate(dirs):
            assert set(tree[layer][d]) == set(p)
            for k, v in p.items():
                got = tree[layer][d][k]
                assert isinstance(got, jx.jax.Array) and got.dtype == np.float64, (layer, d, k, got.dtype)
                np.testing.assert_array_equal(np.asarray(got), v.astype(np.float64), err_msg=f"[{layer}][{d}][{k}]")
    back = jx.params_from_jax(jx.params_to_jax(params, np.float32))
    for layer, dirs in enumerate(params):
        for d, p in enumerate(dirs):
            assert list(back[layer][d]) == list(p), f"key order {list(back[layer][d])} != canonical {list(p)}"
            for k, v in p.items():
                got = jx.to_numpy(back[layer][d][k])
                assert got.dtype == np.float32, f"float32 params came back as {got.dtype} under jax_enable_x64"
                np.testing.assert_array_equal(got, v, err_msg=f"round trip [{layer}][{d}][{k}]")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_grads_in_canonical_layout_match_per_sequence_loop(jx, cell, side):
    spec = RnnSpec(cell, **SPEC_KW)
    params, x, cot = _problem(spec, side)
    jnp, jax = jx.jnp, jx.jax
    loss = lambda p, xx: _loop_loss(jnp, jax.nn.sigmoid, spec, p, xx, cot, side)
    want_p, want_x = jax.grad(loss, argnums=(0, 1))(jx.params_to_jax(params, np.float64), jnp.asarray(x))
    _, grads = jx.rnn_vjp(spec, params, x, LENGTHS, cot, side=side)
    got_x, want_x = jx.to_numpy(grads["x"]), np.asarray(want_x)
    assert np.isfinite(got_x).all() and not got_x[~valid_mask(LENGTHS, T, side)].any(), "grad x at padding != 0"
    err = np.abs(got_x - want_x).max()
    assert err < 1e-10, f"jax {cell} {side}: grads['x'] max abs err {err:.3g} vs per-sequence loop"
    for layer, dirs in enumerate(params):
        for d, p in enumerate(dirs):
            for k, v in p.items():
                got, want = jx.to_numpy(grads["params"][layer][d][k]), np.asarray(want_p[layer][d][k])
                assert got.shape == v.shape and got.dtype == v.dtype, f"[{layer}][{d}][{k}] {got.shape} {got.dtype}"
                err = np.abs(got - want).max()
                assert err < 1e-10, f"jax {cell} {side}: grad [{layer}][{d}][{k}] max abs err {err:.3g} vs loop"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_param_grads_match_finite_differences(jx, cell):
    spec = RnnSpec(cell, **SPEC_KW)
    params, x, cot = _problem(spec, "right")
    _, grads = jx.rnn_vjp(spec, params, x, LENGTHS, cot)

    def loss() -> float:
        out = jx.rnn(spec, params, x, LENGTHS)
        total = sum(np.sum(jx.to_numpy(getattr(out, k)) * cot[k]) for k in cot)
        return float(total)

    for layer, d in ((0, 1), (1, 0)):
        for k in ("w_ih", "w_hh", "b_hh"):
            array, grad = params[layer][d][k], jx.to_numpy(grads["params"][layer][d][k])
            fd_check(f"jax {cell}: grad [{layer}][{d}][{k}]", array, grad, loss, _entries(array.shape, H))


def test_float32_stays_float32(jx):
    spec = RnnSpec("gru", **SPEC_KW)
    params, x, cot = _problem(spec, "left", dtype="float32")
    out, grads = jx.rnn_vjp(spec, params, x, LENGTHS, cot, side="left")
    dtypes = {jx.to_numpy(a).dtype for a in (out.outputs, out.h_n, grads["x"])}
    dtypes |= {jx.to_numpy(v).dtype for dirs in grads["params"] for p in dirs for v in p.values()}
    assert dtypes == {np.dtype(np.float32)}, f"float32 inputs produced {dtypes}"


def test_new_length_values_do_not_retrace(jx):
    spec = RnnSpec("lstm", input_size=9, hidden_size=7)  # sizes no other test uses: the first call must trace
    params = init_params(spec, dtype="float64")
    x = np.random.default_rng(0).normal(size=(B, T, 9))
    before = jx.compile_count()
    jx.rnn(spec, params, x, np.array([1, 2, 3, 4]), side="left", strategy="scan_flip")
    assert jx.compile_count() == before + 1, "compile_count did not count the first trace"
    for lengths in ([4, 4, 4, 4], [0, 0, 0, 0], [2, 0, 4, 1]):
        jx.rnn(spec, jx.params_to_jax(params, np.float64), x, lengths, side="left", strategy="scan_flip")
    assert jx.compile_count() == before + 1, "new length values (or native params) retraced the jitted RNN"
