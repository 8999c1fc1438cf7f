"""The loss family: masked softmax CE / sigmoid BCE strategies against the reference, the natives, the recipes.

Check cells (`check_records`): every strategy x kind (softmax CE, BCE on [B,T,C] and [B,T]) x reduction x dtype x
side on a batch with a zero-length row whose padding holds NaN/inf logits and out-of-range (CE) or NaN (BCE)
targets: loss and gradient against the float64 reference, gradient exactly 0 at padded steps, results
bit-identical to the same batch with clean padding, and an all-empty batch giving exactly 0 (loss and gradient).
Native behaviours (each framework's `NATIVES["loss"]`) and framework-free recipes are judged against the
reference's token mean, one verdict per quantity (loss, grad). Imports no framework.
"""
from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterator

import numpy as np

from adapters.base import LOSS_REDUCTIONS
from adapters.spec import SIDES, valid_mask
from harness.compare import close
from harness.data import padded, rng_for
from harness.families.base import Prepared, checked, doc_why, error_text, exact, record, use_strategy
from harness.profiles import case_lengths, padding_fraction
from harness.tolerances import tolerance

NAME = "loss"
STRATEGY_FAMILY = "loss"
OPS = {"loss_softmax_ce": "masked softmax CE fwd+bwd", "loss_sigmoid_bce": "masked sigmoid BCE fwd+bwd"}
OP_KIND = {"loss_softmax_ce": "softmax_ce", "loss_sigmoid_bce": "sigmoid_bce"}
#: bench op -> the variant a strategy's kernel name follows (`adapters.spec.Strategy.kernel_for`): the kind
KERNEL_VARIANT = OP_KIND
CLASSES = 1024          # C of the bench cases: B=64, T=128 runs well under a second per call on 2 CPU cores
ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
LENGTHS, T, C = (5, 0, 1, 3, 6), 6, 7        # gate case: unsorted, a zero-length row, padding in most rows
SKEWED = (12, 1, 2, 0, 1)                    # recipe case: one long row among short ones (T = 12)
MICRO_BATCHES = ((0, 1), (1, 5))             # row ranges of the gradient-accumulation recipe
#: (kind, trailing label axis for BCE) of the gate cells: softmax CE, BCE on [B,T,C], BCE on [B,T]
KINDS = (("softmax_ce", True), ("sigmoid_bce", True), ("sigmoid_bce", False))

RECIPES = {
    "(loss * mask).mean()": "divides the masked sum by every padded step, so the loss and its gradient shrink with "
                            "the padding fraction",
    "(loss * mask).sum() / mask.sum()": "exact on a batch with a valid token, but a fully padded batch gives "
                                        "0/0 = NaN, which then poisons every parameter",
    "mean of micro-batch token means": "gradient accumulation that averages per-micro-batch token means weights a "
                                       "token of a short micro-batch more than one of a long one (the 2024 "
                                       "accumulation discrepancy)",
    "micro-batch sums / global token count": "accumulating sums and dividing once by the global token count is "
                                             "the token mean exactly (the fix)",
    "sequence_mean as token_mean": "averaging each row's mean weights a token by 1/its row's length: on skewed "
                                   "lengths it is another objective, not the token mean",
    "F.cross_entropy(logits * mask, target)": "zeroes padded logits and takes the mean cross entropy over every "
                                              "position (seed 004): a padded step's zero logits are a uniform "
                                              "prediction, so each adds log C to the sum, and the sum is divided "
                                              "by every padded step too",
}
#: recipe -> what to use instead
RECIPE_FIXES = {
    "(loss * mask).mean()": "divide by mask.sum() (the valid token count), or varlen's token_mean",
    "(loss * mask).sum() / mask.sum()": "divide by max(mask.sum(), 1), or varlen's token_mean (0 on an empty batch)",
    "mean of micro-batch token means": "sum each micro-batch's masked loss and divide once by the global token count",
    "micro-batch sums / global token count": "",  # exact: nothing to replace
    "sequence_mean as token_mean": "varlen's token_mean (sum over valid tokens / their count)",
    "F.cross_entropy(logits * mask, target)": "set padded targets to ignore_index (-100) and leave the logits "
                                              "unmasked, or varlen's token_mean",
}
#: recipe -> the cases it is judged on, with the reference each one is judged against (`recipe_records`)
RECIPE_CASES = {"(loss * mask).sum() / mask.sum()": ("skewed_lengths", "all_empty")}
#: recipes of one kind only (the others run for softmax CE and sigmoid BCE)
RECIPE_KINDS = {"F.cross_entropy(logits * mask, target)": ("softmax_ce",)}


