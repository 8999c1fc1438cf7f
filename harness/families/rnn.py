"""The RNN family: masked RNN/LSTM/GRU strategies against the reference, the recipes people copy, benchmarks."""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from adapters.spec import CELLS, SIDES, RnnSpec, init_params, map_params, valid_mask
from harness.compare import close, flat_grads
from harness.data import cotangents, padded
from harness.families.base import Prepared, checked, record
from harness.floors import rnn_flops
from harness.idioms import IDIOM_FIXES, IDIOMS, idiom_case, padding_for, reference_for, run_idiom, verdicts
from harness.profiles import case_lengths, padding_fraction
from harness.tolerances import tolerance

NAME = "rnn"
STRATEGY_FAMILY = "rnn"
OPS = {"rnn_forward": "RNN forward", "rnn_forward_backward": "RNN forward + backward"}
RNN_LENGTHS = (5, 0, 1, 3, 5)  # unsorted, a zero-length row, every row padded
RNN_T = 6
#: the skewed case: few long rows (two at the full T) among many short and empty ones, unsorted, so that the
#: planners split it as a real batch is split (on the CPU: torch's bucketed 2 buckets, time_sliced 2 segments;
#: JAX's 3 buckets and 3 segments; TF's 2 and 2; concat_rows 4 rows holding several sequences each), while the
#: standard case's 5 rows x 6 steps leave every plan one bucket or segment. On a GPU torch's cost model keeps one
#: segment of the 14 non-empty rows (its sort and gathers still run); the gates force several there.
SKEW_LENGTHS = (40, 0, 1, 3, 2, 40, 7, 1, 0, 12, 2, 1, 1, 33, 5, 1)
SKEW_T = 40
#: the strategies whose work follows a plan made from the lengths (the same names in every framework)
PLANNED = ("bucketed", "time_sliced", "concat_rows")


class RnnCheckCase(NamedTuple):
    """One batch of the RNN strategy check and the part of the matrix it runs in (None: all of it)."""

    name: str
    lengths: tuple
    T: int
    dtypes: tuple | None = None
    cells: tuple | None = None
    directions: tuple = (False, True)
    strategies: tuple | None = None


#: the skewed case runs only the planned strategies, bidirectional (both directions' plans in one net), in
#: float32, for the LSTM (state h and c) and the GRU (h only, as the tanh RNN): its compiles are dear (JAX, every
#: strategy, 12 configurations: 25 s each on 2 cores, against 7.6 s for one of the standard case)
RNN_CASES = (RnnCheckCase("zero_length_nan_padding", RNN_LENGTHS, RNN_T),
             RnnCheckCase("skewed_multi_plan_nan_padding", SKEW_LENGTHS, SKEW_T, dtypes=("float32",),
                          cells=("lstm", "gru"), directions=(True,), strategies=PLANNED))


def expand(base: dict, grid: dict, strategies: list[str]) -> list[dict]:
    """One case per (cell, hidden size, strategy) at this grid point."""
    return [{**base, "strategy": s, "cell": cell, "hidden": H, "input_size": H,
             "num_layers": grid.get("num_layers", 1), "bidirectional": grid.get("bidirectional", False)}
            for cell, H, s in itertools.product(grid["cells"], grid["hidden"], strategies)]


def rnn_case(spec: RnnSpec, side: str, dtype: str, seed: int = 0, lengths=RNN_LENGTHS, T: int = RNN_T):
    """x (NaN in padding), lengths, params and cotangents of an RNN gate case (the standard one by default)."""
    L = np.array(lengths)
    x = padded(L, T, (spec.input_size,), side=side, seed=seed, dtype=dtype, fill=np.nan)
    return x, L, init_params(spec, seed=seed, dtype=dtype), cotangents(spec, L.size, T, seed=seed, dtype=dtype)


def compare_rnn(fw, out, grads, want_out, want_grads, valid, tol) -> dict[str, tuple[bool, float]]:
    """quantity -> (equivalent, max_abs_err) for one rnn_vjp result against the reference's."""
    n = fw.to_numpy
    res = {"outputs": close(n(out.outputs), want_out.outputs, tol), "h_n": close(n(out.h_n), want_out.h_n, tol)}
    if want_out.c_n is not None:
        res["c_n"] = close(n(out.c_n), want_out.c_n, tol)
    res["grad_x"] = close(n(grads["x"]), want_grads["x"], tol)
    res["grad_params"] = close(flat_grads(grads["params"], n), flat_grads(want_grads["params"], np.asarray), tol)
    pad = ~valid
    stray = max(np.abs(n(out.outputs)[pad]).max(initial=0), np.abs(n(grads["x"])[pad]).max(initial=0))
    res["padding_zero"] = (bool(stray == 0), float(stray))
    # a zero-length row never steps: its final state is the initial zero state exactly (not merely within the
    # tolerance scaled by the largest state), in every layer and direction
    empty = ~valid.any(axis=1)
    states = [n(out.h_n)] + ([n(out.c_n)] if want_out.c_n is not None else [])
    left = max(np.abs(s[:, empty]).max(initial=0) for s in states)
    res["empty_row_state_zero"] = (bool(left == 0), float(left) if np.isfinite(left) else float("inf"))
    return res


