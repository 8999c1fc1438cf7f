"""TensorFlow / Keras 3 masked attention: three strategies on one compiled skeleton, and the native behaviours.

Skeleton (inside one `tf.function(autograph=False)` per (strategy, causal, side, scale, forward|vjp); lengths are
tensor arguments, so new length values never retrace, and `compile_count` counts traces): padded steps are
replaced by 0 with `tf.where` before any product (NaN/inf in padding never meets a score), the kernel runs, and its
output is selected to exactly 0 at padded query rows and at valid queries with no valid key. Rows that will be
discarded read every key, so no softmax row is ever fully masked. Gradients: `tf.GradientTape` with the cotangent
as `output_gradients`.

- "keras_dpa" (default): `keras.ops.dot_product_attention` with the boolean [B, 1, Tq, Tk] mask of the shared
  `Adapter.attention_allowed`; its masked logits get a large finite negative and its softmax runs in float64 for
  float64 inputs, so both dtypes are exact once the scale is passed as a tensor of q's dtype (Keras `tf.cast`s a
  Python float scale from a float32 constant: ~1e-8 error in float64). Grouped kv heads are `tf.repeat`ed here:
  Keras 3.15's TF backend repeats them only when Hkv > 1, so multi-query attention (Hkv == 1) dies in its einsum
  with a shape error.
- "einsum": scores with `tf.einsum` (grouped heads as a reshape), `tf.where` with the same mask, `tf.nn.softmax`.
- "bucketed": the rows sorted by q_len x kv_len into a few buckets, each trimmed and run by "einsum" (measured
  interleaved on CPU, Hq=8/Hkv=2 Dh=64 B=64 T=128 forward + backward: 6-11% faster than "keras_dpa" as the inner
  strategy, 89.6 vs 96.1 ms on equal lengths, 44.9 vs 49.8 lognormal, 30.2 vs 32.0 zipf), results gathered back
  (`adapters.attention_buckets`; `BUCKET_COST` below is its cost model).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from adapters.attention_buckets import bucketed_unit
from adapters.spec import AttnOut, Strategy, strategy_table


class TensorflowAttention:
    """The attention machinery of the TensorFlow adapter (mixed into `TensorflowAdapter`)."""

    def _attn_call(self, algo, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, scale, device):
        tf = self.tf
        vjp = cotangent is not None
        key = ("attention", algo.__name__, causal, side, scale, vjp, device)
        if key not in self._fns:
            self._fns[key] = tf.function(self._attn_body(algo, causal, side, scale, vjp), autograph=False)
        with tf.device(self._dev(device)):
            q, k, v = (self.asarray(x, device) for x in (q, k, v))
            ql, kvl = (tf.constant(np.asarray(n, np.int64)) for n in (q_lengths, kv_lengths))
            if not vjp:
                return AttnOut(self._fns[key](q, k, v, ql, kvl), algo.kernel), None
            cot = tf.cast(self.asarray(cotangent, device), q.dtype)
            out, grads = self._fns[key](q, k, v, ql, kvl, cot)
        return AttnOut(out, algo.kernel), dict(zip("qkv", grads, strict=True))

    def _attn_body(self, algo, causal: bool, side: str, scale: float, vjp: bool):
        """The Python body of the compiled function (runs only while tracing)."""
        tf = self.tf

        def body(q, k, v, ql, kvl):
            q_valid, kv_valid = self.valid(ql, q.shape[1], side), self.valid(kvl, k.shape[1], side)
            q, k, v = (tf.where(m[:, :, None, None], x, tf.zeros((), x.dtype))
                       for x, m in ((q, q_valid), (k, kv_valid), (v, kv_valid)))
            keep = q_valid & (kvl > 0)[:, None]
            out = algo(self, q, k, v, ql, kvl, keep, causal, side, scale)
            return tf.where(keep[:, :, None, None], out, tf.zeros((), out.dtype))

        def forward(q, k, v, ql, kvl):
            self._traces += 1
            return body(q, k, v, ql, kvl)

        def forward_vjp(q, k, v, ql, kvl, cot):
            self._traces += 1
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                out = body(q, k, v, ql, kvl)
            grads = tape.gradient(out, [q, k, v], output_gradients=cot,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return out, grads

        return forward_vjp if vjp else forward


def _readable(a, ql, kvl, Tq, Tk, causal, side, keep):
    """The contract's allowed keys; rows that will be discarded read every key (never a fully masked row)."""
    return a.attention_allowed(ql, kvl, Tq, Tk, side, causal) | ~keep[:, :, None]


def _keras_dpa(a, q, k, v, ql, kvl, keep, causal, side, scale):
    mask = _readable(a, ql, kvl, q.shape[1], k.shape[1], causal, side, keep)[:, None]
    group = q.shape[2] // k.shape[2]
    if group > 1:  # Keras repeats kv heads only when Hkv > 1; multi-query (Hkv == 1) fails in its einsum
        k, v = a.tf.repeat(k, group, axis=2), a.tf.repeat(v, group, axis=2)
    # a Python float scale is rounded to float32 inside Keras (tf.cast of a Python float): pass a tensor of q's dtype
    return a.keras.ops.dot_product_attention(q, k, v, mask=mask, scale=a.tf.constant(scale, q.dtype))


_keras_dpa.kernel = "keras.ops.dot_product_attention[tensorflow]"


