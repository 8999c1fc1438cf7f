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
  (`adapters.attention_buckets`; `BUCKET_COST` below is its cost model). Every bucket, its takes and the gathers
  back run in one `tf.function` whose batch and time axes are of unknown length (`_attn_buckets`): eager takes,
  gathers and one call per bucket cost as much as the buckets' own work did (lognormal 39 ms vs 21 ms).
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

    def _attn_masked(self, algo, q, k, v, ql, kvl, causal: bool, side: str, scale: float):
        """The skeleton around `algo` (traced; the time axes may be of unknown length): padding zeroed before any
        product, padded and keyless query rows exactly 0 after."""
        tf = self.tf
        q_valid, kv_valid = self.valid(ql, _dim(tf, q, 1), side), self.valid(kvl, _dim(tf, k, 1), side)
        q, k, v = (tf.where(m[:, :, None, None], x, tf.zeros((), x.dtype))
                   for x, m in ((q, q_valid), (k, kv_valid), (v, kv_valid)))
        keep = q_valid & (kvl > 0)[:, None]
        out = algo(self, q, k, v, ql, kvl, keep, causal, side, scale)
        return tf.where(keep[:, :, None, None], out, tf.zeros((), out.dtype))

    def _attn_body(self, algo, causal: bool, side: str, scale: float, vjp: bool):
        """The Python body of the compiled function (runs only while tracing)."""
        tf = self.tf

        def body(q, k, v, ql, kvl):
            return self._attn_masked(algo, q, k, v, ql, kvl, causal, side, scale)

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

    def _attn_buckets(self, inner: str, plan, q, k, v, ql, kvl, cot, causal, side, scale, device):
        """Every bucket of a "bucketed" plan in one `tf.function`: the takes, each bucket's skeleton (and its
        gradient tape), the gathers back. Its signature leaves batch and time axes unknown, so one trace serves
        every plan with as many buckets whatever their shapes (traces: one per bucket count, forward or VJP,
        causal, side, scale, dtype and head shape). Measured on this 2-core CPU (B=64 T=128, Hq=8/Hkv=2 Dh=64,
        forward + backward, einsum in the buckets): lognormal 18.6 ms, zipf 11.0 ms, against 39.2 / 26.9 ms for the
        same buckets as separate calls with eager takes and gathers, and 74 / 76 ms padded."""
        from adapters.attention_buckets import bucket_rows, window_index
        from adapters.spec import attention_unbucket_index

        tf = self.tf
        algo = ALGOS[inner]
        vjp = cot is not None
        Tq, Tk = q.shape[1], k.shape[1]
        key = ("attention_buckets", inner, causal, side, scale, vjp, len(plan), q.dtype.name, q.shape[2],
               k.shape[2], q.shape[3], device)
        if key not in self._fns:
            self._fns[key] = self._buckets_fn(algo, len(plan), causal, side, scale, vjp, q.dtype, q.shape[2],
                                              k.shape[2], q.shape[3])
        args = []
        for b in plan:
            rows, lens = bucket_rows(b, ql, kvl)
            args += [window_index(rows, Tq, b.q_steps, side), window_index(rows, Tk, b.kv_steps, side), *lens,
                     np.array([b.batch, b.q_steps, b.kv_steps], np.int64)]
        args.append(attention_unbucket_index(plan, q.shape[0], Tq, side))
        if vjp:
            args.append(attention_unbucket_index(plan, k.shape[0], Tk, side, kv=True))
        with tf.device(self._dev(device)):
            args = [tf.constant(np.asarray(x, np.int64)) for x in args]
            if vjp:
                out, grads = self._fns[key](q, k, v, tf.cast(cot, q.dtype), *args)
                grads = dict(zip("qkv", grads, strict=True))
            else:
                out, grads = self._fns[key](q, k, v, *args), None
        return AttnOut(out, f"{algo.kernel} bucketed[{len(plan)}]"), grads

    def _buckets_fn(self, algo, n_buckets: int, causal, side, scale, vjp: bool, dtype, Hq: int, Hkv: int, D: int):
        tf = self.tf
        spec = lambda *shape, dt=dtype: tf.TensorSpec(shape, dt)  # noqa: E731
        index = spec(None, dt=tf.int64)
        per_bucket = [index] * 4 + [spec(3, dt=tf.int64)]  # takes (query, key), lengths (query, key), shape
        signature = [spec(None, None, Hq, D), spec(None, None, Hkv, D), spec(None, None, Hkv, D)]
        signature += [spec(None, None, Hq, D)] * vjp + per_bucket * n_buckets + [index] * (1 + vjp)

        gather_back = lambda parts, index, like: self._regather(parts, index, tf.shape(like))  # noqa: E731

        def run(q, k, v, *rest):
            self._traces += 1  # Python body: runs only while tracing
            cot, rest = (rest[0], rest[1:]) if vjp else (None, rest)
            flat = [None if x is None else tf.reshape(x, (-1, *x.shape[2:])) for x in (q, k, v, cot)]
            outs, grads = [], ([], [], [])
            for i in range(n_buckets):
                q_index, kv_index, bql, bkvl, dims = rest[5 * i:5 * i + 5]
                take = lambda x, index, steps: tf.reshape(  # noqa: E731
                    tf.gather(x, index), tf.concat([dims[:1], dims[steps:steps + 1], x.shape[1:]], 0))
                bq, bk, bv = take(flat[0], q_index, 1), take(flat[1], kv_index, 2), take(flat[2], kv_index, 2)
                if not vjp:
                    outs.append(self._attn_masked(algo, bq, bk, bv, bql, bkvl, causal, side, scale))
                    continue
                with tf.GradientTape() as tape:
                    tape.watch([bq, bk, bv])
                    out = self._attn_masked(algo, bq, bk, bv, bql, bkvl, causal, side, scale)
                for acc, g in zip(grads, tape.gradient(out, [bq, bk, bv], output_gradients=take(flat[3], q_index, 1),
                                                       unconnected_gradients=tf.UnconnectedGradients.ZERO)):
                    acc.append(g)
                outs.append(out)
            q_back = rest[5 * n_buckets]
            out = gather_back(outs, q_back, q)
            if not vjp:
                return out
            kv_back = rest[5 * n_buckets + 1]
            return out, [gather_back(grads[0], q_back, q), gather_back(grads[1], kv_back, k),
                         gather_back(grads[2], kv_back, v)]

        return tf.function(run, input_signature=signature, autograph=False)


