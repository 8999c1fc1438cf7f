"""The ratios `varlen bench` prints at the end of a sweep: for each strategy op, framework and shape, the fastest
strategy on each length profile against that framework's padded baseline (its fastest strategy on the fully padded
`equal` profile of the same batch and length: `baseline`) and against the ideal (the baseline scaled by the valid
share of the work); on equal lengths, every strategy's time over the sweep's fastest one's (what a strategy costs on
unpadded batches). Each line names the strategy, the kernel that ran and the device; where the pair was also timed
side by side (`harness.paired`), that ratio follows (on equal lengths: each profile's winner against the baseline).
Where other strategies' sweep times came within the machine's drift of the fastest one's (`RUNOFF`), they are timed
side by side too and the highest side-by-side ratio wins (`runoff`): which of two strategies 7% apart is faster is
not something a sweep that drifts 20-30% between its cases can say. The same holds for the baseline itself, so the
pairs are timed in two rounds: on equal lengths first (`baseline_pairs`: the sweep's fastest against the strategies
that contend there or elsewhere; the fastest side by side is the baseline), then every profile's contenders against
that baseline (`pairs`). Plain dicts in, text lines out."""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

#: record fields that, with the profile left out, make two measurements comparable
SHAPE = ("op", "device", "dtype", "batch", "max_len", "framework", "cell", "hidden", "num_layers", "bidirectional")
#: `SHAPE` and the machine: records of a sweep spread over a cluster's nodes are compared per host only
GROUP = (*SHAPE, "host")
#: a strategy whose sweep time is within this factor of its profile's fastest is a contender: a sweep times its
#: cases one after another and a shared machine drifts 20-30% between them (the 2-core CI machine), so the sweep
#: cannot order two such strategies; each contender is timed side by side against the baseline (`pairs`) and the
#: highest ratio wins (`runoff`). In the clean-clone demo at c3ae666 the sweep put torch's LSTM time_sliced 7% ahead
#: of concat_rows on zipf lengths (9.0 vs 9.6 ms) and printed 3.65x side by side; interleaved in one process
#: concat_rows is the faster, 6.9-7.7 vs 8.1-8.7 ms. 7 of the demo's 90 speedup lines had a runner-up within 1.3.
RUNOFF = 1.3
#: at most this many contenders per profile, the fastest included
MAX_CONTENDERS = 3

T = TypeVar("T")


def _groups(records: list[dict], ops: tuple[str, ...]) -> list[tuple[tuple, dict[str, list[dict]]]]:
    """(shape, {profile: measured records}) of `ops`, the shapes with a measured `equal` baseline, in order."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("status") == "ok" and r.get("op") in ops and r.get("median_s"):
            groups[group_of(r)][r["profile"]].append(r)
    return [(s, g) for s, g in sorted(groups.items(), key=lambda kv: str(kv[0])) if "equal" in g]


def shape_of(rec: dict) -> tuple:
    """A record's `SHAPE` fields, in order (what a baseline and the strategies it is compared with share)."""
    return tuple(rec.get(k) for k in SHAPE)


def group_of(rec: dict) -> tuple:
    """A record's `GROUP` fields, in order: its `SHAPE` and the host it was measured on."""
    return tuple(rec.get(k) for k in GROUP)


def fastest_each(candidates: Sequence[T], time: Callable[[T], float], strategy: Callable[[T], Any]) -> dict[Any, T]:
    """strategy -> its fastest candidate, fastest first."""
    best: dict[Any, T] = {}
    for c in sorted(candidates, key=time):
        best.setdefault(strategy(c), c)
    return best


def contenders(candidates: Sequence[T], time: Callable[[T], float], strategy: Callable[[T], Any]) -> list[T]:
    """The fastest candidate of each strategy, fastest first, those whose `time` is within `RUNOFF` of the fastest
    one's (at most `MAX_CONTENDERS`): the strategies a sweep's timings cannot order."""
    ranked = list(fastest_each(candidates, time, strategy).values())
    return [c for c in ranked if time(c) <= RUNOFF * time(ranked[0])][:MAX_CONTENDERS] if ranked else []


def runoff(candidates: Sequence[T], time: Callable[[T], float], strategy: Callable[[T], Any],
           ratio: Callable[[T], float | None]) -> T:
    """The winner among `candidates` (one profile's records of one framework and shape): the sweep's fastest,
    unless it and other `contenders` were timed side by side against the same baseline (`ratio`: baseline time over
    the candidate's, None or NaN where not timed); then the contender with the highest such ratio. The same rule
    for `varlen bench`'s lines and the report's recommendation."""
    timed = lambda c: (r := ratio(c)) is not None and not math.isnan(r)  # noqa: E731
    ranked = contenders(candidates, time, strategy)
    if not ranked:
        raise ValueError("runoff of no candidates")
    if not timed(ranked[0]):
        return ranked[0]
    return max((c for c in ranked if timed(c)), key=ratio)


