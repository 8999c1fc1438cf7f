"""The "bucketed" attention strategy: its planner against an exhaustive search, its gather-back index against a
direct construction, and every framework's strategy over several buckets (forced by a zero call cost) against the
NumPy float64 reference: self, causal and cross attention, both sides, grouped heads, both dtypes, rows without
work, NaN in padding; compiled shapes bounded by the ladders. (The gates of `tests/test_attention.py` run it with
its real cost model like every other strategy.)"""
from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapters
from adapters.attention_buckets import cost_for
from adapters.spec import (
    MAX_BUCKETS,
    AttnBucket,
    attention_unbucket_index,
    plan_attention,
    plan_buckets,
    shape_ladder,
    valid_mask,
)
from harness.families import attention as fam
from harness.profiles import lengths_for
from harness.tolerances import tolerance
from tests.conftest import framework_params, require
from tests.strategies import ragged_batches


def _cost(plan, call_cost, token_cost):
    return sum(call_cost + b.batch * (b.q_steps * b.kv_steps + token_cost * (b.q_steps + b.kv_steps)) for b in plan)


def _exhaustive(ql, kvl, max_buckets, call_cost, token_cost):
    """The cheapest plan over every cut of the rows sorted by work (the planner's search space), by brute force."""
    work = [i for i in np.lexsort((ql * 41 + kvl, -ql * kvl)) if ql[i] and kvl[i]]  # equal pairs adjacent
    n, best = len(work), np.inf
    for k in range(1, min(max_buckets, n) + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = (0, *cuts, n)
            plan = [AttnBucket(np.array(work[s:e]), e - s, int(ql[work[s:e]].max()), int(kvl[work[s:e]].max()))
                    for s, e in zip(bounds, bounds[1:])]
            best = min(best, _cost(plan, call_cost, token_cost))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_the_cheapest_cut(seed):
    rng = np.random.default_rng(seed)
    B = 9
    ql = rng.integers(0, 40, B)
    kvl = ql if seed % 2 else rng.integers(0, 40, B)
    call_cost, token_cost = [(0.0, 0.0), (300.0, 5.0), (3000.0, 40.0)][seed % 3]
    plan = plan_attention(ql, kvl, 40, 40, call_cost=call_cost, token_cost=token_cost, ladders=False)
    assert _cost(plan, call_cost, token_cost) == _exhaustive(ql, kvl, 4, call_cost, token_cost)
    rows = np.concatenate([b.rows for b in plan])
    assert sorted(rows) == sorted(np.flatnonzero((ql > 0) & (kvl > 0))), "each row with work in exactly one bucket"
    for b in plan:
        assert b.q_steps == ql[b.rows].max() and b.kv_steps == kvl[b.rows].max() and b.batch == b.rows.size


def test_plan_on_ladders_and_degenerate_batches():
    ql = np.array([100, 3, 0, 37, 64, 5, 90, 12])
    kvl = np.array([7, 3, 9, 0, 64, 5, 90, 120])
    for b in plan_attention(ql, kvl, 100, 120, call_cost=0.0):
        assert b.q_steps in shape_ladder(100) and b.kv_steps in shape_ladder(120)
        assert b.batch in shape_ladder(8) and b.batch >= b.rows.size
        assert b.q_steps >= ql[b.rows].max() and b.kv_steps >= kvl[b.rows].max()
    assert len(plan_attention(ql, kvl, 100, 120, call_cost=0.0)) == 4  # free calls: as many buckets as allowed
    assert plan_attention(np.array([0, 4]), np.array([3, 0]), 4, 4) == []  # no row has work
    full = plan_attention(np.array([4, 2, 4]), np.array([4, 2, 4]), 4, 4, call_cost=1e9)
    assert len(full) == 1 and full[0].rows.tolist() == [0, 1, 2], "one untrimmed bucket keeps the row order"


def test_large_batches_plan_over_runs_of_equal_lengths(monkeypatch):
    """Above PLAN_ROWS rows the planners cut only between runs of equal lengths (O(runs^2), not O(rows^2)): for
    the planners without batch rounding that loses nothing (same cost as cutting between any rows); with
    thousands of distinct (q_len, kv_len) pairs they plan over the pairs rounded up the ladders; every plan keeps
    each row with work exactly once, in a bucket at least as long as it."""
    from adapters import spec
    from adapters.torch.rnn import _BUCKET_COST, bucket_rows

    rng = np.random.default_rng(0)
    L = rng.integers(0, 48, 600)
    pairs = [(L, L), (rng.integers(0, 16, 600), rng.integers(1, 12, 600))]  # self; cross with < 256 distinct pairs
    plan = lambda: [plan_attention(q, k, 48, 48, call_cost=500.0, token_cost=3.0, ladders=False)  # noqa: E731
                    for q, k in pairs]
    grouped, rnn_rows = plan(), bucket_rows(L)
    monkeypatch.setattr(spec, "PLAN_ROWS", 10**6)  # every row a cut point: the O(rows^2) search
    per_row = plan()
    for g, r in zip(grouped, per_row, strict=True):
        assert _cost(g, 500.0, 3.0) == _cost(r, 500.0, 3.0)
    step, call = _BUCKET_COST[("lstm", False)]
    rnn_cost = lambda buckets: sum(L[b].max() * (b.size + step) + call for b in buckets)  # noqa: E731
    assert rnn_cost(rnn_rows) == rnn_cost(bucket_rows(L))
    monkeypatch.undo()
    big_q, big_k = rng.integers(0, 3000, 20000), rng.integers(0, 3000, 20000)  # ~20000 distinct pairs
    plan = plan_attention(big_q, big_k, 3000, 3000, call_cost=6000.0, token_cost=40.0, ladders=False)
    rows = np.concatenate([b.rows for b in plan])
    assert np.array_equal(np.sort(rows), np.flatnonzero((big_q > 0) & (big_k > 0)))
    assert all(b.q_steps >= big_q[b.rows].max() and b.kv_steps >= big_k[b.rows].max() for b in plan)
    rnn = plan_buckets(big_q, 3000)  # the RNN planner on runs of equal rounded lengths: every row once
    assert np.array_equal(np.sort(np.concatenate([b.rows for b in rnn])), np.arange(big_q.size))
    assert all(b.steps >= big_q[b.rows].max() and b.batch >= b.rows.size for b in rnn)


@pytest.mark.parametrize("side", ["right", "left"])
def test_unbucket_index_puts_every_step_back(side):
    """Buckets cut from a known array and gathered back reproduce it at every (row, step) inside a bucket's window
    and give the zero entry elsewhere."""
    B, T = 6, 10
    lengths = np.array([10, 0, 3, 7, 1, 9])
    plan = plan_attention(lengths, lengths, T, T, call_cost=0.0, ladders=True)
    x = np.arange(1, B * T + 1, dtype=float).reshape(B, T)
    parts = []
    for b in plan:
        rows = np.concatenate([b.rows, np.full(b.batch - b.rows.size, b.rows[0])])
        parts.append((x[rows][:, :b.q_steps] if side == "right" else x[rows][:, T - b.q_steps:]).reshape(-1))
    back = np.concatenate([*parts, [0.0]])[attention_unbucket_index(plan, B, T, side)].reshape(B, T)
    valid = valid_mask(lengths, T, side)
    assert np.array_equal(back[valid], x[valid])
    window = np.zeros((B, T), bool)
    for b in plan:
        window[b.rows, :b.q_steps] = True
    window = window if side == "right" else window[:, ::-1]
    assert np.array_equal(back[~window], np.zeros((~window).sum())), "steps outside every window read the zero"


def cost_of(fw, device: str = "cpu") -> dict:
    return cost_for(importlib.import_module(f"adapters.{fw.name}.attention").BUCKET_COST, device)


@pytest.fixture
def free_calls(monkeypatch):
    """Every framework's bucket cost model with free calls and tokens: as many buckets as the planner allows."""
    for name in ("torch", "jax", "tensorflow"):
        module = importlib.import_module(f"adapters.{name}.attention")
        for cost in module.BUCKET_COST.values():  # every device's
            monkeypatch.setitem(cost, "call_cost", 0.0)
            monkeypatch.setitem(cost, "token_cost", 0.0)


#: (q lengths, kv lengths or None, Tq, Tk): a zero-length row, a keyless valid query (cross), mixed lengths
CASES = {"self": ((9, 0, 3, 12, 1, 6, 12, 2), None, 12, 12),
         "cross": ((5, 0, 3, 11, 4, 7, 2, 9), (13, 6, 0, 2, 9, 1, 13, 4), 11, 13)}


@pytest.mark.parametrize("case,causal", [("self", False), ("self", True), ("cross", False)])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_several_buckets_match_reference(fw, free_calls, case, causal, side, dtype, device, ref):
    qls, kvls, Tq, Tk = CASES[case]
    ql = np.array(qls)
    kvl = ql if kvls is None else np.array(kvls)
    q, k, v, cot = fam.qkv(ql, kvl, Tq, Tk, 8, 2, 3, side=side, dtype=dtype, fill=np.nan, seed=4)
    kvarg = None if kvls is None else kvl
    want_out, want_grads = fam.reference(ref, q, k, v, ql, kvarg, cot, causal=causal, side=side)
    args = [fw.asarray(x, device) for x in (q, k, v)]
    out, grads = fw.attention_vjp(*args, ql, kvarg, cot, causal=causal, side=side, strategy="bucketed",
                                  device=device)
    work = (ql > 0) & (kvl > 0)  # free calls: one bucket per distinct (q_len, kv_len) of a row with work
    most = min(cost_of(fw, device).get("max_buckets", MAX_BUCKETS), len(set(zip(ql[work], kvl[work], strict=True))))
    assert out.kernel.endswith(f"bucketed[{most}]"), f"free calls should give {most} buckets: {out.kernel}"
    res = fam.compare_attention(fw, out, grads, want_out, want_grads, valid_mask(ql, Tq, side),
                                valid_mask(kvl, Tk, side), tolerance(dtype, device))
    assert all(ok for ok, _ in res.values()), f"{fw.name} bucketed {case} causal={causal} {side} {dtype}: {res}"
    fwd = fw.attention(*args, ql, kvarg, causal=causal, side=side, strategy="bucketed", device=device)
    assert np.array_equal(fw.to_numpy(fwd.outputs), fw.to_numpy(out.outputs)), "forward-only differs from vjp's"


@given(batch=ragged_batches(max_batch=6, max_len=7), kv=st.none() | st.tuples(st.lists(st.integers(0, 7), min_size=6,
                                                                           max_size=6), st.integers(0, 2)),
       heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]), dh=st.integers(1, 4), causal=st.booleans())
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_bucketed_sizes_and_lengths(fw, free_calls, batch, kv, heads, dh, causal, device, ref):
    """Any batch, lengths (zero included), padded lengths, side, heads and head size, self (causal or not) or cross
    attention with its own key lengths: bucketed with free calls (as many buckets as allowed) equals the reference
    in float64."""
    lengths, T, side, seed = batch
    ql = np.array(lengths)
    kvl, Tk = (ql, T) if kv is None else (np.array(kv[0][:ql.size]), max(max(kv[0][:ql.size]) + kv[1], 1))
    causal = causal and kv is None
    q, k, v, cot = fam.qkv(ql, kvl, T, Tk, *heads, dh, side=side, dtype="float64", fill=np.nan, seed=seed)
    kvarg = None if kv is None else kvl
    want_out, want_grads = fam.reference(ref, q, k, v, ql, kvarg, cot, causal=causal, side=side)
    out, grads = fw.attention_vjp(*(fw.asarray(x, device) for x in (q, k, v)), ql, kvarg, cot, causal=causal,
                                  side=side, strategy="bucketed", device=device)
    res = fam.compare_attention(fw, out, grads, want_out, want_grads, valid_mask(ql, T, side),
                                valid_mask(kvl, Tk, side), tolerance("float64", device))
    assert all(ok for ok, _ in res.values()), f"{fw.name} {out.kernel} q={ql} kv={kvl} T={T}/{Tk} {side}: {res}"


