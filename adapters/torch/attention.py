"""PyTorch masked attention: five strategy units on one skeleton, and the native behaviours people hit.

Skeleton (every strategy): inputs become tensors on the device (leaves when gradients are wanted); padded steps
are replaced by 0 with `torch.where` before any product, so NaN/inf in padding can never reach a score whose
weight is later 0 (0 * NaN is NaN, forward and backward); the kernel runs; its output is selected to exactly 0 at
padded query rows and at valid query rows that have no valid key (`torch.where`, whose backward sends nothing
into the discarded rows). Rows that will be discarded are given every key to read, so no kernel ever sees a fully
masked row (whose NaN would otherwise poison the backward pass of the whole batch).

- "sdpa" (default): `F.scaled_dot_product_attention` with a boolean [B, 1, Tq, Tk] mask built by the shared
  `Adapter.attention_allowed`, `enable_gqa` for grouped-query heads. Kernel: the backend PyTorch picks for these
  inputs (`torch._fused_sdp_choice`), e.g. "sdpa-flash_attention" (the CPU flash kernel takes masks and float64).
- "njt": nested jagged tensors (`torch.nested.nested_tensor_from_jagged`) built from the valid steps only, SDPA
  with no mask at all. torch 2.13 has no causal jagged SDPA ("No viable backend") and no GQA broadcast between
  jagged q and k (kv heads are `repeat_interleave`d, whose backward sums the group); a keyless row reads one
  zeroed padding key (a zero-length key row crashed its CPU path on some batches). On CPU it runs the math
  backend per sequence ("njt-math"); on CUDA the fused varlen kernels ("njt-fused").
- "flex": `flex_attention` (compiled) with a `BlockMask` from the same allowed mask. GPU only: compiling it with
  inductor on this 2-core CPU took ~30 s for one small shape (torch 2.13), too slow for a per-call strategy.
- "varlen_flash": `torch.nn.attention.varlen.varlen_attn` on packed valid tokens with `cu_seqlens`; CUDA flash
  kernels, float16/bfloat16 only.
- "bucketed": the rows sorted by q_len x kv_len into a few buckets, each trimmed and run by the default strategy
  above, results gathered back (`adapters.attention_buckets`; `BUCKET_COST` below is its cost model).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from adapters.attention_buckets import bucketed_unit
from adapters.spec import AttnOut, Strategy, strategy_table


class TorchAttention:
    """The attention machinery of the torch adapter (mixed into `TorchAdapter`)."""

    def _attn_tensors(self, q, k, v, q_lengths, kv_lengths, side, device, grad: bool):
        """(leaves q/k/v, sanitised q/k/v, native lengths, q valid [B, Tq], rows kept [B, Tq])."""
        torch = self.torch
        leaves = [self.asarray(x, device) for x in (q, k, v)]
        if grad:
            leaves = [x.detach().requires_grad_(True) for x in leaves]
        dev = leaves[0].device
        ql, kvl = (torch.as_tensor(np.asarray(n), device=dev) for n in (q_lengths, kv_lengths))
        q_valid = self.valid(ql, q.shape[1], side)
        kv_valid = self.valid(kvl, k.shape[1], side)
        zero = torch.zeros((), dtype=leaves[0].dtype, device=dev)
        clean = [torch.where(m[:, :, None, None], x, zero) for x, m in zip(leaves, (q_valid, kv_valid, kv_valid),
                                                                            strict=True)]
        keep = q_valid & (kvl > 0)[:, None]
        return leaves, clean, ql, kvl, q_valid, keep

    def _attn_run(self, impl, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, scale, device):
        """Forward (cotangent None, no autograd) or forward + `torch.autograd.grad` of sum(out * cotangent)."""
        torch = self.torch
        grad = cotangent is not None
        with torch.enable_grad() if grad else torch.no_grad():
            leaves, clean, ql, kvl, q_valid, keep = self._attn_tensors(q, k, v, q_lengths, kv_lengths, side,
                                                                       device, grad)
            if not keep.any():  # no query reads a key: nothing runs, everything is 0
                out, kernel = clean[0] * 0, "none"
            else:
                out, kernel = impl(self, *clean, ql, kvl, q_valid, keep, causal, side, scale)
            out = torch.where(keep[:, :, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        if not grad:
            return AttnOut(out, kernel), None
        cot = self.asarray(cotangent, device).to(out.dtype)
        grads = torch.autograd.grad(out, leaves, cot, allow_unused=True) if out.requires_grad else [None] * 3
        grads = {n: torch.zeros_like(x) if g is None else g for n, x, g in zip("qkv", leaves, grads, strict=True)}
        return AttnOut(out.detach(), kernel), grads

    def _attn_readable(self, ql, kvl, Tq, Tk, causal, side, keep):
        """bool [B, Tq, Tk]: the contract's allowed keys; discarded rows read every key (never a fully masked row)."""
        return self.attention_allowed(ql, kvl, Tq, Tk, side, causal) | ~keep[:, :, None]

    def _sdpa_kernel(self, q, k, v, mask, scale, gqa) -> str:
        """The SDPA backend PyTorch picks for these inputs (what actually runs)."""
        torch = self.torch
        from torch.nn.attention import SDPBackend

        choice = torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=scale, enable_gqa=gqa)
        return f"sdpa-{SDPBackend(choice).name.lower()}"

    def _varlen_values(self, x, valid, lengths):
        """(valid steps packed [N, H, Dh] in row order, int64 offsets [B+1]) for jagged / cu_seqlens kernels."""
        offsets = self.torch.nn.functional.pad(self.torch.cumsum(lengths, 0), (1, 0))
        return x[valid], offsets

    def _unpack_rows(self, values, valid, like):
        """Packed rows [N, H, Dh] back into a zero-padded [B, T, H, Dh] aligned like `valid`."""
        return like.new_zeros((*valid.shape, *values.shape[1:])).index_put((valid,), values)


