"""The ratios `varlen bench` prints: fastest strategy per profile against the padded baseline and the ideal."""
from __future__ import annotations

from harness import speedups


def rec(profile, strategy, median, share=1.0, padding=0.0, **extra):
    return {"status": "ok", "op": "rnn_forward_backward", "device": "cpu", "dtype": "float32", "batch": 4,
            "max_len": 8, "framework": "torch", "cell": "lstm", "hidden": 2, "num_layers": 1,
            "bidirectional": False, "profile": profile, "strategy": strategy, "kernel": f"k-{strategy}",
            "median_s": median, "ideal_share": share, "padding_fraction": padding, **extra}


def test_ratios_against_the_fastest_equal_strategy_and_the_ideal():
    recs = [rec("equal", "a", 0.010), rec("equal", "b", 0.008),
            rec("zipf", "a", 0.004, share=0.25, padding=0.75), rec("zipf", "b", 0.002, share=0.25, padding=0.75),
            rec("zipf", "c", 0.001, share=0.25, padding=0.75, status="failed"),  # not measured: ignored
            rec("lognormal", "a", 0.004, share=0.5, padding=0.5, framework="jax")]  # no jax baseline: no line
    out = speedups.lines(recs, ("rnn_forward_backward",))
    assert len(out) == 2, out
    assert "equal (0% padding): time / fastest: b [k-b] 1.00, a [k-a] 1.25" in out[0]
    assert "zipf (75% padding): b [k-b] 4.00x the padded baseline (b [k-b] on equal lengths, 8.0 ms)" in out[1]
    assert "ideal 4.00x (1.00 of it)" in out[1]
    assert speedups.lines(recs, ("attention_forward",)) == []


def test_records_of_different_hosts_are_never_divided_by_each_other():
    """A sweep spread over a cluster's nodes: each host's strategies against its own baseline."""
    recs = [rec("equal", "a", 0.010, host="fast"), rec("zipf", "a", 0.005, share=0.5, padding=0.5, host="fast"),
            rec("equal", "a", 0.020, host="slow"), rec("zipf", "a", 0.010, share=0.5, padding=0.5, host="slow")]
    out = [line for line in speedups.lines(recs, ("rnn_forward_backward",)) if "zipf" in line]
    assert len(out) == 2 and all("2.00x the padded baseline" in line for line in out), out
    assert " on fast " in out[0] and " on slow " in out[1]


def test_a_winner_that_compiles_for_new_batches_says_so():
    recs = [rec("equal", "a", 0.010), rec("zipf", "b", 0.002, share=0.25, padding=0.75, stream_batches=3,
                                         stream_compiles=7, stream_compile_s=3.0),
            rec("lognormal", "a", 0.005, share=0.5, padding=0.5, stream_batches=3, stream_compiles=0,
                stream_compile_s=0.0)]
    out = {line.split()[7]: line for line in speedups.lines(recs, ("rnn_forward_backward",))}
    assert out["zipf"].endswith("; new batches compiled 7 shapes over 3 (3.0 s: 1500 warm calls)"), out["zipf"]
    assert "new batches" not in out["lognormal"] + out["equal"]


def test_a_strategy_timed_twice_counts_with_its_fastest_record_in_its_place_among_the_others():
    """Two sweeps in one file: each strategy's fastest record stands for it, and the ranking follows those."""
    recs = [rec("equal", "a", 0.010), rec("equal", "b", 0.008), rec("equal", "a", 0.006),
            rec("zipf", "b", 0.004, share=0.25, padding=0.75), rec("zipf", "b", 0.002, share=0.25, padding=0.75)]
    out = speedups.lines(recs, ("rnn_forward_backward",))
    assert "equal (0% padding): time / fastest: a [k-a] 1.00, b [k-b] 1.33" in out[0], out
    assert "zipf (75% padding): b [k-b] 3.00x the padded baseline (a [k-a] on equal lengths, 6.0 ms)" in out[1], out
    assert list(speedups.fastest_each(recs[:3], lambda r: r["median_s"], lambda r: r["strategy"])) == ["a", "b"]


def test_a_profile_without_a_valid_token_says_so_instead_of_nan():
    """A lengths file of zeros printed "ideal nanx (nan of it)": there is no valid work to scale the baseline by."""
    recs = [rec("equal", "a", 0.010), rec("file:zeros", "a", 0.001, share=0.0, padding=1.0)]
    out = speedups.lines(recs, ("rnn_forward_backward",))
    assert len(out) == 2 and "nan" not in out[1], out
    assert out[1].endswith("a [k-a] 10.00x the padded baseline (a [k-a] on equal lengths, 10.0 ms), no valid "
                           "token, so no ideal"), out[1]
