"""The torch adapter's canonical-params <-> nn.RNN/LSTM/GRU mapping, checked on its own.

PyTorch's layout is the canonical one, so the conversion is only naming; these tests pin that naming against
PyTorch's own structural view (`module.all_weights[layer * D + direction] == [w_ih, w_hh, b_ih, b_hh]`), never
against the adapter's own name builder, and compare gradients with nn module autograd on a full-length batch.
"""
from __future__ import annotations

import numpy as np
import pytest

import adapters
from adapters.spec import RnnSpec, init_params
from adapters.torch.rnn import from_torch_names, to_torch_names
from tests.conftest import require

KEYS = ("w_ih", "w_hh", "b_ih", "b_hh")
CELLS = ("rnn", "lstm", "gru")
SPECS = [RnnSpec(c, 3, 4, num_layers=2, bidirectional=True) for c in CELLS] + [RnnSpec("lstm", 5, 2)]


@pytest.fixture(scope="module")
def fw():
    require("torch")
    return adapters.get("torch")


def reference_module(fw, spec, params):
    """A fresh float64 nn module holding `params`, loaded through PyTorch's structural view only."""
    torch = fw.torch
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[spec.cell]
    module = cls(spec.input_size, spec.hidden_size, num_layers=spec.num_layers, bidirectional=spec.bidirectional,
                 batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for i, tensors in enumerate(module.all_weights):
            layer, d = divmod(i, spec.num_directions)
            for key, t in zip(KEYS, tensors, strict=True):
                t.copy_(torch.as_tensor(params[layer][d][key]))
    return module


def ids(spec):
    return f"{spec.cell}-L{spec.num_layers}-{'bi' if spec.bidirectional else 'uni'}"


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_names_are_the_module_parameter_names(fw, spec):
    params = init_params(spec, seed=0, dtype="float64")
    module = reference_module(fw, spec, params)
    named = to_torch_names(params)
    assert list(named) == [n for n, _ in module.named_parameters()]
    for name, p in module.named_parameters():
        assert tuple(named[name].shape) == tuple(p.shape), name
        assert np.array_equal(named[name], p.detach().numpy()), f"{name} maps to the wrong canonical array"


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_round_trip_keeps_every_array_in_place(spec):
    params = init_params(spec, seed=1)
    back = from_torch_names(spec, to_torch_names(params))
    for layer in range(spec.num_layers):
        for d in range(spec.num_directions):
            assert set(back[layer][d]) == set(KEYS)
            for k in KEYS:
                assert back[layer][d][k] is params[layer][d][k], (layer, d, k)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_loaded_module_holds_the_canonical_arrays(fw, spec):
    """The adapter's cached module, after loading, equals the canonical arrays exactly, slot by slot."""
    params = init_params(spec, seed=2, dtype="float64")
    x = fw.asarray(np.zeros((1, 1, spec.input_size)))
    module, named = fw._packed_weights(spec, params, x, grad=False)
    for i, tensors in enumerate(module.all_weights):
        layer, d = divmod(i, spec.num_directions)
        for key, t in zip(KEYS, tensors, strict=True):
            assert t.dtype == fw.torch.float64
            assert np.array_equal(t.detach().numpy(), params[layer][d][key]), f"layer {layer} dir {d} {key}"


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_cached_module_is_reloaded_every_call(fw, spec):
    """Weights from an earlier call must not linger in the cached module."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, spec.input_size))
    L = np.array([4, 4])
    a, b = (init_params(spec, seed=s, dtype="float64") for s in (10, 11))
    out_a = fw.to_numpy(fw.rnn(spec, a, x, L).outputs)
    out_b = fw.to_numpy(fw.rnn(spec, b, x, L).outputs)
    want_b = reference_module(fw, spec, b)(fw.torch.as_tensor(x))[0].detach().numpy()
    assert np.abs(out_b - want_b).max() < 1e-12
    assert np.abs(out_a - out_b).max() > 1e-3
    assert np.array_equal(fw.to_numpy(fw.rnn(spec, a, x, L).outputs), out_a)


@pytest.mark.parametrize("strategy", ["packed", "masked_loop"])
@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_grads_land_on_the_right_keys(fw, spec, strategy):
    """rnn_vjp's canonical grads == nn module autograd grads, slot by slot (full-length batch: no masking)."""
    torch = fw.torch
    B, T, D, H = 3, 5, spec.num_directions, spec.hidden_size
    rng = np.random.default_rng(4)
    params = init_params(spec, seed=5, dtype="float64")
    x = rng.standard_normal((B, T, spec.input_size))
    cot = {"outputs": rng.standard_normal((B, T, D * H)), "h_n": rng.standard_normal((spec.num_layers * D, B, H))}
    if spec.cell == "lstm":
        cot["c_n"] = rng.standard_normal((spec.num_layers * D, B, H))

    module = reference_module(fw, spec, params)
    xt = torch.tensor(x, requires_grad=True)
    out, state = module(xt)
    states = list(state) if spec.cell == "lstm" else [state]
    loss = sum((t * torch.as_tensor(cot[k])).sum() for t, k in zip([out, *states], ["outputs", "h_n", "c_n"],
                                                                    strict=False))
    loss.backward()

    _, grads = fw.rnn_vjp(spec, params, x, np.full(B, T), cot, strategy=strategy)
    assert np.abs(fw.to_numpy(grads["x"]) - xt.grad.numpy()).max() < 1e-10
    for i, tensors in enumerate(module.all_weights):
        layer, d = divmod(i, D)
        assert set(grads["params"][layer][d]) == set(KEYS)
        for key, t in zip(KEYS, tensors, strict=True):
            got = fw.to_numpy(grads["params"][layer][d][key])
            assert got.shape == tuple(t.shape), f"layer {layer} dir {d} {key}"
            err = np.abs(got - t.grad.numpy()).max()
            assert err < 1e-10, f"{strategy}: grad of layer {layer} dir {d} {key} off by {err}"
    # the comparison discriminates: grads taken from a neighbouring slot would not pass
    g = [[t.grad.numpy() for t in tensors] for tensors in module.all_weights]
    if spec.cell == "gru":  # b_ih and b_hh get different grads only where r gates W_hn h + b_hn
        assert np.abs(g[0][2] - g[0][3]).max() > 1e-6
    if spec.bidirectional:
        assert np.abs(g[0][1] - g[1][1]).max() > 1e-6
    if spec.num_layers > 1:
        assert np.abs(g[0][1] - g[D][1]).max() > 1e-6


def test_packed_reloads_weights_updated_in_place():
    """The packed strategy skips reloading unchanged tensors; an in-place update (a training step) must be seen."""
    import torch

    import adapters
    from adapters.spec import map_params
    from harness import RnnSpec, init_params

    fw = adapters.get("torch")
    spec = RnnSpec("lstm", 3, 4)
    params = map_params(torch.from_numpy, init_params(spec, dtype="float64"))
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    L = np.array([5, 3])
    first = fw.rnn(spec, params, x, L).outputs.clone()
    assert torch.equal(fw.rnn(spec, params, x, L).outputs, first)
    with torch.no_grad():
        params[0][0]["w_hh"].mul_(0.5)
    after = fw.rnn(spec, params, x, L, strategy="packed").outputs
    want = fw.rnn(spec, params, x, L, strategy="masked_loop").outputs
    assert not torch.equal(after, first), "an in-place weight update was ignored"
    assert torch.allclose(after, want, atol=1e-12)