def _sdpa(a, q, k, v, ql, kvl, q_valid, keep, causal, side, scale):
    F = a.torch.nn.functional
    mask = a._attn_readable(ql, kvl, q.shape[1], k.shape[1], causal, side, keep)[:, None]
    gqa = q.shape[2] != k.shape[2]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2), a._sdpa_kernel(qt, kt, vt, mask, scale, gqa)


def _njt(a, q, k, v, ql, kvl, q_valid, keep, causal, side, scale):
    torch = a.torch
    group = q.shape[2] // k.shape[2]
    # A keyless row reads one key: a padded step, 0 in the clean k and v, its output discarded (`keep`). Given a
    # zero-length key row, torch 2.13's CPU math path for jagged SDPA crashed on some batches (RuntimeError
    # "setStorage: ... out of bounds", e.g. query lengths (2, 2) with key lengths (1, 0)).
    kvl = kvl.clamp(min=1)
    kv_valid = a.valid(kvl, k.shape[1], side)
    nested = []
    for x, valid, n, rep in ((q, q_valid, ql, 1), (k, kv_valid, kvl, group), (v, kv_valid, kvl, group)):
        values, offsets = a._varlen_values(x, valid, n)
        if rep > 1:
            values = values.repeat_interleave(rep, dim=1)
        nested.append(torch.nested.nested_tensor_from_jagged(values, offsets).transpose(1, 2))
    with warnings.catch_warnings():  # the CPU math path builds a strided nested tensor ("prototype" warning)
        warnings.simplefilter("ignore", UserWarning)
        out = torch.nn.functional.scaled_dot_product_attention(*nested, scale=scale)
    kernel = "njt-fused" if q.is_cuda else "njt-math"
    return a._unpack_rows(out.transpose(1, 2).values(), q_valid, q), kernel


def _flex(a, q, k, v, ql, kvl, q_valid, keep, causal, side, scale):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
    readable = a._attn_readable(ql, kvl, Tq, Tk, causal, side, keep)
    block = create_block_mask(lambda b, h, i, j: readable[b, i, j], B, None, Tq, Tk, device=q.device)
    if not hasattr(a, "_flex_compiled"):
        a._flex_compiled = a.torch.compile(flex_attention)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    out = a._flex_compiled(qt, kt, vt, block_mask=block, scale=scale, enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2), "flex-triton"


def _varlen_flash(a, q, k, v, ql, kvl, q_valid, keep, causal, side, scale):
    from torch.nn.attention.varlen import varlen_attn

    kv_valid = a.valid(kvl, k.shape[1], side)
    qv, cu_q = a._varlen_values(q, q_valid, ql)
    kv, cu_k = a._varlen_values(k, kv_valid, kvl)
    vv, _ = a._varlen_values(v, kv_valid, kvl)
    out = varlen_attn(qv, kv, vv, cu_q.int(), cu_k.int(), int(ql.max()), int(kvl.max()), scale=scale,
                      window_size=(-1, 0) if causal else (-1, -1), enable_gqa=q.shape[2] != k.shape[2])
    return a._unpack_rows(out, q_valid, q), "flash-varlen"