def baseline(equal: Sequence[T], time: Callable[[T], float], strategy: Callable[[T], Any],
             ratio: Callable[[T], float | None], low: Callable[[T], float | None]) -> T:
    """The padded baseline among one framework and shape's `equal` records: the sweep's fastest, unless strategies
    timed side by side against it there (`ratio`: the median of the rounds' ratios, the sweep's fastest's time over
    the strategy's; `low`: their 25th percentile; None or NaN where not timed) were faster in at least three rounds
    of four (`low` above 1); then the one of those with the highest ratio. Every strategy so timed counts, not only
    the sweep's `contenders`: in the clean-clone demo at a9af915 the sweep put TF's LSTM concat_rows at 1.54x
    Keras's time on equal lengths (90 vs 58 ms) and side by side it took 0.86 of it (rounds 0.84-0.88), and torch's
    time_sliced, 1.04x packed's in the sweep, 0.93 of it (0.91-0.96); every speedup over the sweep's pick was that
    much too high. A strategy as fast as the sweep's pick within the rounds' spread does not take its place."""
    first = min(equal, key=time)
    known = lambda x: x is not None and not math.isnan(x)  # noqa: E731
    faster = [(x, r) for s, r in fastest_each(equal, time, strategy).items() if s != strategy(first)
              and known(x := ratio(r)) and known(q := low(r)) and q > 1]
    return max(faster, key=lambda t: t[0])[1] if faster else first


def _side(paired: Sequence[dict]) -> dict:
    """(group, profile, strategy, baseline strategy) -> the latest `paired` record of that pair."""
    return {(group_of(p), p["profile"], p["strategy"], p["base_strategy"]): p
            for p in sorted(paired, key=lambda p: p["time"])}


def _winners(records: list[dict], ops: tuple[str, ...], side: dict | None = None):
    """Per shape with a measured `equal` baseline: (shape, its equal-length records, the sweep's fastest of them,
    the padded baseline (`baseline`, with the side-by-side records `side`), [(profile, that profile's winner
    (`runoff` against the baseline), its contenders) for every other profile, in order])."""
    time, strategy = (lambda r: r["median_s"]), (lambda r: r["strategy"])
    side = side or {}
    for shape, by_profile in _groups(records, ops):
        equal = by_profile["equal"]
        first = min(equal, key=time)
        ratio = lambda r, p, b, f="ratio": side[k][f] if (k := (shape, p, r["strategy"], b)) in side else None  # noqa: E731
        base = baseline(equal, time, strategy, lambda r: ratio(r, "equal", first["strategy"]),
                        lambda r: ratio(r, "equal", first["strategy"], "ratio_p25"))
        yield (shape, equal, first, base,
               [(p, runoff(recs, time, strategy, lambda r, p=p: ratio(r, p, base["strategy"])),
                 contenders(recs, time, strategy)) for p, recs in sorted(by_profile.items()) if p != "equal"])


def _on_equal(equal: list[dict], strategies: set) -> list[dict]:
    """The fastest equal-length record of each of `strategies` that has one, in the strategies' order."""
    fastest = fastest_each(equal, lambda r: r["median_s"], lambda r: r["strategy"])
    return [fastest[s] for s in sorted(strategies) if s in fastest]


def _rivals(equal: list[dict], bests: list) -> set:
    """The strategies timed against the sweep's fastest on equal lengths: its `contenders` there (which may be the
    faster one) and every strategy that contends on some other profile (what it costs with no padding to skip)."""
    return ({r["strategy"] for r in contenders(equal, lambda r: r["median_s"], lambda r: r["strategy"])}
            | {c["strategy"] for _, _, cs in bests for c in cs})


def baseline_pairs(records: list[dict], ops: tuple[str, ...]) -> list[tuple[dict, dict]]:
    """The first round of side-by-side pairs, on equal lengths, which decide the padded baseline (`baseline`): the
    sweep's fastest there against each of its `_rivals`."""
    out = []
    for _, equal, first, _, bests in _winners(records, ops):
        out += [(first, r) for r in _on_equal(equal, _rivals(equal, bests) - {first["strategy"]})]
    return out


def pairs(records: list[dict], ops: tuple[str, ...], paired: Sequence[dict] = ()) -> list[tuple[dict, dict]]:
    """The second round, once `baseline_pairs` were timed (`paired`, their records): (padded baseline, strategy)
    records to time side by side, the contenders (`contenders`: the fastest strategy and those the sweep cannot
    tell from it) of every (shape, non-equal profile) line `lines` prints; and where the first round found a
    baseline other than the sweep's fastest, on equal lengths each of that round's strategies and the sweep's
    fastest against it (else the first round's pairs are those)."""
    out = []
    for _, equal, first, base, bests in _winners(records, ops, _side(paired)):
        out += [(base, c) for _, _, cs in bests for c in cs]
        if base["strategy"] != first["strategy"]:
            out += [(base, r) for r in _on_equal(equal, (_rivals(equal, bests) | {first["strategy"]})
                                                 - {base["strategy"]})]
    return out


