"""Speedups timed side by side (harness.paired): the baseline and the fastest strategy alternate, the order
flipping every round, so drift of the machine's speed cancels out of the ratio; `varlen bench` records and prints
it beside the sweep's own ratio, and `results.select` keeps one per pair."""
from __future__ import annotations

import json

import pytest

from harness import cli, paired, records, results, speedups


class FakeMachine:
    """A clock that only the calls advance: `base` costs 3 units, `best` 1, both times a speed factor that drifts
    (x1.5 per round: a machine slowing down between rounds, identical within one); after the warm-up, the first
    call after the other callable costs 10 units more (caches and free lists the other one left)."""

    def __init__(self) -> None:
        self.now, self.calls, self.speed = 0.0, [], 1.0

    def clock(self) -> float:
        return self.now

    def call(self, name: str, cost: float):
        def run():
            switch = len(self.calls) >= 2 and self.calls[-1] != name
            self.calls.append(name)
            self.now += (cost + 10.0 * switch) * self.speed * 1e-3
            if self.calls.count("base") == self.calls.count("best"):  # a round (or the warm-up) is over
                self.speed *= 1.5
        return run


def test_alternation_cancels_drift_and_flips_the_order():
    m = FakeMachine()
    timed = paired.interleave(m.call("base", 3.0), m.call("best", 1.0), budget_s=0.0, min_rounds=6, max_rounds=10,
                              clock=m.clock)
    assert timed["rounds"] == 6, "an exhausted budget stops at min_rounds"
    assert timed["number"] == 2, "samples of at least MIN_SAMPLE_S: 2 calls of the 1e-3 s strategy"
    assert timed["ratio"] == pytest.approx(3.0) and timed["ratio_p25"] == pytest.approx(3.0)
    assert timed["ratio_p75"] == pytest.approx(3.0)
    # separately timed medians drift 1.5x a round; side by side they keep the true 3x ratio
    assert timed["base_median_s"] / timed["median_s"] == pytest.approx(3.0)
    rounds = [m.calls[2 + 6 * i: 8 + 6 * i] for i in range(6)]
    assert m.calls[:2] == ["base", "best"], "each is called once first (warm)"
    assert len(m.calls) == 2 + 6 * 6, "per round and callable: one untimed switch call, then the 2 timed ones"
    assert rounds == [["base"] * 3 + ["best"] * 3, ["best"] * 3 + ["base"] * 3] * 3, "the order flips every round"


def test_the_ratio_is_the_median_of_the_rounds_ratios_not_the_ratio_of_the_medians():
    """Each round's ratio compares two calls timed moments apart; the two medians may come from different rounds.
    Eleven rounds as a CPU run of JAX's zipf LSTM had them: in three the strategy ran slow (10 ms) while the
    baseline did not, in four both ran fast, in four both slow. The medians' ratio (77 / 10 = 7.7) lies below the
    rounds' own quartiles; the figure is their median, 9.625."""
    base = [77.0] * 3 + [77.0] * 4 + [100.0] * 4
    best = [10.0] * 3 + [8.0] * 4 + [10.0] * 4
    got = paired.summary(base, best)
    assert (got["base_median_s"], got["median_s"]) == (77.0, 10.0)
    assert got["ratio"] == pytest.approx(9.625) and got["ratio_p25"] <= got["ratio"] <= got["ratio_p75"]
    assert (got["ratio_p25"], got["ratio_p75"]) == (pytest.approx(8.6625), pytest.approx(10.0))


def test_rounds_stop_at_the_budget_or_max_rounds():
    m = FakeMachine()
    timed = paired.interleave(m.call("base", 3.0), m.call("best", 1.0), budget_s=1e9, min_rounds=2, max_rounds=5,
                              clock=m.clock)
    assert timed["rounds"] == 5


def bench_rec(profile, strategy, median, **kw):
    return {"status": "ok", "op": "rnn_forward_backward", "device": "cpu", "dtype": "float32", "batch": 4,
            "max_len": 8, "framework": "torch", "cell": "lstm", "hidden": 2, "num_layers": 1,
            "bidirectional": False, "profile": profile, "strategy": strategy, "kernel": f"k-{strategy}",
            "median_s": median, "ideal_share": 0.25 if profile != "equal" else 1.0,
            "padding_fraction": 0.75 if profile != "equal" else 0.0, "key": f"{strategy}|{profile}", **kw}