# -- preconditions ----------------------------------------------------------------------------------------------
def _njt_ok(a, **spec) -> str | None:
    if spec.get("causal"):
        return f"torch {a.torch.__version__} has no causal SDPA on jagged nested tensors (no viable backend)"
    return None


def _flex_ok(a, **spec) -> str | None:
    if spec.get("device", "cpu") != "gpu":
        return ("flex_attention needs torch.compile; on this CPU inductor took ~30 s per shape (torch 2.13), too "
                "slow for a per-call strategy: GPU only")
    if spec.get("dtype") == "float64":
        return "flex_attention's Triton kernels do not take float64"
    if spec.get("head_dim") is not None and spec["head_dim"] < 16:
        return f"flex_attention's Triton kernels need a head size of at least 16, got {spec['head_dim']}"
    return None


def _varlen_flash_ok(a, **spec) -> str | None:
    if spec.get("device", "cpu") != "gpu":
        return "varlen_attn (flash, cu_seqlens) is a CUDA kernel"
    if spec.get("dtype") not in ("float16", "bfloat16"):
        return f"flash varlen attention takes float16/bfloat16 only, not {spec.get('dtype')}"
    return None


def _unit(name: str, impl, doc: str, supports=None, kernel: str = "") -> Strategy:
    fwd = lambda a, q, k, v, ql, kvl, causal, side, scale, device: a._attn_run(  # noqa: E731
        impl, q, k, v, ql, kvl, None, causal, side, scale, device)[0]
    vjp = lambda a, q, k, v, ql, kvl, cot, causal, side, scale, device: a._attn_run(  # noqa: E731
        impl, q, k, v, ql, kvl, cot, causal, side, scale, device)
    extra = {"supports": supports} if supports else {}
    return Strategy(name, fwd, vjp, doc=doc, kernel=kernel, **extra)


#: "bucketed" cost model in (row, query, key) scores, per device. CPU: fitted on this 2-core CPU (SDPA, Hq=8 over
#: Hkv=2, Dh=64, forward + backward, float32: ~56 ns a score, ~2.4 us a (row, step), ~0.35 ms a call); eager, so no
#: ladders and up to 8 buckets (no compile per shape; 8 measured 1.2x faster than 4 at 70% padding, 1.7x at 91%).
#: GPU: on an H200 (torch 2.11, same shapes, B=32 T=512) one SDPA call of the padded batch took 4.0 ms (8.4M
#: scores: <= 0.5 ns a score) and the CPU's plan, 8 buckets, 27-29 ms: ~3.3 ms a call whatever its size, i.e. a call
#: costs ~7M scores (the (row, step) cost is not separable there; the CPU's is kept)
BUCKET_COST = {"cpu": dict(call_cost=6000.0, token_cost=40.0, ladders=False, max_buckets=8),
               "gpu": dict(call_cost=7e6, token_cost=40.0, ladders=False, max_buckets=8)}

STRATEGIES = strategy_table(
    _unit("sdpa", _sdpa, "F.scaled_dot_product_attention, boolean mask, enable_gqa"),
    _unit("njt", _njt, "nested jagged tensors (valid steps only) + SDPA without a mask", _njt_ok),
    _unit("flex", _flex, "compiled flex_attention with a BlockMask from the lengths", _flex_ok, "flex-triton"),
    _unit("varlen_flash", _varlen_flash, "torch.nn.attention.varlen.varlen_attn (cu_seqlens)", _varlen_flash_ok,
          "flash-varlen"),
    bucketed_unit(BUCKET_COST),
)


# -- native behaviours: the primitive called the obvious way, without varlen's fixes -----------------------------
def _native(a, fn, q, k, v, cotangent, device) -> dict[str, Any]:
    """Run fn(q, k, v) -> (out [B, Tq, Hq, Dh], kernel) as a user would; with a cotangent, autograd gradients."""
    torch = a.torch
    grad = cotangent is not None
    leaves = [a.asarray(x, device).detach().requires_grad_(grad) for x in (q, k, v)]
    with torch.enable_grad():
        out, kernel = fn(*leaves)
        result: dict[str, Any] = {"outputs": out.detach(), "kernel": kernel}
        if grad and out.requires_grad:
            g = torch.autograd.grad(out, leaves, a.asarray(cotangent, device).to(out.dtype), allow_unused=True)
            result["grads"] = {n: torch.zeros_like(x) if gi is None else gi for n, x, gi in zip("qkv", leaves, g,
                                                                                                 strict=True)}
    return result


