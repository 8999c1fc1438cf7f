"""Tests that kill mutants a mutation audit found surviving: one focused test per mutant, expected values by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from adapters import spec
from harness import check, compare, records, results, speedups, tolerances
from harness.report import tables


def check_record(**over) -> dict:
    """A valid check record, built by hand (no git, no clock): every required field of the schema."""
    rec = {"source": "check", "schema": records.SCHEMA_VERSION, "run_id": "run-1", "time": 1.0, "host": "h",
           "commit": "abc", "framework": "torch", "version": "1", "device": "cpu", "kind": "strategy",
           "op": "rnn", "name": "packed", "case": "c1", "quantity": "output", "equivalent": True,
           "max_abs_err": 0.0, "kernel": "k"}
    return {**rec, **over}


def test_select_keeps_check_records_that_differ_only_in_dtype():
    """Mutant: `dtype` dropped from `_case_identity`'s check key (the float64 record then replaced the float32 one)."""
    f32 = check_record(dtype="float32", equivalent=False, max_abs_err=1.0, time=1.0)
    f64 = check_record(dtype="float64", equivalent=True, time=2.0, run_id="run-2")
    assert records.problems(f32) == [] and records.problems(f64) == []
    kept = results.select([f32, f64])
    assert len(kept) == 2, kept
    assert sorted(r["dtype"] for r in kept) == ["float32", "float64"]
    assert [r["equivalent"] for r in kept if r["dtype"] == "float32"] == [False]


def test_append_after_a_partial_last_line_starts_a_line_of_its_own(tmp_path):
    """Mutant: `_complete_last_line` a no-op (the new record was glued onto the cut-off line and lost)."""
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"source": "bench", "ke')  # a writer killed mid-line: no newline
    rec = check_record()
    results.append(path, rec)
    loaded = results.load([path])
    assert loaded.records == [rec]
    assert len(loaded.problems) == 1 and loaded.problems[0].line == 1, loaded.problems
    assert path.read_bytes().startswith(b'{"source": "bench", "ke\n')


def test_a_check_record_with_nan_error_is_invalid():
    """Mutant: the "max_abs_err is NaN" check dropped from `records.problems`."""
    assert records.problems(check_record()) == []  # the same record with a number is valid
    assert records.problems(check_record(max_abs_err=float("nan"))) == ["max_abs_err is NaN"]


def test_contenders_are_capped():
    """Mutant: the cap `[:MAX_CONTENDERS]` raised by one. RUNOFF 1.3: 1.0, 1.1, 1.2, 1.25 are all <= 1.3 x 1.0, so
    only the cap (3) leaves d out."""
    cands = [("d", 1.25), ("b", 1.1), ("a", 1.0), ("c", 1.2)]
    out = speedups.contenders(cands, lambda c: c[1], lambda c: c[0])
    assert [s for s, _ in out] == ["a", "b", "c"]


def test_speedup_line_states_the_fraction_of_the_ideal():
    """Mutant: "(x / ideal of it)" inverted to ideal / x. Baseline a 8 ms on equal, a 4 ms on zipf:
    x = 8 / 4 = 2.00; ideal = 1 / 0.25 = 4.00; x / ideal = 2 / 4 = 0.50 (the inversion would print 2.00)."""
    base = {"status": "ok", "op": "rnn_forward_backward", "device": "cpu", "dtype": "float32", "batch": 4,
            "max_len": 8, "framework": "torch", "strategy": "a", "kernel": "k-a"}
    recs = [{**base, "profile": "equal", "median_s": 0.008, "ideal_share": 1.0, "padding_fraction": 0.0},
            {**base, "profile": "zipf", "median_s": 0.004, "ideal_share": 0.25, "padding_fraction": 0.75}]
    out = speedups.lines(recs, ("rnn_forward_backward",))
    zipf = [line for line in out if " zipf " in line]
    assert len(zipf) == 1, out
    assert "a [k-a] 2.00x the padded baseline (a [k-a] on equal lengths, 8.0 ms)" in zipf[0]
    assert "ideal 4.00x (0.50 of it)" in zipf[0]


