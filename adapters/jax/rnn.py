"""JAX masked RNNs: jit-compiled masked `lax.scan` strategies.

Global JAX settings made when the adapter is created (they apply to the whole process, which is why the harness
runs each framework in its own process when it times or measures):
- `jax_enable_x64`: without it JAX silently turns float64 inputs into float32. Under x64, float32 inputs still stay
  float32 here: constants are Python scalars (weakly typed, they take the array's dtype), parameters and
  cotangents are cast to x's dtype before they reach a jitted function, and integer index math never meets floats.
- `jax_default_matmul_precision = "highest"`: full float32 matmuls on GPU (no TF32), as correctness runs require.

RNN strategies (all exact, kernel "xla-scan", one `jax.jit` per (spec, strategy, side) whose own cache is keyed by
shapes and dtypes; lengths are a traced argument, so new length values never retrace):
- "scan" (default): one `lax.scan` per direction and layer whose carry only advances at valid steps
  (`jnp.where(valid_t, new, old)`). The backward direction is the same scan with `reverse=True`: the carry stays
  at zero through a row's padding, so it starts at the row's own last valid step. Left padding needs no
  realignment for the same reason. No gathers at all.
- "scan_flip": the Flax `nn.RNN` recipe: realign left padding to the right, reverse each row within its own
  length with a gather (`flip_sequences`), run an unmasked scan that records every carry, take the final state
  at step length-1, flip the outputs back.
- "scan_unroll8": "scan" with `lax.scan(unroll=8)`, the usual JAX speed knob (fewer loop iterations, larger
  fused bodies; it pays on GPU, while on XLA:CPU its backward pass is about 2x slower than "scan").
Padded inputs are replaced by 0 with `jnp.where` before any matmul, so NaN in padding never reaches a product whose
result is later masked (which would poison gradients), and padded outputs are selected to exactly 0.
"""
from __future__ import annotations

from functools import partial

from adapters.spec import RnnOut, RnnSpec, Strategy, strategy_table

PARAM_KEYS = ("w_ih", "w_hh", "b_ih", "b_hh")


