"""The embedding family: embed / embedding_bag strategies against the reference, native behaviours, the recipes
people copy, and memory-bound benchmarks (ARCHITECTURE.md, "Embeddings").

Imports no framework: everything runs through the contract (`fw.embed_vjp`, `fw.native`, `fw.rnn`, ...).
"""
from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterator

import numpy as np

from adapters.spec import SIDES, RnnSpec, init_params, valid_mask
from harness.compare import close
from harness.data import rng_for
from harness.families.base import Prepared, checked, doc_why, exact, record, use_strategy
from harness.profiles import case_lengths, padding_fraction
from harness.tolerances import tolerance

NAME = "embedding"
STRATEGY_FAMILY = "embedding"
OPS = {"embed_forward_backward": "embedding lookup fwd+bwd", "embedding_bag_mean": "embedding bag (mean) fwd+bwd"}
#: bench op -> (contract op, bag mode)
CONTRACT_OP = {"embed_forward_backward": ("embed", None), "embedding_bag_mean": ("embedding_bag", "mean")}
#: bench op -> the variant a strategy's kernel name follows (`adapters.spec.Strategy.kernel_for`): the contract op
KERNEL_VARIANT = {op: contract for op, (contract, _) in CONTRACT_OP.items()}
VOCAB, EMBED_DIM = 32768, 256       # bench defaults (headline E=256)
ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
#: every (contract op, mode) a strategy is checked on
VARIANTS = (("embed", None), ("embedding_bag", "sum"), ("embedding_bag", "mean"), ("embedding_bag", "max"))
#: the `op` of this family's check records (one per contract op and bag mode)
CHECK_OPS = ("embed", "embedding_bag_sum", "embedding_bag_mean", "embedding_bag_max", "embed+rnn")

# The gate batch: unsorted, a zero-length row, every row padded; or every row empty; or the last row empty (packed
# strategies whose reductions end at the last valid token); or no padding at all (where the strategies skip their
# masks).
CASES = {"zero_length": ((4, 0, 1, 3, 4), 5), "all_empty": ((0, 0, 0), 4), "last_empty": ((2, 4, 0), 4),
         "no_padding": ((4, 4, 4), 4)}
V, E = 9, 3  # row V-1 of the gate table is NaN and never a valid id: only an unsanitised padded id can reach it
GARBAGE = (-1, V, 10**6, -(2**40))  # padded ids: negative, one past the table, far out of range

IDIOMS = {
    "mask_from_tokens": "derives the mask from tokens != 0 although 0 is a real token: that token is dropped from "
                        "the outputs, the bag and the gradient.",
    "embed_mask_rnn_final_state": "embeds, zeroes padded steps (embedding x mask), runs a plain RNN over all T steps "
                                  "and keeps its final state: the zeros are still inputs, so the state moves through "
                                  "the padding (and with left padding the valid outputs come after it).",
}
#: recipe -> what to use instead
IDIOM_FIXES = {
    "mask_from_tokens": "the mask from the true lengths (a pad id outside the vocabulary), or varlen's exact "
                        "embedding strategy",
    "embed_mask_rnn_final_state": "run the RNN with the true lengths (packed or masked: varlen's exact RNN strategy)",
}


# -- inputs ---------------------------------------------------------------------------------------------------------
def variant_op(op: str, mode: str | None) -> str:
    """The record's op: "embed" or "embedding_bag_<mode>"."""
    return op if mode is None else f"{op}_{mode}"


