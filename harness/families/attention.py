"""The attention family: masked (grouped-query, causal, cross) attention strategies against the reference, the
native behaviours of each framework's primitive called the obvious way, and the benchmark cases.

Imports no framework: everything goes through the adapters handed in.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from adapters.spec import SIDES, valid_mask
from harness.compare import close, max_abs_err
from harness.data import rng_for
from harness.families.base import Prepared, checked, error_text, record, use_strategy
from harness.profiles import case_lengths, padding_fraction
from harness.tolerances import tolerance

NAME = "attention"
STRATEGY_FAMILY = "attention"
OPS = {"attention_forward": "attention forward", "attention_forward_backward": "attention fwd+bwd"}
#: bench sizes (the headline point is B=32, T=512 with these); grouped-query 8 query heads over 2 kv heads
HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64
#: check sizes: unsorted lengths, a zero-length row, every row padded; cross-attention adds valid queries with no
#: valid key (the first and last rows) and a row with one key. The keys were (3, 2, 0, 4, 7) until 2026-12-07: one
#: keyless row, on which torch's "njt" passed while it crashed on other batches with keyless rows (torch's CPU
#: jagged SDPA; found by a random search against the reference)
Q_LENGTHS, TQ = (5, 0, 3, 1, 4), 6
KV_LENGTHS, TK = (0, 3, 1, 4, 0), 7
HEAD_SHAPES = ((2, 2), (8, 2))  # (Hq, Hkv): Hq = Hkv, and Hq = 4 Hkv
#: check head size: 16, the smallest flex_attention lowers on a GPU (inductor: NYI below 16, seen on an H200 with
#: torch 2.11: every flex cell of the check errored at 3)
CHECK_DH = 16
FILLS = (np.nan, np.inf)  # what padded q/k/v hold


def expand(base: dict, grid: dict, strategies: list[str]) -> list[dict]:
    """One case per strategy at this grid point: self-attention, Hq=8 over Hkv=2 heads of size 64, not causal."""
    return [{**base, "strategy": s, "heads": grid.get("heads", HEADS), "kv_heads": grid.get("kv_heads", KV_HEADS),
             "head_dim": grid.get("head_dim", HEAD_DIM), "causal": grid.get("causal", False)} for s in strategies]


# -- inputs ------------------------------------------------------------------------------------------------------
def qkv(q_lengths, kv_lengths, Tq: int, Tk: int, Hq: int, Hkv: int, Dh: int, *, side: str = "right",
        dtype: str = "float32", fill: Any = np.nan, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(q, k, v, cotangent): standard normal at valid steps, `fill` in padding ("random": finite noise there too,
    what a reused buffer holds); the cotangent is random everywhere (its padded entries must be ignored)."""
    rng = rng_for(seed, 3)
    q = rng.standard_normal((len(q_lengths), Tq, Hq, Dh))
    k, v = (rng.standard_normal((len(q_lengths), Tk, Hkv, Dh)) for _ in range(2))
    cot = rng.standard_normal(q.shape)
    if not (isinstance(fill, str) and fill == "random"):
        q[~valid_mask(np.asarray(q_lengths), Tq, side)] = fill
        for x in (k, v):
            x[~valid_mask(np.asarray(kv_lengths), Tk, side)] = fill
    return tuple(x.astype(dtype) for x in (q, k, v, cot))


def check_case(cross: bool, Hq: int, Hkv: int, side: str, dtype: str, fill: Any = np.nan, seed: int = 0):
    """The gate case: (q, k, v, cot, q_lengths, kv_lengths or None for self-attention)."""
    ql = np.array(Q_LENGTHS)
    kvl = np.array(KV_LENGTHS) if cross else ql
    q, k, v, cot = qkv(ql, kvl, TQ, TK if cross else TQ, Hq, Hkv, CHECK_DH, side=side, dtype=dtype, fill=fill,
                       seed=seed)
    return q, k, v, cot, ql, kvl if cross else None


def reference(ref, q, k, v, ql, kvl, cot, **kw):
    """The float64 reference result of a case (inputs upcast)."""
    up = lambda a: np.asarray(a).astype("float64")  # noqa: E731
    return ref.attention_vjp(up(q), up(k), up(v), ql, kvl, up(cot), **kw)