def lines(records: list[dict], ops: tuple[str, ...], paired: list[dict] = ()) -> list[str]:
    """One line per (shape, non-equal profile) with a measured `equal` baseline, for the records of `ops`: the
    profile's winner (`runoff`) and the other contenders timed side by side; `paired`: `harness.paired` records of
    those pairs (the latest one of a pair is shown)."""
    side = _side(paired)
    several = lambda field: len({r.get(field) for r in records}) > 1  # named in each line only where it varies
    show_dtype, show_host = several("dtype"), several("host")
    out = []
    for shape, equal, first, base, bests in _winners(records, ops, side):
        fields = dict(zip(GROUP, shape, strict=True))
        head = (f"{fields['op']} {fields['framework']} {fields['device']} B={fields['batch']} T={fields['max_len']}"
                + (f" {fields['cell']} H={fields['hidden']}" if fields.get("cell") else "")
                + (f" {fields['dtype']}" if show_dtype else "")
                + (f" on {fields['host']}" if show_host else ""))
        costs = sorted((r["median_s"] / first["median_s"], r["strategy"], r["kernel"]) for r in equal)
        on_equal = [(s, side[k]) for s in sorted({r["strategy"] for r in equal})
                    if (k := (shape, "equal", s, base["strategy"])) in side]
        rebased = side[(shape, "equal", base["strategy"], first["strategy"])] if base is not first else None
        out.append(f"{head} equal (0% padding): time / fastest: "
                   + ", ".join(f"{s} [{k}] {c:.2f}" for c, s, k in costs)
                   + (f"; padded baseline {base['strategy']} [{base['kernel']}]: side by side {rebased['ratio']:.2f}x "
                      f"as fast as {first['strategy']} (rounds {rebased['ratio_p25']:.2f}-{rebased['ratio_p75']:.2f})"
                      if rebased else "")
                   + "".join(f"; side by side {s} {1 / p['ratio']:.2f} (rounds {1 / p['ratio_p75']:.2f}-"
                             f"{1 / p['ratio_p25']:.2f})" for s, p in on_equal))
        for profile, best, rivals in bests:
            x = first["median_s"] / best["median_s"]
            ideal = 1 / best["ideal_share"] if best.get("ideal_share") else None  # None: not one valid token
            p = side.get((shape, profile, best["strategy"], base["strategy"]))
            others = [(r, q) for r in rivals if r is not best
                      and (q := side.get((shape, profile, r["strategy"], base["strategy"])))]
            out.append(f"{head} {profile} ({best['padding_fraction']:.0%} padding): {best['strategy']} "
                       f"[{best['kernel']}] {x:.2f}x "
                       + ("the sweep's fastest on equal lengths (" if rebased else "the padded baseline (")
                       + f"{first['strategy']} [{first['kernel']}]{'' if rebased else ' on equal lengths'}, "
                       f"{first['median_s'] * 1e3:.1f} ms), "
                       + (f"ideal {ideal:.2f}x ({x / ideal:.2f} of it)" if ideal else "no valid token, so no ideal")
                       + (f"; side by side {p['ratio']:.2f}x "
                          + (f"the padded baseline {base['strategy']} [{base['kernel']}] " if rebased else "")
                          + f"(rounds {p['ratio_p25']:.2f}-{p['ratio_p75']:.2f}"
                          + (f", {p['ratio'] / ideal:.2f} of the ideal)" if ideal else ")") if p else "")
                       + ("; also side by side: " + ", ".join(
                           f"{r['strategy']} [{r['kernel']}] {q['ratio']:.2f}x (its sweep time "
                           f"{r['median_s'] / best['median_s']:.2f}x this one's)" for r, q in others)
                          if p and others else "")
                       + (f"; new batches compiled {compiled_shapes(best['stream_compiles'], best['stream_batches'])} "
                          f"({best['stream_compile_s']:.1f} s: {best['stream_compile_s'] / best['median_s']:.0f} "
                          f"warm calls){planned_shapes(best)}" if best.get("stream_compiles") else ""))
    return out


def compiled_shapes(n: int, batches: int) -> str:
    """"<n> shape(s) over <batches>": what fresh batches compiled (`harness.bench.stream_compiles`), as the bench
    lines and the report say it."""
    return f"{int(n)} shape{'s' if n != 1 else ''} over {int(batches)}"


def planned_shapes(r) -> str:
    """"; the planner: <n> over <batches> more (<m> in the last 100)" where the strategy's planner counted the
    programs of many more fresh batches (`harness.bench.planned_compiles`), else ""."""
    from harness.bench import PLAN_TAIL

    n, k, tail = (r.get(f) for f in ("plan_compiles", "plan_batches", "plan_compiles_tail"))
    if any(v is None or v != v for v in (n, k, tail)):  # missing, or NaN in a frame's row
        return ""
    return f"; the planner: {int(n)} over {int(k)} more ({int(tail)} in the last {PLAN_TAIL})"
