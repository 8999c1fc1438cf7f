"""The TensorFlow adapter's canonical (PyTorch layout) <-> Keras weight conversion, tested on its own.

Forward: a Keras layer loaded with `keras_weights(canonical)` must take the same step, from a non-zero state, as
PyTorch's cell equations written out in NumPy on the canonical params (input size != hidden size, so a missing
transpose cannot hide; a non-zero state, so the GRU's r/z order and the recurrent bias matter).
Backward: `canonical_grads` must be the adjoint of `keras_weights` (so a merged LSTM bias sends its gradient to
both b_ih and b_hh), and Keras-variable gradients mapped back must equal gradients taken on the canonical params.
"""
from __future__ import annotations

import numpy as np
import pytest

import adapters
from adapters.spec import RnnSpec, init_params
from adapters.tensorflow.rnn import canonical_grads, gate_perm, keras_weights
from tests.conftest import require

CELLS = ["rnn", "lstm", "gru"]
I, H, B = 3, 4, 2


@pytest.fixture(scope="module")
def fw():
    require("tensorflow")
    ad = adapters.get("tensorflow")  # sets KERAS_BACKEND before keras is imported
    return ad.tf, ad.keras


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def numpy_step(cell, p, x, h, c):
    """One step of PyTorch's cell equations on the canonical params (gate orders i,f,g,o and r,z,n)."""
    gi = x @ p["w_ih"].T + p["b_ih"]
    gh = h @ p["w_hh"].T + p["b_hh"]
    if cell == "rnn":
        return np.tanh(gi + gh), None
    if cell == "lstm":
        i, f, g, o = np.split(gi + gh, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        return _sigmoid(o) * np.tanh(c), c
    (ir, iz, in_), (hr, hz, hn) = np.split(gi, 3, axis=-1), np.split(gh, 3, axis=-1)
    r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
    n = np.tanh(in_ + r * hn)
    return (1 - z) * n + z * h, None


def keras_layer(keras, cell, p, tf):
    """A Keras layer (float64) whose variables hold the converted canonical params."""
    kw = dict(return_sequences=True, return_state=True, dtype="float64")
    layer = {"rnn": lambda: keras.layers.SimpleRNN(H, **kw), "lstm": lambda: keras.layers.LSTM(H, **kw),
             "gru": lambda: keras.layers.GRU(H, reset_after=True, **kw)}[cell]()
    layer.build((None, None, I))
    variables = (layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias)
    for v, w in zip(variables, keras_weights(tf, cell, p), strict=True):
        v.assign(w)
    return layer, variables


def canonical(cell, seed=0):
    return init_params(RnnSpec(cell, I, H), seed=seed, dtype="float64")[0][0]


def states(rng, cell):
    h, c = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    return h, (c if cell == "lstm" else None)


@pytest.mark.parametrize("cell", CELLS)
def test_keras_step_matches_numpy_step(fw, cell):
    tf, keras = fw
    rng = np.random.default_rng(1)
    p = canonical(cell)
    x = rng.standard_normal((B, 1, I))
    h0, c0 = states(rng, cell)
    layer, _ = keras_layer(keras, cell, p, tf)
    init = [h0, c0] if cell == "lstm" else [h0]
    out, *st = layer(tf.constant(x), initial_state=[tf.constant(s) for s in init])
    want_h, want_c = numpy_step(cell, p, x[:, 0], h0, c0)
    np.testing.assert_allclose(out.numpy()[:, 0], want_h, rtol=0, atol=1e-12)
    np.testing.assert_allclose(st[0].numpy(), want_h, rtol=0, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(st[1].numpy(), want_c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_keras_shapes_and_gate_perm(fw, cell):
    tf, _ = fw
    g = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    kernel, recurrent, bias = keras_weights(tf, cell, canonical(cell))
    assert tuple(kernel.shape) == (I, g * H) and tuple(recurrent.shape) == (H, g * H)
    assert tuple(bias.shape) == ((2, g * H) if cell == "gru" else (g * H,))
    perm = gate_perm(cell, H)
    if cell == "gru":
        assert sorted(perm.tolist()) == list(range(3 * H)) and perm[0] == H  # Keras z first = torch block 1
    else:
        assert perm is None


@pytest.mark.parametrize("cell", CELLS)
def test_grad_mapping_is_adjoint_of_conversion(fw, cell):
    """<keras_weights(p), G> differentiated w.r.t. p must be canonical_grads(G), entry by entry."""
    tf, _ = fw
    rng = np.random.default_rng(2)
    p = {k: tf.constant(v) for k, v in canonical(cell).items()}
    shapes = [tuple(w.shape) for w in keras_weights(tf, cell, p)]
    G = [tf.constant(rng.standard_normal(s)) for s in shapes]
    with tf.GradientTape() as tape:
        tape.watch(p)
        total = sum(tf.reduce_sum(w * g) for w, g in zip(keras_weights(tf, cell, p), G, strict=True))
    want = tape.gradient(total, p)
    got = canonical_grads(tf, cell, *G)
    assert set(got) == set(p)
    for k in p:
        np.testing.assert_allclose(got[k].numpy(), tf.convert_to_tensor(want[k]).numpy(), rtol=0, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
def test_keras_variable_grads_map_to_canonical_grads(fw, cell):
    """Gradients of one Keras step w.r.t. its variables, mapped back, equal those of the canonical equations."""
    tf, keras = fw
    rng = np.random.default_rng(3)
    p_np = canonical(cell, seed=4)
    x = tf.constant(rng.standard_normal((B, 1, I)))
    h0, c0 = states(rng, cell)
    cot = tf.constant(rng.standard_normal((B, 1, H)))
    layer, variables = keras_layer(keras, cell, p_np, tf)
    init = [tf.constant(h0)] + ([tf.constant(c0)] if cell == "lstm" else [])
    with tf.GradientTape() as tape:
        out = layer(x, initial_state=init)[0]
        loss = tf.reduce_sum(out * cot)
    got = canonical_grads(tf, cell, *tape.gradient(loss, [v.value for v in variables]))

    p = {k: tf.constant(v) for k, v in p_np.items()}
    with tf.GradientTape() as tape:
        tape.watch(p)
        loss = tf.reduce_sum(tf_step(tf, cell, p, x[:, 0], init) * cot[:, 0])
    want = tape.gradient(loss, p)
    for k in p:
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=0, atol=1e-12, err_msg=k)


def tf_step(tf, cell, p, x, init):
    """`numpy_step`'s h' in TF ops, to differentiate w.r.t. the canonical params."""
    h = init[0]
    gi = tf.matmul(x, p["w_ih"], transpose_b=True) + p["b_ih"]
    gh = tf.matmul(h, p["w_hh"], transpose_b=True) + p["b_hh"]
    if cell == "rnn":
        return tf.tanh(gi + gh)
    if cell == "lstm":
        i, f, g, o = tf.split(gi + gh, 4, axis=-1)
        return tf.sigmoid(o) * tf.tanh(tf.sigmoid(f) * init[1] + tf.sigmoid(i) * tf.tanh(g))
    (ir, iz, in_), (hr, hz, hn) = tf.split(gi, 3, axis=-1), tf.split(gh, 3, axis=-1)
    r, z = tf.sigmoid(ir + hr), tf.sigmoid(iz + hz)
    return (1 - z) * tf.tanh(in_ + r * hn) + z * h
