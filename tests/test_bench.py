"""The quick grid as pytest benchmarks, through the same callables `varlen bench` and asv time.

`make test` runs them once, untimed (--benchmark-disable), as smoke tests that also check the records' sanity;
`make bench` times them, one framework per process with its workers' malloc settings, into a new numbered file each
under results/pytest-benchmark/<machine>/ (pytest-benchmark's autosave: an earlier run is never overwritten).
"""
from __future__ import annotations

import math
import types

import numpy as np
import pytest

import adapters
from adapters.spec import Unsupported
from harness import axes, bench
from tests.conftest import framework_params

FLOORS = {"copy_bytes_per_s": 1e10, "gemm_flop_per_s": 1e11}  # nominal: only the arithmetic is checked here


def quick_cases(framework: str) -> list[dict]:
    # every op (the quick grid leaves some out for time; this smoke test runs each once), a small epoch dataset
    grid = {**axes.QUICK_BASE, "ops": axes.OPS, "profiles": ("lognormal",), "dataset": 64}
    declared = {fam: adapters.declared_strategies(framework, fam) for fam in adapters.STRATEGY_FAMILIES}
    return axes.cases(frameworks=[framework], strategies={framework: declared}, **grid)


CASES = [pytest.param(c, id=f"{c['framework']}-{c['op']}-{c['strategy']}", marks=p.marks)
         for p in framework_params() for c in quick_cases(p.values[0])]


@pytest.mark.parametrize("case", CASES)
def test_quick_grid(benchmark, case):
    adapter = adapters.get(case["framework"])
    try:
        p = bench.prepare(adapter, case)
    except Unsupported as e:
        pytest.skip(f"precondition: {e}")
    assert p.valid_tokens <= p.padded_tokens and p.work > 0
    assert p.kernel, f"{case['framework']}/{case['strategy']}: no kernel named"
    before = adapter.compile_count()
    benchmark(p.call)
    assert adapter.compile_count() == before, f"{case['framework']}/{case['strategy']} retraced in the timed region"


def test_measure_case_record_is_consistent():
    """One full record: throughput, floor fraction and compile time derive from the same median."""
    name = next(n for n in ("torch", "jax", "tensorflow") if n in adapters.available())
    case = {**[c for c in quick_cases(name) if c["op"] == "rnn_forward_backward"][-1], "batch": 8, "max_len": 32}
    rec = bench.measure_case(adapters.get(name), case, FLOORS)
    med = rec["median_s"]
    assert rec["status"] == "ok" and rec["p25_s"] <= med <= rec["p75_s"] and not rec["retraced"]
    assert math.isclose(rec["valid_tokens_per_s"], rec["valid_tokens"] / med)
    assert math.isclose(rec["sec_per_M_valid_tokens"], med / rec["valid_tokens"] * 1e6)
    assert rec["floor"] == "gemm"
    assert math.isclose(rec["fraction_of_floor"], rec["work"] / FLOORS["gemm_flop_per_s"] / med)
    assert rec["compile_s"] >= 0 and rec["first_call_s"] >= rec["compile_s"]
    assert rec["peak_rss_bytes"] is None or rec["peak_rss_bytes"] >= 0


def test_a_case_records_the_memory_its_timed_calls_fault_in_afresh(monkeypatch):
    """A call whose buffer is mapped anew every time (what JAX's padded calls did in glibc's thread arenas) faults
    all of it in on every call: the record says how much; a call that reuses its buffer faults nothing in."""
    import mmap

    size, page = 8 * 2**20, mmap.PAGESIZE
    kept = bytearray(size)

    def fresh():
        m = mmap.mmap(-1, size)
        for i in range(0, size, page):
            m[i] = 1  # first touch: one fault a page
        m.close()

    def reuse():
        for i in range(0, size, page):
            kept[i] = (kept[i] + 1) % 256

    def record(call):
        ready = types.SimpleNamespace(call=call, kernel="k", first_call_s=0.0, extra={}, valid_tokens=1,
                                      padded_tokens=1, padding_fraction=0.0, ideal_share=1.0, floor="copy", work=1.0)
        monkeypatch.setattr(bench, "prepare", lambda adapter, case: ready)
        case = {"framework": "numpy", "op": "pad", "device": "cpu", "dtype": "float32", "batch": 1, "max_len": 1,
                "profile": "equal", "strategy": "pad", "seed": 0}
        return bench.measure_case(adapters.get("numpy"), case, FLOORS)["faulted_bytes_per_call"]

    assert record(fresh) >= 0.9 * size, "every page of the fresh mapping faults in on every call"
    assert record(reuse) < 0.1 * size, "a reused buffer stays mapped"