def compare_attention(fw, out, grads, want_out, want_grads, q_valid, kv_valid, tol) -> dict[str, tuple[bool, float]]:
    """quantity -> (equivalent, max_abs_err) for one attention_vjp result against the reference's."""
    n = fw.to_numpy
    res = {"outputs": close(n(out.outputs), want_out.outputs, tol)}
    for name in "qkv":
        res[f"grad_{name}"] = close(n(grads[name]), want_grads[name], tol)
    stray = max(np.abs(n(out.outputs)[~q_valid]).max(initial=0), np.abs(n(grads["q"])[~q_valid]).max(initial=0),
                *(np.abs(n(grads[x])[~kv_valid]).max(initial=0) for x in "kv"))
    res["padding_zero"] = (bool(stray == 0), float(stray) if np.isfinite(stray) else float("inf"))
    return res


# -- check records -----------------------------------------------------------------------------------------------
def check_records(fw, ref, device: str = "cpu", dtypes=("float32", "float64"), strategies=None) -> Iterator[dict]:
    """The strategies' equivalence cells, then the native behaviours' verdicts; `strategies`: only those
    strategies' cells (`varlen check --strategy`), no verdicts."""
    yield from strategy_records(fw, ref, device, dtypes, strategies)
    if strategies is None:
        yield from native_records(fw, ref, device)


def _variants():
    """(cross, causal): self, self causal, cross (causal is self-attention only)."""
    return ((False, False), (False, True), (True, False))


def strategy_records(fw, ref, device: str = "cpu", dtypes=("float32", "float64"), strategies=None) -> Iterator[dict]:
    """Every strategy x dtype x side x (self, causal, cross) x head shape x padding fill, against the reference."""
    for dtype, side, (cross, causal), (Hq, Hkv), fill in itertools.product(dtypes, SIDES, _variants(), HEAD_SHAPES,
                                                                           FILLS):
        q, k, v, cot, ql, kvl = check_case(cross, Hq, Hkv, side, dtype, fill)
        want_out, want_grads = reference(ref, q, k, v, ql, kvl, cot, causal=causal, side=side)
        q_valid = valid_mask(ql, q.shape[1], side)
        kv_valid = valid_mask(ql if kvl is None else kvl, k.shape[1], side)
        spec = dict(device=device, dtype=dtype, causal=causal, gqa=Hq != Hkv, side=side, cross=cross,
                    head_dim=CHECK_DH)
        case = f"{'cross' if cross else 'self'}{'_causal' if causal else ''}_h{Hq}x{Hkv}_{fill}_padding"
        for strategy in checked(fw.strategies("attention", **spec), strategies):
            base = dict(kind="strategy", op="attention", name=strategy, case=case, side=side, dtype=dtype)
            try:
                out, grads = fw.attention_vjp(*(fw.asarray(x, device) for x in (q, k, v)), ql, kvl, cot,
                                              causal=causal, side=side, strategy=strategy, device=device)
                res = compare_attention(fw, out, grads, want_out, want_grads, q_valid, kv_valid,
                                        tolerance(dtype, device))
                kernel, error = out.kernel, None
            except Exception as e:  # noqa: BLE001 - a crash is a failed cell, reported, not a lost run
                res, kernel, error = {"error": (False, float("inf"))}, "", f"{type(e).__name__}: {e}"[:300]
            for quantity, (ok, err) in res.items():
                yield record(fw, device, quantity=quantity, equivalent=ok, max_abs_err=err, kernel=kernel,
                             **({"error": error} if error else {}), **base)


