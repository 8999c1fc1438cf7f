"""The "bucketed" attention strategy: one host-side driver for every framework (imports no framework).

A padded batch makes attention compute B x Tq x Tk scores while the rows need only sum(q_len x kv_len): at 70%
padding a tenth of the work is real. Bucketing gives most of it back, exactly: on the host (lengths are NumPy when
a strategy runs) the rows that do any work are sorted by q_len x kv_len and cut into a few buckets by the shared
planner (`adapters.spec.plan_attention`, with the framework's own cost per call and per token); each bucket's rows
are trimmed on the padded side to the bucket's longest query and key rows and gathered (a step dropped is padding
for every row of the bucket, and positions still count from each row's first valid step, so the causal mask and
left padding mean the same), run through the framework's own exact strategy for the spec (the first of the
strategies it prefers for buckets whose precondition holds, e.g. TensorFlow's einsum, else its default: the first
other strategy whose precondition holds, e.g. SDPA for torch), and the results are gathered back in one pass per
tensor (each original (row, step) reads its bucket's value, or a zero). Gradients come from each bucket's own VJP
and are gathered back the same way, so padded steps get exactly 0. Rows without work (no valid query or no valid
key) are in no bucket: their outputs and gradients are 0, as the contract says.

Compiled frameworks (JAX, TensorFlow) round each bucket's batch and lengths up the shape ladders, so the inner
strategy compiles one function per bucket shape, a small set whatever lengths come (`compile_count` counts them;
the unit's `programs` names them from the plan, compiling nothing, so the bench counts them over many batches);
eager PyTorch trims to the exact lengths. Kernel: "<inner kernel> bucketed[k]", k the buckets that ran.

Each framework provides two primitives: `_take_rows(x, index)` (gather along the batch axis with a host index) and
`_regather(parts, index, shape)` (flatten each part's first two axes, concatenate, append one zero entry, gather
with a host flat index, reshape).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from adapters.spec import AttnOut, Strategy, attention_spec, attention_unbucket_index, plan_attention

NAME = "bucketed"


def inner_strategy(a, prefer: tuple[str, ...] = (), **spec: Any) -> str | None:
    """The exact strategy a bucket runs: the first of the framework's `prefer`red strategies whose precondition
    holds for this spec, else its default (its first other strategy whose precondition holds), or None when there
    is none."""
    table = a.strategy_table("attention")
    for name in [*prefer, *table]:
        if name != NAME and table[name].supports(a, **spec) is None:
            return name
    return None


def _crop(x, T: int, steps: int, side: str):
    """The `steps` time steps of the valid side of a padded [B, T, ...] array."""
    return x[:, :steps] if side == "right" else x[:, T - steps:]


def bucket_rows(b, ql: np.ndarray, kvl: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """A bucket's original rows padded to its batch with copies of its first row, and their (query, key) lengths,
    0 for the padding copies (so they do no work and read nothing)."""
    n = b.rows.size
    rows = np.concatenate([b.rows, np.full(b.batch - n, b.rows[0])])
    return rows, [np.where(np.arange(b.batch) < n, x[rows], 0) for x in (ql, kvl)]


def window_index(rows: np.ndarray, T: int, steps: int, side: str) -> np.ndarray:
    """int64 [rows * steps]: the flat positions in a [B * T, ...] view of each row's `steps` steps on its valid
    side (the trimmed window `_crop` takes), row after row."""
    start = 0 if side == "right" else T - steps
    return (rows[:, None] * T + start + np.arange(steps)[None, :]).reshape(-1).astype(np.int64)


def _run(a, cost: dict, prefer: tuple[str, ...], graph, q, k, v, ql, kvl, cot, causal, side, scale,
         device) -> tuple[AttnOut, dict | None]:
    ql, kvl = np.asarray(ql), np.asarray(kvl)
    B, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
    spec = attention_spec(device, a.dtype_name(q), causal, q.shape[2], k.shape[2], side, ql, kvl, Tq, Tk,
                          q.shape[3])
    inner_name = inner_strategy(a, prefer, **spec)
    inner = a.strategy_table("attention")[inner_name]
    plan = plan_for(cost, ql, kvl, Tq, Tk, device)

    def call(q, k, v, ql, kvl, cot):
        if cot is None:
            return inner.forward(a, q, k, v, ql, kvl, causal, side, scale, device), None
        return inner.vjp(a, q, k, v, ql, kvl, cot, causal, side, scale, device)

    q, k, v = (a.asarray(x, device) for x in (q, k, v))
    cot = None if cot is None else a.asarray(cot, device)
    if not trims(plan, B, Tq, Tk):
        out, grads = call(q, k, v, ql, kvl, cot)  # nothing to trim (or no work at all): the inner call as it is
        return AttnOut(out.outputs, f"{out.kernel} bucketed[1]"), grads
    if graph is not None:
        return graph(a, inner_name, plan, q, k, v, ql, kvl, cot, causal, side, scale, device)
    parts = []
    for b in plan:
        rows, lens = bucket_rows(b, ql, kvl)
        take = lambda x, T, s: a._take_rows(_crop(x, T, s, side), rows)  # noqa: E731 - trim, then copy
        parts.append(call(take(q, Tq, b.q_steps), take(k, Tk, b.kv_steps), take(v, Tk, b.kv_steps), *lens,
                          None if cot is None else take(cot, Tq, b.q_steps)))
    q_index = attention_unbucket_index(plan, B, Tq, side)
    out = AttnOut(a._regather([p[0].outputs for p in parts], q_index, q.shape),
                  f"{parts[0][0].kernel} bucketed[{len(plan)}]")
    if cot is None:
        return out, None
    kv_index = attention_unbucket_index(plan, B, Tk, side, kv=True)
    return out, {name: a._regather([p[1][name] for p in parts], index, x.shape)
                 for name, x, index in (("q", q, q_index), ("k", k, kv_index), ("v", v, kv_index))}


def plan_for(cost: dict, ql: np.ndarray, kvl: np.ndarray, Tq: int, Tk: int, device: str) -> list:
    """The buckets of a batch with query and key lengths `ql`, `kvl` under the framework's cost model `cost` on
    `device`: what the strategy runs, and what its `programs` name."""
    return plan_attention(ql, kvl, Tq, Tk, **cost_for(cost, device))


def trims(plan: list, B: int, Tq: int, Tk: int) -> bool:
    """Whether `plan` runs buckets at all: not when no row has work (an empty plan) nor when one untrimmed bucket
    holds every row in its order (the inner strategy's call on the whole batch runs then)."""
    return bool(plan) and not (len(plan) == 1 and plan[0].rows.size == B
                               and (plan[0].q_steps, plan[0].kv_steps) == (Tq, Tk))


def cost_for(cost: dict, device: str) -> dict:
    """A framework's bucket cost model (one dict per device) for `device`: its own, else the CPU's."""
    return cost.get(device, cost["cpu"])


def bucketed_unit(cost: dict, prefer: tuple[str, ...] = (), graph=None, graph_programs=None) -> Strategy:
    """The framework's "bucketed" attention unit, planned with its cost model `cost` (`plan_attention`'s keywords:
    call_cost and token_cost in (row, query, key) scores, ladders for compiled frameworks), one per device
    ({"cpu": ..., "gpu": ...}; a device it lacks takes the CPU's). The dicts are read at every call, so they are
    the framework module's one place for these numbers (and tests may change them).
    `prefer`: strategies the buckets run, where their precondition holds, instead of the framework's default.
    `graph`: where a framework runs every bucket in one compiled call, `graph(a, inner, plan, q, k, v, ql, kvl, cot,
    causal, side, scale, device) -> (AttnOut, grads or None)` (inner: the strategy name the buckets run), used
    whenever the plan trims; it does the same takes and gathers back (`bucket_rows`, `window_index`,
    `attention_unbucket_index`) inside the call.
    `graph_programs`: where `graph`'s compiled programs follow the plan, `graph_programs(plan) -> set` of their
    keys (JAX: one per bucket shape; TensorFlow: one per bucket count); the unit's `programs` then names them, or
    the inner strategy's one call where the plan trims nothing (`Strategy.programs`; spec: {"device": ...}, with
    "kv_lengths" and "Tk" for cross-attention, else the keys are the queries')."""

    def forward(a, q, k, v, ql, kvl, causal, side, scale, device):
        return _run(a, cost, prefer, graph, q, k, v, ql, kvl, None, causal, side, scale, device)[0]

    def vjp(a, q, k, v, ql, kvl, cot, causal, side, scale, device):
        return _run(a, cost, prefer, graph, q, k, v, ql, kvl, cot, causal, side, scale, device)

    def supports(a, **spec: Any) -> str | None:
        return None if inner_strategy(a, prefer, **spec) else f"no other {a.name} attention strategy runs for {spec}"

    def programs(a, spec: dict, lengths: np.ndarray, T: int, vjp: bool, compiled: frozenset) -> set:
        kvl, Tk = np.asarray(spec.get("kv_lengths", lengths), np.int64), int(spec.get("Tk", T))
        plan = plan_for(cost, lengths, kvl, T, Tk, spec["device"])
        return set(graph_programs(plan)) if trims(plan, lengths.size, T, Tk) else {("inner",)}

    return Strategy(NAME, forward, vjp, supports=supports, programs=None if graph_programs is None else programs,
                    doc="rows sorted by q_len x kv_len into a few buckets (cost model), each trimmed and run by the "
                        "framework's preferred (else default) exact strategy, results gathered back")