def pair_keys(pairs):
    """(baseline key, strategy key) of each pair, in order."""
    return [(b["key"], w["key"]) for b, w in pairs]


RNN = ("rnn_forward_backward",)


def test_pairs_are_the_printed_lines_and_the_side_by_side_ratio_follows():
    recs = [bench_rec("equal", "a", 0.010), bench_rec("equal", "b", 0.008), bench_rec("zipf", "a", 0.004),
            bench_rec("zipf", "b", 0.002), bench_rec("lognormal", "a", 0.004)]
    assert pair_keys(speedups.baseline_pairs(recs, RNN)) == [("b|equal", "a|equal")], \
        "first round: the profile winner that is not the sweep's fastest, on equal lengths"
    assert pair_keys(speedups.pairs(recs, RNN)) == [("b|equal", "a|lognormal"), ("b|equal", "b|zipf")], \
        "second round: each printed speedup against the baseline the first round left standing"
    side = {**bench_rec("zipf", "b", 0.0021), "base_strategy": "b", "ratio": 3.5, "ratio_p25": 3.4,
            "ratio_p75": 3.6, "time": 2.0}
    older = {**side, "ratio": 9.9, "time": 1.0}
    lines = speedups.lines(recs, ("rnn_forward_backward",), [side, older])
    zipf = [line for line in lines if " zipf " in line]
    assert zipf and "4.00x the padded baseline" in zipf[0], lines
    assert zipf[0].endswith("; side by side 3.50x (rounds 3.40-3.60, 0.88 of the ideal)"), zipf[0]
    assert not any("side by side" in line for line in lines if " lognormal " in line), "no pair, no figure"
    assert not any("side by side" in line for line in lines if " equal (0%" in line), "no pair, no figure"
    on_equal = {**bench_rec("equal", "a", 0.0105), "base_strategy": "b", "ratio": 0.8, "ratio_p25": 0.5,
                "ratio_p75": 1.0, "time": 3.0}
    equal = [line for line in speedups.lines(recs, ("rnn_forward_backward",), [side, on_equal]) if " equal (0%" in line]
    assert equal[0].endswith("a [k-a] 1.25; side by side a 1.25 (rounds 1.00-2.00)"), \
        "on equal lengths the side-by-side figure is a cost (strategy time / fastest), its rounds inverted too"


def test_strategies_the_sweep_cannot_order_are_timed_side_by_side_and_the_higher_ratio_wins():
    # zipf: b is 5% faster than a in the sweep (within the drift: both contend), c 1.75x slower (not timed)
    recs = [bench_rec("equal", "a", 0.010), bench_rec("equal", "b", 0.008), bench_rec("zipf", "a", 0.0021),
            bench_rec("zipf", "b", 0.002), bench_rec("zipf", "c", 0.0035)]
    assert pair_keys(speedups.baseline_pairs(recs, RNN)) == [("b|equal", "a|equal")]
    assert pair_keys(speedups.pairs(recs, RNN)) == [("b|equal", "b|zipf"), ("b|equal", "a|zipf")], \
        "both contenders on their profile, fastest first"
    side = lambda strategy, ratio: {**bench_rec("zipf", strategy, 0.002), "base_strategy": "b", "ratio": ratio,  # noqa: E731
                                    "ratio_p25": ratio - 0.1, "ratio_p75": ratio + 0.1, "time": 1.0}
    zipf = lambda paired: [line for line in speedups.lines(recs, ("rnn_forward_backward",), paired)  # noqa: E731
                           if " zipf " in line][0]
    line = zipf([side("b", 3.6), side("a", 4.1)])
    assert " zipf (75% padding): a [k-a] 3.81x the padded baseline" in line, line
    assert "; side by side 4.10x (rounds 4.00-4.20, 1.02 of the ideal); also side by side: b [k-b] 3.60x (its " \
           "sweep time 0.95x this one's)" in line, line
    line = zipf([side("b", 4.4), side("a", 4.1)])
    assert " b [k-b] 4.00x the padded baseline" in line and "side by side 4.40x" in line, line
    assert "also side by side: a [k-a] 4.10x (its sweep time 1.05x this one's)" in line, line
    line = zipf([side("a", 9.0)])
    assert " b [k-b] 4.00x" in line and "side by side" not in line, \
        "the sweep's fastest, not timed side by side, is not overruled by a contender that was"
    recs[-1]["median_s"] = 0.0025  # within 1.3x of the fastest: a third contender
    assert ("b|equal", "c|zipf") in pair_keys(speedups.pairs(recs, RNN))