class JaxRnn:
    """The RNN machinery of the JAX adapter (mixed into `JaxAdapter`)."""

    def params_to_jax(self, params, dtype, device: str = "cpu") -> list[list[dict]]:
        """Canonical (PyTorch-layout) params -> the jax pytree the jitted functions take.

        The canonical layout serves as the pytree as is (lists of dicts of [G*H, in] weights, gate order kept);
        the conversion only casts to x's dtype and places the arrays on `device`.
        """
        return [[{k: self.asarray(v, device).astype(dtype) for k, v in d.items()} for d in layer] for layer in params]

    @staticmethod
    def params_from_jax(tree) -> list[list[dict]]:
        """Inverse of `params_to_jax` for gradients: the same nesting, layout (no transposes) and key order (JAX
        rebuilds dicts with sorted keys; the canonical order is w_ih, w_hh, b_ih, b_hh)."""
        return [[{k: d[k] for k in PARAM_KEYS} for d in layer] for layer in tree]

    def _rnn_forward(self, algo, spec, params, x, lengths, side, device):
        fn = self._cached(("rnn", spec, algo, side), lambda: self._rnn_fn(spec, algo, side, False))
        x = self.asarray(x, device)
        outputs, h_n, c_n = self._keep(fn(self.params_to_jax(params, x.dtype, device), x,
                                          self.asarray(lengths, device)))
        return RnnOut(outputs, h_n, c_n, "xla-scan")

    def _rnn_vjp(self, algo, spec, params, x, lengths, cotangents, side, device):
        fn = self._cached(("rnn_vjp", spec, algo, side), lambda: self._rnn_fn(spec, algo, side, True))
        x = self.asarray(x, device)
        cot = tuple(self.asarray(cotangents[k], device).astype(x.dtype) if k in cotangents else None
                    for k in ("outputs", "h_n", "c_n"))
        (outputs, h_n, c_n), g_params, g_x = self._keep(fn(self.params_to_jax(params, x.dtype, device), x,
                                                           self.asarray(lengths, device), cot))
        return RnnOut(outputs, h_n, c_n, "xla-scan"), {"x": g_x, "params": self.params_from_jax(g_params)}

    def raw_rnn(self, spec, params, x, lengths, device="cpu", *, backward=False, cotangents=None):
        """A user's masked `lax.scan` LSTM/GRU/RNN under `jax.jit` (right padding, no validation, weights already
        JAX arrays), forward or `jax.vjp` forward+backward: the baseline of the adapter's overhead."""
        jax, jnp = self.jax, self.jnp
        net = partial(self._network, spec, ("masked", 1), "right")
        p = self.params_to_jax(params, x.dtype, device)
        n = self.asarray(lengths, device)
        cot = tuple(self.asarray(cotangents[k], device).astype(x.dtype) if k in cotangents else None
                    for k in ("outputs", "h_n", "c_n")) if backward else None
        fwd = jax.jit(net)
        bwd = jax.jit(lambda p, x, n, c: jax.vjp(lambda pp, xx: net(pp, xx, n), p, x)[1](c))
        if backward:
            return lambda: jax.block_until_ready(bwd(p, x, n, cot))
        return lambda: jax.block_until_ready(fwd(p, jnp.asarray(x), n))

    def _rnn_fn(self, spec: RnnSpec, algo: tuple, side: str, vjp: bool):
        """The jitted forward (or forward + VJP); its Python body runs only when JAX traces it."""
        net = partial(self._network, spec, algo, side)

        def forward(params, x, lengths):
            self._compiles += 1
            return net(params, x, lengths)

        def forward_vjp(params, x, lengths, cot):
            self._compiles += 1
            out, pullback = self.jax.vjp(lambda p, xx: net(p, xx, lengths), params, x)
            g_params, g_x = pullback(cot)
            return out, g_params, g_x

        return self.jax.jit(forward_vjp if vjp else forward)

    def _network(self, spec: RnnSpec, algo: tuple, side: str, params, x, lengths):
        """(outputs [B,T,D*H], h_n, c_n) of the stacked, possibly bidirectional network; traced, never eager."""
        jnp = self.jnp
        algorithm, unroll = algo
        T = x.shape[1]
        valid = self.valid(lengths, T, side)
        x = jnp.where(valid[..., None], x, 0)  # padding (even NaN) never reaches a matmul
        if algorithm == "flip" and side == "left":
            x = self.realign(x, lengths, to="right")
        layer_in, valid = jnp.swapaxes(x, 0, 1), valid.T  # time-major inside
        finals = []
        for layer in params:
            outs = []
            for d, p in enumerate(layer):
                if algorithm == "masked":
                    y, state = self._masked_scan(spec.cell, p, layer_in, valid, d == 1, unroll)
                else:
                    y, state = self._flip_scan(spec.cell, p, layer_in, lengths, d == 1)
                outs.append(y)
                finals.append(state)
            layer_in = jnp.concatenate(outs, axis=-1)
        out = jnp.swapaxes(layer_in, 0, 1)
        if algorithm == "flip" and side == "left":
            out = self.realign(out, lengths, to="left")
        h_n = jnp.stack([s[0] for s in finals])
        c_n = jnp.stack([s[1] for s in finals]) if spec.cell == "lstm" else None
        return out, h_n, c_n

    def _reverse_tm(self, x, lengths):
        """Per-row reversal within length of a time-major [T, B, F] array (the shared `reverse_within`)."""
        return self.jnp.swapaxes(self.reverse_within(self.jnp.swapaxes(x, 0, 1), lengths), 0, 1)

    def _masked_scan(self, cell: str, p: dict, x, valid, reverse: bool, unroll: int):
        """One direction of one layer, the carry frozen at padded steps; x [T,B,in] is 0 at padding."""
        jnp = self.jnp
        step_fn = self._cell(cell, p)

        def step(carry, inputs):
            xt, vt = inputs
            new = step_fn(carry, xt)
            keep = vt[:, None]
            return tuple(jnp.where(keep, a, b) for a, b in zip(new, carry, strict=True)), jnp.where(keep, new[0], 0)

        proj = x @ p["w_ih"].T + p["b_ih"]  # input projection of all steps, hoisted out of the loop
        carry, ys = self.lax.scan(step, self._zero_state(cell, x, p), (proj, valid), reverse=reverse, unroll=unroll)
        return ys, carry

    def _flip_scan(self, cell: str, p: dict, x, lengths, reverse: bool):
        """One direction, Flax style, on right-padded x: flip within length, unmasked scan, pick the final carry."""
        jnp = self.jnp
        T = x.shape[0]
        if reverse:
            x = self._reverse_tm(x, lengths)
        step_fn = self._cell(cell, p)

        def step(carry, xt):
            new = step_fn(carry, xt)
            return new, new

        proj = x @ p["w_ih"].T + p["b_ih"]
        zero = self._zero_state(cell, x, p)
        _, history = self.lax.scan(step, zero, proj)
        last = jnp.clip(lengths - 1, 0, None)[None, :, None]
        final = tuple(jnp.where(lengths[:, None] > 0, jnp.take_along_axis(s, last, axis=0)[0], z) if T else z
                      for s, z in zip(history, zero, strict=True))
        ys = self._reverse_tm(history[0], lengths) if reverse else history[0]
        return jnp.where(self.valid(lengths, T).T[..., None], ys, 0), final

    def _zero_state(self, cell: str, x, p: dict) -> tuple:
        zero = self.jnp.zeros((x.shape[1], p["w_hh"].shape[1]), x.dtype)
        return (zero, zero) if cell == "lstm" else (zero,)

    def _cell(self, cell: str, p: dict):
        """step(carry, projected_input) -> new carry tuple (h first), PyTorch gate order and GRU formula."""
        jnp, sigmoid = self.jnp, self.jax.nn.sigmoid
        w_hh_t, b_hh = p["w_hh"].T, p["b_hh"]

        def rnn(carry, xt):
            return (jnp.tanh(xt + carry[0] @ w_hh_t + b_hh),)

        def lstm(carry, xt):
            h, c = carry
            i, f, g, o = jnp.split(xt + h @ w_hh_t + b_hh, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * jnp.tanh(g)
            return sigmoid(o) * jnp.tanh(c), c

        def gru(carry, xt):
            (h,) = carry
            x_r, x_z, x_n = jnp.split(xt, 3, axis=-1)
            h_r, h_z, h_n = jnp.split(h @ w_hh_t + b_hh, 3, axis=-1)
            r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + r * h_n)
            return ((1 - z) * n + z * h,)

        return {"rnn": rnn, "lstm": lstm, "gru": gru}[cell]


def _unit(name: str, algorithm: str, unroll: int, doc: str) -> Strategy:
    algo = (algorithm, unroll)
    return Strategy(name, lambda a, *args: a._rnn_forward(algo, *args), lambda a, *args: a._rnn_vjp(algo, *args),
                    doc=doc)


STRATEGIES = strategy_table(
    _unit("scan", "masked", 1, "lax.scan, carry frozen at padded steps"),
    _unit("scan_flip", "flip", 1, "Flax nn.RNN recipe: flip within length, unmasked scan, pick the final carry"),
    _unit("scan_unroll8", "masked", 8, "scan with lax.scan(unroll=8)"),
)
