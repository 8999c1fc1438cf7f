"""JAX masked losses: optax's losses and a plain `jax.nn.log_softmax`, jit-compiled, padding and reduction right.

Strategies (all exact; the default for a kind is the first that supports it):
- "optax" (both kinds): `optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=valid)` (optax >=
  0.2.4 has `where`: masked steps get loss 0 and their NaN logits never reach the gradient, checked by the gates)
  and `optax.sigmoid_binary_cross_entropy` on logits whose padding was replaced with `jnp.where` (it has no
  `where`); a step's BCE sums its C labels.
- "log_softmax" (softmax_ce): `-take_along_axis(jax.nn.log_softmax(x), labels)` on sanitised logits.
- "valid_only" (both): the valid steps' rows gathered first (host positions, their count rounded up the shape
  ladder so compiles stay few; the extra rows are 0 with weight 0), then the same optax losses on those rows only:
  no work on padding. The gather's gradient is the inverse gather (`adapters.jax.rnn.moved_rows`: each valid step
  reads its row's cotangent, a padded step 0), one dense pass where `jnp.take`'s transpose is a scatter-add. A
  batch without padding runs "optax" as it is (gathering every row cost 3.6x optax's time for CE here).
A batch without padding runs each strategy's loss with no mask at all (optax's `where` over a full [B, T, C] batch
cost 1.7x the plain CE forward + backward here, C=1024): that is also what the padded baseline measures.
Padded labels are replaced with 0 before any gather. The reduction is one weighted sum with host-built weights
(`adapters.base.loss_weights`) passed as an argument, so new lengths never retrace; an empty batch gives 0.
optax is imported on first use, never at module level. One `jax.jit` per (strategy, kind, vjp, batch padded or not).
"""
from __future__ import annotations

import numpy as np

from adapters.base import loss_weights, valid_only_kernels, valid_only_unit, valid_steps
from adapters.jax.rnn import moved_rows
from adapters.spec import (
    Strategy,
    computes_only,
    inverse_map,
    kernel_fields,
    no_padding,
    round_up,
    shape_ladder,
    strategy_table,
    valid_mask,
)


class JaxLoss:
    """The masked-loss machinery of the JAX adapter (mixed into `JaxAdapter`)."""

    @property
    def optax(self):
        import optax  # lazily: only the loss strategies need it

        return optax

    def _optax_per_step(self, kind, x, z, valid):
        jnp, optax = self.jnp, self.optax
        if valid is None:  # no padding: nothing to mask
            if kind == "softmax_ce":
                return optax.softmax_cross_entropy_with_integer_labels(x, z)
            per = optax.sigmoid_binary_cross_entropy(x, z)
            return per.sum(-1) if per.ndim == 3 else per
        if kind == "softmax_ce":
            return optax.softmax_cross_entropy_with_integer_labels(x, jnp.where(valid, z, 0), where=valid)
        keep = valid.reshape(*valid.shape, *([1] * (x.ndim - 2)))
        per = optax.sigmoid_binary_cross_entropy(jnp.where(keep, x, 0), jnp.where(keep, z, 0))
        return per.sum(-1) if per.ndim == 3 else per

    def _log_softmax_per_step(self, kind, x, z, valid):
        jnp = self.jnp
        if valid is None:  # no padding: nothing to mask
            return -jnp.take_along_axis(self.jax.nn.log_softmax(x, axis=-1), z[..., None], axis=-1)[..., 0]
        logp = self.jax.nn.log_softmax(jnp.where(valid[..., None], x, 0), axis=-1)
        return -jnp.take_along_axis(logp, jnp.where(valid, z, 0)[..., None], axis=-1)[..., 0]

    def _loss_fn(self, name, per_step, kind, grad: bool, plain: bool = False):
        """The jitted (loss) or (loss, grad) of one strategy and kind; traced once per shape/dtype. `plain`: for a
        batch without padding, the per-step loss with no mask at all."""
        jax, jnp = self.jax, self.jnp

        def loss(x, z, valid, w):
            self._compiles += 1  # the body runs only when JAX traces it
            if plain:
                return jnp.sum(per_step(self, kind, x, z, None) * w)
            return jnp.sum(jnp.where(valid, per_step(self, kind, x, z, valid), 0) * w)

        fn = jax.value_and_grad(loss) if grad else loss
        return self._cached(("loss", name, kind, grad, plain), lambda: jax.jit(fn))

    def _loss_run(self, name, per_step, logits, targets, lengths, kind, reduction, side, device, grad: bool):
        x = self.asarray(logits, device)
        z = self.asarray(targets, device)
        z = z if kind == "softmax_ce" else z.astype(x.dtype)
        valid = self.asarray(valid_mask(lengths, x.shape[1], side), device)
        w = self.asarray(loss_weights(lengths, x.shape[1], side, reduction, x.dtype.name), device)
        plain = no_padding(lengths, x.shape[1])  # nothing to mask: where=valid over [B, T, C] cost 1.7x here
        return self._keep(self._loss_fn(name, per_step, kind, grad, plain)(x, z, valid, w))

    def _valid_only_fn(self, kind, grad: bool):
        """The jitted (loss) or (loss, grad) of "valid_only": x [B, T, ...] as [B * T, F] rows, the rows `index`
        names gathered (-1: a row of 0), their targets likewise, the optax loss of those rows weighted by `w`
        (0 on the extra rows). Traced once per (shape, rows on the ladder)."""
        jax, jnp = self.jax, self.jnp
        move = moved_rows(jax)

        def loss(x, z, index, inverse, w):
            self._compiles += 1  # the body runs only when JAX traces it
            keep = index >= 0
            F = int(np.prod(x.shape[2:], dtype=np.int64))  # 1 for a BCE without a label axis
            rows = move(x.reshape(-1, F), index, inverse)
            at = jnp.maximum(index, 0)
            # an extra row is a row of 0 with label 0: optax needs no `where` over [rows, C] (it cost ~0.6 of 5 ms
            # here); the per-row where stays (a float16 BCE summed over many labels could overflow to inf, times 0)
            if kind == "softmax_ce":
                labels = jnp.where(keep, jnp.take(z.reshape(-1), at), 0)
                per = self.optax.softmax_cross_entropy_with_integer_labels(rows, labels)
            else:
                labels = jnp.where(keep[:, None], jnp.take(z.reshape(-1, F), at, axis=0), 0)
                per = self.optax.sigmoid_binary_cross_entropy(rows, labels).sum(-1)
            return jnp.sum(jnp.where(keep, per, 0) * w)

        fn = jax.value_and_grad(loss) if grad else loss
        return self._cached(("loss", "valid_only", kind, grad), lambda: jax.jit(fn))

    def _valid_only_run(self, logits, targets, lengths, kind, reduction, side, device, grad: bool):
        x = self.asarray(logits, device)
        B, T = x.shape[:2]
        n = _gathered_rows(lengths, T)
        if n is None:  # no padding: nothing to skip, and XLA's gather of every row costs (CE: 3.6x)
            return self._loss_run("optax", JaxLoss._optax_per_step, x, targets, lengths, kind, reduction, side,
                                  device, grad)
        at, w_at = valid_steps(lengths, T, side, reduction, x.dtype.name)
        z = self.asarray(targets, device)
        z = z if kind == "softmax_ce" else z.astype(x.dtype)
        index, w = np.full(n, -1), np.zeros(n, x.dtype.name)
        index[:at.size], w[:at.size] = at, w_at
        # the maps go in as NumPy: jit moves them to x's device with its own arguments (three device_puts first
        # cost ~0.3-0.5 ms a call more here)
        return self._keep(self._valid_only_fn(kind, grad)(x, z, index, inverse_map(at, B * T), w))


