"""The report: built from tidy records, every section present, failing cells impossible to miss, the
recommendation picks the fastest exact strategy, and the page renders in a real browser with every figure loaded."""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from harness import records, report

REQUIRE_ALL = os.environ.get("VARLEN_REQUIRE_ALL") == "1"
PROFILES = {"equal": 0.0, "lognormal": 0.6, "zipf": 0.85}
# (framework, strategy) -> seconds per call at the headline point; jax:fast is fastest but fails the check
SPEED = {("torch", "packed"): 0.02, ("torch", "masked_loop"): 0.05, ("jax", "scan"): 0.03, ("jax", "fast"): 0.001}


def fixture_records() -> list[dict]:
    meta = {"host": "testhost", "cpu": "test cpu", "cores": 2, "python": "3.11", "commit": "abc123"}
    recs = [{"source": "floors", "device": "cpu", "copy_bytes_per_s": 1.3e10, "gemm_flop_per_s": 1.5e11, "time": 0,
             **meta}]
    for (fw, strategy), op, profile in itertools.product(SPEED, ["rnn_forward_backward", "masked_mean"], PROFILES):
        for batch in (8, 64):
            valid = int(batch * 128 * (1 - PROFILES[profile]))
            # masked strategies get faster with padding; the loop does not
            med = SPEED[fw, strategy] * (1 if strategy == "masked_loop" else 1 - PROFILES[profile] / 2) * batch / 64
            recs.append({"source": "bench", "status": "ok", "framework": fw, "version": "1.0", "device": "cpu",
                         "op": op, "strategy": strategy if op.startswith("rnn") else op, "batch": batch,
                         "max_len": 128, "profile": profile, "padding_fraction": PROFILES[profile],
                         "valid_tokens": valid, "padded_tokens": batch * 128, "median_s": med, "p25_s": med * 0.95,
                         "p75_s": med * 1.1, "valid_tokens_per_s": valid / med, "compile_s": 0.5,
                         "peak_rss_bytes": batch * 2**20, "peak_bytes": batch * 2**20, "device_peak_bytes": None,
                         "fraction_of_floor": 0.1,
                         "floor": "gemm", "kernel": f"{strategy}-kernel", "ideal_share": 1 - PROFILES[profile],
                         "key": f"{fw}|{strategy}|{op}|{batch}|{profile}", **meta})
    recs.append({"source": "bench", "status": "failed", "framework": "jax", "op": "rnn_forward", "strategy": "scan",
                 "device": "cpu", "batch": 256, "max_len": 512, "profile": "zipf", "error": "timed out after 600 s",
                 "dtype": "float32", "key": "failed-case", **meta})
    for (fw, strategy), q in itertools.product(SPEED, ["outputs", "grad_x"]):
        recs.append({"source": "check", "kind": "strategy", "framework": fw, "version": "1.0", "name": strategy,
                     "op": "rnn", "case": "c", "cell": "lstm", "side": "left", "bidirectional": True,
                     "dtype": "float32", "quantity": q, "equivalent": strategy != "fast",
                     "max_abs_err": 1e-7 if strategy != "fast" else 0.5, "kernel": "k", **meta})
    for fw, q in itertools.product(["torch", "jax"], ["outputs", "h_n", "grads"]):
        recs.append({"source": "check", "kind": "idiom", "framework": fw, "name": "mask_outputs", "op": "rnn",
                     "case": "idiom", "cell": "lstm", "side": "right", "bidirectional": False, "dtype": "float64",
                     "quantity": q, "equivalent": q == "outputs", "max_abs_err": 0.0 if q == "outputs" else 0.3,
                     "version": "1.0", "device": "cpu", "kernel": "k", **meta})
    # two speedups timed side by side: one on a profile, one winner's cost on equal lengths
    for pair in ({"batch": 8, "profile": "lognormal", "strategy": "packed",
                  "key": "torch|packed|rnn_forward_backward|64|lognormal", "median_s": 0.014, "ratio": 1.43,
                  "ratio_p25": 1.38, "ratio_p75": 1.47, "padding_fraction": 0.6, "ideal_share": 0.4},
                 {"batch": 64, "profile": "equal", "strategy": "masked_loop",
                  "key": "torch|masked_loop|rnn_forward_backward|64|equal", "median_s": 0.05, "ratio": 0.4,
                  "ratio_p25": 0.25, "ratio_p75": 0.5, "padding_fraction": 0.0, "ideal_share": 1.0}):
        recs.append({"source": "paired", "framework": "torch", "version": "1.0", "op": "rnn_forward_backward",
                     "max_len": 128, "cell": "lstm", "kernel": f"{pair['strategy']}-kernel",
                     "base_strategy": "packed", "base_kernel": "packed-kernel",
                     "base_key": "torch|packed|rnn|64|equal", "base_median_s": 0.02, "rounds": 12, "number": 1,
                     "time": 1, **pair, **meta})
    return [records.make(**{"dtype": "float32", "device": "cpu", **r}) for r in recs]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    page, usable = report.build(fixture_records(), out)
    assert usable
    return out, page.read_text(), (out / "report.md").read_text()


