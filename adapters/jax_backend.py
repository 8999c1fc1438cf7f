"""JAX adapter: vectorised jnp ops and jit-compiled masked `lax.scan` RNNs.

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
from typing import Any

import numpy as np

from adapters.base import Adapter
from harness.spec import Packed, RnnOut, RnnSpec, pack_order

PARAM_KEYS = ("w_ih", "w_hh", "b_ih", "b_hh")
STRATEGIES = {"scan": ("masked", 1), "scan_flip": ("flip", 1), "scan_unroll8": ("masked", 8)}


class JaxAdapter(Adapter):
    """The contract on JAX (see the module docstring for the global settings this changes)."""

    name = "jax"
    strategies = tuple(STRATEGIES)

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_default_matmul_precision", "highest")
        self.jax, self.jnp, self.lax = jax, jnp, jax.lax
        self.version = jax.__version__
        self._compiles = 0
        self._jitted: dict[tuple, Any] = {}
        self._last: Any = None
        self._devices = ["cpu", "gpu"] if self._has_gpu() else ["cpu"]

    # -- helpers ---------------------------------------------------------------------------------------------
    def _has_gpu(self) -> bool:
        try:
            return bool(self.jax.devices("gpu"))
        except RuntimeError:  # no GPU backend in this jaxlib, or no device
            return False

    def devices(self) -> list[str]:
        return list(self._devices)

    def _device(self, device: str):
        return self.jax.devices(device)[0]

    def asarray(self, x: Any, device: str = "cpu") -> Any:
        """One transfer straight to `device` (jnp.asarray would first land on the default device)."""
        if not isinstance(x, (np.ndarray, self.jax.Array)):
            x = np.asarray(x)
        return self.jax.device_put(x, self._device(device))

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def _native(self, x: Any) -> Any:
        """Native arrays stay where they are; NumPy input (ops without a device argument) goes to the CPU."""
        return x if isinstance(x, self.jax.Array) else self.asarray(x, "cpu")

    def _keep(self, result: Any) -> Any:
        """Remember the latest result: JAX dispatches asynchronously and `sync` waits on it (its buffers stay alive
        until the next op replaces it)."""
        self._last = result
        return result

    def sync(self, device: str = "cpu") -> None:
        if self._last is not None:
            self.jax.block_until_ready(self._last)

    def compile_count(self) -> int:
        return self._compiles

    def reset_peak_memory(self, device: str = "cpu") -> None:
        """JAX cannot reset its allocator's peak: `peak_memory` is the peak since process start, which is why the
        harness measures each case in a fresh process."""

    def peak_memory(self, device: str = "cpu") -> int | None:
        if device != "gpu" or "gpu" not in self._devices:
            return None
        stats = self._device("gpu").memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    # -- ops ---------------------------------------------------------------------------------------------------
    def _pad(self, seqs, maxlen, side, value, truncate, device):
        """Concatenate the kept parts of every sequence plus one row of `value`, then one gather."""
        jnp = self.jnp
        host = not any(isinstance(s, self.jax.Array) for s in seqs)
        seqs = [np.asarray(s) if host else self.asarray(s, device) for s in seqs]
        dtype, feat = seqs[0].dtype, seqs[0].shape[1:]
        L = np.array([s.shape[0] for s in seqs], dtype=np.int64)
        n = np.minimum(L, maxlen)
        kept = [s[len(s) - k:] if truncate == "left" else s[:k] for s, k in zip(seqs, n, strict=True)]
        fill = np.full((1, *feat), value, dtype=dtype)
        if host:
            flat = self.asarray(np.concatenate([*kept, fill]).astype(dtype, copy=False), device)
        else:
            flat = jnp.concatenate([k.astype(dtype) for k in kept] + [self.asarray(fill, device)])
        t = np.arange(maxlen)[None, :]
        pos = t if side == "right" else t - (maxlen - n)[:, None]
        starts = np.concatenate([[0], np.cumsum(n)[:-1]])[:, None]
        index = np.where((pos >= 0) & (pos < n[:, None]), starts + pos, n.sum())
        return self._keep(jnp.take(flat, self.asarray(index, device), axis=0))

    def _mask(self, lengths, maxlen, side, device):
        n = self.asarray(lengths, device)[:, None]
        t = self.jnp.arange(maxlen)[None, :]
        return self._keep(t < n if side == "right" else t >= maxlen - n)

    @staticmethod
    def _packed_rows(lengths: np.ndarray, sorted_indices: np.ndarray, T: int, side: str) -> np.ndarray:
        """Flat index (b*T + t) of each packed row: time-major over the sorted batch, valid steps only."""
        sorted_lengths = lengths[sorted_indices]
        steps, ranks = np.nonzero(np.arange(T)[:, None] < sorted_lengths[None, :])
        b = sorted_indices[ranks]
        return b * T + (steps if side == "right" else steps + T - lengths[b])

    def _pack(self, padded, lengths, side):
        jnp = self.jnp
        padded = self._native(padded)
        B, T = padded.shape[:2]
        sorted_indices, unsorted_indices, batch_sizes = pack_order(lengths)
        put = partial(self.jax.device_put, device=next(iter(padded.devices())))
        rows = put(self._packed_rows(lengths, sorted_indices, T, side))
        data = jnp.take(padded.reshape(B * T, *padded.shape[2:]), rows, axis=0)
        return self._keep(Packed(data, put(batch_sizes), put(sorted_indices), put(unsorted_indices)))

    def _unpack(self, packed, batch_sizes, total_length, side):
        """One scatter of the packed rows into a zero [B*T, *feat] buffer."""
        data = self._native(packed.data)
        sorted_indices = np.asarray(self.to_numpy(packed.sorted_indices)).astype(np.int64)
        B, T = sorted_indices.size, total_length
        lengths = np.zeros(B, dtype=np.int64)
        lengths[sorted_indices] = (batch_sizes[None, :] > np.arange(B)[:, None]).sum(axis=1)
        dev = next(iter(data.devices()))
        rows = self.jax.device_put(self._packed_rows(lengths, sorted_indices, T, side), dev)
        out = self.jnp.zeros((B * T, *data.shape[1:]), data.dtype, device=dev).at[rows].set(data, unique_indices=True)
        return self._keep((out.reshape(B, T, *data.shape[1:]), self.jax.device_put(lengths, dev)))

    def _masked_mean(self, x, lengths, side):
        x = self._native(x)
        fn = self._cached(("masked_mean", side), lambda: self._masked_mean_fn(side))
        n = self.jax.device_put(lengths, next(iter(x.devices())))
        return self._keep(fn(x, n))

    def _masked_mean_fn(self, side: str):
        jnp = self.jnp

        def masked_mean(x, n):
            self._compiles += 1
            extra = (1,) * (x.ndim - 2)
            valid = self._valid(n, x.shape[1], side, time_major=False).reshape(*x.shape[:2], *extra)
            total = jnp.where(valid, x, 0).sum(axis=1)
            count = n.reshape(-1, *extra)
            mean = total / jnp.maximum(count, 1).astype(total.dtype)
            return jnp.where(count > 0, mean, 0).astype(x.dtype)

        return self.jax.jit(masked_mean)

    def _valid(self, n, T: int, side: str, time_major: bool = True):
        """bool [T, B] (or [B, T]) of valid steps, computed from a traced lengths array."""
        t = self.jnp.arange(T)
        t, n = (t[:, None], n[None, :]) if time_major else (t[None, :], n[:, None])
        return t < n if side == "right" else t >= T - n

    def _cached(self, key: tuple, build):
        if key not in self._jitted:
            self._jitted[key] = build()
        return self._jitted[key]

    # -- RNN ---------------------------------------------------------------------------------------------------
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

    def _rnn(self, spec, params, x, lengths, side, strategy, device):
        fn = self._cached(("rnn", spec, strategy, side), lambda: self._rnn_fn(spec, strategy, side, False))
        x = self.asarray(x, device)
        outputs, h_n, c_n = self._keep(fn(self.params_to_jax(params, x.dtype, device), x,
                                          self.asarray(lengths, device)))
        return RnnOut(outputs, h_n, c_n, "xla-scan")

    def _rnn_vjp(self, spec, params, x, lengths, cotangents, side, strategy, device):
        fn = self._cached(("rnn_vjp", spec, strategy, side), lambda: self._rnn_fn(spec, strategy, side, True))
        x = self.asarray(x, device)
        cot = tuple(self.asarray(cotangents[k], device).astype(x.dtype) if k in cotangents else None
                    for k in ("outputs", "h_n", "c_n"))
        (outputs, h_n, c_n), g_params, g_x = self._keep(fn(self.params_to_jax(params, x.dtype, device), x,
                                                           self.asarray(lengths, device), cot))
        return RnnOut(outputs, h_n, c_n, "xla-scan"), {"x": g_x, "params": self.params_from_jax(g_params)}

    def _rnn_fn(self, spec: RnnSpec, strategy: str, side: str, vjp: bool):
        """The jitted forward (or forward + VJP); its Python body runs only when JAX traces it."""
        net = partial(self._network, spec, strategy, side)

        def forward(params, x, lengths):
            self._compiles += 1
            return net(params, x, lengths)

        def forward_vjp(params, x, lengths, cot):
            self._compiles += 1
            out, pullback = self.jax.vjp(lambda p, xx: net(p, xx, lengths), params, x)
            g_params, g_x = pullback(cot)
            return out, g_params, g_x

        return self.jax.jit(forward_vjp if vjp else forward)

    def _network(self, spec: RnnSpec, strategy: str, side: str, params, x, lengths):
        """(outputs [B,T,D*H], h_n, c_n) of the stacked, possibly bidirectional network; traced, never eager."""
        jnp = self.jnp
        algorithm, unroll = STRATEGIES[strategy]
        xs = jnp.swapaxes(x, 0, 1)  # time-major inside
        T = xs.shape[0]
        valid = self._valid(lengths, T, side)
        layer_in = jnp.where(valid[..., None], xs, 0)  # padding (even NaN) never reaches a matmul
        if algorithm == "flip" and side == "left":
            layer_in, valid = self._gather_t(layer_in, (jnp.arange(T)[:, None] + T - lengths) % max(T, 1)), None
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
        if algorithm == "flip" and side == "left":
            layer_in = self._gather_t(layer_in, (jnp.arange(T)[:, None] - T + lengths) % max(T, 1))
        h_n = jnp.stack([s[0] for s in finals])
        c_n = jnp.stack([s[1] for s in finals]) if spec.cell == "lstm" else None
        return jnp.swapaxes(layer_in, 0, 1), h_n, c_n

    def _gather_t(self, x, index):
        """x [T, B, F] gathered along time with a per-row index [T, B]."""
        return self.jnp.take_along_axis(x, index[..., None], axis=0)

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
        t = jnp.arange(T)[:, None]
        flip = jnp.where(t < lengths, lengths - 1 - t, t)
        if reverse:
            x = self._gather_t(x, flip)
        step_fn = self._cell(cell, p)

        def step(carry, xt):
            new = step_fn(carry, xt)
            return new, new

        proj = x @ p["w_ih"].T + p["b_ih"]
        zero = self._zero_state(cell, x, p)
        _, history = self.lax.scan(step, zero, proj)
        last = jnp.clip(lengths - 1, 0, None)[None, :]
        final = tuple(jnp.where(lengths[:, None] > 0, self._gather_t(s, last)[0], z) if T else z
                      for s, z in zip(history, zero, strict=True))
        ys = self._gather_t(history[0], flip) if reverse else history[0]
        return jnp.where((t < lengths)[..., None], ys, 0), final

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