def side_rec(profile, strategy, base, ratio, time=1.0):
    return {**bench_rec(profile, strategy, 0.002), "base_strategy": base, "ratio": ratio, "ratio_p25": ratio - 0.1,
            "ratio_p75": ratio + 0.1, "time": time}


def test_a_strategy_faster_than_the_sweeps_pick_side_by_side_on_equal_lengths_becomes_the_baseline():
    # equal: b is the sweep's fastest, a within the drift of it, c 2.5x slower there (as TF's concat_rows read 1.54x
    # Keras's in a9af915's demo and 0.86 of it side by side); c wins zipf
    recs = [bench_rec("equal", "a", 0.010), bench_rec("equal", "b", 0.008), bench_rec("equal", "c", 0.020),
            bench_rec("zipf", "c", 0.002), bench_rec("zipf", "a", 0.004)]
    assert pair_keys(speedups.baseline_pairs(recs, RNN)) == [("b|equal", "a|equal"), ("b|equal", "c|equal")], \
        "the sweep's fastest against its contender there and against zipf's winner"
    slower = [side_rec("equal", "a", "b", 0.9), side_rec("equal", "c", "b", 0.95)]
    assert pair_keys(speedups.pairs(recs, RNN, slower)) == [("b|equal", "c|zipf")], "b stands: nothing to time again"
    faster = [side_rec("equal", "a", "b", 1.1), side_rec("equal", "c", "b", 1.2)]
    assert pair_keys(speedups.pairs(recs, RNN, faster)) == [("c|equal", "c|zipf"), ("c|equal", "a|equal"),
                                                      ("c|equal", "b|equal")], \
        "the fastest side by side is the baseline: zipf against it, and on equal lengths the others again"
    out = speedups.lines(recs, RNN, [*faster, side_rec("zipf", "c", "c", 8.5), side_rec("equal", "b", "c", 0.85)])
    equal, zipf = out
    assert "equal (0% padding): time / fastest: b [k-b] 1.00, a [k-a] 1.25, c [k-c] 2.50; padded baseline c [k-c]: " \
           "side by side 1.20x as fast as b (rounds 1.10-1.30); side by side b 1.18 (rounds 1.05-1.33)" in equal, equal
    assert "zipf (75% padding): c [k-c] 4.00x the sweep's fastest on equal lengths (b [k-b], 8.0 ms), ideal 4.00x " \
           "(1.00 of it); side by side 8.50x the padded baseline c [k-c] (rounds 8.40-8.60, 2.12 of the ideal)" \
           in zipf, zipf
    tie = [side_rec("equal", "c", "b", 1.0)]
    assert pair_keys(speedups.pairs(recs, RNN, tie)) == [("b|equal", "c|zipf")], "a tie keeps the sweep's fastest"
    unsure = [{**side_rec("equal", "c", "b", 1.05), "ratio_p25": 0.98}]
    assert pair_keys(speedups.pairs(recs, RNN, unsure)) == [("b|equal", "c|zipf")], \
        "faster in the median but not in three rounds of four: within the spread, the sweep's fastest stays"


def paired_rec(key, time, ratio=2.0):
    return records.make("paired", key=key, base_key="base", framework="torch", op="rnn_forward_backward",
                        device="cpu", dtype="float32", batch=4, max_len=8, profile="zipf", strategy="s", kernel="k",
                        base_strategy="b", base_kernel="k", median_s=0.01, base_median_s=0.01 * ratio, ratio=ratio,
                        ratio_p25=ratio, ratio_p75=ratio, rounds=8, number=1, time=time)