@pytest.mark.parametrize("fw", framework_params(("jax",)), indirect=True)
def test_compiled_shapes_stay_on_the_ladders(fw, device, ref):
    """A second batch whose buckets round to the same ladder shapes compiles nothing new; a bucket padded to its
    ladder batch with copies of a row (5 rows -> 6) leaves that row's results as they are (both batches exact)."""
    T = 64
    first, second = np.array([64, 40, 30, 9, 5, 3, 2, 1]), np.array([3, 61, 1, 29, 39, 6, 10, 2])
    plans = [plan_attention(x, x, T, T, **cost_of(fw, device)) for x in (first, second)]
    shapes = [[(b.batch, b.q_steps, b.kv_steps) for b in plan] for plan in plans]
    assert shapes[0] == shapes[1] and len(shapes[0]) > 1, f"the two batches must plan alike: {shapes}"
    assert any(b.batch > b.rows.size for b in plans[0]), "a bucket must be padded with copies of a row"

    def run(lengths):
        q, k, v, cot = fam.qkv(lengths, lengths, T, T, 2, 2, 4, side="right", fill=np.nan, seed=1)
        out, grads = fw.attention_vjp(*(fw.asarray(x, device) for x in (q, k, v)), lengths, None, cot,
                                      strategy="bucketed", device=device)
        want_out, want_grads = fam.reference(ref, q, k, v, lengths, None, cot, causal=False, side="right")
        valid = valid_mask(lengths, T, "right")
        res = fam.compare_attention(fw, out, grads, want_out, want_grads, valid, valid, tolerance("float32", device))
        assert all(ok for ok, _ in res.values()), f"{out.kernel} {lengths}: {res}"
        return out.kernel

    kernel = run(first)
    before = fw.compile_count()
    prefer = getattr(importlib.import_module(f"adapters.{fw.name}.attention"), "BUCKET_PREFER", ())
    inner = [*prefer, *fw.attention_strategies()][0]  # (every strategy runs for this spec)
    assert run(second) == kernel == f"{fw.strategy_table('attention')[inner].kernel} bucketed[{len(shapes[0])}]"
    assert fw.compile_count() == before, "new lengths on the same ladder shapes recompiled"


