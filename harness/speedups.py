"""The ratios `varlen bench` prints at the end of a sweep: for each strategy op, framework and shape, the fastest
strategy on each length profile against that framework's padded baseline (its fastest strategy on the fully padded
`equal` profile of the same batch and length) and against the ideal (the baseline scaled by the valid share of the
work); on equal lengths, every strategy's time over the fastest one's (what a strategy costs on unpadded
batches). Each line names the strategy, the kernel that ran and the device; where the pair was also timed side by
side (`harness.paired`), that ratio follows (on equal lengths: each profile's winner against the fastest there).
Where other strategies' sweep times came within the machine's drift of the fastest one's (`RUNOFF`), they are timed
side by side too and the highest side-by-side ratio wins (`runoff`): which of two strategies 7% apart is faster is
not something a sweep that drifts 20-30% between its cases can say. Plain dicts in, text lines out."""
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


def contenders(candidates: Sequence[T], time: Callable[[T], float], strategy: Callable[[T], Any]) -> list[T]:
    """The fastest candidate of each strategy, fastest first, those whose `time` is within `RUNOFF` of the fastest
    one's (at most `MAX_CONTENDERS`): the strategies a sweep's timings cannot order."""
    best: dict[Any, T] = {}
    for c in sorted(candidates, key=time):
        best.setdefault(strategy(c), c)
    ranked = list(best.values())
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


def _winners(records: list[dict], ops: tuple[str, ...], side: dict | None = None):
    """Per shape with a measured `equal` baseline: (shape, its equal-length records, the padded baseline (the
    fastest of them), [(profile, that profile's winner (`runoff` with the side-by-side records `side`), its
    contenders) for every other profile, in order])."""
    time, strategy = (lambda r: r["median_s"]), (lambda r: r["strategy"])
    side = side or {}
    for shape, by_profile in _groups(records, ops):
        base = min(by_profile["equal"], key=time)
        ratio = lambda r, p: side[k]["ratio"] if (k := (shape, p, r["strategy"], base["strategy"])) in side else None
        yield (shape, by_profile["equal"], base,
               [(p, runoff(recs, time, strategy, lambda r, p=p: ratio(r, p)), contenders(recs, time, strategy))
                for p, recs in sorted(by_profile.items()) if p != "equal"])


def pairs(records: list[dict], ops: tuple[str, ...]) -> list[tuple[dict, dict]]:
    """(padded baseline, strategy) records to time side by side: the contenders (`contenders`: the fastest
    strategy and those the sweep cannot tell from it) of every (shape, non-equal profile) line `lines` prints, then,
    on equal lengths, every strategy that contends on some other profile but is not the baseline's (what the
    recommended strategy costs where there is no padding to skip, whichever contender wins)."""
    out = []
    for _, equal, base, bests in _winners(records, ops):
        out += [(base, c) for _, _, cs in bests for c in cs]
        winners = {c["strategy"] for _, _, cs in bests for c in cs} - {base["strategy"]}
        on_equal = {}
        for r in sorted(equal, key=lambda r: r["median_s"]):
            on_equal.setdefault(r["strategy"], r)
        out += [(base, on_equal[s]) for s in sorted(winners) if s in on_equal]
    return out


def lines(records: list[dict], ops: tuple[str, ...], paired: list[dict] = ()) -> list[str]:
    """One line per (shape, non-equal profile) with a measured `equal` baseline, for the records of `ops`: the
    profile's winner (`runoff`) and the other contenders timed side by side; `paired`: `harness.paired` records of
    those pairs (the latest one of a pair is shown)."""
    side = {(group_of(p), p["profile"], p["strategy"], p["base_strategy"]): p
            for p in sorted(paired, key=lambda p: p["time"])}
    several = lambda field: len({r.get(field) for r in records}) > 1  # named in each line only where it varies
    show_dtype, show_host = several("dtype"), several("host")
    out = []
    for shape, equal, base, bests in _winners(records, ops, side):
        fields = dict(zip(GROUP, shape, strict=True))
        head = (f"{fields['op']} {fields['framework']} {fields['device']} B={fields['batch']} T={fields['max_len']}"
                + (f" {fields['cell']} H={fields['hidden']}" if fields.get("cell") else "")
                + (f" {fields['dtype']}" if show_dtype else "")
                + (f" on {fields['host']}" if show_host else ""))
        costs = sorted((r["median_s"] / base["median_s"], r["strategy"], r["kernel"]) for r in equal)
        on_equal = [(s, side[k]) for s in sorted({r["strategy"] for r in equal})
                    if (k := (shape, "equal", s, base["strategy"])) in side]
        out.append(f"{head} equal (0% padding): time / fastest: "
                   + ", ".join(f"{s} [{k}] {c:.2f}" for c, s, k in costs)
                   + "".join(f"; side by side {s} {1 / p['ratio']:.2f} (rounds {1 / p['ratio_p75']:.2f}-"
                             f"{1 / p['ratio_p25']:.2f})" for s, p in on_equal))
        for profile, best, rivals in bests:
            x = base["median_s"] / best["median_s"]
            ideal = 1 / best["ideal_share"] if best.get("ideal_share") else float("nan")
            p = side.get((shape, profile, best["strategy"], base["strategy"]))
            others = [(r, q) for r in rivals if r is not best
                      and (q := side.get((shape, profile, r["strategy"], base["strategy"])))]
            out.append(f"{head} {profile} ({best['padding_fraction']:.0%} padding): {best['strategy']} "
                       f"[{best['kernel']}] {x:.2f}x the padded baseline ({base['strategy']} [{base['kernel']}] "
                       f"on equal lengths, {base['median_s'] * 1e3:.1f} ms), ideal {ideal:.2f}x "
                       f"({x / ideal:.2f} of it)"
                       + (f"; side by side {p['ratio']:.2f}x (rounds {p['ratio_p25']:.2f}-{p['ratio_p75']:.2f}, "
                          f"{p['ratio'] / ideal:.2f} of the ideal)" if p else "")
                       + ("; also side by side: " + ", ".join(
                           f"{r['strategy']} [{r['kernel']}] {q['ratio']:.2f}x (its sweep time "
                           f"{r['median_s'] / best['median_s']:.2f}x this one's)" for r, q in others)
                          if p and others else "")
                       + (f"; new batches compiled {compiled_shapes(best['stream_compiles'], best['stream_batches'])} "
                          f"({best['stream_compile_s']:.1f} s: {best['stream_compile_s'] / best['median_s']:.0f} "
                          f"warm calls)" if best.get("stream_compiles") else ""))
    return out


def compiled_shapes(n: int, batches: int) -> str:
    """"<n> shape(s) over <batches>": what fresh batches compiled (`harness.bench.stream_compiles`), as the bench
    lines and the report say it."""
    return f"{int(n)} shape{'s' if n != 1 else ''} over {int(batches)}"