def tokens_for(lengths, T: int, side: str, *, seed: int = 0, vocab: int = V - 1, pad="garbage") -> np.ndarray:
    """int64 [B, T]: valid ids in [0, vocab) with a real token 0 and a repeated token in the longest row; padding
    holds `GARBAGE` ids cycled (pad="garbage") or the value `pad`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = rng_for(seed, 3)
    valid = valid_mask(lengths, T, side)
    out = np.resize(np.array(GARBAGE, np.int64), (lengths.size, T)) if pad == "garbage" else np.full(
        (lengths.size, T), pad, np.int64)
    for b, n in enumerate(lengths):
        ids = rng.integers(0, vocab, n)
        if n >= 3 and b == int(np.argmax(lengths)):
            ids[1], ids[-1] = 0, ids[0]  # a real 0 inside, and a tie for max
        out[b, valid[b]] = ids
    return out


def table_for(vocab: int = V, dim: int = E, *, seed: int = 0, dtype: str = "float64", nan_row: bool = True):
    """[V, E] standard normal; the last row NaN when `nan_row` (never a valid id in the gate case)."""
    table = rng_for(seed, 4).standard_normal((vocab, dim))
    if nan_row:
        table[-1] = np.nan
    return table.astype(dtype)


def cotangents_for(B: int, T: int, dim: int = E, *, seed: int = 0, dtype: str = "float64") -> dict:
    """Cotangents of embed [B, T, E] (NaN at every padded-or-not step is avoided: padding gets plain values) and of
    a bag [B, E]."""
    rng = rng_for(seed, 5)
    return {"embed": rng.standard_normal((B, T, dim)).astype(dtype), "bag": rng.standard_normal((B, dim)).astype(dtype)}


def run_vjp(fw, op, mode, tokens, table, lengths, cot: dict, **kw):
    """(output, grad_table) of one variant through the contract, as NumPy."""
    if op == "embed":
        out, g = fw.embed_vjp(tokens, table, lengths, cot["embed"], **kw)
    else:
        out, g = fw.embedding_bag_vjp(tokens, table, lengths, cot["bag"], mode=mode, **kw)
    return fw.to_numpy(out), fw.to_numpy(g)


# -- check records -----------------------------------------------------------------------------------------------
def check_records(fw, ref, device: str = "cpu", dtypes=("float32", "float64"), strategies=None) -> Iterator[dict]:
    """The strategies' equivalence cells, then the native behaviours' and recipes' verdicts; `strategies`: only
    those strategies' cells (`varlen check --strategy`), no verdicts."""
    for strategy in checked(fw.strategies("embedding", device=device), strategies):
        yield from strategy_records(fw, ref, strategy, device, dtypes)
    if strategies is None:
        yield from native_records(fw, ref, device)
        yield from idiom_records(fw, ref, device)


def strategy_cell(fw, ref, strategy, op, mode, case, side, dtype, device) -> dict[str, tuple[bool, float]]:
    """quantity -> (equivalent, max_abs_err): outputs and grad_table against the reference (garbage padded ids,
    a NaN table row only they could reach), padded steps exactly 0, and bit-identical results whatever the
    padded ids hold (garbage vs 0)."""
    lengths, T = CASES[case]
    L = np.array(lengths)
    tokens, table = tokens_for(L, T, side), table_for()
    cot = cotangents_for(L.size, T)
    want_out, want_g = run_vjp(ref, op, mode, tokens, table, L, cot, side=side)
    kw = dict(side=side, strategy=strategy, device=device)
    cast = {k: v.astype(dtype) for k, v in cot.items()}
    out, g = run_vjp(fw, op, mode, fw.asarray(tokens, device), fw.asarray(table.astype(dtype), device), L, cast, **kw)
    tol = tolerance(dtype, device)
    res = {"outputs": close(out, want_out, tol), "grad_table": close(g, want_g, tol)}
    res["dtype_kept"] = (out.dtype == g.dtype == np.dtype(dtype), 0.0)
    if op == "embed":
        stray = float(np.abs(out[~valid_mask(L, T, side)]).max(initial=0))
        res["padding_zero"] = (stray == 0, stray)
    zeros = tokens_for(L, T, side, pad=0)
    out0, g0 = run_vjp(fw, op, mode, fw.asarray(zeros, device), fw.asarray(table.astype(dtype), device), L, cast, **kw)
    same_out, same_g = exact(out0, out), exact(g0, g)
    res["padding_invariant"] = (same_out["equivalent"] and same_g["equivalent"],
                                max(same_out["max_abs_err"], same_g["max_abs_err"]))
    return res


def strategy_records(fw, ref, strategy: str, device: str = "cpu", dtypes=("float32", "float64")) -> Iterator[dict]:
    """Every variant x case x side x dtype the strategy supports, one record per quantity."""
    for (op, mode), case, side, dtype in itertools.product(VARIANTS, CASES, SIDES, dtypes):
        if fw.why_not("embedding", strategy, op=op, mode=mode, device=device, dtype=dtype) is not None:
            continue
        base = dict(kind="strategy", op=variant_op(op, mode), name=strategy, case=case, side=side, dtype=dtype,
                    kernel=fw.strategy_kernel("embedding", strategy, op))
        try:
            res, error = strategy_cell(fw, ref, strategy, op, mode, case, side, dtype, device), None
        except Exception as e:  # noqa: BLE001 - a crash is a failed cell, reported, not a lost run
            res, error = {"error": (False, float("inf"))}, f"{type(e).__name__}: {e}"[:300]
        for quantity, (ok, err) in res.items():
            yield record(fw, device, quantity=quantity, equivalent=bool(ok), max_abs_err=float(err),
                         **({"error": error} if error else {}), **base)


def native_case():
    """A right-padded batch padded with 0 (the obvious pad id), a real token 0 inside, an empty row; no NaN."""
    L = np.array([4, 0, 1, 3, 4])
    tokens = tokens_for(L, 5, "right", pad=0)
    return tokens, table_for(nan_row=False), L, cotangents_for(L.size, 5)