@pytest.mark.parametrize("fw", framework_params(("tensorflow",)), indirect=True)
def test_tensorflow_runs_all_buckets_in_one_graph_for_any_shapes(fw, device, ref):
    """TensorFlow runs every bucket of a plan in one tf.function whose axes are of unknown length: batches whose
    buckets have other shapes (exact lengths, no ladders), a longer padded length and another batch size trace
    nothing new once a plan with as many buckets has run, forward and VJP alike; each result is exact."""
    from adapters.tensorflow.attention import BUCKET_COST

    assert BUCKET_COST["cpu"]["ladders"] is False, "the one graph takes any shape: buckets trim to exact lengths"
    batches = [(np.array([64, 40, 30, 9, 5, 3, 2, 1]), 64), (np.array([3, 61, 1, 29, 39, 6, 10, 2]), 64),
               (np.array([70, 2, 33, 12, 0, 7, 50, 4, 1, 19]), 80)]
    plans = [[(b.batch, b.q_steps, b.kv_steps) for b in plan_attention(x, x, T, T, **cost_of(fw, device))]
             for x, T in batches]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) > 1 and len({tuple(p) for p in plans}) == 3, plans
    counts = []
    for lengths, T in batches:
        q, k, v, cot = fam.qkv(lengths, lengths, T, T, 2, 2, 4, side="right", dtype="float64", fill=np.nan, seed=1)
        args = [fw.asarray(x, device) for x in (q, k, v)]
        out, grads = fw.attention_vjp(*args, lengths, None, cot, strategy="bucketed", device=device)
        fwd = fw.attention(*args, lengths, None, strategy="bucketed", device=device)
        counts.append(fw.compile_count())
        assert out.kernel == fwd.kernel == f"tf-einsum bucketed[{len(plans[0])}]", out.kernel
        want_out, want_grads = fam.reference(ref, q, k, v, lengths, None, cot, causal=False, side="right")
        valid = valid_mask(lengths, T, "right")
        res = fam.compare_attention(fw, out, grads, want_out, want_grads, valid, valid, tolerance("float64", device))
        assert all(ok for ok, _ in res.values()), res
        assert np.array_equal(fw.to_numpy(fwd.outputs), fw.to_numpy(out.outputs)), "forward-only differs from vjp's"
    assert counts[0] == counts[1] == counts[2], f"other bucket shapes retraced: trace counts {counts}"