def _einsum(a, q, k, v, ql, kvl, keep, causal, side, scale):
    tf = a.tf
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    qg = tf.reshape(q, (-1, Tq, Hkv, Hq // Hkv, D))
    s = tf.einsum("bqhgd,bkhd->bhgqk", qg, k) * tf.constant(scale, q.dtype)
    readable = _readable(a, ql, kvl, Tq, Tk, causal, side, keep)[:, None, None]
    p = tf.nn.softmax(tf.where(readable, s, tf.constant(-np.inf, s.dtype)), axis=-1)
    return tf.reshape(tf.einsum("bhgqk,bkhd->bqhgd", p, v), (-1, Tq, Hq, D))


_einsum.kernel = "tf-einsum"


def _unit(name: str, algo, doc: str) -> Strategy:
    fwd = lambda a, q, k, v, ql, kvl, causal, side, scale, device: a._attn_call(  # noqa: E731
        algo, q, k, v, ql, kvl, None, causal, side, scale, device)[0]
    vjp = lambda a, q, k, v, ql, kvl, cot, causal, side, scale, device: a._attn_call(  # noqa: E731
        algo, q, k, v, ql, kvl, cot, causal, side, scale, device)
    return Strategy(name, fwd, vjp, doc=doc, kernel=algo.kernel)


#: "bucketed" cost model in (row, query, key) scores, fitted on this 2-core CPU (keras dot_product_attention,
#: Hq=8 over Hkv=2, Dh=64, forward + backward, float32: ~37 ns a score, ~5.5 us a (row, step), ~1.5 ms a
#: call); bucket shapes on the ladders, so tf.function traces stay few; per device (a GPU takes the CPU's: not
#: fitted there)
BUCKET_COST = {"cpu": dict(call_cost=40000.0, token_cost=150.0, ladders=True)}
#: what the buckets run (see the module docstring: faster than the default "keras_dpa" there)
BUCKET_PREFER = ("einsum",)

STRATEGIES = strategy_table(
    _unit("keras_dpa", _keras_dpa, "keras.ops.dot_product_attention with a boolean mask"),
    _unit("einsum", _einsum, "masked tf.einsum + tf.nn.softmax, GQA as a reshape"),
    bucketed_unit(BUCKET_COST, BUCKET_PREFER),
)


# -- native behaviours: the primitive called the obvious way, without varlen's fixes -----------------------------
_KERNEL = "keras.ops.dot_product_attention[tensorflow]"


def _native(a, fn, q, k, v, cotangent, device) -> dict[str, Any]:
    """fn(q, k, v) -> out eagerly, as a user would; with a cotangent, `tf.GradientTape` gradients too."""
    tf = a.tf
    with tf.device(a._dev(device)):
        q, k, v = (a.asarray(x, device) for x in (q, k, v))
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = fn(q, k, v)
        res: dict[str, Any] = {"outputs": out, "kernel": _KERNEL}
        if cotangent is not None:
            grads = tape.gradient(out, [q, k, v], output_gradients=tf.cast(a.asarray(cotangent, device), out.dtype),
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            res["grads"] = dict(zip("qkv", grads, strict=True))
    return res


def _key_mask(a, k, kv_lengths, side):
    """[B, 1, 1, Tk] bool, True = attend."""
    return a.valid(a.tf.constant(np.asarray(kv_lengths, np.int64)), k.shape[1], side)[:, None, None, :]


def _dpa_mask(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
    """keras.ops.dot_product_attention with the user's boolean key mask (and is_causal), padding untouched."""
    fn = lambda q, k, v: a.keras.ops.dot_product_attention(  # noqa: E731
        q, k, v, mask=_key_mask(a, k, kv_lengths, side), is_causal=causal)
    return _native(a, fn, q, k, v, cotangent, device)


def _dpa_bias(fill: float, dtype: str | None = None):
    def native(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
        tf = a.tf
        if dtype is not None:
            q, k, v = (tf.cast(a.asarray(x, device), dtype) for x in (q, k, v))
            cotangent = None

        def fn(q, k, v):
            bias = tf.cast(tf.where(_key_mask(a, k, kv_lengths, side), 0.0, fill), q.dtype)
            return a.keras.ops.dot_product_attention(q, k, v, bias=bias, is_causal=causal)

        res = _native(a, fn, q, k, v, cotangent, device)
        if dtype is not None:
            res["baseline"] = _dpa_mask(a, q, k, v, q_lengths, kv_lengths, None, causal, side, device)["outputs"]
        return res

    return native


def _mean_pool(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
    """tf.reduce_mean(out, axis=1) over the masked outputs, padded query rows included."""
    res = _dpa_mask(a, q, k, v, q_lengths, kv_lengths, None, causal, side, device)
    return {**res, "pooled": a.tf.reduce_mean(res["outputs"], axis=1)}


NATIVES = {
    "keyless_row": _dpa_mask,
    "nan_padding_bool_mask": _dpa_mask,
    "additive_neg_inf_mask": _dpa_bias(-np.inf),
    "additive_neg1e9_float16": _dpa_bias(-1e9, "float16"),
    "additive_neg1e9_bfloat16": _dpa_bias(-1e9, "bfloat16"),
    "causal_left_padding": _dpa_mask,
    "mean_pool_padded_rows": _mean_pool,
}
