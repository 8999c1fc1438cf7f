"""JAX embeddings: jitted `jnp.take` + `jnp.where`, and segment reductions over the packed valid tokens.

Strategies (all exact; one `jax.jit` per (strategy, op, mode, side, forward or VJP), cached on the adapter, whose
own cache is keyed by shapes and dtypes; lengths are a traced argument; gradients from `jax.vjp` on the table):
- "take" (default): `jnp.take(table, where(valid, ids, 0))`, padded steps selected to exactly 0 with `jnp.where`;
  bags reduce over time with the mask. Sanitising matters: `jnp.take`'s default mode fills an out-of-range id
  with NaN and wraps a negative one, and NaN times a 0 mask is still NaN.
- "segment": the valid ids packed row after row (flat positions and row ids computed on the host from the
  lengths, so only valid tokens are looked up), `jax.ops.segment_sum` / `segment_max` into B segments (an empty
  segment's max is -inf, selected to 0), or, for embed, the packed rows scattered into a zero [B*T, E] array.
  The packed length is the number of valid tokens rounded up a fine ladder (`shape_ladder` with quarters: at most
  25% more lookups), the extra entries pointing past the end (position B*T, row B: dropped by the scatter and the
  segment reductions, so they add nothing, nor any gradient): a new batch compiles only when its token count
  crosses a rung. Packed to the exact count, every batch with a new total length compiled once more (3 compiles
  over 3 fresh batches in `make demo`'s bench, ~0.15 s each).
A batch without padding needs no mask and nothing packed: both strategies then run `jnp.take` of the ids as they are
and plain reductions (masking every step cost 1.9x the plain lookup on this CPU, forward + VJP).
"""
from __future__ import annotations

import numpy as np

from adapters.spec import Strategy, kernel_fields, no_padding, round_up, shape_ladder, strategy_table, valid_mask


class JaxEmbedding:
    """The embedding machinery of the JAX adapter (mixed into `JaxAdapter`)."""

    def _emb_fn(self, impl, op: str, mode, side: str, vjp: bool):
        """The jitted forward (or forward + VJP w.r.t. the table); its Python body runs only when JAX traces."""

        def forward(ids, table, lengths, *extra):
            self._compiles += 1
            return impl.run(self, op, mode, side, ids, table, lengths, *extra)

        def forward_vjp(ids, table, lengths, cot, *extra):
            self._compiles += 1
            out, pullback = self.jax.vjp(lambda w: impl.run(self, op, mode, side, ids, w, lengths, *extra), table)
            return out, pullback(cot)[0]

        key = ("embedding", impl.name, op, mode, side, vjp)
        return self._cached(key, lambda: self.jax.jit(forward_vjp if vjp else forward))

    def _emb_run(self, impl, op, tokens, table, lengths, side, mode, device, cot=None):
        ids, w = self.asarray(tokens, device), self.asarray(table, device)
        if no_padding(lengths, ids.shape[1]):
            impl = _Plain  # every step valid: no mask, nothing to pack (one jitted function for every strategy)
        extra = [self.asarray(x, device) for x in impl.extra(lengths, ids.shape[1], side)]
        args = [ids, w, self.asarray(lengths, device)]
        if cot is None:
            return self._keep(self._emb_fn(impl, op, mode, side, False)(*args, *extra))
        cot = self.asarray(cot, device).astype(w.dtype)
        return self._keep(self._emb_fn(impl, op, mode, side, True)(*args, cot, *extra))

    def _emb_reduce(self, e, valid, n, mode: str):
        """sum / mean / max over each row's valid steps of e [B, T, E] (every step where `valid` is None); an empty
        row gives 0."""
        jnp = self.jnp
        if valid is None:  # no padding (and T >= 1): a plain reduction over time
            return e.max(axis=1) if mode == "max" else e.sum(axis=1) / e.shape[1] if mode == "mean" else e.sum(axis=1)
        if mode == "max":
            top = jnp.max(jnp.where(valid[..., None], e, -jnp.inf), axis=1, initial=-jnp.inf)
            return jnp.where((n > 0)[:, None], top, 0)
        total = jnp.where(valid[..., None], e, 0).sum(axis=1)
        return total / jnp.maximum(n, 1)[:, None].astype(e.dtype) if mode == "mean" else total


class _Take:
    name = "take"

    @staticmethod
    def extra(lengths, T, side) -> tuple:
        return ()

    @staticmethod
    def run(a, op, mode, side, ids, table, n):
        jnp = a.jnp
        valid = a.valid(n, ids.shape[1], side)
        e = jnp.take(table, jnp.where(valid, ids, 0), axis=0, mode="clip")  # sanitised: clip never clips
        return jnp.where(valid[..., None], e, 0) if op == "embed" else a._emb_reduce(e, valid, n, mode)


class _Plain(_Take):
    """What every strategy runs on a batch without padding: `jnp.take` of the ids as they are, plain reductions."""

    name = "plain"

    @staticmethod
    def run(a, op, mode, side, ids, table, n):
        e = a.jnp.take(table, ids, axis=0, mode="clip")  # ids in range (validated): clip never clips
        return e if op == "embed" else a._emb_reduce(e, None, n, mode)