def test_first_call_pays_no_fresh_batch_compile():
    """Mutant: `np.minimum(n - 1, r["m3"])` -> `np.minimum(n, r["m3"])` in `calls_cost` (the first call charged a
    fresh batch's compile). bucketed: compile 0.001 s, warm 4 ms, 1 s per fresh batch for up to 3 (its
    `fresh_compile_curve` knots all at 3 batches, 3 s); scan: 10 ms warm.
    n=1: bucketed 0.001 + 0 + 0.004 = 0.005 < scan 0.010 -> bucketed (mutant: 0.001 + 1 + 0.004 = 1.005 -> scan).
    n=2: bucketed 0.001 + 1 + 0.008 = 1.009 > scan 0.020 -> scan.
    n>=4: bucketed 0.001 + 3 + 0.004 n vs scan 0.010 n: equal at n = 3.001 / 0.006 = 500.17;
    n=500: 5.001 > 5.000 -> scan; n=501: 5.005 < 5.010 -> bucketed."""
    knots = {k: [0.0, 3.0] for k in ("m1", "c1", "m2", "c2", "m3", "c3")}
    g = pd.DataFrame({"impl": ["jax:scan", "jax:bucketed"], "compile": [0.0, 0.001], "median_s": [0.010, 0.004],
                      **knots})
    assert tables.cheapest_from(g) == [(1, "jax:bucketed"), (2, "jax:scan"), (501, "jax:bucketed")]
    assert tables.hand_overs(g) == ("jax:scan is cheaper from 2 calls on than jax:bucketed, "
                                    "then jax:bucketed from 501 calls on")
    assert tables.calls_cost(g.iloc[1], 1) == 0.001 + 0.004


def test_a_crashed_worker_fails_the_check():
    """Mutant: "error" dropped from the kinds `failures` counts."""
    crashed = {"kind": "error", "equivalent": False, "name": "worker"}
    finding = {"kind": "idiom", "equivalent": False, "name": "recipe"}  # a finding, not a failure
    assert check.failures([crashed, finding]) == [crashed]


def test_float64_tolerance_is_tight_enough_to_catch_float32_rounding():
    """Mutant: the float64 CPU tolerance widened 1e5x. Limits (max|expected| = 1 for linspace(-1, 1)):
    float64: 1e-11 + 1e-9 * 1 = 1.001e-9; float32: 1e-5 + 1e-4 * 1 = 1.1e-4.
    float32 rounding of 0.7 (one of the points, 35/50): 0.7 * 2**24 = 11744051.2 -> 11744051, error
    0.2 * 2**-24 = 1.19e-8 > 1.001e-9; and every error <= half an ulp at 1, 2**-25 = 2.98e-8 < 1.1e-4.
    float16 rounding of 0.7: 0.7 * 2**11 = 1433.6 -> 1434, error 0.4 * 2**-11 = 1.95e-4 > 1.1e-4."""
    x = np.linspace(-1, 1, 101)
    f32 = x.astype(np.float32).astype(np.float64)
    f16 = x.astype(np.float16).astype(np.float64)
    ok64, err32 = compare.close(f32, x, tolerances.tolerance("float64", "cpu"))
    assert not ok64 and 1.19e-8 <= err32 <= 2.99e-8, err32
    assert compare.close(f32, x, tolerances.tolerance("float32", "cpu"))[0]
    ok16, err16 = compare.close(f16, x, tolerances.tolerance("float32", "cpu"))
    assert not ok16 and err16 >= 1.95e-4, err16


def test_max_abs_err_is_inf_on_a_shape_mismatch():
    """Mutant: the shape check dropped (shapes that broadcast then compare as equal, others raise)."""
    assert compare.max_abs_err(np.ones((2, 3)), np.ones((3, 2))) == math.inf
    assert compare.max_abs_err(np.zeros(4), np.float64(0)) == math.inf  # (4,) vs (): broadcasts to error 0


def test_one_bucket_plan_trims_to_the_longest_row():
    """Mutant: a one-bucket plan's steps `steps[0]` -> `T`. Time ladder of 64 (powers of two and 1.5x them):
    1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64; the longest row, 3, is on it, so steps = 3, not 64."""
    plan = spec.plan_buckets(np.array([3, 3, 3, 3]), 64)
    assert len(plan) == 1
    assert plan[0].rows.tolist() == [0, 1, 2, 3]
    assert (plan[0].batch, plan[0].steps) == (4, 3)
    assert not spec.whole_batch(plan, 4, 64)
