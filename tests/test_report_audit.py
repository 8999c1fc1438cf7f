"""Report audit fixes: legacy information-only quantities, configurations kept apart in figures and tables, the
compile of a shape, every strategy's fraction of the ideal, strategies not proven exact marked wherever they appear,
and the device's name. Expected values are worked out by hand from the records each test builds."""
from __future__ import annotations

import pytest

from harness import records, report
from tests.test_report import RNN, _bench, _checked


def _native(name, quantity, ok, framework="torch", **extra):
    """A check record of an attention native behaviour as written before 2026-12-06: no `judged` field."""
    return records.make("check", kind="native", framework=framework, version="1", device="gpu", op="attention",
                        name=name, case="keyless", side="right", dtype="float32", quantity=quantity,
                        equivalent=ok, max_abs_err=0.0 if ok else 1.42, kernel="sdpa-math",
                        detail="padded query rows give other" if quantity == "outputs_padded" else "", **extra)


def _legacy_natives():
    good = [_native("keyless_row", q, q != "outputs_padded")
            for q in ("outputs_valid", "outputs_keyless", "outputs_padded", "grad_q")]
    bad = [_native("nan_padding_bool_mask", q, False) for q in ("outputs_valid", "outputs_padded")]
    return good + bad


def test_legacy_outputs_padded_is_information_never_a_wrong_verdict(tmp_path):
    recs = _legacy_natives()
    check = report.frame(recs, "check")  # as written: outputs_padded equivalent False, no judged field
    assert list(report.tables.judged_rows(check)) == [True, True, False, True, True, False]
    blocks = report.sections.summary_section(check, report.bench_frame(recs)).blocks
    texts = [b for kind, b in blocks if kind == "p"]
    assert any(t.startswith("1 recipes and native behaviours are wrong") for t in texts), texts
    table = next(b[0] for kind, b in blocks if kind == "table").set_index("name")
    assert list(table.index) == ["nan_padding_bool_mask"], "keyless_row differs only in outputs_padded"
    assert table.loc["nan_padding_bool_mask", "wrong"] == "outputs_valid"
    cell = report.tables.verdict_matrix(check).set_index("name").loc["keyless_row", "torch"]
    assert cell == "exact on: a batch with a keyless query row. info: padded query rows give other", cell
    # the page: the attention section's outputs_padded rows are not failures; nan_padding_bool_mask's valid rows are
    report.build(recs, tmp_path)
    page = (tmp_path / "index.html").read_text()
    section = page.split("Attention: native behaviours</h2>")[1]
    fails = section.split("</table>")[0].count('<tr class="fail">')
    assert fails == 1, f"only nan_padding_bool_mask/outputs_valid is wrong, {fails} rows marked"
    md = (tmp_path / "report.md").read_text()
    assert "| native behaviour | attention | keyless_row |" not in md


# -- figures and tables keep configurations apart; strategies not proven exact are marked -------------------------
def _capture(monkeypatch):
    """Replace `save` in the sections: the figures it is handed, by file name."""
    figs = {}

    def save(fig, out, name):
        figs[name] = fig
        return f"figures/{name}"

    monkeypatch.setattr(report.sections, "save", save)
    return figs


def _throughput_records():
    # LSTM 10 -> 4 ms, GRU 5 -> 3 ms for torch:packed (exact); torch:fast (never checked) 1 ms on LSTM equal lengths
    return [_bench("torch", "packed", "equal", 10.0), _bench("torch", "packed", "lognormal", 4.0),
            _bench("torch", "packed", "equal", 5.0, cell="gru"),
            _bench("torch", "packed", "lognormal", 3.0, cell="gru"),
            _bench("torch", "fast", "equal", 1.0), _checked("torch", "packed")]


