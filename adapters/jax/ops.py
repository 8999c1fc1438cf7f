"""JAX ops: pad / mask / pack / unpack / masked_mean as vectorised jnp gathers and scatters (masked_mean jitted)."""
from __future__ import annotations

from functools import partial

import numpy as np

from adapters.spec import Packed, lengths_from_batch_sizes, pack_order, packed_rows


class JaxOps:
    """The non-strategy ops of the JAX adapter (mixed into `JaxAdapter`, which holds `self.jax`, `self.jnp`)."""

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
        return self._keep(self.valid(self.asarray(lengths, device), maxlen, side))

    def _pack(self, padded, lengths, side):
        jnp = self.jnp
        padded = self._native(padded)
        B, T = padded.shape[:2]
        sorted_indices, unsorted_indices, batch_sizes = pack_order(lengths)
        put = partial(self.jax.device_put, device=next(iter(padded.devices())))
        rows = put(packed_rows(lengths, sorted_indices, T, side))
        data = jnp.take(padded.reshape(B * T, *padded.shape[2:]), rows, axis=0)
        return self._keep(Packed(data, put(batch_sizes), put(sorted_indices), put(unsorted_indices)))

    def _unpack(self, packed, batch_sizes, sorted_indices, total_length, side):
        """One scatter of the packed rows into a zero [B*T, *feat] buffer."""
        data = self._native(packed.data)
        B, T = sorted_indices.size, total_length
        lengths = lengths_from_batch_sizes(batch_sizes, sorted_indices)
        dev = next(iter(data.devices()))
        rows = self.jax.device_put(packed_rows(lengths, sorted_indices, T, side), dev)
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
            valid = self.valid(n, x.shape[1], side).reshape(*x.shape[:2], *extra)
            low = x.dtype in (jnp.float16, jnp.bfloat16)  # summed in float32 (as NumPy's mean does float16)
            total = jnp.where(valid, x, 0).sum(axis=1, dtype=jnp.float32 if low else x.dtype)
            count = n.reshape(-1, *extra)
            mean = total / jnp.maximum(count, 1).astype(total.dtype)
            return jnp.where(count > 0, mean, 0).astype(x.dtype)

        return self.jax.jit(masked_mean)