def test_floor_primitives_copy_and_multiply_call_after_call(fw, device):
    """The floors' copy returns x's values however often it runs (torch and JAX write into a buffer kept between
    calls, JAX's donated back to it each time) and the product is a @ b: the rates measure real work."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    a, b = rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal((4, 4)).astype(np.float32)
    native = fw.asarray(x, device)
    copies = [fw.to_numpy(fw._copy(native)) for _ in range(3)]  # each read before the next call
    for y in copies:
        assert np.array_equal(y, x)
    assert np.array_equal(fw.to_numpy(native), x), "the copy must leave its source as it was"
    other = fw.asarray(2 * x[:2], device)  # a new shape: a new buffer
    assert np.array_equal(fw.to_numpy(fw._copy(other)), 2 * x[:2])
    assert np.allclose(fw.to_numpy(fw._matmul(fw.asarray(a, device), fw.asarray(b, device))), a @ b, rtol=1e-5)
    rates = fw.floors(device, copy_bytes=2**20, gemm_n=64, repeats=2)
    assert rates["copy_bytes_per_s"] > 0 and rates["gemm_flop_per_s"] > 0
    # the kept copy output is the floors' own: held on through every case after them, it counted in each GPU
    # case's allocator peak (+256 MiB in torch's at d5b0564)
    assert "_floor_out" not in fw.__dict__


def test_a_gpu_case_peak_is_one_calls_above_what_was_held_before_it(monkeypatch):
    """torch on a GPU: the peak of one call above what was allocated just before it, not the allocator's peak since
    the case began (which held the inputs and whatever earlier work left alive). A fake CUDA allocator: 300 bytes
    held, the call allocates 1000 more at its peak and frees them."""
    require_torch = pytest.importorskip("torch")
    fw = adapters.get("torch")
    state = {"now": 300, "peak": 5000}  # an earlier, bigger peak that a reset must clear

    def call():
        state["peak"] = max(state["peak"], state["now"] + 1000)

    cuda = types.SimpleNamespace(synchronize=lambda: None, memory_allocated=lambda: state["now"],
                                 max_memory_allocated=lambda: state["peak"],
                                 reset_peak_memory_stats=lambda: state.update(peak=state["now"]))
    monkeypatch.setattr(fw, "torch", types.SimpleNamespace(cuda=cuda, __version__=require_torch.__version__))
    assert fw.call_peak(call, "gpu") == 1000
    assert fw.call_peak(call, "cpu") is None


@pytest.mark.parametrize("family,ops,variant", [
    ("loss", ("loss_softmax_ce", "loss_sigmoid_bce"), "kind"),
    ("embedding", ("embed_forward_backward", "embedding_bag_mean"), "op")])
def test_a_case_names_the_primitive_its_variant_ran(fw, device, family, ops, variant):
    """A strategy whose primitive follows the variant of its op (a loss's kind, a lookup or a bag) names, in each
    case's record, the one that ran for it, not every primitive it may call (a BCE figure must not read
    "...softmax_cross_entropy | ...sigmoid..."). Every loss strategy of both kinds has two; embeddings' one at
    least (TensorFlow's and JAX's segment)."""
    cases = {c["op"]: c for c in quick_cases(fw.name) if c["op"] in ops}
    names = {}
    for strategy in adapters.declared_strategies(fw.name, family):
        kernels = {}
        for op, case in cases.items():
            try:
                kernels[op] = bench.prepare(fw, {**case, "strategy": strategy, "device": device, "batch": 4,
                                                 "max_len": 8, "profile": "lognormal"}).kernel
            except Unsupported:  # its precondition leaves this op out (e.g. torch's bag-only embedding_bag)
                continue
        assert not any(" | " in k for k in kernels.values()), kernels
        names[strategy] = kernels
    split = [s for s, k in names.items() if len(set(k.values())) == 2]
    if family == "loss":
        both = [s for s, k in names.items() if len(k) == 2]
        assert both and split == both, names
    elif fw.name != "torch":
        assert split, names
@pytest.mark.parametrize("fw_name", [p for p in framework_params(("tensorflow",))])
def test_a_cpu_case_whose_allocator_keeps_its_memory_still_shows_its_working_set(fw_name):
    """TensorFlow's CPU allocator keeps what its first calls took, so the process's RSS no longer grows and a masked
    CE forward + backward read ~0.05 MiB: the case's peak must hold at least the gradient it returns."""
    case = {"framework": fw_name, "op": "loss_softmax_ce", "device": "cpu", "dtype": "float32", "batch": 64,
            "max_len": 32, "profile": "lognormal", "strategy": "valid_only", "seed": 0}
    rec = bench.measure_case(adapters.get(fw_name), case, FLOORS)
    grad_bytes = 64 * 32 * 1024 * 4  # [B, T, C] float32 (C = the loss family's 1024 classes)
    assert rec["peak_bytes"] >= grad_bytes, (rec["peak_bytes"], rec["peak_rss_bytes"], rec["memory_method"])
    assert rec["device_peak_bytes"] >= grad_bytes and "allocator" in rec["memory_method"]