def test_throughput_lines_and_ideals_are_per_cell_and_unproven_strategies_are_marked(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    recs = _throughput_records()
    report.sections.throughput_section(report.bench_frame(recs), tmp_path, report.frame(recs, "check"))
    ax = figs["throughput_skew_cpu.png"].axes[0]
    handles, labels = ax.get_legend_handles_labels()
    lines = {lab: h for h, lab in zip(handles, labels, strict=True)}
    # valid_tokens 100: y = 100 / seconds
    data = {lab: sorted(h.lines[0].get_ydata()) if hasattr(h, "lines") else None for lab, h in lines.items()}
    assert data["torch:packed [packed-k] (cell gru)"] == pytest.approx([100 / 0.005, 100 / 0.003])
    assert data["torch:packed [packed-k] (cell lstm)"] == pytest.approx([100 / 0.01, 100 / 0.004])
    assert data["torch:fast [fast-k] (cell lstm) (unchecked)"] == pytest.approx([100 / 0.001])
    # ideal: the cell's own exact baseline x the valid share (0.5 on lognormal), never torch:fast (unchecked)
    ideal = {lab: list(h.get_ydata()) for lab, h in lines.items() if lab.startswith("ideal")}
    assert ideal == {"ideal (torch, cell gru)": pytest.approx([100 / 0.005, 100 / (0.005 * 0.5)]),
                     "ideal (torch, cell lstm)": pytest.approx([100 / 0.01, 100 / (0.01 * 0.5)])}, ideal


def test_an_ideal_line_from_a_baseline_not_proven_exact_says_so(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    recs = [_bench("jax", "scan", "equal", 8.0), _bench("jax", "scan", "lognormal", 4.0)]  # no check record
    report.sections.throughput_section(report.bench_frame(recs), tmp_path, report.frame(recs, "check"))
    labels = figs["throughput_skew_cpu.png"].axes[0].get_legend_handles_labels()[1]
    assert labels == ["ideal (jax; its baseline scan is not proven exact (unchecked))",
                      "jax:scan [scan-k] (unchecked)"], labels


def _attention(strategy, mib, profile="lognormal"):
    r = _bench("torch", strategy, profile, 5.0, cell=None, peak_bytes=mib * 2**20)
    return {**r, "op": "attention_forward_backward", "hidden": None, "num_layers": None, "bidirectional": None,
            "key": f"att|{strategy}|{profile}"}


def test_the_memory_table_shows_each_strategys_own_peak_per_cell(tmp_path):
    """An attention "torch 616 MiB" was the median of sdpa 1600, njt 575, flex 656 and bucketed 511; an RNN row
    took the median over the LSTM and GRU cells."""
    recs = [_attention(s, m) for s, m in (("sdpa", 1600), ("njt", 575), ("flex", 656), ("bucketed", 511))]
    recs += [_bench("torch", "packed", "lognormal", 4.0, peak_bytes=100 * 2**20),
             _bench("torch", "packed", "lognormal", 3.0, cell="gru", peak_bytes=50 * 2**20)]
    recs += [_checked("torch", s) for s in ("sdpa", "njt", "bucketed", "packed")]
    recs.append({**_checked("torch", "flex"), "op": "attention"})
    recs += [{**_checked("torch", s), "op": "attention"} for s in ("sdpa", "njt", "bucketed")]
    s = report.sections.memory_section(report.bench_frame(recs), tmp_path, report.frame(recs, "check"))
    att, rnn = (b[0] for kind, b in s.blocks if kind == "table" and "shape" in b[0].columns)
    got = dict(zip(att["strategy [kernels]"], att["attention fwd+bwd (MiB)"], strict=True))
    assert got == {"torch:sdpa [sdpa-k]": 1600, "torch:njt [njt-k]": 575, "torch:flex [flex-k]": 656,
                   "torch:bucketed [bucketed-k]": 511}, got
    got = {(c, lab): v for c, lab, v in zip(rnn["cell"], rnn["strategy [kernels]"], rnn["RNN forward + backward (MiB)"],
                                            strict=True)}
    assert got == {("gru", "torch:packed [packed-k]"): 50, ("lstm", "torch:packed [packed-k]"): 100}, got


def test_the_floor_section_gives_each_cell_its_own_best_strategy(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    recs = [_bench("torch", "packed", "equal", 10.0, fraction_of_floor=0.1, floor="gemm"),
            _bench("torch", "packed", "equal", 5.0, cell="gru", fraction_of_floor=0.2, floor="gemm"),
            _bench("torch", "fast", "equal", 20.0, cell="gru", fraction_of_floor=0.05, floor="gemm"),
            _checked("torch", "packed")]
    s = report.sections.floor_section(report.bench_frame(recs), recs, tmp_path, report.frame(recs, "check"))
    t = next(b[0] for kind, b in s.blocks if kind == "table")
    assert list(zip(t["cell"], t["strategy"], t["fraction_of_floor"])) == [("gru", "packed", 0.2),
                                                                           ("lstm", "packed", 0.1)], t
    labels = [x.get_text() for x in figs["floor.png"].axes[0].get_yticklabels()]
    assert sorted(labels) == ["RNN forward + backward (cell gru) / torch:packed [packed-k] (cpu)",
                              "RNN forward + backward (cell lstm) / torch:packed [packed-k] (cpu)"], labels


def test_the_compile_table_shows_the_compile_of_the_shape_not_a_median_over_profiles(tmp_path, monkeypatch):
    """torch:flex showed 0 though its first (equal-lengths) case compiled 20.65 s (median of 20.65, 0, 0.0002)."""
    _capture(monkeypatch)
    recs = [_bench("torch", "flex", "equal", 5.0, compile_s=20.65), _bench("torch", "flex", "lognormal", 5.0),
            {**_bench("torch", "flex", "lognormal", 5.0, compile_s=0.0002), "profile": "zipf", "key": "zipf"}]
    s = report.sections.compile_section(report.bench_frame(recs), tmp_path)
    t = next(b[0] for kind, b in s.blocks if kind == "table")
    assert list(t["compile s (max over profiles)"]) == [20.65] and list(t["shape"]) == ["B=64 T=128"], t


# -- every strategy's fraction of the ideal, one definition ---------------------------------------------------------
def _pair(strategy, ratio, base="packed", profile="lognormal"):
    return records.make(source="paired", framework="torch", version="1.0", op="rnn_forward_backward", device="cpu",
                        dtype="float32", batch=64, max_len=128, **RNN, profile=profile, strategy=strategy,
                        kernel=f"{strategy}-k", key=f"{strategy}|{profile}", base_strategy=base,
                        base_kernel=f"{base}-k", base_key=f"{base}|equal", median_s=0.004, base_median_s=0.01,
                        ratio=ratio, ratio_p25=ratio, ratio_p75=ratio, rounds=8, number=1, host="h",
                        padding_fraction=0.5, ideal_share=0.5)


def test_every_strategy_gets_its_fraction_of_the_ideal_side_by_side_where_timed():
    # packed 10 -> 4 ms (sweep 2.5x; side by side 2.2x), loop 10.5 -> 5 ms (sweep 10/5 = 2.0x); valid share 0.5
    recs = [_bench("torch", "packed", "equal", 10.0), _bench("torch", "packed", "lognormal", 4.0),
            _bench("torch", "loop", "equal", 10.5), _bench("torch", "loop", "lognormal", 5.0),
            _checked("torch", "packed"), _checked("torch", "loop"), _pair("packed", 2.2)]
    df, check, paired = report.bench_frame(recs), report.frame(recs, "check"), report.frame(recs, "paired")
    t = report.tables.strategy_table(df, check, paired)
    lognormal = t[t["profile"] == "lognormal"].set_index("strategy [kernel]")
    assert lognormal.loc["packed [packed-k]", ["x vs padded baseline", "timed", "fraction of ideal"]].tolist() == [
        2.2, "side by side", 1.1]
    assert lognormal.loc["loop [loop-k]", ["x vs padded baseline", "timed", "fraction of ideal"]].tolist() == [
        2.0, "sweep", 1.0]
    equal = t[t["profile"] == "equal"].set_index("strategy [kernel]")
    assert equal.loc["packed [packed-k]", "timed"] == "(the baseline)"
    assert equal.loc["loop [loop-k]", "fraction of ideal"] == round(10 / 10.5, 3)
    rec = report.recommendation_table(df, check, paired)
    assert rec.loc[rec["profile"] == "lognormal", "fraction of ideal"].tolist() == [1.1], "2.2x side by side x 0.5"
    table = next(b[0] for kind, b in report.sections.paired_section(recs).blocks if kind == "table")
    assert table["fraction of ideal"].tolist() == [1.1]


def test_the_side_by_side_table_marks_strategies_not_proven_exact():
    recs = [_checked("torch", "packed"), _checked("torch", "bad", ok=False), _pair("fast", 3.0), _pair("bad", 2.5)]
    table = next(b[0] for kind, b in report.sections.paired_section(recs).blocks if kind == "table")
    assert sorted(table["strategy [kernel]"]) == ["bad [bad-k] (WRONG)", "fast [fast-k] (unchecked)"]
    assert set(table["baseline [kernel]"]) == {"packed [packed-k]"}


# -- the device's model (device_name), where records carry it ------------------------------------------------------
def test_two_machines_of_one_host_name_with_different_gpus_keep_their_own_floors(tmp_path, monkeypatch):
    """Two VMs named "vm" with the same CPU, one with an H100 and one with an H200: each bench record is measured
    against its own GPU's floor, and the Setup section and the figures name the GPU. Dict records: older writers
    lack the field, the schema may not know it yet."""
    figs = _capture(monkeypatch)
    meta = {"host": "vm", "cpu": "Xeon", "cores": 16, "device": "gpu", "time": 0}
    h100, h200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"
    recs = [{"source": "floors", **meta, "device_name": h100, "copy_bytes_per_s": 3e12, "gemm_flop_per_s": 5e13},
            {"source": "floors", **meta, "device_name": h200, "copy_bytes_per_s": 4.8e12, "gemm_flop_per_s": 5e13}]
    for name, ms in ((h100, 2.0), (h200, 1.0)):
        for profile in ("equal", "lognormal"):
            recs.append({**_bench("torch", "packed", profile, ms, device="gpu"), **meta, "device_name": name,
                         "work": 3e9, "floor": "copy", "key": f"{name}|{profile}"})
    recs.append(_checked("torch", "packed", "gpu"))
    df = report.bench_frame(recs)
    floors = report.tables.machine_floors(recs)
    # 3e9 bytes / 3e12 B/s / 0.002 s = 0.5 on the H100; 3e9 / 4.8e12 / 0.001 = 0.625 on the H200
    got = dict(zip(df["device_name"], report.tables.machine_fraction(df, floors), strict=True))
    assert got == {h100: pytest.approx(0.5), h200: pytest.approx(0.625)}, got
    setup = report.sections.setup_section(recs, df)
    machines = next(b[0] for kind, b in setup.blocks if kind == "table")
    assert set(machines["device name"]) == {h100, h200}, machines
    report.sections.throughput_section(df, tmp_path, report.frame(recs, "check"))
    title = figs["throughput_skew_gpu.png"].axes[0].get_title()
    assert title == f"RNN forward + backward (gpu: {h100} / {h200}, B=64 T=128)", title
    labels = figs["throughput_skew_gpu.png"].axes[0].get_legend_handles_labels()[1]
    assert f"torch:packed [packed-k] (device_name {h100})" in labels, labels