def expand(base: dict, grid: dict, strategies: list[str]) -> list[dict]:
    """One case per strategy that computes this op's kind (a strategy's precondition on the kind is static)."""
    kind = OP_KIND[base["op"]]
    return [{**base, "strategy": s, "classes": CLASSES} for s in strategies if _computes(base["framework"], s, kind)]


def _computes(framework: str, strategy: str, kind: str) -> bool:
    """Whether a declared strategy supports `kind` (reads the family module's table; imports no framework)."""
    table = importlib.import_module(f"adapters.{framework}.loss").STRATEGIES
    return table[strategy].supports(None, kind=kind) is None


def loss_case(kind: str, side: str, dtype: str, *, lengths=LENGTHS, maxlen: int = T, classes: int = C,
              label_axis: bool = True, dirty: bool = True, seed: int = 0):
    """(logits, targets, lengths): with dirty=True padded logits hold NaN and +-inf, padded CE targets -100 and C+3
    (out of range), padded BCE targets NaN; with dirty=False padding holds 0."""
    L = np.asarray(lengths, dtype=np.int64)
    feat = (classes,) if kind == "softmax_ce" or label_axis else ()
    x = padded(L, maxlen, feat, side=side, seed=seed, dtype=dtype, fill=np.nan if dirty else 0.0)
    pad = ~valid_mask(L, maxlen, side)
    rng = rng_for(seed, 7)
    if kind == "softmax_ce":
        z = rng.integers(0, classes, (L.size, maxlen))
        z[pad] = np.where(np.arange(pad.sum()) % 2, -100, classes + 3) if dirty else 0
    else:
        z = rng.uniform(0, 1, (L.size, maxlen, *feat)).astype(dtype)
        z[pad] = np.nan if dirty else 0.0
    if dirty and pad.any():
        x[np.argwhere(pad)[0][0], np.argwhere(pad)[0][1]] = np.inf
        x[np.argwhere(pad)[-1][0], np.argwhere(pad)[-1][1]] = -np.inf
    return x, z, L


def _ref(ref, x, z, L, kind, reduction="token_mean", side="right"):
    up = x.astype("float64")
    return ref.masked_loss_vjp(up, z if kind == "softmax_ce" else z.astype("float64"), L, kind=kind,
                               reduction=reduction, side=side)


def check_records(fw, ref, device: str = "cpu", dtypes=("float32", "float64"), strategies=None) -> Iterator[dict]:
    """The strategies' equivalence cells, then the native behaviours' and recipes' verdicts; `strategies`: only
    those strategies' cells (`varlen check --strategy`), no verdicts."""
    yield from strategy_records(fw, ref, device, dtypes, strategies)
    if strategies is None:
        yield from native_records(fw, ref, device)
        yield from recipe_records(fw, ref, device)


def strategy_cell(fw, ref, strategy, kind, label_axis, reduction, dtype, side, device) -> dict[str, tuple]:
    """quantity -> (equivalent, max_abs_err) of one strategy on the dirty gate case, the same batch without
    padding (every row full: strategies that skip padding may take another path there) and the all-empty batch."""
    kw = dict(kind=kind, reduction=reduction, side=side, strategy=strategy, device=device)
    x, z, L = loss_case(kind, side, dtype, label_axis=label_axis)
    want_loss, want_grad = _ref(ref, x, z, L, kind, reduction, side)
    loss, grad = (fw.to_numpy(a) for a in fw.masked_loss_vjp(fw.asarray(x, device), fw.asarray(z, device), L, **kw))
    tol = tolerance(dtype, device)
    res = {"loss": close(loss, want_loss, tol), "grad": close(grad, want_grad, tol)}
    stray = np.abs(grad[~valid_mask(L, T, side)]).max(initial=0)
    res["padding_zero"] = (bool(stray == 0), float(stray) if np.isfinite(stray) else float("inf"))  # NaN: inf
    xc, zc, _ = loss_case(kind, side, dtype, label_axis=label_axis, dirty=False)
    clean = [fw.to_numpy(a) for a in fw.masked_loss_vjp(fw.asarray(xc, device), fw.asarray(zc, device), L, **kw)]
    same = exact(loss, clean[0])["equivalent"] and exact(grad, clean[1])["equivalent"]
    res["padding_bit_identical"] = (same, 0.0 if same else float("inf"))
    fwd = fw.to_numpy(fw.masked_loss(fw.asarray(x, device), fw.asarray(z, device), L, **kw))
    res["forward_only"] = close(fwd, want_loss, tol)
    xf, zf, Lf = loss_case(kind, side, dtype, lengths=np.full(L.size, T), label_axis=label_axis)  # no padding
    want_full = _ref(ref, xf, zf, Lf, kind, reduction, side)
    got_full = [fw.to_numpy(a) for a in fw.masked_loss_vjp(fw.asarray(xf, device), fw.asarray(zf, device), Lf, **kw)]
    full = [close(g, w, tol) for g, w in zip(got_full, want_full, strict=True)]
    res["no_padding"] = (all(ok for ok, _ in full), max(err for _, err in full))
    e_loss, e_grad = (fw.to_numpy(a) for a in fw.masked_loss_vjp(fw.asarray(x, device), fw.asarray(z, device),
                                                                 np.zeros_like(L), **kw))
    empty_ok = exact(e_loss, np.zeros((), e_loss.dtype))["equivalent"] and not np.any(e_grad) \
        and np.isfinite(e_grad).all()
    res["all_empty_zero"] = (bool(empty_ok), 0.0 if empty_ok else float("inf"))
    return res


