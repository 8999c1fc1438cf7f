"""TensorFlow / Keras 3 masked losses: `tf.nn` primitives and Keras loss objects, padding and reduction done right.

Strategies (all exact; the default for a kind is the first that supports it):
- "sparse_softmax_ce" (softmax_ce): `tf.nn.sparse_softmax_cross_entropy_with_logits` on the padded batch.
- "sigmoid_ce" (sigmoid_bce): `tf.nn.sigmoid_cross_entropy_with_logits` on the padded batch (a step sums its C).
- "keras" (both): `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` /
  `keras.losses.BinaryCrossentropy(from_logits=True)` with `reduction="sum"` and the reduction weights given as
  `sample_weight`. The loss object is built with the logits' dtype (Keras would otherwise compute in floatx,
  float32), and BCE labels get a trailing axis of 1 so that Keras's mean over the last axis is the identity.
  Class labels get one too, [B, T, 1], a shape the loss takes (it drops the axis): given [B, T] labels, Keras's
  loss wrapper squeezes a trailing axis of 1 off the logits (one class: C = 1) to match their rank, and the loss
  then refused them ("Argument `output` must have rank (ndim) `target.ndim - 1`", Keras 3.15).
- "valid_only" (both): the valid steps' rows gathered first (host positions), then the same `tf.nn` primitive on
  those rows only: no work on padding. The gather's gradient (`tf.custom_gradient`) is the inverse gather, each
  valid step reading its row's cotangent and a padded step a zero row, one dense pass where `tf.gather`'s own
  gradient is IndexedSlices summed into a dense tensor (none without padding). Padding is never read, so nothing
  needs sanitising.
Padded logits and targets are replaced with `tf.where` first: `sparse_softmax_cross_entropy_with_logits` raises on
an out-of-range label on CPU (NaN on GPU), and NaN in padding must never reach a gradient. The reduction is one
weighted sum with host-built weights (`adapters.base.loss_weights`), so an empty batch gives exactly 0. A batch
without padding has nothing to replace: the primitives run on the logits as they are.
Gradients come from `tf.GradientTape`, eagerly.
"""
from __future__ import annotations

import numpy as np

from adapters.base import loss_weights, valid_only_kernels, valid_only_unit, valid_steps
from adapters.spec import (
    Strategy,
    computes_only,
    inverse_map,
    kernel_fields,
    no_padding,
    strategy_table,
    valid_mask,
)


class TensorflowLoss:
    """The masked-loss machinery of the TensorFlow adapter (mixed into `TensorflowAdapter`)."""

    def _loss_inputs(self, logits, targets, lengths, kind, reduction, side, device):
        """Native (logits with padding replaced by 0, targets likewise, weights [B, T]) on `device`."""
        tf = self.tf
        x = self.asarray(logits, device)
        valid_np = valid_mask(lengths, x.shape[1], side)
        with tf.device(self._dev(device)):
            valid = tf.constant(valid_np.reshape(*valid_np.shape, *([1] * (x.shape.rank - 2))))
            z = self.asarray(targets, device)
            if kind == "softmax_ce":
                z = tf.where(valid_np, z, tf.zeros_like(z))
            else:
                z = tf.where(valid, tf.cast(z, x.dtype), tf.zeros((), x.dtype))
            w = tf.constant(loss_weights(lengths, x.shape[1], side, reduction, x.dtype.name))
        return x, valid, z, w

    def _tf_nn_loss(self, kind, x, z, w):
        tf = self.tf
        if kind == "softmax_ce":
            per_step = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=z, logits=x)
        else:
            per_step = tf.nn.sigmoid_cross_entropy_with_logits(labels=z, logits=x)
            per_step = tf.reduce_sum(per_step, -1) if per_step.shape.rank == 3 else per_step
        return tf.reduce_sum(per_step * w)

    def _keras_loss(self, kind, x, z, w):
        losses = self.keras.losses
        key = ("keras_loss", kind, x.dtype.name)
        if key not in self._fns:
            cls = losses.SparseCategoricalCrossentropy if kind == "softmax_ce" else losses.BinaryCrossentropy
            self._fns[key] = cls(from_logits=True, reduction="sum", dtype=x.dtype.name)
        if kind == "softmax_ce":  # labels [B, T, 1], see the module docstring
            return self._fns[key](z[..., None], x, sample_weight=w)
        w = self.tf.broadcast_to(w[..., None], x.shape) if x.shape.rank == 3 else w  # one weight per label
        return self._fns[key](z[..., None], x[..., None], sample_weight=w)

    def _loss_run(self, how, logits, targets, lengths, kind, reduction, side, device, grad: bool):
        tf = self.tf
        x, valid, z, w = self._loss_inputs(logits, targets, lengths, kind, reduction, side, device)
        plain = no_padding(lengths, x.shape[1])  # nothing to replace
        with tf.device(self._dev(device)):
            clean = lambda x: x if plain else tf.where(valid, x, tf.zeros((), x.dtype))  # noqa: E731
            if not grad:
                return how(self, kind, clean(x), z, w)
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = how(self, kind, clean(x), z, w)
            return loss, tape.gradient(loss, x)


    def _valid_only_run(self, logits, targets, lengths, kind, reduction, side, device, grad: bool):
        tf = self.tf
        x = self.asarray(logits, device)
        (B, T), F = x.shape[:2], int(np.prod(x.shape[2:], dtype=np.int64))  # F 1: a BCE without a label axis
        at, w = valid_steps(lengths, T, side, reduction, x.dtype.name)
        full = at.size == B * T  # no padding: no gathers
        if not full:  # each step's row among the valid ones; padding: the zero row appended last
            inverse = inverse_map(at, B * T)
            inverse[inverse < 0] = at.size
        with tf.device(self._dev(device)):
            z = tf.reshape(self.asarray(targets, device), (-1,) if kind == "softmax_ce" else (-1, F))
            z = z if full else tf.gather(z, at)

            @tf.custom_gradient
            def take(flat):
                def back(g):
                    return tf.gather(tf.concat([g, tf.zeros((1, F), g.dtype)], 0), inverse)
                return tf.gather(flat, at), back

            def loss_of(x):
                flat = tf.reshape(x, (-1, F))
                rows = flat if full else take(flat)
                if kind == "softmax_ce":
                    per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=z, logits=rows)
                else:
                    per = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(z, x.dtype),
                                                                                logits=rows), -1)
                return tf.reduce_sum(per * w)

            if not grad:
                return loss_of(x)
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = loss_of(x)
            return loss, tape.gradient(loss, x)