def _gathered_rows(lengths: np.ndarray, T: int) -> int | None:
    """The rows "valid_only" gathers from a [B, T] batch of `lengths`: the valid steps' count rounded up the shape
    ladder (one compiled program per count), or None where no step is padded (the plain optax call runs)."""
    B, valid = len(lengths), int(np.sum(lengths))
    return None if valid == B * T else int(round_up(max(valid, 1), shape_ladder(max(B * T, 1))))


def _valid_only_programs(a, spec, lengths: np.ndarray, T: int, vjp: bool, compiled: frozenset) -> set:
    """`Strategy.programs` of "valid_only": one program per gathered row count, the plain call where none."""
    n = _gathered_rows(lengths, T)
    return {("plain",)} if n is None else {("rows", n)}


def _unit(name, per_step, supports, kernel, doc):
    fwd = lambda fw, *a: fw._loss_run(name, per_step, *a, grad=False)
    vjp = lambda fw, *a: fw._loss_run(name, per_step, *a, grad=True)
    return Strategy(name, fwd, vjp, supports=supports, doc=doc, **kernel_fields(kernel))


STRATEGIES = strategy_table(
    _unit("optax", JaxLoss._optax_per_step, lambda fw, **spec: None,
          {"softmax_ce": "optax.softmax_cross_entropy_with_integer_labels(where)",
           "sigmoid_bce": "optax.sigmoid_binary_cross_entropy"},
          "optax losses (where=valid for softmax CE), weighted sum, jitted"),
    _unit("log_softmax", JaxLoss._log_softmax_per_step, computes_only("softmax_ce"), "jax.nn.log_softmax",
          "-take_along_axis(jax.nn.log_softmax(x)), weighted sum, jitted"),
    valid_only_unit(valid_only_kernels("optax.softmax_cross_entropy_with_integer_labels",
                                       "optax.sigmoid_binary_cross_entropy"),
                    "the valid steps' rows gathered (count on the shape ladder), optax losses on them only, the "
                    "gather's gradient the inverse gather, weighted sum, jitted", programs=_valid_only_programs),
)


# -- native behaviours: optax called the obvious way ------------------------------------------------------------
def _native_optax_where_mean(fw, logits, targets, lengths, side="right", device="cpu"):
    """`optax.softmax_cross_entropy_with_integer_labels(..., where=mask).mean()`: the masked steps are 0, but the
    mean divides by every step, padding included."""
    jax, jnp = fw.jax, fw.jnp
    x = fw.asarray(logits, device)
    mask = fw.asarray(valid_mask(lengths, x.shape[1], side), device)
    z = jnp.where(mask, fw.asarray(targets, device), 0)
    f = lambda x: fw.optax.softmax_cross_entropy_with_integer_labels(x, z, where=mask).mean()
    return jax.value_and_grad(f)(x)


def _native_optax_times_mask(fw, logits, targets, lengths, side="right", device="cpu"):
    """`(optax.softmax_cross_entropy_with_integer_labels(x, y) * mask).sum() / mask.sum()` on the raw padded batch:
    NaN in padded logits survives the multiplication by 0, and an empty batch is 0/0."""
    jax = fw.jax
    x = fw.asarray(logits, device)
    mask = fw.asarray(valid_mask(lengths, x.shape[1], side).astype(x.dtype.name), device)
    z = fw.asarray(targets, device)
    f = lambda x: (fw.optax.softmax_cross_entropy_with_integer_labels(x, z) * mask).sum() / mask.sum()
    return jax.value_and_grad(f)(x)


NATIVES = {
    "softmax_cross_entropy_with_integer_labels(where).mean()": _native_optax_where_mean,
    "softmax_cross_entropy_with_integer_labels * mask": _native_optax_times_mask,
}