# -- native behaviours -------------------------------------------------------------------------------------------
#: native-behaviour case name -> (side, causal, q_lengths, kv_lengths or None, T, Tk, padding fill)
NATIVE_CASES = {
    "keyless": ("right", False, (4, 3, 2), (4, 0, 2), 4, 4, "random"),
    "nan_padding": ("right", False, (4, 3, 2), (4, 2, 1), 4, 4, np.nan),
    "causal_left": ("left", True, (4, 2, 0, 3), None, 4, 4, "random"),
    "left_lengths": ("left", False, (4, 2, 3), None, 4, 4, "random"),
    "pool": ("right", False, (4, 2, 3), None, 4, 4, "random"),
}
#: native name -> (its case, one sentence on what it shows)
NATIVES = {
    "keyless_row": ("keyless", "a valid query whose row has no valid key, boolean key mask, nothing fixed: the "
                               "framework's own convention (0, NaN or mean(V)) for a fully masked softmax row"),
    "keyless_row_math": ("keyless", "the same keyless row through PyTorch's math SDPA backend"),
    "keyless_row_mask": ("keyless", "the keyless row through an explicit boolean mask instead of seq lengths"),
    "nan_padding_bool_mask": ("nan_padding", "NaN in padded keys/values under a boolean mask: masking the score "
                                             "does not stop 0 * NaN in the weighted sum or its gradient"),
    "additive_neg_inf_mask": ("keyless", "an additive 0/-inf mask: exact where a row has a key; a row with none "
                                         "is -inf - -inf, NaN unless the kernel guards it"),
    "additive_neg1e9_float16": ("keyless", "an additive -1e9 mask in float16 against the boolean mask in "
                                           "float16: -1e9 is beyond float16's range (max 65504), so building the "
                                           "mask either raises (PyTorch refuses the conversion) or rounds the fill "
                                           "to -inf (a keyless row is then -inf - -inf = NaN)"),
    "additive_neg1e9_bfloat16": ("keyless", "an additive -1e9 mask in bfloat16 against the boolean mask in "
                                            "bfloat16: a finite fill turns a keyless row into mean(V)"),
    "mha_key_padding_mask": ("keyless", "nn.MultiheadAttention with key_padding_mask (True = ignore) given "
                                        "correctly"),
    "mha_polarity_swapped": ("keyless", "nn.MultiheadAttention given the SDPA convention (True = attend) as "
                                        "key_padding_mask: it attends to the padding only"),
    "seq_lengths_left_padding": ("left_lengths", "query/key_value_seq_lengths on left-padded data: the lengths "
                                                 "mean a valid prefix, so the wrong steps are read"),
    "causal_left_padding": ("causal_left", "a causal mask by padded index with left padding: q and k shift "
                                           "alike, so valid rows are right; padded rows see no key"),
    "mean_pool_padded_rows": ("pool", "mean over time of the attention outputs, padded query rows included (and "
                                      "divided by T)"),
}
NATIVE_H, NATIVE_DH = 2, 3
#: native name -> what to use instead, where it is more specific than varlen's exact strategy
NATIVE_FIXES = {
    "mha_polarity_swapped": "key_padding_mask=~valid (True = ignore), or varlen's exact strategy",
    "seq_lengths_left_padding": "right padding with the seq lengths, a boolean key mask, or varlen's exact strategy",
    "mean_pool_padded_rows": "sum over valid query rows / q_lengths (varlen's masked_mean)",
    "additive_neg1e9_float16": "a boolean mask (or a fill within float16's range, e.g. finfo.min), or varlen's "
                               "exact strategy",
}
#: quantities recorded as information only (`judged=False`, see `harness.families.base.record`): what a native
#: leaves in padded query rows. Every downstream consumer (a masked loss, a masked pooling) ignores those rows, so
#: they never make the native wrong; the native is judged on the rows it is about (valid rows with a key, keyless
#: rows) and on the gradients. The contract's exact strategies still give 0 there (that is checked on them).
INFO_QUANTITIES = ("padded_rows",)
#: what records written before 2026-12-06 called "padded_rows": quantity "outputs_padded", with no `judged` field and
#: `equivalent` False wherever padded rows held anything but 0; the report reads them as information, as the
#: current records are (`harness.report.tables.judged_rows`)
LEGACY_INFO_QUANTITIES = ("outputs_padded",)


def _classify(rows: np.ndarray, v_mean: np.ndarray) -> str:
    """What a framework returned for rows that should be 0: "0", "NaN", "mean(V)" or "other"."""
    if rows.size == 0:
        return "none"
    if np.isnan(rows).any():
        return "NaN"
    if not rows.any():
        return "0"
    if np.allclose(rows, np.broadcast_to(v_mean, rows.shape), atol=3e-2):  # loose enough for bfloat16
        return "mean(V)"
    return "other"