def strategy_records(fw, ref, device: str = "cpu", dtypes=("float32", "float64"), strategies=None) -> Iterator[dict]:
    for (kind, label_axis), reduction, dtype, side in itertools.product(KINDS, LOSS_REDUCTIONS, dtypes, SIDES):
        for strategy in checked(fw.strategies("loss", kind=kind, reduction=reduction, device=device, dtype=dtype),
                                strategies):
            base = dict(kind="strategy", op="loss", name=strategy, side=side, dtype=dtype,
                        case=f"{kind}{'' if label_axis else '_no_label_axis'}:{reduction}:dirty_padding",
                        kernel=fw.strategy_kernel("loss", strategy, kind))
            try:
                res, error = strategy_cell(fw, ref, strategy, kind, label_axis, reduction, dtype, side, device), None
            except Exception as e:  # noqa: BLE001 - a crash is a failed cell, reported, not a lost run
                res, error = {"error": (False, float("inf"))}, f"{type(e).__name__}: {e}"[:300]
            for quantity, (ok, err) in res.items():
                yield record(fw, device, quantity=quantity, equivalent=bool(ok), max_abs_err=float(err),
                             **({"error": error} if error else {}), **base)


NATIVE_CASES = ("clean_padding", "dirty_padding", "all_empty")


def native_inputs(kind: str, case: str):
    """The inputs one native behaviour sees (float64, right padding)."""
    x, z, L = loss_case(kind, "right", "float64", dirty=case == "dirty_padding")
    return x, z, (np.zeros_like(L) if case == "all_empty" else L)


def native_records(fw, ref, device: str = "cpu") -> Iterator[dict]:
    """Each native behaviour on clean padding, dirty padding and an all-empty batch, against the token mean; `why`
    is its docstring's first paragraph, `fix` the framework's exact strategy for the kind."""
    for name, case in itertools.product(fw.natives("loss"), NATIVE_CASES):
        fn = fw.NATIVES["loss"][name]
        kind = getattr(fn, "kind", "softmax_ce")
        x, z, L = native_inputs(kind, case)
        want = _ref(ref, x, z, L, kind)
        base = dict(kind="native", op="loss", name=name, case=f"{kind}:{case}", dtype="float64", side="right",
                    why=doc_why(fn), fix=use_strategy(fw, "loss", kind=kind))
        try:
            got = [fw.to_numpy(a) for a in fw.native("loss", name, logits=fw.asarray(x, device),
                                                      targets=fw.asarray(z, device), lengths=L, device=device)]
            error = None
        except Exception as e:  # noqa: BLE001 - raising is the behaviour being recorded
            got, error = None, error_text(e)
        for q, i in (("loss", 0), ("grad", 1)):
            ok, err = (False, float("inf")) if got is None else close(got[i], want[i], tolerance("float64", device))
            yield record(fw, device, quantity=q, equivalent=ok, max_abs_err=err,
                         **({"error": error} if error else {}), **base)


def recipe_results(fw, x, z, L, kind: str, device: str = "cpu") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """recipe name -> (loss, grad) as the recipe computes it, on top of the contract's exact reductions (the
    contract's masked sum stands for the recipe's `(loss * mask).sum()`: the batch has clean padding)."""
    def vjp(x, z, L, reduction):
        out = fw.masked_loss_vjp(fw.asarray(x, device), fw.asarray(z, device), L, kind=kind, reduction=reduction,
                                 device=device)
        return [fw.to_numpy(a).astype("float64") for a in out]

    B, Tm = x.shape[:2]
    s_loss, s_grad = vjp(x, z, L, "sum")
    n = float(L.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"(loss * mask).mean()": (s_loss / (B * Tm), s_grad / (B * Tm)),
               "(loss * mask).sum() / mask.sum()": (s_loss / n, s_grad / n)}
    parts = [(slice(a, b), vjp(x[a:b], z[a:b], L[a:b], "token_mean"), vjp(x[a:b], z[a:b], L[a:b], "sum"))
             for a, b in MICRO_BATCHES]
    k = len(parts)
    out["mean of micro-batch token means"] = (sum(m[0] for _, m, _ in parts) / k,
                                              np.concatenate([m[1] / k for _, m, _ in parts]))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["micro-batch sums / global token count"] = (sum(s[0] for _, _, s in parts) / n,
                                                        np.concatenate([s[1] / n for _, _, s in parts]))
    out["sequence_mean as token_mean"] = tuple(vjp(x, z, L, "sequence_mean"))
    if kind == "softmax_ce":
        # seed 004: F.cross_entropy(output * mask, target) over all B*T positions (padded targets in range)
        mask = valid_mask(L, Tm, "right")[..., None].astype(x.dtype)
        loss, grad = vjp(x * mask, z, np.full_like(L, Tm), "token_mean")
        out["F.cross_entropy(logits * mask, target)"] = (loss, grad * mask)  # chain rule through x * mask
    return out