def _unit(name, how, supports, kernel, doc):
    fwd = lambda fw, *a: fw._loss_run(how, *a, grad=False)
    vjp = lambda fw, *a: fw._loss_run(how, *a, grad=True)
    return Strategy(name, fwd, vjp, supports=supports, doc=doc, **kernel_fields(kernel))


STRATEGIES = strategy_table(
    _unit("sparse_softmax_ce", TensorflowLoss._tf_nn_loss, computes_only("softmax_ce"),
          "tf.nn.sparse_softmax_cross_entropy_with_logits", "tf.nn primitive on the padded batch, weighted sum"),
    _unit("sigmoid_ce", TensorflowLoss._tf_nn_loss, computes_only("sigmoid_bce"),
          "tf.nn.sigmoid_cross_entropy_with_logits", "tf.nn primitive on the padded batch, weighted sum"),
    _unit("keras", TensorflowLoss._keras_loss, lambda fw, **spec: None,
          {"softmax_ce": "keras.losses.SparseCategoricalCrossentropy(reduction='sum')",
           "sigmoid_bce": "keras.losses.BinaryCrossentropy(reduction='sum')"},
          "Keras loss object, the reduction weights as sample_weight, reduction='sum'"),
    valid_only_unit(valid_only_kernels("tf.nn.sparse_softmax_cross_entropy_with_logits",
                                       "tf.nn.sigmoid_cross_entropy_with_logits"),
                    "the valid steps' rows gathered, the tf.nn primitive on them only, the gather's gradient the "
                    "inverse gather, weighted sum"),
)


# -- native behaviours: the obvious Keras / tf.nn code, no varlen fixes ---------------------------------------------
def _keras_native(fw, logits, targets, lengths, side, device, **loss_kw):
    """SparseCategoricalCrossentropy(from_logits=True, **loss_kw) with the valid mask as sample_weight."""
    tf = fw.tf
    x = fw.asarray(logits, device)
    mask = valid_mask(lengths, x.shape[1], side).astype(x.dtype.name)
    loss_fn = fw.keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=x.dtype.name, **loss_kw)
    with tf.device(fw._dev(device)), tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_fn(fw.asarray(targets, device), x, sample_weight=mask)
    return loss, tape.gradient(loss, x)


def _native_keras_default(fw, logits, targets, lengths, side="right", device="cpu"):
    """The default reduction "sum_over_batch_size" divides the masked sum by every step, padding included."""
    return _keras_native(fw, logits, targets, lengths, side, device)


def _native_keras_mean_with_sample_weight(fw, logits, targets, lengths, side="right", device="cpu"):
    """reduction="mean_with_sample_weight" divides by the mask's sum (divide_no_nan: 0 for an empty batch): the
    intended token mean, but every target must be in range, padded ones included: a pad of -100 or C raises
    InvalidArgumentError on CPU although its weight is 0 (set padded targets to 0 first)."""
    return _keras_native(fw, logits, targets, lengths, side, device, reduction="mean_with_sample_weight")


def _native_tf_nn_times_mask(fw, logits, targets, lengths, side="right", device="cpu"):
    """`tf.nn.sparse_softmax_cross_entropy_with_logits` on the raw padded targets, times the mask, / mask.sum():
    an out-of-range padded label raises on CPU (and gives NaN on GPU)."""
    tf = fw.tf
    x = fw.asarray(logits, device)
    mask = tf.constant(valid_mask(lengths, x.shape[1], side).astype(x.dtype.name))
    with tf.device(fw._dev(device)), tf.GradientTape() as tape:
        tape.watch(x)
        per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=fw.asarray(targets, device), logits=x)
        loss = tf.reduce_sum(per * mask) / tf.reduce_sum(mask)
    return loss, tape.gradient(loss, x)


NATIVES = {
    "SparseCategoricalCrossentropy(sample_weight=mask)": _native_keras_default,
    "SparseCategoricalCrossentropy(mean_with_sample_weight)": _native_keras_mean_with_sample_weight,
    "sparse_softmax_cross_entropy_with_logits * mask": _native_tf_nn_times_mask,
}