def test_two_cases_of_very_different_size_report_very_different_peaks():
    """Per-case memory is the case's own: a 16x bigger case must show a clearly bigger peak (not the running
    maximum of the worker, which would make the small case after the big one look as big)."""
    name = next(n for n in ("torch", "jax", "tensorflow") if n in adapters.available())
    base = [c for c in quick_cases(name) if c["op"] == "rnn_forward_backward"][0]
    if name == "torch":  # the padded oneDNN call: seconds, where `packed` takes ~40 s at 256 x 256 here
        base = {**base, "strategy": "saturated_gate"}
    # 128 x 128 against 16 x 64 (torch here: peaks of 189 MB and 14 MB); 256 x 256 took ~50 s of the suite
    big = bench.measure_case(adapters.get(name), {**base, "batch": 128, "max_len": 128}, FLOORS)
    small = bench.measure_case(adapters.get(name), {**base, "batch": 16, "max_len": 64}, FLOORS)
    assert big["peak_bytes"] and small["peak_bytes"] is not None
    assert big["peak_bytes"] > 4 * max(small["peak_bytes"], 1), (big["peak_bytes"], small["peak_bytes"])


def test_the_recorded_commit_says_when_the_files_differ_from_it(tmp_path, monkeypatch):
    import subprocess

    from harness import records

    git = lambda *a: subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *a], cwd=tmp_path,  # noqa: E731
                                    check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short", "HEAD")
    monkeypatch.setattr(records, "ROOT", tmp_path)
    for content, untracked, want in (("x = 1\n", False, head), ("x = 1\n", True, head), ("x = 2\n", False,
                                                                                           head + "+dirty")):
        (tmp_path / "code.py").write_text(content)
        if untracked:
            (tmp_path / "results.jsonl").write_text("{}\n")  # results and scratch are not the code
        records.commit.cache_clear()
        assert records.commit() == want
    records.commit.cache_clear()


@pytest.mark.parametrize("name", framework_params(["jax"]))
def test_new_batches_compile_only_where_the_plan_follows_the_lengths(name):
    """`stream_compiles` counts what fresh batches of the same lengths add: nothing for a padded strategy (one
    shape whatever the lengths), some for bucketed attention (its buckets' shapes follow the lengths); the same
    counts from a warm process (it forgets what was compiled, then compiles the case's own batch uncounted)."""
    adapter = adapters.get(name)
    case = dict(op="attention_forward_backward", framework=name, device="cpu", dtype="float32", batch=16,
                max_len=32, profile="lognormal", seed=0, heads=2, kv_heads=1, head_dim=8, causal=False)
    padded = bench.stream_compiles(adapter, {**case, "strategy": "xla_dpa"}, batches=3)
    assert padded == {"stream_batches": 3, "stream_compiles": 0, "stream_compile_s": 0.0}
    first = bench.stream_compiles(adapter, {**case, "strategy": "bucketed"}, batches=3)
    again = bench.stream_compiles(adapter, {**case, "strategy": "bucketed"}, batches=3)
    assert first["stream_compiles"] > 0 and first["stream_compile_s"] > 0, first
    assert again["stream_compiles"] == first["stream_compiles"], (first, again)