def native_records(fw, ref, device: str = "cpu") -> Iterator[dict]:
    """Each native behaviour of the framework, judged against the reference on the same batch."""
    tokens, table, L, cot = native_case()
    for name in fw.natives("embedding"):
        got = fw.native("embedding", name, tokens=tokens, table=table, lengths=L, cot_embed=cot["embed"],
                        cot_bag=cot["bag"], device=device)
        want = run_vjp(ref, got["op"], got["mode"], tokens, table, L, cot)
        tol = tolerance("float64", device)
        for quantity, a, e in (("outputs", got["outputs"], want[0]), ("grad_table", got["grad_table"], want[1])):
            ok, err = close(fw.to_numpy(a), e, tol)
            yield record(fw, device, kind="native", op=variant_op(got["op"], got["mode"]), name=name,
                         case="real_token_0_empty_row", side="right", dtype="float64", quantity=quantity,
                         equivalent=ok, max_abs_err=err, why=doc_why(fw.NATIVES["embedding"][name]),
                         fix=use_strategy(fw, "embedding", device=device))


def mask_from_tokens(fw, tokens, table, L, cot, device="cpu") -> dict:
    """The recipe's quantities: embed every step, mask with tokens != 0, mean over the derived mask."""
    B, T = tokens.shape
    derived = (tokens != 0)[..., None]
    out, g = fw.embed_vjp(fw.asarray(tokens, device), fw.asarray(table, device), np.full(B, T),
                          cot["embed"] * derived, device=device)
    out = fw.to_numpy(out) * derived
    return {"outputs": out, "bag_mean": out.sum(1) / np.maximum(derived.sum(1), 1), "grad_table": fw.to_numpy(g)}


def embed_mask_rnn(fw, tokens, table, L, side, params, spec, full: bool, device="cpu") -> tuple[dict, str]:
    """embed (0 at padding) -> rnn over all T steps (full=True: the recipe) or the true lengths (the reference):
    ({quantity: value}, the kernel the RNN ran)."""
    x = fw.embed(fw.asarray(tokens, device), fw.asarray(table, device), L, side=side, device=device)
    B, T = tokens.shape
    out = fw.rnn(spec, params, x, np.full(B, T) if full else L, side=side, device=device)
    return {"outputs": np.where(valid_mask(L, T, side)[..., None], fw.to_numpy(out.outputs), 0),
            "h_n": fw.to_numpy(out.h_n)}, out.kernel


def idiom_records(fw, ref, device: str = "cpu") -> Iterator[dict]:
    """The seed recipes, run through the framework's default strategies, with a verdict per quantity."""
    tokens, table, L, cot = native_case()
    tol = tolerance("float64", device)
    got = mask_from_tokens(fw, tokens, table, L, cot, device)
    want_out, want_g = run_vjp(ref, "embed", None, tokens, table, L, cot)
    default_kernel = fw.strategy_kernel("embedding", fw.strategies("embedding", device=device)[0], "embed")
    want = {"outputs": want_out, "bag_mean": ref.to_numpy(ref.embedding_bag(tokens, table, L)), "grad_table": want_g}
    for q in got:
        yield record(fw, device, kind="idiom", op="embed", name="mask_from_tokens", case="real_token_0",
                     side="right", dtype="float64", quantity=q, **_verdict(got[q], want[q], tol),
                     kernel=default_kernel, why=IDIOMS["mask_from_tokens"], fix=IDIOM_FIXES["mask_from_tokens"])
    spec = RnnSpec("rnn", input_size=E, hidden_size=4)
    params = init_params(spec, seed=1, dtype="float64")
    for side in SIDES:
        toks = tokens_for(L, 5, side, pad=0)
        got, kernel = embed_mask_rnn(fw, toks, table, L, side, params, spec, True, device)
        want, _ = embed_mask_rnn(ref, toks, table, L, side, params, spec, False)
        for q in got:
            yield record(fw, device, kind="idiom", op="embed+rnn", name="embed_mask_rnn_final_state",
                         case="ragged_batch", side=side, dtype="float64", quantity=q,
                         **_verdict(got[q], want[q], tol), kernel=kernel,
                         why=IDIOMS["embed_mask_rnn_final_state"], fix=IDIOM_FIXES["embed_mask_rnn_final_state"])


def _verdict(a, e, tol) -> dict:
    ok, err = close(a, e, tol)
    return {"equivalent": ok, "max_abs_err": err}