def check_records(fw, ref, device: str = "cpu", dtypes=("float32", "float64"), strategies=None) -> Iterator[dict]:
    """The strategies' equivalence cells, then the recipes' verdicts; `strategies`: only those strategies' cells
    (`varlen check --strategy`), no verdicts."""
    yield from strategy_records(fw, ref, device, dtypes, strategies)
    if strategies is None:
        yield from idiom_records(fw, ref, device)


def strategy_records(fw, ref, device: str = "cpu", dtypes=("float32", "float64"), strategies=None) -> Iterator[dict]:
    """Every strategy x cell x side x direction x dtype on a 2-layer net, NaN in padding, zero-length rows: the
    standard case in every dtype, the skewed one (`SKEW_LENGTHS`: the plans of several buckets, segments and
    sequences per row that real batches get) for the strategies that plan (`PLANNED`): `RNN_CASES`."""
    for case, cell, side, bi, dtype in itertools.product(RNN_CASES, CELLS, SIDES, (False, True), dtypes):
        if (bi not in case.directions or case.dtypes is not None and dtype not in case.dtypes
                or case.cells is not None and cell not in case.cells):
            continue
        T = case.T
        spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=bi)
        x, L, params, cot = rnn_case(spec, side, dtype, lengths=case.lengths, T=T)
        up = lambda a: a.astype("float64")
        want_out, want_grads = ref.rnn_vjp(spec, map_params(up, params), up(x), L,
                                           {k: up(v) for k, v in cot.items()}, side=side)
        valid = valid_mask(L, T, side)
        for strategy in checked(fw.strategies("rnn", cell=cell, device=device, dtype=dtype), strategies):
            if case.strategies is not None and strategy not in case.strategies:
                continue
            base = dict(kind="strategy", op="rnn", name=strategy, case=case.name, cell=cell,
                        side=side, bidirectional=bi, dtype=dtype, num_layers=2)
            try:
                out, grads = fw.rnn_vjp(spec, params, fw.asarray(x, device), L, cot, side=side, strategy=strategy,
                                        device=device)
                res = compare_rnn(fw, out, grads, want_out, want_grads, valid, tolerance(dtype, device))
                kernel, error = out.kernel, None
            except Exception as e:  # noqa: BLE001 - a crash is a failed cell, reported, not a lost run
                res, kernel, error = {"error": (False, float("inf"))}, "", f"{type(e).__name__}: {e}"[:300]
            for quantity, (ok, err) in res.items():
                yield record(fw, device, quantity=quantity, equivalent=ok, max_abs_err=err, kernel=kernel,
                             **({"error": error} if error else {}), **base)


def idiom_records(fw, ref, device: str = "cpu") -> Iterator[dict]:
    """Each recipe of `harness.idioms` through the framework's default strategy, with a verdict per quantity."""
    for cell, side, bi, name in itertools.product(("lstm", "gru"), SIDES, (False, True), IDIOMS):
        spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=1, bidirectional=bi)
        padding = padding_for(name)
        x, L, cot = idiom_case(spec, side, padding=padding)
        params = init_params(spec, seed=1, dtype="float64")
        got = run_idiom(fw, name, spec, params, x, L, side, cot, device=device)
        want = reference_for(ref, name, spec, params, x, L, side, cot)
        for v in verdicts(got, want, valid_mask(L, x.shape[1], side), tolerance("float64", device)):
            yield record(fw, device, kind="idiom", op="rnn", name=name, case=f"{padding}_padding", cell=cell,
                         side=side, bidirectional=bi, dtype="float64", quantity=v.quantity, equivalent=v.equivalent,
                         max_abs_err=v.max_abs_err, kernel=got["kernel"], why=IDIOMS[name], fix=IDIOM_FIXES[name])