class _Unit:
    def __init__(self, ok: bool) -> None:
        self.supports = lambda a, **spec: None if ok else "not here"


class _Tables:
    """An adapter stand-in: only the attention strategy table matters to `inner_strategy`."""

    def __init__(self, **ok: bool) -> None:
        self.table = {name: _Unit(v) for name, v in ok.items()}

    def strategy_table(self, family):
        return self.table


def test_the_inner_strategy_is_the_preferred_one_where_it_runs_else_the_default():
    from adapters.attention_buckets import inner_strategy

    a = _Tables(dpa=True, einsum=True, slow=False, bucketed=True)
    assert inner_strategy(a) == "dpa", "no preference: the default, the first other strategy"
    assert inner_strategy(a, ("einsum",)) == "einsum"
    assert inner_strategy(a, ("slow", "einsum")) == "einsum", "a preferred strategy that cannot run is passed over"
    assert inner_strategy(a, ("slow",)) == "dpa"
    assert inner_strategy(_Tables(slow=False, bucketed=True), ("slow",)) is None


def test_tensorflow_buckets_run_einsum():
    """TF's buckets run "einsum", 6-11% faster on CPU than its default "keras_dpa" as the inner strategy."""
    import adapters
    from tests.conftest import require

    require("tensorflow")
    fw = adapters.get("tensorflow")
    ql = np.array([6, 2, 0, 5, 1, 6])
    q, k, v = (np.random.default_rng(0).standard_normal((6, 6, 2, 4)).astype("float32") for _ in range(3))
    out = fw.attention(q, k, v, ql, None, strategy="bucketed")
    assert out.kernel.startswith("tf-einsum bucketed["), out.kernel