def _key_mask(a, q, k, kv_lengths, side, causal):
    """The mask a user writes: [B, 1, 1 or Tq, Tk], True = attend, keys by validity (and causal by index)."""
    torch = a.torch
    kvl = torch.as_tensor(np.asarray(kv_lengths), device=q.device)
    mask = a.valid(kvl, k.shape[1], side)[:, None, None, :]
    if causal:
        Tq, Tk = q.shape[1], k.shape[1]
        mask = mask & torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
    return mask


def _bhtd(*xs):
    return [x.transpose(1, 2) for x in xs]


def _sdpa_bool(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device, math=False):
    """SDPA with the user's boolean key mask, NaN in padding left as is, keyless rows not fixed."""
    F = a.torch.nn.functional

    def fn(q, k, v):
        mask = _key_mask(a, q, k, kv_lengths, side, causal)
        qt, kt, vt = _bhtd(q, k, v)
        gqa = q.shape[2] != k.shape[2]
        if math:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=gqa)
            return out.transpose(1, 2), "sdpa-math"
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=gqa)
        return out.transpose(1, 2), a._sdpa_kernel(qt, kt, vt, mask, None, gqa)

    return _native(a, fn, q, k, v, cotangent, device)


def _sdpa_additive(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device, fill=-np.inf):
    """SDPA with an additive float mask (0 where valid, `fill` elsewhere) in the inputs' dtype."""
    torch, F = a.torch, a.torch.nn.functional

    def fn(q, k, v):
        mask = _key_mask(a, q, k, kv_lengths, side, causal)
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, fill)
        qt, kt, vt = _bhtd(q, k, v)
        gqa = q.shape[2] != k.shape[2]
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, enable_gqa=gqa)
        return out.transpose(1, 2), a._sdpa_kernel(qt, kt, vt, bias, None, gqa)

    return _native(a, fn, q, k, v, cotangent, device)


def _half_neg1e9(dtype):
    """Additive -1e9 mask in `dtype` against the boolean mask in the same dtype (forward only)."""

    def native(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
        cast = lambda x: a.asarray(x, device).to(getattr(a.torch, dtype))  # noqa: E731
        q, k, v = cast(q), cast(k), cast(v)
        add = _sdpa_additive(a, q, k, v, q_lengths, kv_lengths, None, causal, side, device, fill=-1e9)
        base = _sdpa_bool(a, q, k, v, q_lengths, kv_lengths, None, causal, side, device)
        return {**add, "baseline": base["outputs"]}

    native.__doc__ = f"additive -1e9 mask in {dtype} vs the boolean mask in {dtype}"
    return native


def _mha(swapped: bool):
    """nn.MultiheadAttention with identity projections (so it is plain attention), key_padding_mask given as the
    contract's valid mask (True = valid) when `swapped`, else correctly (True = ignore)."""

    def native(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
        torch = a.torch

        def fn(q, k, v):
            B, Tq, H, D = q.shape
            E = H * D
            mha = torch.nn.MultiheadAttention(E, H, bias=False, batch_first=True, dtype=q.dtype, device=q.device)
            with torch.no_grad():
                mha.in_proj_weight.copy_(torch.eye(E).repeat(3, 1))
                mha.out_proj.weight.copy_(torch.eye(E))
            kvl = torch.as_tensor(np.asarray(kv_lengths), device=q.device)
            valid = a.valid(kvl, k.shape[1], side)
            out, _ = mha(*(x.reshape(B, x.shape[1], E) for x in (q, k, v)),
                         key_padding_mask=valid if swapped else ~valid, need_weights=False)
            return out.reshape(B, Tq, H, D), "nn.MultiheadAttention"

        return _native(a, fn, q, k, v, cotangent, device)

    return native


def _mean_pool(a, q, k, v, q_lengths, kv_lengths, cotangent, causal, side, device):
    """out.mean(dim=1) over the SDPA outputs, padded query rows included (the usual pooling line)."""
    res = _sdpa_bool(a, q, k, v, q_lengths, kv_lengths, None, causal, side, device)
    return {**res, "pooled": res["outputs"].mean(dim=1)}


NATIVES = {
    "keyless_row": _sdpa_bool,
    "keyless_row_math": lambda a, *args, **kw: _sdpa_bool(a, *args, **kw, math=True),
    "nan_padding_bool_mask": _sdpa_bool,
    "additive_neg_inf_mask": _sdpa_additive,
    "additive_neg1e9_float16": _half_neg1e9("float16"),
    "additive_neg1e9_bfloat16": _half_neg1e9("bfloat16"),
    "mha_key_padding_mask": _mha(swapped=False),
    "mha_polarity_swapped": _mha(swapped=True),
    "causal_left_padding": _sdpa_bool,
    "mean_pool_padded_rows": _mean_pool,
}