@pytest.mark.parametrize("name", framework_params(["jax", "tensorflow"]))
def test_the_planner_counts_what_the_streamed_batches_compiled_and_goes_on_over_many_more(name):
    """For an RNN strategy whose programs follow its plan, `planned_compiles` names (compiling nothing) as many new
    programs in the stream's fresh batches as `stream_compiles` measured compiling them, then goes on over more
    fresh batches; a strategy with one program per shape gets no planner count."""
    adapter = adapters.get(name)
    case = dict(op="rnn_forward_backward", framework=name, device="cpu", dtype="float32", batch=16, max_len=32,
                profile="zipf", seed=0, cell="lstm", hidden=4, input_size=4, num_layers=1, bidirectional=False,
                strategy="time_sliced")
    stream = bench.stream_compiles(adapter, case, batches=2)
    c0 = adapter.compile_count()
    planned = bench.planned_compiles(adapter, case, batches=40, streamed=2)
    assert adapter.compile_count() == c0, "the planner compiled something"
    assert planned["plan_compiles_streamed"] == stream["stream_compiles"] > 0, (planned, stream)
    assert planned["plan_batches"] == 40 and planned["plan_compiles"] > planned["plan_compiles_streamed"], planned
    assert 0 <= planned["plan_compiles_tail"] <= planned["plan_compiles"], planned
    plain = {"jax": "scan", "tensorflow": "keras"}[name]
    assert bench.planned_compiles(adapter, {**case, "strategy": plain}) == {}


@pytest.mark.parametrize("name", framework_params(["jax"]))
def test_a_streamed_case_compiles_afresh_once_and_its_fresh_batches_count_as_from_a_cold_start(name, monkeypatch):
    """A case whose fresh batches are due forgets what is compiled before it runs, not after it is timed: its
    compile figure is a fresh process's even where an earlier case compiled its shapes, its own batch is prepared
    (and compiled) once, not again for the stream, and the stream counts what it counts from a cold start."""
    adapter = adapters.get(name)
    case = dict(op="attention_forward_backward", framework=name, device="cpu", dtype="float32",
                batch=axes.HEADLINE["batch"], max_len=axes.HEADLINE["max_len"], profile="lognormal", seed=0,
                heads=2, kv_heads=1, head_dim=8, causal=False, strategy="bucketed")
    monkeypatch.setenv(bench.STREAM_ENV, "2")
    cold = bench.stream_compiles(adapter, case)
    bench.prepare(adapter, case)  # its shapes are compiled now, as an earlier case of the worker may leave them
    seeds, real = [], bench.prepare
    monkeypatch.setattr(bench, "prepare", lambda a, c: seeds.append(c["seed"]) or real(a, c))
    rec = bench.measure_case(adapter, case, FLOORS)
    assert seeds == [0, 1, 2], "the case's own batch once, then the two fresh ones"
    assert rec["compiles_in_setup"] > 0 and rec["compile_s"] is not None, rec
    assert {k: rec[k] for k in ("stream_batches", "stream_compiles")} == {
        "stream_batches": 2, "stream_compiles": cold["stream_compiles"]}, (rec, cold)


def test_fresh_batches_run_for_compiled_ragged_headline_cases_unless_turned_off(monkeypatch):
    compiled, eager = types.SimpleNamespace(compile_count=lambda: 3), types.SimpleNamespace(compile_count=lambda: 0)
    case = dict(op="attention_forward_backward", profile="lognormal", batch=axes.HEADLINE["batch"],
                max_len=axes.HEADLINE["max_len"])
    monkeypatch.delenv(bench.STREAM_ENV, raising=False)
    assert bench.streams(compiled, case)
    for other in ({"profile": "equal"}, {"batch": 8}, {"max_len": 512}, {"op": "rnn_epoch"}):
        assert not bench.streams(compiled, {**case, **other}), other
    assert not bench.streams(eager, case)
    monkeypatch.setenv(bench.STREAM_ENV, "0")
    assert not bench.streams(compiled, case)


def test_a_failing_fresh_batch_keeps_the_case_measured(monkeypatch):
    """The fresh batches run after the case is timed: if one fails, the record keeps the case's measurement and
    says why it has no stream figures."""
    name = next(n for n in ("jax", "tensorflow") if n in adapters.available())
    case = dict(op="loss_softmax_ce", framework=name, strategy="valid_only", device="cpu", dtype="float32",
                batch=axes.HEADLINE["batch"], max_len=axes.HEADLINE["max_len"], profile="lognormal", seed=0,
                classes=16)

    def broken(adapter, case, batches=None, warm=False):
        raise MemoryError("fresh batch 2")

    monkeypatch.setattr(bench, "stream_compiles", broken)
    adapter = adapters.get(name)
    bench.prepare(adapter, {**case, "profile": "equal"})  # something compiled: the stream is due
    rec = bench.measure_case(adapter, case, FLOORS)
    assert rec["status"] == "ok" and rec["median_s"] > 0 and "stream_compiles" not in rec
    assert rec["stream_error"] == "MemoryError: fresh batch 2"
