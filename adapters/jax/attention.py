"""JAX masked attention: jit-compiled strategies on one skeleton, and the native behaviours people hit.

Skeleton (inside one `jax.jit` per (strategy, causal, side, scale, forward|vjp); lengths are traced arguments, so
new length values never retrace, and `compile_count` counts traces): padded steps are replaced by 0 with
`jnp.where` before any product (NaN/inf in padding never meets a score), the kernel runs, and its output is selected
to exactly 0 at padded query rows and at valid queries with no valid key. Rows that will be discarded read every
key, so no softmax row is ever fully masked and no NaN can reach the backward pass. Gradients are `jax.vjp`.

- "xla_dpa" (default): `jax.nn.dot_product_attention(implementation="xla")` with `query_seq_lengths` /
  `key_value_seq_lengths` and `is_causal` (native GQA). Its length arguments mean right padding (a valid prefix),
  so left-padded rows are realigned to the right around it (the shared `Adapter.realign`, a per-row permutation).
  Not for float64: jax computes this softmax in float32 whatever the input dtype (errors ~1e-7), so float64 is
  served by "einsum" (the default for float64 is then the first strategy that supports it). Nor for float16 on
  CPU: jax's XLA path asks dot_general for F16_F16_F32, which the CPU backend rejects ("einsum" runs there).
- "cudnn_dpa": the same call with implementation="cudnn" (GPU, float16/bfloat16 only, as cuDNN requires).
- "einsum": the plain formulation, grouped heads as a reshape: einsum scores, `jnp.where` with the shared
  `Adapter.attention_allowed` mask, `jax.nn.softmax`, einsum with V. Works for either side without realignment.
- "bucketed": the rows sorted by q_len x kv_len into a few buckets, each trimmed and run by the default
  strategy for the dtype, results gathered back (`adapters.attention_buckets`; `BUCKET_COST` below is its cost model);
  each bucket's take, kernel, VJP and put-back is one jitted call (`JaxAttention._attn_buckets`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from adapters.attention_buckets import bucketed_unit
from adapters.spec import AttnOut, Strategy, strategy_table


class JaxAttention:
    """The attention machinery of the JAX adapter (mixed into `JaxAdapter`)."""

    def _attn_call(self, algo, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, scale, device):
        vjp = cotangent is not None
        key = ("attention", algo.__name__, causal, side, scale, vjp)
        fn = self._cached(key, lambda: self._attn_jit(algo, causal, side, scale, vjp))
        q, k, v = (self.asarray(x, device) for x in (q, k, v))
        ql, kvl = (self.asarray(np.asarray(n, np.int32), device) for n in (q_lengths, kv_lengths))
        kernel = algo.kernel
        if not vjp:
            return AttnOut(self._keep(fn(q, k, v, ql, kvl)), kernel), None
        out, grads = self._keep(fn(q, k, v, ql, kvl, self.asarray(cotangent, device).astype(q.dtype)))
        return AttnOut(out, kernel), dict(zip("qkv", grads, strict=True))

    def _attn_jit(self, algo, causal: bool, side: str, scale: float, vjp: bool):
        """The jitted forward (or forward + VJP); its Python body runs only when JAX traces it."""
        jax = self.jax

        def body(q, k, v, ql, kvl):
            return self._attn_masked(algo, q, k, v, ql, kvl, causal, side, scale)

        def forward(q, k, v, ql, kvl):
            self._compiles += 1
            return body(q, k, v, ql, kvl)

        def forward_vjp(q, k, v, ql, kvl, cot):
            self._compiles += 1
            out, pullback = jax.vjp(lambda a, b, c: body(a, b, c, ql, kvl), q, k, v)
            return out, pullback(cot)

        return jax.jit(forward_vjp if vjp else forward)


    def _attn_masked(self, algo, q, k, v, ql, kvl, causal: bool, side: str, scale: float):
        """The skeleton around `algo` (traced): padding zeroed before any product, padded and keyless query rows
        exactly 0 after."""
        jnp = self.jnp
        q_valid, kv_valid = self.valid(ql, q.shape[1], side), self.valid(kvl, k.shape[1], side)
        q, k, v = (jnp.where(m[:, :, None, None], x, 0) for x, m in ((q, q_valid), (k, kv_valid), (v, kv_valid)))
        keep = q_valid & (kvl > 0)[:, None]
        out = algo(self, q, k, v, ql, kvl, keep, causal, side, scale)
        return jnp.where(keep[:, :, None, None], out, 0)

    def _attn_buckets(self, inner: str, plan, q, k, v, ql, kvl, cot, causal, side, scale, device):
        """A "bucketed" plan with each bucket's take, skeleton (and VJP) and put-back in one jitted call: the
        bucket reads its rows' windows from the whole [B * T, ...] arrays and writes its results into
        accumulators (zeros where no bucket writes) donated from call to call; a bucket's padding copies of a row
        (its batch rounded up the ladder) put nothing back. Compiles: one per bucket shape, as the separate inner
        calls had, without the eager crops, takes, concatenations and gathers around them, which cost as much as
        the buckets' own work (this CPU, B=64 T=128 Hq=8/Hkv=2 Dh=64 fwd+bwd, interleaved in one process:
        lognormal 19.5 vs 30.7 ms, zipf 11.7 vs 22.0 ms; the buckets' inner calls alone 16-18 / 6-7 ms)."""
        from adapters.attention_buckets import bucket_rows, window_index

        jnp = self.jnp
        algo = ALGOS[inner]
        vjp = cot is not None
        fn = self._cached(("attention_bucket", algo.__name__, causal, side, scale, vjp),
                          lambda: self._bucket_jit(algo, causal, side, scale, vjp))
        B, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
        inputs = [q, k, v, *([cot if cot.dtype == q.dtype else cot.astype(q.dtype)] if vjp else [])]
        with self.jax.default_device(self._device(device)):
            acc = [jnp.zeros(x.shape, q.dtype) for x in [q, *((q, k, v) if vjp else ())]]
        for b in plan:
            rows, lens = bucket_rows(b, ql, kvl)
            real = np.arange(b.batch) < b.rows.size  # the padding copies of a row put nothing back
            index = []
            for T, steps in ((Tq, b.q_steps), (Tk, b.kv_steps)):
                take = window_index(rows, T, steps, side)
                index += [take, np.where(np.repeat(real, steps), take, B * T)]  # out of bounds: dropped
            packed = self.asarray(np.concatenate([*index, *lens]).astype(np.int32), device)  # one transfer
            acc = self._keep(fn(tuple(acc), *inputs, packed, shape=(b.batch, b.q_steps, b.kv_steps)))
        grads = dict(zip("qkv", acc[1:], strict=True)) if vjp else None
        return AttnOut(acc[0], f"{algo.kernel} bucketed[{len(plan)}]"), grads

    def _bucket_jit(self, algo, causal: bool, side: str, scale: float, vjp: bool):
        jax = self.jax

        def step(acc, q, k, v, *rest, shape):
            self._compiles += 1  # Python body: runs only while tracing
            cot, packed = (rest[0], rest[1]) if vjp else (None, rest[0])
            n, sq, sk = shape
            q_take, q_put, kv_take, kv_put, bql, bkvl = self.jnp.split(
                packed, np.cumsum([n * sq, n * sq, n * sk, n * sk, n]))
            flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731 - [B, T, ...] -> [B * T, ...]
            take = lambda x, index: flat(x)[index].reshape(n, index.shape[0] // n, *x.shape[2:])  # noqa: E731
            put = lambda a, index, x: flat(a).at[index].set(flat(x), mode="drop").reshape(a.shape)  # noqa: E731
            bq, bk, bv = take(q, q_take), take(k, kv_take), take(v, kv_take)
            body = lambda q, k, v: self._attn_masked(algo, q, k, v, bql, bkvl, causal, side, scale)  # noqa: E731
            if not vjp:
                return (put(acc[0], q_put, body(bq, bk, bv)),)
            out, pullback = jax.vjp(body, bq, bk, bv)
            gq, gk, gv = pullback(take(cot, q_take))
            return (put(acc[0], q_put, out), put(acc[1], q_put, gq), put(acc[2], kv_put, gk),
                    put(acc[3], kv_put, gv))

        return jax.jit(step, donate_argnums=0, static_argnames="shape")


def _dpa(implementation: str):
    def algo(a, q, k, v, ql, kvl, keep, causal, side, scale):
        if side == "left":
            q, k, v = a.realign(q, ql, to="right"), a.realign(k, kvl, to="right"), a.realign(v, kvl, to="right")
        out = a.jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, query_seq_lengths=ql,
                                             key_value_seq_lengths=kvl, implementation=implementation)
        return a.realign(out, ql, to="left") if side == "left" else out

    algo.__name__ = f"dpa_{implementation}"
    algo.kernel = f"jax.nn.dot_product_attention[{implementation}]"
    return algo