def native_case(name: str, dtype: str = "float32"):
    """(case name, inputs for `fw.native`) of native behaviour `name`. The cotangent is 0 at padded query rows, as
    a user's masked loss makes it, so the gradients judge the attention alone."""
    case = NATIVES.get(name, ("keyless", ""))[0]
    side, causal, ql, kvl, T, Tk, fill = NATIVE_CASES[case]
    ql = np.array(ql)
    kv = ql if kvl is None else np.array(kvl)
    q, k, v, cot = qkv(ql, kv, T, Tk, NATIVE_H, NATIVE_H, NATIVE_DH, side=side, dtype=dtype, fill=fill, seed=5)
    cot[~valid_mask(ql, T, side)] = 0
    inputs = dict(q=q, k=k, v=v, q_lengths=ql, kv_lengths=kv, cotangent=cot, causal=causal, side=side)
    return case, inputs


def native_verdicts(fw, name: str, res: dict, inputs: dict, ref, tol) -> Iterator[tuple[str, bool, float, str]]:
    """(quantity, equivalent, max_abs_err, detail) for one native result against the reference: valid rows with a
    key, keyless rows (the contract's 0), the gradients (the cotangent is 0 at padded query rows, as a masked loss
    makes it), and, as information only, what padded query rows hold ("padded_rows", `INFO_QUANTITIES`)."""
    n = fw.to_numpy
    q, k, v, ql, kvl, side = (inputs[x] for x in ("q", "k", "v", "q_lengths", "kv_lengths", "side"))
    want, wgrads = reference(ref, q, k, v, ql, kvl, inputs["cotangent"], causal=inputs["causal"], side=side)
    got = n(res["outputs"]).astype(np.float64)
    q_valid = valid_mask(ql, q.shape[1], side)
    keyless = q_valid & (kvl == 0)[:, None]
    rows_ok = q_valid & ~keyless
    v_mean = np.asarray(v, np.float64).mean(axis=1)[:, None]  # mean over every (padded) step, per head
    if "pooled" in res:
        lengths = np.maximum(ql, 1)[:, None, None]
        pooled_ref = np.where(q_valid[..., None, None], want.outputs, 0).sum(axis=1) / lengths
        ok, err = close(n(res["pooled"]), pooled_ref, tol)
        yield "pooled", ok, err, "mean over all T steps vs mean over the valid steps"
        return
    if "baseline" in res:
        base = n(res["baseline"]).astype(np.float64)
        err = max_abs_err(got[rows_ok], base[rows_ok])
        yield "outputs_valid_vs_bool_mask", err == 0, err, f"same dtype ({fw.dtype_name(res['outputs'])}), valid rows"
        finite = bool(np.isfinite(got[rows_ok]).all())
        yield "outputs_finite", finite, 0.0 if finite else float("inf"), "valid query rows"
    else:
        ok, err = close(got[rows_ok], want.outputs[rows_ok], tol)
        yield "outputs_valid", ok, err, "valid query rows with at least one valid key"
    if keyless.any():
        kind = _classify(got[keyless], np.broadcast_to(v_mean, got.shape)[keyless])
        err = max_abs_err(got[keyless], np.zeros_like(got[keyless]))
        yield "outputs_keyless", kind == "0", err, f"a valid query with no valid key gives {kind}"
    padded = ~q_valid
    if padded.any():  # information only (INFO_QUANTITIES): equivalent=True, the size of what is there as its err
        kind = _classify(got[padded], np.broadcast_to(v_mean, got.shape)[padded])
        err = max_abs_err(got[padded], np.zeros_like(got[padded]))
        held = {"0": "0 (as the contract)", "NaN": "NaN (a mask multiply keeps it: 0 * NaN; select with where)",
                "mean(V)": "values (mean(V))", "other": "values"}[kind]
        yield "padded_rows", True, err, f"padded query rows hold {held}; ignored downstream, not judged"
    for x in ("qkv" if "grads" in res else ""):
        ok, err = close(n(res["grads"][x]), wgrads[x], tol)
        finite = bool(np.isfinite(n(res["grads"][x])).all())
        yield f"grad_{x}", ok, err, "finite" if finite else "contains NaN/inf"