def test_torch_plans_one_trimmed_call_on_a_gpu_where_the_h200_timed_buckets_slower(ref):
    """On an H200 one SDPA call of B=32 T=512 took 4.0 ms and the CPU's plan (8 buckets) 27-29 ms: on the GPU a
    call costs ~7M scores, so that batch is one bucket trimmed to its longest row (the CPU still plans 8); that plan,
    run here, is exact. A batch with far more padded work still splits on the GPU."""
    require("torch")
    import adapters.torch.attention as ta

    for profile in ("lognormal", "zipf"):
        L = lengths_for(profile, 32, 512)
        gpu, cpu = (plan_attention(L, L, 512, 512, **cost_for(ta.BUCKET_COST, d)) for d in ("gpu", "cpu"))
        assert [(b.rows.size, b.q_steps) for b in gpu] == [(32, L.max())] and len(cpu) == 8
    L = lengths_for("lognormal", 64, 2048)
    assert len(plan_attention(L, L, 2048, 2048, **cost_for(ta.BUCKET_COST, "gpu"))) >= 2
    jax_costs = importlib.import_module("adapters.jax.attention").BUCKET_COST
    assert cost_for(jax_costs, "gpu") is jax_costs["cpu"], "a device without its own model takes the CPU's"
    fw, (ql, kvl, Tq, Tk) = adapters.get("torch"), CASES["cross"]
    ql, kvl = np.array(ql), np.array(kvl)
    q, k, v, cot = fam.qkv(ql, kvl, Tq, Tk, 8, 2, 16, side="left", dtype="float32", fill=np.nan, seed=2)
    want_out, want_grads = fam.reference(ref, q, k, v, ql, kvl, cot, causal=False, side="left")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ta.BUCKET_COST, "cpu", ta.BUCKET_COST["gpu"])
        out, grads = fw.attention_vjp(*(fw.asarray(x) for x in (q, k, v)), ql, kvl, cot, side="left",
                                      strategy="bucketed")
    assert out.kernel.endswith("bucketed[1]"), out.kernel
    res = fam.compare_attention(fw, out, grads, want_out, want_grads, valid_mask(ql, Tq, "left"),
                                valid_mask(kvl, Tk, "left"), tolerance("float32", "cpu"))
    assert all(ok for ok, _ in res.values()), res