def _dim(tf, x, axis: int):
    """x's static length along `axis`, else its length at run time (int64, as lengths are)."""
    n = x.shape[axis]
    return n if n is not None else tf.shape(x, out_type=tf.int64)[axis]


def _readable(a, ql, kvl, Tq, Tk, causal, side, keep):
    """The contract's allowed keys; rows that will be discarded read every key (never a fully masked row)."""
    return a.attention_allowed(ql, kvl, Tq, Tk, side, causal) | ~keep[:, :, None]


def _keras_dpa(a, q, k, v, ql, kvl, keep, causal, side, scale):
    mask = _readable(a, ql, kvl, _dim(a.tf, q, 1), _dim(a.tf, k, 1), causal, side, keep)[:, None]
    group = q.shape[2] // k.shape[2]
    if group > 1:  # Keras repeats kv heads only when Hkv > 1; multi-query (Hkv == 1) fails in its einsum
        k, v = a.tf.repeat(k, group, axis=2), a.tf.repeat(v, group, axis=2)
    # a Python float scale is rounded to float32 inside Keras (tf.cast of a Python float): pass a tensor of q's dtype
    return a.keras.ops.dot_product_attention(q, k, v, mask=mask, scale=a.tf.constant(scale, q.dtype))


_keras_dpa.kernel = "keras.ops.dot_product_attention[tensorflow]"


def _einsum(a, q, k, v, ql, kvl, keep, causal, side, scale):
    tf = a.tf
    Hq, D = q.shape[2], q.shape[3]
    Tq, Tk, Hkv = _dim(tf, q, 1), _dim(tf, k, 1), k.shape[2]
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
#: separate call). All buckets run in one graph whose axes are of unknown length (`_attn_buckets`), so buckets are
#: trimmed to their exact lengths (no ladders: no shape ever retraces). Refitted for the one graph, interleaved,
#: B=64 T=128: ladders or not, 4 or 8 buckets, a bucket costing 10000-40000 scores all within 5% (lognormal
#: 20.8-21.8 ms, zipf 10.7-11.7 ms). Per device (a GPU takes the CPU's: not fitted there)
BUCKET_COST = {"cpu": dict(call_cost=40000.0, token_cost=150.0, ladders=False)}
#: what the buckets run (see the module docstring: faster than the default "keras_dpa" there)
BUCKET_PREFER = ("einsum",)

STRATEGIES = strategy_table(
    _unit("keras_dpa", _keras_dpa, "keras.ops.dot_product_attention with a boolean mask"),
    _unit("einsum", _einsum, "masked tf.einsum + tf.nn.softmax, GQA as a reshape"),
    bucketed_unit(BUCKET_COST, BUCKET_PREFER, graph=lambda a, inner, *args: a._attn_buckets(inner, *args),
                  graph_programs=lambda plan: {("buckets", len(plan))}),
)
#: the kernel each strategy's buckets run, by strategy name (for the one-graph bucketed call)
ALGOS = {"keras_dpa": _keras_dpa, "einsum": _einsum}


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