def native_records(fw, ref, device: str = "cpu") -> Iterator[dict]:
    """Each of the framework's native behaviours, judged quantity by quantity against the reference; a native
    that raises is one record, quantity "runs", with the error; padded query rows are information (`judged`
    False, see `INFO_QUANTITIES`)."""
    for name in fw.natives("attention"):
        case, inputs = native_case(name)
        why = NATIVES.get(name, ("", name))[1]
        fix = NATIVE_FIXES.get(name) or use_strategy(fw, "attention")
        base = dict(kind="native", op="attention", name=name, case=case, side=inputs["side"], dtype="float32",
                    why=why, fix=fix)
        try:
            res = fw.native("attention", name, device=device, **inputs)
            verdicts = list(native_verdicts(fw, name, res, inputs, ref, tolerance("float32", device)))
            kernel, error = res.get("kernel", ""), None
        except Exception as e:  # noqa: BLE001 - raising is the behaviour (e.g. torch refusing -1e9 in float16)
            error = error_text(e)
            verdicts, kernel = [("runs", False, float("inf"), f"raises {error.splitlines()[0]}")], ""
        for quantity, ok, err, detail in verdicts:
            yield record(fw, device, quantity=quantity, equivalent=bool(ok), max_abs_err=float(err), kernel=kernel,
                         detail=detail, **({"error": error} if error else {}),
                         **({"judged": False} if quantity in INFO_QUANTITIES else {}), **base)


# -- benchmarks --------------------------------------------------------------------------------------------------
def attention_flops(lengths: np.ndarray, heads: int, head_dim: int, backward: bool = False) -> float:
    """4 Σ L_i² Hq Dh FLOPs (QKᵀ and PV, 2 per multiply-add) on valid tokens only; x3 with the backward pass."""
    L = np.asarray(lengths, dtype=np.float64)
    return 4.0 * float((L**2).sum()) * heads * head_dim * (3.0 if backward else 1.0)


def prepare(adapter, case: dict) -> Prepared:
    """A self-attention case (forward, or forward + backward with a random cotangent); work = attention FLOPs on
    valid tokens; ideal share Σ L_i² / (B T²)."""
    op, device, dtype = case["op"], case["device"], case["dtype"]
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} in family {NAME}; expected one of {list(OPS)}")
    B, T = case["batch"], case["max_len"]
    Hq, Hkv, Dh = case.get("heads", HEADS), case.get("kv_heads", KV_HEADS), case.get("head_dim", HEAD_DIM)
    causal = bool(case.get("causal", False))
    L = case_lengths(case, B, T)
    q, k, v, cot = (adapter.asarray(x, device) for x in qkv(L, L, T, T, Hq, Hkv, Dh, dtype=dtype, fill=0.0,
                                                           seed=case.get("seed", 0)))
    kw = dict(causal=causal, strategy=case["strategy"], device=device)
    backward = op == "attention_forward_backward"
    if backward:
        run = lambda: adapter.attention_vjp(q, k, v, L, None, cot, **kw)[0]  # noqa: E731
    else:
        run = lambda: adapter.attention(q, k, v, L, **kw)  # noqa: E731
    work = attention_flops(L, Hq, Dh, backward) / (2.0 if causal else 1.0)
    share = float((L.astype(np.float64) ** 2).sum()) / (B * T * T)
    return Prepared(run, int(L.sum()), B * T, padding_fraction(L, T), work, "gemm", share)


def programs(adapter, case: dict, lengths, compiled=()) -> set | None:
    """The compiled programs a batch of `lengths` runs in bench case `case` (`Adapter.programs`: self-attention,
    the keys' lengths the queries'); None where they do not follow the lengths."""
    return adapter.programs(NAME, case["strategy"], {"device": case["device"]}, lengths, case["max_len"],
                            vjp=case["op"] == "attention_forward_backward", compiled=compiled)


def report_sections(check_df, bench_df=None, out_path=None) -> list:
    """The native-behaviour verdicts, one row per framework / version / behaviour / quantity / kernel."""
    from harness.report.render import Section

    if check_df is None or check_df.empty or "kind" not in check_df:
        return []
    nat = check_df[(check_df["kind"] == "native") & (check_df["op"] == "attention")]
    if nat.empty:
        return []
    cols = [c for c in ("framework", "version", "kernel", "name", "quantity", "equivalent", "max_abs_err", "detail",
                        "error") if c in nat]
    sec = Section("Attention: native behaviours")
    sec.p("Each framework's attention primitive called the obvious way (no varlen fixes), judged against the "
          "float64 reference per quantity; `detail` says what came back where the contract wants 0, or what was "
          "raised. `padded_rows` is information, not a verdict: what the primitive leaves in padded query rows, "
          "which every downstream masked loss or pooling ignores.")
    return [sec.table(nat[cols].sort_values(cols[:5]).reset_index(drop=True), fail_col="equivalent")]
