"""JAX masked losses: optax's losses and a plain `jax.nn.log_softmax`, jit-compiled, padding and reduction right.

Strategies (all exact; the default for a kind is the first that supports it):
- "optax" (both kinds): `optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=valid)` (optax >=
  0.2.4 has `where`: masked steps get loss 0 and their NaN logits never reach the gradient, checked by the gates)
  and `optax.sigmoid_binary_cross_entropy` on logits whose padding was replaced with `jnp.where` (it has no
  `where`); a step's BCE sums its C labels.
- "log_softmax" (softmax_ce): `-take_along_axis(jax.nn.log_softmax(x), labels)` on sanitised logits.
Padded labels are replaced with 0 before any gather. The reduction is one weighted sum with host-built weights
(`adapters.base.loss_weights`) passed as an argument, so new lengths never retrace; an empty batch gives 0.
optax is imported on first use, never at module level. One `jax.jit` per (strategy, kind, vjp).
"""
from __future__ import annotations

from adapters.base import loss_weights
from adapters.spec import Strategy, computes_only, strategy_table, valid_mask


class JaxLoss:
    """The masked-loss machinery of the JAX adapter (mixed into `JaxAdapter`)."""

    @property
    def optax(self):
        import optax  # lazily: only the loss strategies need it

        return optax

    def _optax_per_step(self, kind, x, z, valid):
        jnp, optax = self.jnp, self.optax
        if kind == "softmax_ce":
            return optax.softmax_cross_entropy_with_integer_labels(x, jnp.where(valid, z, 0), where=valid)
        keep = valid.reshape(*valid.shape, *([1] * (x.ndim - 2)))
        per = optax.sigmoid_binary_cross_entropy(jnp.where(keep, x, 0), jnp.where(keep, z, 0))
        return per.sum(-1) if per.ndim == 3 else per

    def _log_softmax_per_step(self, kind, x, z, valid):
        jnp = self.jnp
        logp = self.jax.nn.log_softmax(jnp.where(valid[..., None], x, 0), axis=-1)
        return -jnp.take_along_axis(logp, jnp.where(valid, z, 0)[..., None], axis=-1)[..., 0]

    def _loss_fn(self, name, per_step, kind, grad: bool):
        """The jitted (loss) or (loss, grad) of one strategy and kind; traced once per shape/dtype."""
        jax, jnp = self.jax, self.jnp

        def loss(x, z, valid, w):
            self._compiles += 1  # the body runs only when JAX traces it
            return jnp.sum(jnp.where(valid, per_step(self, kind, x, z, valid), 0) * w)

        fn = jax.value_and_grad(loss) if grad else loss
        return self._cached(("loss", name, kind, grad), lambda: jax.jit(fn))

    def _loss_run(self, name, per_step, logits, targets, lengths, kind, reduction, side, device, grad: bool):
        x = self.asarray(logits, device)
        z = self.asarray(targets, device)
        z = z if kind == "softmax_ce" else z.astype(x.dtype)
        valid = self.asarray(valid_mask(lengths, x.shape[1], side), device)
        w = self.asarray(loss_weights(lengths, x.shape[1], side, reduction, x.dtype.name), device)
        return self._keep(self._loss_fn(name, per_step, kind, grad)(x, z, valid, w))


def _unit(name, per_step, supports, kernel, doc):
    fwd = lambda fw, *a: fw._loss_run(name, per_step, *a, grad=False)
    vjp = lambda fw, *a: fw._loss_run(name, per_step, *a, grad=True)
    return Strategy(name, fwd, vjp, supports=supports, doc=doc, kernel=kernel)


STRATEGIES = strategy_table(
    _unit("optax", JaxLoss._optax_per_step, lambda fw, **spec: None,
          "optax.softmax_cross_entropy_with_integer_labels(where) | optax.sigmoid_binary_cross_entropy",
          "optax losses (where=valid for softmax CE), weighted sum, jitted"),
    _unit("log_softmax", JaxLoss._log_softmax_per_step, computes_only("softmax_ce"), "jax.nn.log_softmax",
          "-take_along_axis(jax.nn.log_softmax(x)), weighted sum, jitted"),
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