def prepare(adapter, case: dict) -> Prepared:
    """A masked RNN case (forward, or forward + backward with random cotangents); work = GEMM FLOPs on valid
    tokens (`harness.floors.rnn_flops`)."""
    op, device, dtype = case["op"], case["device"], case["dtype"]
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} in family {NAME}; expected one of {list(OPS)}")
    B, T = case["batch"], case["max_len"]
    L = case_lengths(case, B, T)
    spec = RnnSpec(case["cell"], case["input_size"], case["hidden"], case["num_layers"], case["bidirectional"])
    x = adapter.asarray(padded(L, T, (spec.input_size,), seed=case.get("seed", 0), dtype=dtype), device)
    params = map_params(lambda a: adapter.asarray(a, device), init_params(spec, seed=0, dtype=dtype))
    kw = dict(strategy=case["strategy"], device=device)
    backward = op == "rnn_forward_backward"
    if backward:
        cot = {k: adapter.asarray(v, device) for k, v in cotangents(spec, B, T, dtype=dtype).items()}
        run = lambda: adapter.rnn_vjp(spec, params, x, L, cot, **kw)[0]
    else:
        run = lambda: adapter.rnn(spec, params, x, L, **kw)
    work = rnn_flops(spec.cell, spec.input_size, spec.hidden_size, spec.num_layers, spec.num_directions,
                     int(L.sum()), backward=backward)
    return Prepared(run, int(L.sum()), B * T, padding_fraction(L, T), work, "gemm", float(L.sum()) / (B * T))


def programs(adapter, case: dict, lengths, compiled=()) -> set | None:
    """The compiled programs a batch of `lengths` runs in bench case `case` (`Adapter.programs`); None where they do
    not follow the lengths."""
    spec = RnnSpec(case["cell"], case["input_size"], case["hidden"], case["num_layers"], case["bidirectional"])
    return adapter.programs(NAME, case["strategy"], spec, lengths, case["max_len"],
                            vjp=case["op"] == "rnn_forward_backward", compiled=compiled)


def idiom_table(check):
    """framework x recipe x side x direction: which quantities are right, and the worst error of the wrong ones."""
    import pandas as pd

    df = check[check["kind"] == "idiom"].copy()
    rows = []
    df["direction"] = df["bidirectional"].map({True: "bi", False: "uni"})
    for (fw, name, side, direction), g in df.groupby(["framework", "name", "side", "direction"], sort=True):
        # a quantity is correct only if it is correct for every cell tried (LSTM and GRU)
        right = set(g.groupby("quantity")["equivalent"].all().loc[lambda s: s].index)
        wrong = g[~g["equivalent"].astype(bool)]
        rows.append({"framework": fw, "recipe": name, "side": side, "direction": direction,
                     "correct": ", ".join(q for q in ("outputs", "h_n", "grads") if q in right) or "nothing",
                     "wrong": ", ".join(q for q in ("outputs", "h_n", "grads") if q in set(wrong["quantity"]))
                     or "-",
                     "max_abs_err": float(wrong["max_abs_err"].max()) if len(wrong) else 0.0,
                     "caught": len(wrong) > 0})
    return pd.DataFrame(rows)


def idiom_matrix(check):
    """recipe x side x direction rows, one column per framework: what the recipe gets wrong there (or 'exact')."""
    from harness.report.render import fmt

    t = idiom_table(check)
    if t.empty:
        return t
    t["verdict"] = [f"WRONG {w} (err {fmt(e)}); right: {c}" if caught else "exact here"
                    for w, e, c, caught in zip(t["wrong"], t["max_abs_err"], t["correct"], t["caught"])]
    m = t.pivot_table(index=["recipe", "side", "direction"], columns="framework", values="verdict",
                      aggfunc="first").reset_index()
    m.columns.name = None
    return m


def summary_table(check):
    """recipe x side x direction, one column per framework: what each recipe gets wrong (for `varlen check`)."""
    rnn = check[(check["kind"] == "idiom") & (check["op"] == "rnn")]
    return idiom_matrix(rnn) if not rnn.empty else None


def report_sections(check, bench, out) -> list:
    """The RNN recipes' verdicts: which quantities each recipe gets wrong in each framework, and why."""
    from harness.report.render import Section

    s = Section("The recipes people copy (RNN)")
    table = summary_table(check) if not check.empty else None
    if table is None:
        return [s.p("No recipe verdicts (run `varlen check`).")]
    s.p("Each recipe run for real in each framework (LSTM and GRU, float64, ragged unsorted lengths, one real "
        "all-zero step, non-zero finite values in the padding unless the recipe assumes zero padding) and compared "
        "with the masked reference: per framework, the quantities it gets WRONG (valid outputs, final state h_n, "
        "gradients) with the worst error, and those it gets right; 'exact here' where the recipe is honestly "
        "correct.")
    for name, why in IDIOMS.items():
        s.p(f"{name} ({padding_for(name)} padding): {why} Use instead: {IDIOM_FIXES[name]}.")
    return [s.table(table)]