def recipe_records(fw, ref, device: str = "cpu") -> Iterator[dict]:
    """Each recipe through the framework's default strategy on a batch with clean padding and skewed lengths, the
    0/0 recipe also on an all-empty batch (where it breaks), judged against the reference's token mean of that
    batch; `fix` says what to use instead."""
    for kind in ("softmax_ce", "sigmoid_bce"):
        x, z, L = loss_case(kind, "right", "float64", lengths=SKEWED, maxlen=max(SKEWED), dirty=False, seed=1)
        kernel = fw.strategy_kernel("loss", fw.strategies("loss", kind=kind)[0], kind)
        for case, lengths in (("skewed_lengths", L), ("all_empty", np.zeros_like(L))):
            want = _ref(ref, x, z, lengths, kind)
            for name, got in recipe_results(fw, x, z, lengths, kind, device).items():
                if case not in RECIPE_CASES.get(name, ("skewed_lengths",)) or \
                        kind not in RECIPE_KINDS.get(name, (kind,)):
                    continue
                fix = RECIPE_FIXES[name]
                for q, i in (("loss", 0), ("grad", 1)):
                    ok, err = close(got[i], want[i], tolerance("float64", device))
                    yield record(fw, device, kind="idiom", op="loss", name=name, case=f"{kind}:{case}",
                                 dtype="float64", side="right", quantity=q, equivalent=ok, max_abs_err=err,
                                 kernel=kernel, why=RECIPES[name], fix=fix)


def prepare(adapter, case: dict) -> Prepared:
    """A masked loss forward + backward on [B, T, C] logits; work = bytes of valid logits read + grads written."""
    op, device, dtype = case["op"], case["device"], case["dtype"]
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} in family {NAME}; expected one of {list(OPS)}")
    kind, B, Tm, classes = OP_KIND[op], case["batch"], case["max_len"], case.get("classes", CLASSES)
    L = case_lengths(case, B, Tm)
    x, z, _ = loss_case(kind, "right", dtype, lengths=L, maxlen=Tm, classes=classes, dirty=False,
                        seed=case.get("seed", 0))
    x, z = adapter.asarray(x, device), adapter.asarray(z, device)
    run = lambda: adapter.masked_loss_vjp(x, z, L, kind=kind, strategy=case["strategy"], device=device)[0]
    n_valid = int(L.sum())
    work = 2.0 * n_valid * classes * ELEMENT_BYTES[dtype]
    return Prepared(run, n_valid, B * Tm, padding_fraction(L, Tm), work, "copy", n_valid / (B * Tm))


def programs(adapter, case: dict, lengths, compiled=()) -> set | None:
    """The compiled programs a batch of `lengths` runs in bench case `case` (forward + backward, `Adapter.programs`);
    None where they do not follow the lengths."""
    return adapter.programs(NAME, case["strategy"], None, lengths, case["max_len"], vjp=True,
                            compiled=compiled)


def report_sections(check_df, bench_df=None, out_path=None) -> list:
    """One section: the verdict of every native behaviour and recipe per framework and version."""
    from harness.report.render import Section

    if check_df is None or check_df.empty or "op" not in check_df:
        return []
    df = check_df[(check_df["op"] == "loss") & check_df["kind"].isin(["native", "idiom"])]
    if df.empty:
        return []
    cols = ["framework", "version", "kind", "name", "case", "quantity", "equivalent", "max_abs_err", "error", "why",
            "fix"]
    table = df[[c for c in cols if c in df]].sort_values(["kind", "framework", "name", "case", "quantity"])
    return [Section("Masked losses: native behaviours and recipes").p(
        "Each framework's loss primitive called the obvious way (native) and the recipes people copy (idiom), "
        "judged per quantity against the reference's token mean.").table(table, fail_col="equivalent")]