def test_every_section_present_in_html_and_markdown(built):
    _, page, md = built
    for title in ["Setup", "Recommendation", "Speedups timed side by side", "Equivalence matrix",
                  "The recipes people copy (RNN)",
                  "Throughput vs length skew and batch size", "Memory", "Compile time",
                  "Fraction of the machine's floor", "Failed benchmark cases", "asv dashboard"]:
        assert f">{title}</h2>" in page.replace("&#x27;", "'"), f"section {title!r} missing from index.html"
        assert f"## {title}" in md, f"section {title!r} missing from report.md"
    assert "test cpu" in md and "| 13 |" in md and "| 150 |" in md, "setup must show machine and floors"


def test_failing_cells_are_marked(built):
    _, page, md = built
    assert page.count('<tr class="fail">') >= 2, "the failing strategy and the failed case must be highlighted"
    assert "FAILING" in page and "timed out after 600 s" in md
    row = ('<tr class="fail"><td class="">cpu</td><td class="">jax</td><td class="">rnn</td><td class="">strategy</td>'
           '<td class="">fast</td>')
    assert re.search(row, page), "failing strategy row"


def test_recommendation_picks_fastest_exact_strategy(built):
    t = report.recommendation_table(report.bench_frame(fixture_records()),
                                    report.frame(fixture_records(), "check"), report.frame(fixture_records(), "paired"))
    assert not (t["fastest exact strategy"] == "fast").any(), "a non-equivalent strategy must never be recommended"
    lognormal = t[(t["profile"] == "lognormal") & (t["op"] == "RNN forward + backward")].set_index("framework")
    assert lognormal.loc["torch", "fastest exact strategy"] == "packed"
    assert lognormal.loc["torch", "overall best"] and not lognormal.loc["jax", "overall best"]
    # packed on lognormal: 0.02*(1-0.3) vs its equal-profile time 0.02 -> 1/0.7
    assert lognormal.loc["torch", "x vs padded baseline"] == pytest.approx(1 / 0.7, abs=0.01)
    # the same pair timed side by side (the fixture's paired record), and no figure where none was timed
    assert lognormal.loc["torch", "x side by side"] == 1.43 and np.isnan(lognormal.loc["jax", "x side by side"])
    zipf = t[(t["profile"] == "zipf") & (t["op"] == "RNN forward + backward")].set_index("framework")
    assert np.isnan(zipf.loc["torch", "x side by side"]), "a pair of another profile is not this one's"
    assert (zipf["cost on equal lengths"] == 1.0).all(), "each framework's recommendation is its baseline's strategy"