def _einsum(a, q, k, v, ql, kvl, keep, causal, side, scale):
    jnp = a.jnp
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    qg = q.reshape(B, Tq, Hkv, Hq // Hkv, D)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k) * scale
    readable = a.attention_allowed(ql, kvl, Tq, Tk, side, causal) | ~keep[:, :, None]
    p = a.jax.nn.softmax(jnp.where(readable[:, None, None], s, -jnp.inf), axis=-1)
    return jnp.einsum("bhgqk,bkhd->bqhgd", p, v).reshape(B, Tq, Hq, D)


_einsum.kernel = "xla-einsum"


def _xla_dpa_ok(a, **spec) -> str | None:
    if spec.get("dtype") == "float16" and spec.get("device", "cpu") == "cpu":
        return (f"jax {a.version} dot_product_attention(xla) has no float16 kernel on CPU (its dot_general asks "
                "for precision F16_F16_F32, which the CPU backend rejects, whatever the matmul precision); "
                "'einsum' runs there")
    if spec.get("dtype") == "float64":
        return (f"jax {a.version} dot_product_attention computes its softmax in float32 (the XLA path casts the "
                "logits), so float64 inputs give float32-accurate results")
    return None


def _cudnn_ok(a, **spec) -> str | None:
    if spec.get("device", "cpu") != "gpu":
        return "implementation='cudnn' runs on CUDA GPUs only"
    if spec.get("dtype") not in ("float16", "bfloat16"):
        return f"cuDNN fused attention takes float16/bfloat16 only, not {spec.get('dtype')}"
    return None


def _unit(name: str, algo, doc: str, supports=None) -> Strategy:
    fwd = lambda a, q, k, v, ql, kvl, causal, side, scale, device: a._attn_call(  # noqa: E731
        algo, q, k, v, ql, kvl, None, causal, side, scale, device)[0]
    vjp = lambda a, q, k, v, ql, kvl, cot, causal, side, scale, device: a._attn_call(  # noqa: E731
        algo, q, k, v, ql, kvl, cot, causal, side, scale, device)
    extra = {"supports": supports} if supports else {}
    return Strategy(name, fwd, vjp, doc=doc, kernel=algo.kernel, **extra)


#: "bucketed" cost model in (row, query, key) scores, fitted on this 2-core CPU (dot_product_attention[xla],
#: Hq=8 over Hkv=2, Dh=64, forward + backward, float32: ~90 ns a score, ~1 us a (row, step), ~0.46 ms a call);
#: bucket shapes on the ladders, a bounded set (new batches still compile new ones for a while: 8-10 over 3 fresh
#: batches here, `harness.bench.stream_compiles`; the planner's count over 300 more, B=64 T=128: lognormal 27, 0 in
#: the last 100, zipf 53 / 4, KJV verses 33 / 3, `Strategy.programs`; reusing a compiled shape up to 2x larger
#: halved the compiles over 40 batches, 42 -> 22, but cost 40% in warm time: not done); per device (a GPU takes the
#: CPU's).
#: Still right with each bucket in one jitted call (`_attn_buckets`): a bucket costing 2000-10000 scores, or up to 8
#: buckets, all within 5% interleaved (lognormal 26.0-26.5 ms, zipf 10.2-11.2 ms)
BUCKET_COST = {"cpu": dict(call_cost=5000.0, token_cost=10.0, ladders=True)}

#: the kernel each strategy runs, by strategy name (the buckets run them too)
ALGOS = {"xla_dpa": _dpa("xla"), "cudnn_dpa": _dpa("cudnn"), "einsum": _einsum}

STRATEGIES = strategy_table(
    _unit("xla_dpa", ALGOS["xla_dpa"], "jax.nn.dot_product_attention(xla) with query/key_value_seq_lengths",
          _xla_dpa_ok),
    _unit("cudnn_dpa", ALGOS["cudnn_dpa"], "jax.nn.dot_product_attention(cudnn) with seq lengths", _cudnn_ok),
    _unit("einsum", _einsum, "masked einsum + jax.nn.softmax, GQA as a reshape"),
    bucketed_unit(BUCKET_COST, graph=lambda a, inner, *args: a._attn_buckets(inner, *args),
                  graph_programs=lambda plan: {("bucket", b.batch, b.q_steps, b.kv_steps) for b in plan}),
)


# -- native behaviours: the primitive called the obvious way, without varlen's fixes -----------------------------
def _native(a, fn, q, k, v, cotangent, device, kernel: str) -> dict[str, Any]:
    """fn(q, k, v) -> out, eagerly, as a user would; with a cotangent, `jax.vjp` gradients too."""
    q, k, v = (a.asarray(x, device) for x in (q, k, v))
    if cotangent is None:
        return {"outputs": fn(q, k, v), "kernel": kernel}
    out, pullback = a.jax.vjp(fn, q, k, v)
    grads = pullback(a.asarray(cotangent, device).astype(out.dtype))
    return {"outputs": out, "grads": dict(zip("qkv", grads, strict=True)), "kernel": kernel}


def _key_mask(a, k, kv_lengths, side):
    """[B, 1, 1, Tk] bool, True = attend, from the lengths on `side`."""
    return a.valid(a.jnp.asarray(np.asarray(kv_lengths)), k.shape[1], side)[:, None, None, :]


def _dpa_lengths(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
    """dot_product_attention(xla) with query/key_value_seq_lengths (which assume right padding)."""
    ql, kvl = (a.jnp.asarray(np.asarray(n, np.int32)) for n in (q_lengths, kv_lengths))
    fn = lambda q, k, v: a.jax.nn.dot_product_attention(  # noqa: E731
        q, k, v, is_causal=causal, query_seq_lengths=ql, key_value_seq_lengths=kvl, implementation="xla")
    return _native(a, fn, q, k, v, cotangent, device, "jax.nn.dot_product_attention[xla]")


def _dpa_mask(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
    """dot_product_attention(xla) with a boolean key mask (and is_causal), padding values left as they are."""
    fn = lambda q, k, v: a.jax.nn.dot_product_attention(  # noqa: E731
        q, k, v, mask=_key_mask(a, k, kv_lengths, side), is_causal=causal, implementation="xla")
    return _native(a, fn, q, k, v, cotangent, device, "jax.nn.dot_product_attention[xla]")


def _dpa_bias(fill: float, dtype: str | None = None):
    def native(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
        jnp = a.jnp
        if dtype is not None:
            q, k, v = (a.asarray(x, device).astype(dtype) for x in (q, k, v))
            cotangent = None

        def fn(q, k, v):
            bias = jnp.where(_key_mask(a, k, kv_lengths, side), 0.0, fill).astype(q.dtype)
            return a.jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=causal, implementation="xla")

        res = _native(a, fn, q, k, v, cotangent, device, "jax.nn.dot_product_attention[xla]")
        if dtype is not None:
            res["baseline"] = _dpa_mask(a, q, k, v, q_lengths, kv_lengths, None, causal, side, device)["outputs"]
        return res

    return native


def _mean_pool(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
    """out.mean(axis=1) over the dot_product_attention outputs, padded query rows included."""
    res = _dpa_lengths(a, q, k, v, q_lengths, kv_lengths, None, causal, side, device)
    return {**res, "pooled": res["outputs"].mean(axis=1)}


NATIVES = {
    "keyless_row": _dpa_lengths,
    "keyless_row_mask": _dpa_mask,
    "nan_padding_bool_mask": _dpa_mask,
    "additive_neg_inf_mask": _dpa_bias(-np.inf),
    "additive_neg1e9_float16": _dpa_bias(-1e9, "float16"),
    "additive_neg1e9_bfloat16": _dpa_bias(-1e9, "bfloat16"),
    "seq_lengths_left_padding": _dpa_lengths,
    "causal_left_padding": _dpa_mask,
    "mean_pool_padded_rows": _mean_pool,
}