class _Segment:
    name = "segment"

    @staticmethod
    def packed(lengths, T, side) -> tuple:
        """(flat positions b*T + t of the valid steps, their row ids), row after row: sorted segment ids."""
        flat = np.flatnonzero(valid_mask(lengths, T, side))
        return flat, flat // max(T, 1)

    @staticmethod
    def size(lengths, T) -> int:
        """The packed length: the valid tokens' count rounded up the ladder (one compiled program per size)."""
        valid = int(np.sum(lengths))
        return int(round_up(valid, shape_ladder(len(lengths) * T, quarters=True))) if valid else 0

    @staticmethod
    def programs(a, spec, lengths, T: int, vjp: bool, compiled: frozenset) -> set:
        """`Strategy.programs`: one per packed length, the plain lookup's where nothing is padded."""
        return {("plain",)} if no_padding(lengths, T) else {("packed", _Segment.size(lengths, T))}

    @staticmethod
    def extra(lengths, T, side) -> tuple:
        """`packed`, its length rounded up the ladder with entries past the end (position B*T, row B)."""
        flat, rows = _Segment.packed(lengths, T, side)
        B, size = len(lengths), _Segment.size(lengths, T)
        return np.append(flat, np.full(size - flat.size, B * T)), np.append(rows, np.full(size - flat.size, B))

    @staticmethod
    def run(a, op, mode, side, ids, table, n, flat, rows):
        jax, jnp = a.jax, a.jnp
        B, T = ids.shape
        # valid ids are validated in range; the entries past the end look up id 0 and are dropped
        packed = jnp.take(table, jnp.take(ids.reshape(-1), flat, mode="fill", fill_value=0), axis=0, mode="clip")
        if op == "embed":
            return (jnp.zeros((B * T, table.shape[1]), table.dtype).at[flat].set(packed, mode="drop")
                    .reshape(B, T, table.shape[1]))
        if mode == "max":
            top = jax.ops.segment_max(packed, rows, num_segments=B, indices_are_sorted=True)
            return jnp.where((n > 0)[:, None], top, 0)
        total = jax.ops.segment_sum(packed, rows, num_segments=B, indices_are_sorted=True)
        return total / jnp.maximum(n, 1)[:, None].astype(total.dtype) if mode == "mean" else total


def _unit(impl, kernel: str, doc: str) -> Strategy:
    return Strategy(impl.name, lambda a, *args: a._emb_run(impl, *args), lambda a, op, t, w, n, cot, *rest:
                    a._emb_run(impl, op, t, w, n, *rest, cot=cot), doc=doc,
                    programs=getattr(impl, "programs", None), **kernel_fields(kernel))


STRATEGIES = strategy_table(
    _unit(_Take, "jnp.take", "jit(jnp.take on where(valid, ids, 0), padded steps selected to 0)"),
    _unit(_Segment, {"embed": "jnp.take of the valid ids, set into zeros",
                     "embedding_bag": "jnp.take of the valid ids + jax.ops.segment_sum (max: segment_max)"},
          "jit(jnp.take of the valid ids only, set into a zero output or sorted segment_sum / segment_max)"),
)


# -- native behaviours: JAX primitives called the obvious way ------------------------------------------------------
def _vjp(a, fn, table, cot, device):
    out, pullback = a.jax.vjp(fn, a.asarray(table, device))
    return out, pullback(a.asarray(cot, device).astype(out.dtype))[0]


def _take_pad_past_vocab(a, *, tokens, table, lengths, cot_embed, cot_bag, device="cpu"):
    """jnp.take times the mask with pad id V (one past the vocabulary): take fills it with NaN, and NaN * 0 = NaN."""
    V, T = np.shape(table)[0], np.shape(tokens)[1]
    mask = valid_mask(lengths, T)
    ids = a.asarray(np.where(mask, tokens, V), device)
    m = a.asarray(mask[..., None], device)
    out, g = _vjp(a, lambda w: a.jnp.take(w, ids, axis=0) * m, table, cot_embed, device)
    return {"op": "embed", "mode": None, "outputs": out, "grad_table": g}


def _segment_max_empty(a, *, tokens, table, lengths, cot_embed, cot_bag, device="cpu"):
    """jax.ops.segment_max over the packed valid ids: an empty row's bag is -inf (the max's identity), not 0."""
    flat, rows = _Segment.packed(lengths, np.shape(tokens)[1], "right")
    ids = a.asarray(np.asarray(tokens).reshape(-1)[flat], device)
    seg = a.asarray(rows, device)
    fn = lambda w: a.jax.ops.segment_max(a.jnp.take(w, ids, axis=0), seg, num_segments=len(lengths))  # noqa: E731
    out, g = _vjp(a, fn, table, cot_bag, device)
    return {"op": "embedding_bag", "mode": "max", "outputs": out, "grad_table": g}


NATIVES = {"take_pad_id_past_vocab": _take_pad_past_vocab, "segment_max_empty_row": _segment_max_empty}