# -- benchmarks ------------------------------------------------------------------------------------------------------
def _offers(framework: str, strategy: str, op: str) -> bool:
    """Whether a declared strategy can run bench op `op` (its op precondition is static: no framework import)."""
    table = importlib.import_module(f"adapters.{framework}.embedding").STRATEGIES
    return table[strategy].supports(None, op=CONTRACT_OP[op][0]) is None


def expand(base: dict, grid: dict, strategies: list[str]) -> list[dict]:
    """One case per strategy that can run this op, at the grid's vocabulary and embedding size."""
    sizes = {"vocab": grid.get("vocab", VOCAB), "embed_dim": grid.get("embed_dim", EMBED_DIM)}
    return [{**base, "strategy": s, **sizes} for s in strategies if _offers(base["framework"], s, base["op"])]


def ideal_bytes(op: str, n_tokens: int, batch: int, vocab: int, dim: int, item: int) -> float:
    """Bytes an ideal fwd+bwd moves: each token's row read and written forward, its cotangent read and its
    gradient row written backward (a bag reads/writes one row per bag instead), plus the dense [V, E] gradient."""
    per_row = 4 * n_tokens if op == "embed_forward_backward" else 2 * n_tokens + 2 * batch
    return float((per_row + vocab) * dim * item)


def prepare(adapter, case: dict) -> Prepared:
    """Tokens, table and cotangent on the device (padded ids = -1, sanitised by every strategy); work = the ideal
    bytes on valid tokens (copy floor); ideal_share = valid / padded tokens, linear like every family but attention's
    (the issue's definition). Not the bytes' share, which counts the dense [V, E] table gradient as a fixed cost:
    every framework's masked bags beat that ideal in a clean-clone demo (1.03-1.68 of it: the padded baseline pays
    more per padded token than the two row moves counted, its backward scatter-adds each one into the table's
    gradient), so it bounded nothing."""
    op, device, dtype = case["op"], case["device"], case["dtype"]
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} in family {NAME}; expected one of {list(OPS)}")
    B, T, seed = case["batch"], case["max_len"], case.get("seed", 0)
    vocab, dim = case.get("vocab", VOCAB), case.get("embed_dim", EMBED_DIM)
    L = case_lengths(case, B, T)
    tokens = adapter.asarray(tokens_for(L, T, "right", seed=seed, vocab=vocab, pad=-1), device)
    table = adapter.asarray(table_for(vocab, dim, seed=seed, dtype=dtype, nan_row=False), device)
    kind, mode = CONTRACT_OP[op]
    cot = cotangents_for(B, T, dim, seed=seed, dtype=dtype)
    kw = dict(strategy=case["strategy"], device=device)
    if kind == "embed":
        c = adapter.asarray(cot["embed"], device)
        run = lambda: adapter.embed_vjp(tokens, table, L, c, **kw)  # noqa: E731
    else:
        c = adapter.asarray(cot["bag"], device)
        run = lambda: adapter.embedding_bag_vjp(tokens, table, L, c, mode=mode, **kw)  # noqa: E731
    n, item = int(L.sum()), ELEMENT_BYTES[dtype]
    work = ideal_bytes(op, n, B, vocab, dim, item)
    return Prepared(run, n, B * T, padding_fraction(L, T), work, "copy", n / (B * T))


def programs(adapter, case: dict, lengths, compiled=()) -> set | None:
    """The compiled programs a batch of `lengths` runs in bench case `case` (forward + backward, `Adapter.programs`);
    None where they do not follow the lengths."""
    return adapter.programs(NAME, case["strategy"], None, lengths, case["max_len"], vjp=True,
                            compiled=compiled)


# -- report ---------------------------------------------------------------------------------------------------------
def report_sections(check_df, bench_df=None, out_path=None) -> list:
    """One section: the native behaviours' and recipes' verdicts per framework and version."""
    from harness.report.render import Section

    s = Section("Embeddings: native behaviours and recipes")
    if check_df is None or not len(check_df) or "kind" not in check_df:
        return [s.p("No embedding check records.")]
    df = check_df[(check_df["kind"].isin(["native", "idiom"])) &
                  (check_df["op"].astype(str).str.startswith("embed"))]
    if not len(df):
        return [s.p("No embedding native behaviours or recipes were checked.")]
    cols = ["framework", "version", "kind", "name", "op", "side", "quantity", "equivalent", "max_abs_err", "why",
            "fix"]
    table = df[[c for c in cols if c in df]].sort_values(["framework", "kind", "name", "side", "quantity"])
    s.p("Each framework primitive called the obvious way (native) and each recipe people copy, judged against the "
        "float64 reference per quantity; a row marked no is a wrong result, not a tolerance question.")
    return [s.table(table.reset_index(drop=True), fail_col="equivalent")]