def test_select_keeps_the_latest_record_of_each_pair():
    a, b, a2 = paired_rec("x", 1.0), paired_rec("y", 2.0), paired_rec("x", 3.0, ratio=3.0)
    assert sorted(r["key"] for r in results.select([a, b])) == ["x", "y"], "two pairs are two records"
    assert sorted(r["time"] for r in results.select([a, b, a2])) == [2.0, 3.0], "the later record of pair x wins"
    bad = {**a}
    del bad["ratio"]
    assert "missing required field 'ratio'" in records.problems(bad)


def run_bench(tmp_path, *extra):
    out = tmp_path / "r.jsonl"
    args = ["bench", "--framework", "torch", "--op", "rnn_forward_backward", "--strategy", "time_sliced",
            "--profile", "equal", "--profile", "zipf", "--batch", "8", "--max-len", "16", "--hidden", "8",
            "--out", str(out), *extra]
    assert cli.main(args) == 0
    recs = results.read([out])
    return [r for r in recs if r["source"] == "bench"], [r for r in recs if r["source"] == "paired"]


def test_bench_times_its_speedups_side_by_side(tmp_path, capsys):
    bench, side = run_bench(tmp_path)
    printed = capsys.readouterr().out
    assert len(side) == 1, side
    p = side[0]
    keys = {r["profile"]: r["key"] for r in bench}
    assert (p["key"], p["base_key"]) == (keys["zipf"], keys["equal"])
    assert p["ratio_p25"] <= p["ratio"] <= p["ratio_p75"] and p["ratio_of"] == "rounds"
    assert p["ratio_p25"] <= p["ratio_p75"] and p["rounds"] >= paired.MIN_ROUNDS
    assert p["kernel"].startswith("sliced[") and p["base_kernel"].startswith("sliced[1]")
    assert f"side by side {p['ratio']:.2f}x" in printed, printed
    assert not records.problems(json.loads(json.dumps(p)))


def test_no_side_by_side_skips_it(tmp_path, capsys):
    bench, side = run_bench(tmp_path, "--no-side-by-side")
    assert len(bench) == 2 and side == []
    assert "side by side" not in capsys.readouterr().out


def test_bench_times_the_profiles_against_the_baseline_its_first_round_decided(tmp_path, monkeypatch, capsys):
    """`varlen bench` end to end with the sweep and the timing faked: the first round (equal lengths, against the
    sweep's fastest) decides the baseline the second round times every profile against."""
    from harness import bench

    def sweep(cases, out, **kw):  # b is the sweep's fastest on equal lengths, a wins zipf
        return [{**bench_rec(p, s, t), "status": "ok"} for p, s, t in
                [("equal", "a", 0.010), ("equal", "b", 0.008), ("zipf", "a", 0.002), ("zipf", "b", 0.004)]]

    rounds, timed = [], []

    def run(pairs, out, **kw):  # each strategy 1.2x as fast as its baseline (rounds 1.1-1.3); like paired.run,
        rounds.append(pair_keys(pairs))  # returns every paired record of the run so far
        timed.extend(side_rec(w["profile"], w["strategy"], b["strategy"], 1.2) for b, w in pairs)
        return list(timed)

    monkeypatch.setattr(bench, "sweep", sweep)
    monkeypatch.setattr(paired, "run", run)
    assert cli.main(["bench", "--framework", "torch", "--op", "rnn_forward_backward", "--strategy", "packed",
                     "--profile", "equal", "--profile", "zipf", "--batch", "4", "--max-len", "8",
                     "--out", str(tmp_path / "r.jsonl")]) == 0
    assert rounds == [[("b|equal", "a|equal")], [("a|equal", "a|zipf"), ("a|equal", "b|equal")]], rounds
    printed = capsys.readouterr().out
    assert "padded baseline a [k-a]: side by side 1.20x as fast as b" in printed, printed
    assert "side by side 1.20x the padded baseline a [k-a]" in printed, printed
