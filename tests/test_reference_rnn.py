"""The NumPy reference RNN is the oracle for every framework, so it is checked on its own terms here.

Gradients against central finite differences in float64, padding semantics (exact zeros, NaN never read, left
padding = right padding re-aligned, rows independent), dtype preservation, and the forward pass (plus gradients)
against PyTorch's nn.RNN/LSTM/GRU, which pins the gate-order conventions independently of our own derivation.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import adapters
from adapters.spec import RnnSpec, init_params, map_params, to_left_index
from tests.conftest import require
from tests.gradcheck import fd_check

B, T, IN, H = 4, 4, 2, 3
LENGTHS = np.array([3, 0, 4, 1])  # unsorted, with a zero-length row and a full-length one
CELLS = ("rnn", "lstm", "gru")
CONFIGS = list(itertools.product(CELLS, (1, 2), (False, True)))


@pytest.fixture(scope="module")
def ref():
    return adapters.get("numpy")


def _flat(nest) -> dict[str, np.ndarray]:
    """A params (or param-grads) nest as {"[layer][direction][key]": array}, for one-loop comparisons."""
    return {f"[{layer}][{d}][{k}]": v
            for layer, dirs in enumerate(nest) for d, p in enumerate(dirs) for k, v in p.items()}


def _ids(config) -> str:
    cell, layers, bi = config
    return f"{cell}-L{layers}-{'bi' if bi else 'uni'}"


def _problem(spec: RnnSpec, side: str, seed: int = 0, dtype: str = "float64"):
    """params, x (padding filled with junk that must never matter) and cotangents (non-zero at padding too)."""
    rng = np.random.default_rng(seed)
    params = init_params(spec, seed=seed, dtype=dtype)
    x = rng.normal(size=(B, T, IN)).astype(dtype)
    D = spec.num_directions
    cot = {"outputs": rng.normal(size=(B, T, D * H)), "h_n": rng.normal(size=(spec.num_layers * D, B, H))}
    if spec.cell == "lstm":
        cot["c_n"] = rng.normal(size=(spec.num_layers * D, B, H))
    return params, x, cot


def _valid(side: str) -> np.ndarray:
    t = np.arange(T)[None, :]
    return t < LENGTHS[:, None] if side == "right" else t >= T - LENGTHS[:, None]


def _loss(ref, spec, params, x, cot, side) -> float:
    out = ref.rnn(spec, params, x, LENGTHS, side=side)
    total = np.sum(out.outputs * cot["outputs"]) + np.sum(out.h_n * cot["h_n"])
    if spec.cell == "lstm":
        total += np.sum(out.c_n * cot["c_n"])
    return float(total)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_gradients_match_finite_differences(ref, config, side):
    cell, layers, bi = config
    spec = RnnSpec(cell, IN, H, layers, bi)
    params, x, cot = _problem(spec, side)
    _, grads = ref.rnn_vjp(spec, params, x, LENGTHS, cot, side=side)
    loss = lambda: _loss(ref, spec, params, x, cot, side)
    fd_check("x", x, grads["x"], loss, np.ndindex(*x.shape))  # every entry, padding included: its gradient is 0
    flat_grads = _flat(grads["params"])
    for name, array in _flat(params).items():  # the same array objects as in params: perturbing them moves the loss
        fd_check(f"params{name}", array, flat_grads[name], loss, np.ndindex(*array.shape))


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_padding_is_exact_zero_and_nan_is_never_read(ref, config, side):
    cell, layers, bi = config
    spec = RnnSpec(cell, IN, H, layers, bi)
    params, x, cot = _problem(spec, side)
    valid = _valid(side)
    x[~valid] = 0.0
    out, grads = ref.rnn_vjp(spec, params, x, LENGTHS, cot, side=side)
    assert np.all(out.outputs[~valid] == 0.0) and np.all(grads["x"][~valid] == 0.0)
    assert np.all(out.h_n[:, LENGTHS == 0] == 0.0)
    assert (out.c_n is None) == (cell != "lstm")

    x_nan, cot_nan = x.copy(), {k: v.copy() for k, v in cot.items()}
    x_nan[~valid] = np.nan
    cot_nan["outputs"][~valid] = np.nan
    out2, grads2 = ref.rnn_vjp(spec, params, x_nan, LENGTHS, cot_nan, side=side)
    assert out2.kernel == out.kernel == "numpy-loop"
    for a, b in ((out.outputs, out2.outputs), (out.h_n, out2.h_n), (out.c_n, out2.c_n), (grads["x"], grads2["x"])):
        np.testing.assert_array_equal(a, b)
    flat2 = _flat(grads2["params"])
    for name, g in _flat(grads["params"]).items():
        np.testing.assert_array_equal(g, flat2[name], err_msg=name)


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_left_padding_equals_right_padding_realigned(ref, config):
    cell, layers, bi = config
    spec = RnnSpec(cell, IN, H, layers, bi)
    params, x, cot = _problem(spec, "right")
    rows = np.arange(B)[:, None]
    left = to_left_index(LENGTHS, T)
    x_left = x[rows, left]
    cot_left = dict(cot, outputs=cot["outputs"][rows, left])
    out_r, g_r = ref.rnn_vjp(spec, params, x, LENGTHS, cot, side="right")
    out_l, g_l = ref.rnn_vjp(spec, params, x_left, LENGTHS, cot_left, side="left")
    valid = _valid("left")
    np.testing.assert_array_equal(out_l.outputs[valid], out_r.outputs[rows, left][valid])
    np.testing.assert_array_equal(out_l.outputs[~valid], 0.0)
    np.testing.assert_array_equal(g_l["x"][valid], g_r["x"][rows, left][valid])
    np.testing.assert_array_equal(out_l.h_n, out_r.h_n)
    if cell == "lstm":
        np.testing.assert_array_equal(out_l.c_n, out_r.c_n)
    flat_r = _flat(g_r["params"])
    for name, g in _flat(g_l["params"]).items():
        np.testing.assert_array_equal(g, flat_r[name], err_msg=name)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_each_sequence_is_independent_of_the_batch(ref, config, side):
    cell, layers, bi = config
    spec = RnnSpec(cell, IN, H, layers, bi)
    params, x, cot = _problem(spec, side)
    out, grads = ref.rnn_vjp(spec, params, x, LENGTHS, cot, side=side)
    param_sum = _flat(map_params(np.zeros_like, params))
    for b in range(B):
        one = {k: (v[b:b + 1] if k == "outputs" else v[:, b:b + 1]) for k, v in cot.items()}
        o1, g1 = ref.rnn_vjp(spec, params, x[b:b + 1], LENGTHS[b:b + 1], one, side=side)
        np.testing.assert_allclose(o1.outputs[0], out.outputs[b], rtol=0, atol=1e-14)
        np.testing.assert_allclose(o1.h_n[:, 0], out.h_n[:, b], rtol=0, atol=1e-14)
        np.testing.assert_allclose(g1["x"][0], grads["x"][b], rtol=0, atol=1e-14)
        for name, g in _flat(g1["params"]).items():
            param_sum[name] = param_sum[name] + g
    for name, g in _flat(grads["params"]).items():
        np.testing.assert_allclose(param_sum[name], g, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_in_float32_out(ref, cell):
    spec = RnnSpec(cell, IN, H, 2, True)
    params, x, cot = _problem(spec, "right", dtype="float32")
    out, grads = ref.rnn_vjp(spec, params, x, LENGTHS, cot)
    arrays = [out.outputs, out.h_n, grads["x"], *(v for ly in grads["params"] for d in ly for v in d.values())]
    arrays += [out.c_n] if cell == "lstm" else []
    assert all(a.dtype == np.float32 for a in arrays)
    out64 = ref.rnn(spec, map_params(lambda v: v.astype(np.float64), params), x.astype(np.float64), LENGTHS)
    np.testing.assert_allclose(out.outputs, out64.outputs, rtol=0, atol=1e-6)


def test_zero_length_batch_and_strategies(ref):
    spec = RnnSpec("lstm", IN, H, 2, True)
    params, x, cot = _problem(spec, "right")
    zeros = np.zeros(B, dtype=np.int64)
    out, grads = ref.rnn_vjp(spec, params, x, zeros, cot)
    assert not out.outputs.any() and not out.h_n.any() and not out.c_n.any() and not grads["x"].any()
    assert all(not v.any() for ly in grads["params"] for d in ly for v in d.values())
    assert ref.rnn_strategies("gru") == ["reference"]


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_matches_torch_on_a_full_length_sequence(ref, config):
    require("torch")
    import torch

    cell, layers, bi = config
    spec = RnnSpec(cell, IN, H, layers, bi)
    params, x, cot = _problem(spec, "right")
    x, cot = x[:1], {k: (v[:1] if k == "outputs" else v[:, :1]) for k, v in cot.items()}
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    net = module(IN, H, layers, batch_first=True, bidirectional=bi).double()
    names = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
    net.load_state_dict({f"{names[k]}_l{layer}{'_reverse' if d else ''}": torch.tensor(v)
                         for layer, dirs in enumerate(params) for d, p in enumerate(dirs) for k, v in p.items()})
    xt = torch.tensor(x, requires_grad=True)
    y, state = net(xt)
    h, c = state if cell == "lstm" else (state, None)
    out, grads = ref.rnn_vjp(spec, params, x, [T], cot)
    np.testing.assert_allclose(out.outputs, y.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.h_n, h.detach().numpy(), rtol=0, atol=1e-12)
    loss = (y * torch.tensor(cot["outputs"])).sum() + (h * torch.tensor(cot["h_n"])).sum()
    if cell == "lstm":
        np.testing.assert_allclose(out.c_n, c.detach().numpy(), rtol=0, atol=1e-12)
        loss = loss + (c * torch.tensor(cot["c_n"])).sum()
    loss.backward()
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=0, atol=1e-12)
    for layer, d in itertools.product(range(layers), range(spec.num_directions)):
        for k, name in names.items():
            want = getattr(net, f"{name}_l{layer}{'_reverse' if d else ''}").grad.numpy()
            np.testing.assert_allclose(grads["params"][layer][d][k], want, rtol=0, atol=1e-12)