def test_speedups_timed_side_by_side_are_shown(built):
    _, _, md = built
    section = md.split("## Speedups timed side by side", 1)[1].split("\n## ", 1)[0]
    speed, equal = section.split("On equal lengths", 1)
    rows = [line for line in speed.splitlines() if line.startswith("| cpu |")]
    assert len(rows) == 1, section
    assert "| lognormal |" in rows[0] and "packed [packed-kernel]" in rows[0], rows[0]
    assert "| 1.43 | 1.38-1.47 | 2.5 |" in rows[0], rows[0]
    rows = [line for line in equal.splitlines() if line.startswith("| cpu |")]
    assert len(rows) == 1 and "| masked_loop [masked_loop-kernel] | packed [packed-kernel] |" in rows[0], equal
    assert rows[0].endswith("| 20 | 50 | 2.5 | 2.000-4.000 |"), "strategy / fastest, the rounds inverted too"


def test_cost_on_equal_lengths_is_the_side_by_side_pair_on_equal_lengths():
    side = {("torch", "rnn", "cpu", 64, 128, "equal", "sliced", "padded"): 0.8,
            ("torch", "rnn", "cpu", 64, 128, "zipf", "sliced", "padded"): 4.0}
    base = pd.Series({"torch": "padded"})
    row = pd.Series({"framework": "torch", "strategy": "sliced", "batch": 64, "max_len": 128})
    assert report.tables.equal_cost(side, row, "rnn", "cpu", base) == 1.25, "its time over the baseline's"
    assert report.tables.equal_cost(side, row.replace("sliced", "padded"), "rnn", "cpu", base) == 1.0
    assert np.isnan(report.tables.equal_cost(side, row, "rnn", "gpu", base)), "not timed: missing"


def test_idiom_verdicts_say_what_is_right_and_wrong(built):
    _, _, md = built
    row = re.search(r"\| mask_outputs \| right \| uni \| (.*) \|", md)
    assert row, md
    jax_cell, torch_cell = row.group(1).split(" | ")
    assert torch_cell == jax_cell == "WRONG h_n, grads (err 0.3); right: outputs", row.group(0)
    assert '<td class="v-wrong">WRONG h_n, grads' in built[1], "verdict cells are coloured"


def test_summary_opens_the_page(built):
    _, page, md = built
    assert page.index(">Summary</h2>") < page.index(">Setup</h2>")
    summary = md.split("## Summary")[1].split("## Setup")[0]
    assert "RNN forward + backward on cpu, lognormal lengths" in summary and "torch: packed" in summary
    assert "jax: scan" in summary and "fast" not in summary.split("proven exact")[0], summary
    assert "mask_outputs" in summary and "wrong in" in summary
    assert "torch: packed (1.43x the padded baseline, 1.43x side by side," in summary, summary


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_page_renders_in_headless_chromium_with_every_figure_loaded(built):
    exe = chromium()
    if exe is None:
        if REQUIRE_ALL:
            pytest.fail("chromium is not installed (make test installs Debian's chromium package)")
        pytest.skip("chromium is not installed: apt-get install chromium")
    out, page, _ = built
    n_img = page.count("<img ")
    assert n_img >= 5, f"expected the report's figures, found {n_img} <img> tags"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={out / 'chrome-profile'}",
             "--virtual-time-budget=5000", "--window-size=1200,900"]
    dom = subprocess.run([exe, *flags, "--dump-dom", (out / "index.html").as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, "the page's load check did not run in the browser"
    assert int(total.group(1)) == n_img and int(loaded.group(1)) == n_img, (
        f"only {loaded.group(1)} of {total.group(1)} figures loaded in chromium")
    shot = out / "screenshot.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", (out / "index.html").as_uri()], capture_output=True,
                   timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_report_from_a_partial_sweep(tmp_path):
    """A custom sweep (one profile, one batch, no check, no floors) still gives a whole report."""
    recs = [r for r in fixture_records() if r.get("source") == "bench" and r.get("profile") == "equal"
            and r.get("batch") == 8]
    page = report.build(recs, tmp_path)[0].read_text()
    for title in ("Setup", "Recommendation", "Memory", "Compile time", "Failed benchmark cases"):
        assert f">{title}</h2>" in page
    assert "equal lengths" in (tmp_path / "report.md").read_text()
