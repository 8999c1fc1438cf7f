"""The "bucketed" and "time_sliced" RNN strategies of JAX and TensorFlow, and TensorFlow's "saturated_gate" and
"concat_rows": exact on batches that really split (or pack), bounded compiles.

`tests/test_rnn.py` already runs every declared strategy through the full reference gate, but on batches too small
to make the planner split; here the batches force several buckets, the compiled shapes are counted over many
random batches (they must stay on the ladders, so they stay few), and the kernel names the bucket count.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import adapters
from adapters.spec import RnnSpec, init_params, pack_rows, plan_buckets, shape_ladder
from harness.data import padded
from harness.profiles import lengths_for
from tests.conftest import require
from tests.rnn_cases import against_reference

NAMES = ["jax", "tensorflow"]
#: three groups of lengths (and an empty row): each framework's cost model splits them (XLA 3 buckets, TF 2)
SPLIT_LENGTHS = np.array([64, 60] + [20] * 6 + [2] * 7 + [0])
SPLIT_T = 64


#: a pairwise covering of cell x side x (layers, bidirectional) x dtype in 6 rows (the full product has 24): each
#: cell twice, its two rows opposite in every other factor, so any two values of any two factors meet in some row
PAIRWISE = [("lstm", "right", 1, False, "float64"), ("lstm", "left", 2, True, "float32"),
            ("gru", "right", 1, False, "float32"), ("gru", "left", 2, True, "float64"),
            ("rnn", "right", 2, True, "float64"), ("rnn", "left", 1, False, "float32")]


def cases(strategy: str, rows=(), names=NAMES) -> list:
    """pytest params (name, cell, side, layers, bi, dtype) of `rows` then PAIRWISE for each framework; where the
    strategy's precondition (`supports`, read from the family module's table: no framework imported) refuses a
    cell, that row runs the GRU instead (a row already listed is not repeated)."""
    out, seen = [], set()
    for name in names:
        unit = importlib.import_module(f"adapters.{name}.rnn").STRATEGIES[strategy]
        for cell, side, layers, bi, dtype in [*rows, *PAIRWISE]:
            if unit.supports(None, cell=cell, device="cpu", dtype=dtype) is not None:
                cell = "gru"
            if (name, cell, side, layers, bi, dtype) not in seen:
                seen.add((name, cell, side, layers, bi, dtype))
                out.append(pytest.param(name, cell, side, layers, bi, dtype,
                                        id=f"{name}-{cell}-{side}-{layers}x{'bi' if bi else 'uni'}-{dtype}"))
    return out


def plan_for(name, lengths, T):
    """The plan the framework's "bucketed" makes: the shared planner with that framework's cost model."""
    mod = importlib.import_module(f"adapters.{name}.rnn")
    return plan_buckets(lengths, T, step_cost=mod.STEP_COST, call_cost=mod.CALL_COST)


#: the batch shape of the compile-bound tests: random batches of it must compile few distinct shapes or plans
LADDER_B, LADDER_T = 32, 64


def random_batches(fw, strategy: str, n: int, cell: str = "rnn") -> list:
    """(lengths, forward result) of `n` seeded random batches of LADDER_B x LADDER_T (lognormal and zipf in turn)
    through `strategy`, on a tiny RNN (tanh unless `cell` says otherwise)."""
    spec = RnnSpec(cell, input_size=2, hidden_size=2)
    params = init_params(spec, seed=0, dtype="float32")
    runs = []
    for seed in range(n):
        L = lengths_for(("lognormal", "zipf")[seed % 2], LADDER_B, LADDER_T, seed=seed)
        x = fw.asarray(padded(L, LADDER_T, (2,), seed=seed, dtype="float32"))
        runs.append((L, fw.rnn(spec, params, x, L, strategy=strategy)))
    return runs


def test_the_split_batch_really_splits():
    plans = {name: [(b.rows.size, b.batch, b.steps) for b in plan_for(name, SPLIT_LENGTHS, SPLIT_T)] for name in NAMES}
    assert plans == {"jax": [(2, 2, 64), (6, 8, 24), (8, 8, 2)], "tensorflow": [(8, 8, 64), (8, 8, 2)]}


@pytest.mark.parametrize("name,cell,side,layers,bi,dtype", cases("bucketed", [("lstm", "left", 1, True, "float64"),
                                                                            ("gru", "right", 2, False, "float64")]))
def test_bucketed_matches_reference_on_several_buckets(name, cell, side, layers, bi, dtype):
    """Every cell (the tanh RNN too), both sides, one layer one way and two layers both ways, float64 and float32
    (the shared tolerance table): exact on a batch the cost model splits, and the kernel names the buckets."""
    require(name)
    fw = adapters.get(name)
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=layers, bidirectional=bi)
    L, T = SPLIT_LENGTHS, SPLIT_T
    bad, out = against_reference(fw, spec, L, T, side=side, dtype=dtype, seed=1, strategy="bucketed")
    assert not bad, f"{name} bucketed {cell} side={side} {dtype}: {bad}"
    k = len(plan_for(name, L, T))
    assert k >= 2 and out.kernel.endswith(f"bucketed[{k}]"), out.kernel


@pytest.mark.parametrize("name", NAMES)
def test_compiled_shapes_stay_on_the_ladders(name):
    """Ten random batches of one B, T: every compiled bucket shape lies on the ladders (powers of two for the batch,
    powers of two and 1.5x them for time), so there are few of them; exact lengths would give ~2x as many."""
    require(name)
    fw = adapters.get(name)
    B, T = LADDER_B, LADDER_T
    before = set(fw.rnn_bucket_shapes())
    kernels = set()
    for L, out in random_batches(fw, "bucketed", 10):
        assert out.kernel.endswith(f"bucketed[{len(plan_for(name, L, T))}]"), out.kernel
        kernels.add(out.kernel)
    shapes = {s[-3:] for s in fw.rnn_bucket_shapes() - before}
    off = [(b, t) for b, t, _ in shapes if b not in shape_ladder(B, halves=False) or t not in shape_ladder(T)]
    assert not off, f"bucket shapes off the ladders: {off}"
    assert 1 < len(shapes) <= 20, f"{len(shapes)} compiled bucket shapes for 10 batches: {sorted(shapes)}"
    assert len(kernels) > 1, "ten different batches should not all plan the same number of buckets"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lengths,T,side", [([0, 0, 0], 4, "right"), ([0, 0], 0, "right"), ([5, 0, 1], 5, "right"),
                                             ([5, 5, 5], 5, "right"), ([5, 5, 5], 5, "left")],
                         ids=["all-empty", "T0", "one", "full-right", "full-left"])
def test_bucketed_edge_batches(name, lengths, T, side):
    """Degenerate batches; a batch of full rows is one bucket of everything, which runs the plain strategy's call."""
    require(name)
    fw = adapters.get(name)
    spec = RnnSpec("lstm", input_size=2, hidden_size=3, bidirectional=True)
    bad, out = against_reference(fw, spec, np.array(lengths), T, side=side, seed=2, strategy="bucketed")
    assert not bad, bad
    assert "bucketed[" in out.kernel
    if min(lengths, default=0) == T > 0:
        assert out.kernel.endswith("bucketed[1]")
        forward = fw.rnn(spec, init_params(spec, seed=2, dtype="float64"),
                         fw.asarray(padded(np.array(lengths), T, (2,), side=side, seed=2, dtype="float64")),
                         np.array(lengths), side=side, strategy="bucketed")
        assert forward.kernel.endswith("bucketed[1]")
        np.testing.assert_allclose(fw.to_numpy(forward.outputs), fw.to_numpy(out.outputs), rtol=1e-12, atol=1e-12)


def _brute_force_segments(sorted_lengths, max_segments, step, call):
    """Every choice of cut points among the distinct lengths, costed directly: the least cost."""
    import itertools

    ends = sorted(set(int(v) for v in sorted_lengths))
    best = np.inf
    for k in range(1, max_segments + 1):
        for inner in itertools.combinations(ends[:-1], k - 1):
            cuts = [0, *inner, ends[-1]]
            total = sum(call + (b - a) * (int(np.sum(sorted_lengths > a)) + step) for a, b in zip(cuts, cuts[1:]))
            best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_segments_is_the_cheapest_schedule(seed):
    """The time-slicing planner's cuts cost what an exhaustive search finds, cover [0, longest) without gaps, and
    each segment runs exactly the rows longer than its start."""
    from adapters.spec import plan_segments

    rng = np.random.default_rng(seed)
    L = np.sort(rng.integers(1, 30, size=int(rng.integers(1, 12))))[::-1]
    step, call, k = float(rng.integers(0, 8)), float(rng.integers(0, 40)), int(rng.integers(1, 5))
    segs = plan_segments(L, max_segments=k, step_cost=step, call_cost=call)
    assert segs[0].start == 0 and segs[-1].stop == L[0] and len(segs) <= k
    assert all(a.stop == b.start for a, b in zip(segs, segs[1:]))
    assert all(s.rows == int(np.sum(L > s.start)) for s in segs)
    cost = sum(call + (s.stop - s.start) * (s.rows + step) for s in segs)
    assert cost == pytest.approx(_brute_force_segments(L, k, step, call))


def test_plan_segments_extremes():
    from adapters.spec import plan_segments

    L = np.array([9, 7, 7, 3, 1])
    assert [(s.start, s.stop, s.rows) for s in plan_segments(L, step_cost=0, call_cost=0)] == \
        [(0, 1, 5), (1, 3, 4), (3, 7, 3), (7, 9, 1)]
    assert [(s.start, s.stop, s.rows) for s in plan_segments(L, step_cost=0, call_cost=1e9)] == [(0, 9, 5)]


def _lstm_ref_as_cudnn(seen):
    """A stand-in for `jax.experimental.rnn.lstm` on CPU: the same flat cuDNN weight vector, unpacked by JAX's own
    `unpack_lstm_weights`, run by JAX's `lstm_ref`. It records the shortest length it was given (cuDNN's state
    for a zero-length row is wrong, so the strategy must never pass one)."""
    import jax
    from jax.experimental import rnn as jax_rnn

    def lstm(x, h0, c0, weights, seq_lengths, input_size, hidden_size, num_layers, dropout, bidirectional,
             precision=None):
        jax.debug.callback(lambda v: seen.append(int(v.min())), seq_lengths)
        w_ih, w_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers,
                                                             bidirectional)
        return jax_rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size,
                                num_layers, dropout, bidirectional)

    return lstm


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jax_cudnn_lstm_glue_matches_reference(side, dtype, monkeypatch):
    """cudnn_lstm runs on GPUs only; on CPU its glue (cuDNN weight packing, realignment, zero-length rows, the
    gradient split back into canonical leaves) is checked around JAX's own reference LSTM in cuDNN's place."""
    require("jax")
    from jax.experimental import rnn as jax_rnn

    fw = adapters.get("jax")
    why = fw.why_not("rnn", "cudnn_lstm", cell="lstm", device="cpu", dtype="float32")
    assert why and "GPU" in why
    assert fw.why_not("rnn", "cudnn_lstm", cell="gru", device="gpu", dtype="float32")
    seen = []
    monkeypatch.setattr(jax_rnn, "lstm", _lstm_ref_as_cudnn(seen))
    spec = RnnSpec("lstm", input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    L, T = SPLIT_LENGTHS, SPLIT_T
    past_precondition = lambda params, x, cot: fw._rnn_vjp(("cudnn", 1), spec, params, x, L, cot, side, "cpu")  # noqa: E731
    bad, out = against_reference(fw, spec, L, T, side=side, dtype=dtype, seed=2, run=past_precondition)
    assert out.kernel == "cudnn" and seen and min(seen) >= 1, seen
    assert not bad, f"cudnn_lstm glue side={side} {dtype}: {bad}"


def test_jax_scan_graph_compiles_with_its_options(monkeypatch):
    """scan_graph runs on GPUs only (XLA:GPU command buffers); on CPU, past its precondition, its program is
    scan_unroll8's compiled with GRAPH_OPTIONS, which XLA:CPU accepts and ignores: exact there, and the options
    reach the compile (a misspelt command type fails it), so a GPU run gets the graphs it names."""
    require("jax")
    from adapters.jax import rnn as jax_rnn

    fw = adapters.get("jax")
    why = fw.why_not("rnn", "scan_graph", cell="gru", device="cpu", dtype="float64")
    assert why and "GPU" in why
    assert fw.why_not("rnn", "scan_graph", cell="rnn", device="gpu", dtype="float64") is None
    spec = RnnSpec("lstm", input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    L, T = SPLIT_LENGTHS, SPLIT_T
    algo = jax_rnn.STRATEGIES["scan_graph"]  # the unit's own entry points, past its precondition
    run = lambda params, x, cot: algo.vjp(fw, spec, params, x, L, cot, "left", "cpu")  # noqa: E731
    bad, out = against_reference(fw, spec, L, T, side="left", dtype="float32", seed=3, run=run)
    assert out.kernel == "xla-scan cuda-graph", out.kernel
    assert not bad, f"scan_graph past its precondition: {bad}"
    monkeypatch.setitem(jax_rnn.GRAPH_OPTIONS, "xla_gpu_enable_command_buffer", "FUSION,WHILST")
    other = RnnSpec("gru", input_size=3, hidden_size=4)  # a program not compiled yet
    with pytest.raises(Exception, match="WHILST"):
        against_reference(fw, other, L, T, dtype="float32", run=lambda params, x, cot: algo.vjp(
            fw, other, params, x, L, cot, "right", "cpu"))


@pytest.mark.parametrize("name,cell,side,layers,bi,dtype", cases("time_sliced", [("lstm", "left", 1, True, "float64"),
                                                                               ("gru", "right", 2, False, "float64"),
                                                                               ("rnn", "right", 1, True, "float64")]))
def test_time_sliced_over_several_segments(name, cell, side, layers, bi, dtype):
    """time_sliced (TF: Keras layers, JAX: the masked scan) on a batch its planner cuts into several segments
    (row counts rounded up the batch ladder, so some segments carry rows that already ended), every cell, both
    sides, float64 and float32: exact, and one compile per distinct plan."""
    require(name)
    fw = adapters.get(name)
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=layers, bidirectional=bi)
    L, T = SPLIT_LENGTHS, SPLIT_T
    before = len(fw.rnn_sliced_plans())
    for _ in range(2):  # the second call reuses the first one's trace
        bad, out = against_reference(fw, spec, L, T, side=side, dtype=dtype, seed=3, strategy="time_sliced")
        assert not bad, f"{name} time_sliced {cell} side={side} {dtype}: {bad}"
    k = int(out.kernel.split("sliced[")[1].split("]")[0])
    assert k >= 2, out.kernel
    assert len(fw.rnn_sliced_plans()) == before + 1


@pytest.mark.parametrize("name,plain,strategy", [("jax", "xla-scan", "scan"), ("tensorflow", "keras-while", "keras")],
                         ids=["jax", "tensorflow"])
@pytest.mark.parametrize("lengths,T,side", [([0, 0, 0], 4, "right"), ([0, 0], 0, "right"), ([5, 0, 1], 5, "left"),
                                             ([5, 5, 5], 5, "right"), ([5, 5, 5], 5, "left")],
                         ids=["all-empty", "T0", "one", "full-right", "full-left"])
def test_time_sliced_edge_batches(name, plain, strategy, lengths, T, side):
    """Degenerate batches; full rows are one segment of the whole batch over every step, which runs the plain
    strategy's own call (TF: the Keras layers' tf.function, the same outputs to the last bit; JAX: scan's without
    its masks, as nothing is padded: the same to float64 rounding)."""
    require(name)
    fw = adapters.get(name)
    spec = RnnSpec("lstm", input_size=2, hidden_size=3, bidirectional=True)
    bad, out = against_reference(fw, spec, np.array(lengths), T, side=side, seed=2, strategy="time_sliced")
    assert not bad, bad
    if min(lengths, default=0) == T > 0:
        assert out.kernel == f"{plain} sliced[1]", out.kernel
        x = fw.asarray(padded(np.array(lengths), T, (2,), side=side, seed=2, dtype="float64"))
        params = init_params(spec, seed=2, dtype="float64")
        got, want = (fw.rnn(spec, params, x, np.array(lengths), side=side, strategy=s)
                     for s in ("time_sliced", strategy))
        if name == "jax":
            np.testing.assert_allclose(fw.to_numpy(got.outputs), fw.to_numpy(want.outputs), rtol=1e-14, atol=1e-15)
        else:
            np.testing.assert_array_equal(fw.to_numpy(got.outputs), fw.to_numpy(want.outputs))


@pytest.mark.parametrize("name", NAMES)
def test_time_sliced_plans_stay_on_the_ladders(name):
    """Six random batches of one B, T: every compiled plan cuts time on the time ladder and runs row counts on the
    batch ladder (powers of two), so plans repeat across batches and compiles stay few."""
    require(name)
    fw = adapters.get(name)
    B, T = LADDER_B, LADDER_T
    before = set(fw.rnn_sliced_plans())
    random_batches(fw, "time_sliced", 6)
    plans = {key[-1] for key in set(fw.rnn_sliced_plans()) - before}
    assert plans, "no plan was compiled"
    times, rows = set(shape_ladder(T)) | {0}, set(shape_ladder(B, halves=False))
    off = [p for p in plans if any(s.start not in times or s.stop not in times or s.rows not in rows for s in p)]
    assert not off, f"plans off the ladders: {off}"
    assert len(plans) <= 6


#: a stream of [16, 24] batches for `programs`: skewed (several buckets, segments, sequences per row), the same
#: lengths shuffled (the same programs: nothing new), moderate, every row full (the plain call, unmasked in JAX),
#: one short row among empty ones, another skewed batch
PROGRAM_T = 24
PROGRAM_STREAM = [np.array([24, 3, 1, 0, 2, 1, 5, 1, 0, 2, 1, 1, 9, 1, 2, 1]),
                  np.array([1, 2, 1, 9, 1, 1, 2, 0, 1, 5, 1, 2, 0, 1, 3, 24]),
                  np.array([6, 8, 5, 12, 7, 4, 9, 6, 10, 5, 3, 7, 8, 6, 20, 5]),
                  np.full(16, 24),
                  np.array([0] * 15 + [4]),
                  np.array([13, 1, 2, 0, 0, 1, 1, 3, 1, 1, 2, 17, 1, 0, 4, 1])]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("strategy", ["bucketed", "time_sliced", "concat_rows"])
def test_programs_name_what_each_fresh_batch_compiles(name, strategy):
    """`programs` (the strategy's own host planner, nothing compiled or run) names the programs a batch runs: over a
    stream of fresh batches of one shape, each batch compiles exactly the keys that no earlier batch brought. The
    bench counts them over hundreds of fresh batches (`harness.bench.planned_compiles`), which only holds if this
    does. JAX's "bucketed" runs forward-only too: only its gradient sums the buckets in a jitted call of its own."""
    require(name)
    fw = adapters.get(name)
    spec = RnnSpec("lstm", input_size=2, hidden_size=3)
    params = init_params(spec, seed=0, dtype="float32")
    cot = {k: np.ones(v, "float32") for k, v in (("outputs", (16, PROGRAM_T, 3)), ("h_n", (1, 16, 3)),
                                                  ("c_n", (1, 16, 3)))}
    modes = [True, False] if (name, strategy) == ("jax", "bucketed") else [True]
    for vjp in modes:
        fw.clear_compiled()
        seen, news = set(), []
        for i, L in enumerate(PROGRAM_STREAM):
            keys = fw.programs("rnn", strategy, spec, L, PROGRAM_T, vjp=vjp, compiled=seen)
            x = fw.asarray(padded(L, PROGRAM_T, (2,), seed=i, dtype="float32"))
            before = fw.compile_count()
            if vjp:
                fw.rnn_vjp(spec, params, x, L, cot, strategy=strategy)
            else:
                fw.rnn(spec, params, x, L, strategy=strategy)
            news.append(len(keys - seen))
            assert fw.compile_count() - before == news[-1], \
                f"batch {i} {L.tolist()}: {fw.compile_count() - before} compiles, programs named {keys - seen} new"
            seen |= keys
        assert news[1] == 0 and sum(news) >= 4, news  # a repeated plan compiled nothing; the stream compiled
    # no step at all: what runs then (JAX: the scan over 0 steps, compiled; TF: zeros, no tf.function) is named too
    fw.clear_compiled()
    empty, before = np.zeros(3, dtype=np.int64), fw.compile_count()
    keys = fw.programs("rnn", strategy, spec, empty, 0, vjp=True)
    fw.rnn_vjp(spec, params, fw.asarray(np.zeros((3, 0, 2), "float32")), empty,
               {k: v[:3, :0] if k == "outputs" else v[:, :3] for k, v in cot.items()}, strategy=strategy)
    assert fw.compile_count() - before == len(keys), (keys, fw.compile_count() - before)


#: "time_sliced" plan reuse, T = 40: A's own plan (4 segments: 16, 8, 4 and 1 rows) covers B, whose own plan (3
#: segments) it is not, at 1.22x B's modelled cost under JAX's costs (TF's: A's 2 segments against B's 2); C has
#: 6 rows running for 30 steps, more than A's plan runs from step 8 on
REUSE_A = np.array([5, 1, 16, 25, 8, 27, 1, 1, 4, 6, 1, 3, 40, 4, 4, 1])
REUSE_B = np.array([1, 13, 32, 1, 1, 2, 1, 1, 1, 2, 3, 40, 10, 2, 1, 1])
REUSE_C = np.array([30] * 6 + [1] * 10)


@pytest.mark.parametrize("name", NAMES)
def test_time_sliced_runs_a_compiled_plan_that_covers_a_new_batch(name, monkeypatch):
    """A batch whose own segment plan is not compiled runs a compiled plan that covers it (at every step at least
    the rows still running, and steps up to its longest row) where that plan's modelled cost is within
    SLICE_REUSE of its own: exact (both directions, left padding, NaN in padding), nothing compiled. A batch the
    compiled plans do not cover compiles its own; with no tolerance a new plan compiles though one covers it."""
    require(name)
    module = importlib.import_module(f"adapters.{name}.rnn")
    fw = adapters.get(name)
    spec = RnnSpec("lstm", input_size=3, hidden_size=4, bidirectional=True)
    T = 40
    own = {n: fw.programs("rnn", "time_sliced", spec, L, T, vjp=True) for n, L in (("A", REUSE_A), ("B", REUSE_B))}
    assert own["A"] != own["B"], own  # B's own plan is another one
    assert fw.programs("rnn", "time_sliced", spec, REUSE_B, T, vjp=True, compiled=own["A"]) == own["A"]
    fw.clear_compiled()
    for label, L, new in (("A", REUSE_A, 1), ("B", REUSE_B, 0), ("C", REUSE_C, 1)):
        before = fw.compile_count()
        bad, out = against_reference(fw, spec, L, T, side="left", seed=3, strategy="time_sliced")
        assert not bad and "sliced[" in out.kernel, (label, out.kernel, bad)
        assert fw.compile_count() - before == new, (label, fw.compile_count() - before)
    monkeypatch.setattr(module, "SLICE_REUSE", 0.0)
    before = fw.compile_count()  # A's and C's plans are compiled: B's own compiles now
    bad, _ = against_reference(fw, spec, REUSE_B, T, side="left", seed=3, strategy="time_sliced")
    assert not bad and fw.compile_count() - before == 1, (bad, fw.compile_count() - before)


def test_tensorflow_saturated_gate_excludes_the_tanh_rnn_with_a_reason():
    require("tensorflow")
    fw = adapters.get("tensorflow")
    why = fw.why_not("rnn", "saturated_gate", cell="rnn", device="cpu", dtype="float32")
    assert why and "no gate to saturate" in why and "'keras'" in why, why
    assert "saturated_gate" not in fw.rnn_strategies("rnn")
    assert "saturated_gate" in set(fw.rnn_strategies("lstm")) & set(fw.rnn_strategies("gru"))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_tensorflow_saturated_gate_is_exact_and_a_weak_gate_is_caught(cell, monkeypatch):
    """Keras's unmasked call on left-aligned rows with the indicator column matches the float64 reference on a
    skewed batch (empty rows, left and right padding, both directions, two layers); with the constant at 1 the
    state moves on padding and the comparison says so."""
    require("tensorflow")
    import adapters.tensorflow.rnn as tf_rnn

    fw = adapters.get("tensorflow")
    L = np.array([40, 1, 0, 3, 2, 38, 1, 17, 2, 0, 5, 1, 39, 2, 3, 1])
    for side in ("right", "left"):
        spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
        bad, out = against_reference(fw, spec, L, 40, side=side, seed=2, strategy="saturated_gate")
        assert not bad and out.kernel == "keras-while", (side, out.kernel, bad)
    monkeypatch.setattr(tf_rnn, "SATURATION", 1.0)
    spec = RnnSpec(cell, input_size=3, hidden_size=5, num_layers=1, bidirectional=True)  # a new trace
    bad, _ = against_reference(fw, spec, L, 40, side="right", seed=2, strategy="saturated_gate")
    assert {"outputs", "h_n"} <= set(bad), bad


# -- concat_rows: several sequences end to end per row ---------------------------------------------------------------
def test_pack_rows_places_a_small_batch_by_hand():
    """First-fit decreasing of lengths [3, 0, 2, 5, 1] into rows of 6 slots (the longest, 5, rounded up the time
    ladder of T=6): row 0 = seq 3; row 1 = seq 0, a separator, seq 2; row 2 = seq 4."""
    p = pack_rows(np.array([3, 0, 2, 5, 1]), 6)
    assert (p.rows, p.steps, p.used) == (3, 6, 3)
    assert p.src.tolist() == [18, 19, 20, 21, 22, -1, 0, 1, 2, -1, 12, 13, 24, -1, -1, -1, -1, -1]
    assert p.last.tolist() == [8, -1, 11, 4, 12]
    assert p.mirror.tolist() == [4, 3, 2, 1, 0, 5, 8, 7, 6, 9, 11, 10, 12, 13, 14, 15, 16, 17]
    assert pack_rows(np.array([0, 0]), 4) is None and pack_rows(np.array([0, 0]), 0) is None


@pytest.mark.parametrize("profile", ["lognormal", "zipf", "uniform", "equal"])
@pytest.mark.parametrize("seed", range(3))
def test_pack_rows_layout_holds_every_sequence_once_with_a_gap_between(profile, seed):
    """On random batches: every valid (b, t) in exactly one slot, in order, in one row; a gap (separator) slot
    between two sequences of a row; `back` the inverse of `src`; `mirror` an involution that maps each slot to
    the mirrored step of its sequence; the grid on the ladders and smaller than the batch where lengths vary."""
    B, T = 48, 96
    L = lengths_for(profile, B, T, seed=seed)
    L[seed] = 0  # an empty row
    p = pack_rows(L, T)
    assert p.steps == shape_ladder(T)[np.searchsorted(shape_ladder(T), L.max())]
    assert p.rows in shape_ladder(B, quarters=True) and p.used <= min(p.rows, np.count_nonzero(L)) and p.rows <= B
    grid = p.src.reshape(p.rows, p.steps)
    b, t = np.divmod(np.where(grid >= 0, grid, 0), T)
    assert np.array_equal(np.sort(p.src[p.src >= 0]), np.flatnonzero((np.arange(T)[None] < L[:, None]).reshape(-1)))
    both = (grid[:, 1:] >= 0) & (grid[:, :-1] >= 0)  # two neighbouring slots with data: one sequence, next step
    assert np.all(b[:, 1:][both] == b[:, :-1][both]) and np.all(t[:, 1:][both] == t[:, :-1][both] + 1)
    assert np.all(grid[:p.used, 0] >= 0) and np.all(t[:p.used, 0] == 0)  # each filled row opens with a step 0
    starts = (grid >= 0) & (t == 0)
    assert starts.sum() == np.count_nonzero(L)
    assert np.array_equal(p.back[p.src[p.src >= 0]], np.flatnonzero(p.src >= 0))
    assert np.all(p.back[(np.arange(T)[None] >= L[:, None]).reshape(-1)] == -1)
    assert np.array_equal(p.mirror[p.mirror], np.arange(p.src.size))
    has = p.src >= 0
    mb, mt = np.divmod(p.src[p.mirror[has]], T)
    assert np.array_equal(mb, b.reshape(-1)[has]) and np.array_equal(mt, L[mb] - 1 - t.reshape(-1)[has])
    assert np.array_equal(p.src[p.last[L > 0]], np.flatnonzero(L) * T + L[L > 0] - 1) and np.all(p.last[L == 0] == -1)
    if profile in ("lognormal", "zipf"):
        assert p.used < np.count_nonzero(L) / 2, (p.used, np.count_nonzero(L))
    exact = pack_rows(L, T, ladder=False)  # an eager framework's grid: the longest sequence by the rows filled
    assert (exact.rows, exact.steps) == (exact.used, L.max())
    assert np.array_equal(np.sort(exact.src[exact.src >= 0]), np.sort(p.src[p.src >= 0]))


#: a skewed batch that packs into far fewer rows than it has (empty rows too)
PACK_LENGTHS = np.array([40, 1, 0, 3, 2, 38, 1, 17, 2, 0, 5, 1, 39, 2, 3, 1])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_concat_rows_is_exact_on_a_packed_batch(name, cell):
    """Both pack with no separator (the scan resets its carry at each sequence's first slot), so sequences touch:
    the reference on the skewed batch, both sides, both directions, two layers, every cell (the tanh RNN too).
    Both scans have a written-out gradient (TF's `_reset_scan`, JAX's `reset_scan`), so every gradient here checks
    it against the reference's."""
    require(name)
    fw = adapters.get(name)
    L, T = PACK_LENGTHS, 40
    p = pack_rows(L, T, gap=0)
    for side in ("right", "left"):
        spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
        bad, out = against_reference(fw, spec, L, T, side=side, seed=2, strategy="concat_rows")
        assert not bad and out.kernel == f"xla-scan rows[{p.rows}x{p.steps}]", (side, out.kernel, bad)
    touching = (p.src[1:] >= 0) & (p.src[:-1] >= 0) & (p.src[1:] // T != p.src[:-1] // T)
    assert touching.any() and p.rows < L.size / 2


@pytest.mark.parametrize("name", ["tensorflow", "jax"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_concat_rows_without_its_reset_is_caught(name, cell, monkeypatch):
    """The grid's scan (TF's `_reset_scan`, JAX's `reset_scan`, each with a written-out gradient) with its reset
    dropped (the carry passes from one sequence into the next, and the cotangent back) fails the reference on
    outputs and h_n."""
    require(name)
    fw = type(adapters.get(name))()  # a fresh adapter: traced functions are cached per adapter
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=1, bidirectional=True)
    if name == "tensorflow":
        import adapters.tensorflow.rnn as module

        real = module._reset_scan
        monkeypatch.setattr(module, "_reset_scan", lambda tf, cell, xw, w_hh, b_hh, keep:
                            real(tf, cell, xw, w_hh, b_hh, tf.ones_like(keep)))
    else:
        import adapters.jax.rnn as module

        real = module.reset_scan
        monkeypatch.setattr(module, "reset_scan", lambda jax, cell, unroll=1, kernels=None:
                            lambda xw, w_hh, b_hh, keep:
                            real(jax, cell, unroll, kernels)(xw, w_hh, b_hh, jax.numpy.ones_like(keep)))
    bad, _ = against_reference(fw, spec, PACK_LENGTHS, 40, side="right", seed=2, strategy="concat_rows")
    assert {"outputs", "h_n"} <= set(bad), bad


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_tensorflow_concat_rows_keeps_its_grid_for_one_sequence_per_row(cell):
    """Equal lengths pack one sequence per row: TF's GRU and tanh RNN still run the XLA grid there (faster than any
    Keras call; the LSTM falls back to saturated_gate's, `test_concat_rows_edge_batches`), exact on both sides."""
    require("tensorflow")
    fw = adapters.get("tensorflow")
    L, T = np.array([5, 5, 5]), 5
    p = pack_rows(L, T, gap=0)
    assert p.used == L.size
    for side in ("right", "left"):
        spec = RnnSpec(cell, input_size=2, hidden_size=3, bidirectional=True)
        bad, out = against_reference(fw, spec, L, T, side=side, seed=2, strategy="concat_rows")
        assert not bad and out.kernel == f"xla-scan rows[{p.rows}x{p.steps}]", (side, out.kernel, bad)


@pytest.mark.parametrize("name,cell,side,layers,bi,dtype", cases("concat_rows"))
def test_concat_rows_packs_every_case(name, cell, side, layers, bi, dtype):
    """The skewed batch packed (no separator: sequences touch) on the pairwise rows: one layer one way too, float32
    too."""
    require(name)
    fw = adapters.get(name)
    L, T = PACK_LENGTHS, 40
    p = pack_rows(L, T, gap=0)
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=layers, bidirectional=bi)
    bad, out = against_reference(fw, spec, L, T, side=side, dtype=dtype, seed=4, strategy="concat_rows")
    assert not bad, f"{name} concat_rows {cell} side={side} {dtype} kernel={out.kernel}: {bad}"
    assert out.kernel == f"xla-scan rows[{p.rows}x{p.steps}]" and p.rows < L.size / 2, out.kernel


@pytest.mark.parametrize("name", ["tensorflow", "jax"])
@pytest.mark.parametrize("lengths,T,side", [([0, 0, 0], 4, "right"), ([0, 0], 0, "right"), ([5, 0, 1], 5, "right"),
                                             ([5, 5, 5], 5, "right"), ([5, 5, 5], 5, "left"), ([3, 3, 3], 8, "left")],
                         ids=["all-empty", "T0", "one-row-each", "full-right", "full-left", "one-row-each-trimmed"])
def test_concat_rows_edge_batches(name, lengths, T, side):
    """Degenerate batches (LSTM). Where packing leaves one sequence per row, TF runs the plain padded call
    (saturated_gate's, kernel "keras-while rows[B x T]"), and so does JAX (the masked scan's call, kernel
    "xla-scan rows[B x T]") where that grid also spans every step (equal lengths: its LSTM grid took 1.14x the
    scan's time there side by side); where nothing runs, JAX runs the masked scan too."""
    require(name)
    fw = adapters.get(name)
    spec = RnnSpec("lstm", input_size=2, hidden_size=3, bidirectional=True)
    grids = set(fw.rnn_concat_grids()) if name == "jax" else set()
    bad, out = against_reference(fw, spec, np.array(lengths), T, side=side, seed=2, strategy="concat_rows")
    assert not bad, bad
    p = pack_rows(np.array(lengths), T, gap=0)
    if name == "jax":
        grid = p is not None and not (p.used >= np.count_nonzero(lengths) and p.steps >= T)
        expected = f"xla-scan rows[{p.rows}x{p.steps}]" if grid else f"xla-scan rows[{len(lengths)}x{T}]"
        assert out.kernel == expected, out.kernel
        new = {g for g in set(fw.rnn_concat_grids()) - grids if g[1] == spec}
        assert bool(new) == grid, (lengths, T, new)  # the grid compiled exactly where it runs
    elif T and any(lengths):
        assert out.kernel == f"keras-while rows[{len(lengths)}x{T}]", out.kernel


@pytest.mark.parametrize("name", NAMES)
def test_concat_rows_grids_stay_on_the_ladders(name):
    """Six random batches of one B, T: every compiled grid has its row length on the time ladder and its row count
    on the quarter ladder, so grids repeat across batches; the same batches again compile nothing new."""
    require(name)
    fw = adapters.get(name)
    B, T = LADDER_B, LADDER_T
    before = set(fw.rnn_concat_grids())
    runs = random_batches(fw, "concat_rows", 6, cell="gru")
    grids = {key[-2:] for key in set(fw.rnn_concat_grids()) - before}
    assert grids, "no grid was compiled"
    off = [(r, t) for r, t in grids if r not in shape_ladder(B, quarters=True) or t not in shape_ladder(T)]
    assert not off, f"grids off the ladders: {off}"
    assert len(grids) <= 6
    assert all(" rows[" in out.kernel for _, out in runs)
    compiles = fw.compile_count()
    random_batches(fw, "concat_rows", 6, cell="gru")
    assert fw.compile_count() == compiles, "the same batches compiled again"


@pytest.mark.parametrize("strategy,lengths,T,kernel", [
    ("bucketed", SPLIT_LENGTHS, SPLIT_T, "bucketed["), ("time_sliced", SPLIT_LENGTHS, SPLIT_T, "sliced["),
    ("concat_rows", PACK_LENGTHS, 40, "rows["), ("concat_rows", np.array([5, 5, 5]), 5, "rows[3x5]")])
@pytest.mark.parametrize("cell,side,bi,dtype", [("lstm", "left", True, "float32"), ("gru", "right", False, "float64"),
                                                ("rnn", "right", True, "float32")])
def test_jax_fast_strategies_unrolled_as_on_a_gpu(strategy, lengths, T, kernel, cell, side, bi, dtype, monkeypatch):
    """On a GPU, JAX's bucketed, time_sliced and concat_rows unroll their scans 8 steps (`UNROLL`; concat_rows'
    written-out gradient's reverse scan too, and its grid of one sequence per row, the last row): run that code
    here, on the CPU, with the GPU's unroll: exact, and the kernel says unroll8. (A fresh adapter: compiled
    functions of the default unroll are cached per adapter.)"""
    require("jax")
    jr = importlib.import_module("adapters.jax.rnn")
    monkeypatch.setitem(jr.UNROLL, "cpu", 8)
    fw = type(adapters.get("jax"))()
    # one layer: the unroll is each layer's own scan (stacked layers run the same code; the gates above stack two
    # at the default unroll); with two its heaviest case took 15.1 s alone, with one 9.5 s (2 cores, cold cache)
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=1, bidirectional=bi)
    bad, out = against_reference(fw, spec, lengths, T, side=side, dtype=dtype, seed=5, strategy=strategy)
    assert not bad, f"jax {strategy} unroll 8 {cell} side={side} {dtype} kernel={out.kernel}: {bad}"
    assert out.kernel.startswith("xla-scan unroll8 ") and kernel in out.kernel, out.kernel


@pytest.mark.parametrize("strategy", ["bucketed", "time_sliced"])
@pytest.mark.parametrize("cell, side, layers, bi, dtype", PAIRWISE, ids=lambda v: str(v))
def test_jax_full_rows_run_the_scan_without_its_masks(strategy, cell, side, layers, bi, dtype):
    """A batch whose every row is T long is one bucket / one segment of everything: JAX runs it as the scan
    without its per-step selects (nothing is padded), which must match the reference in every cell, side,
    direction and dtype, and is what ran (the jitted networks are keyed by their algorithm)."""
    require("jax")
    fw = adapters.get("jax")
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=layers, bidirectional=bi)
    bad, out = against_reference(fw, spec, np.array([7, 7, 7, 7]), 7, side=side, dtype=dtype, seed=4,
                                 strategy=strategy)
    assert not bad, f"{strategy} {cell} side={side} {dtype}: {bad}"
    assert out.kernel.endswith("[1]"), out.kernel
    assert ("rnn_vjp", spec, ("full", 1), side) in fw._jitted, "the unmasked scan ran"
    bad, out = against_reference(fw, spec, np.array([7, 6, 7, 7]), 7, side=side, dtype=dtype, seed=4,
                                 strategy=strategy)
    assert not bad, f"{strategy} {cell} side={side} {dtype}, one row short: {bad}"


def test_the_jax_gpu_unroll_can_be_set_from_the_environment(monkeypatch):
    """VARLEN_JAX_GPU_UNROLL times another lax.scan unroll on a lent GPU without a code change; the CPU keeps its
    own, and a value that is no positive integer is refused by name (not silently run at the default)."""
    from adapters.jax import rnn as jax_rnn

    monkeypatch.delenv("VARLEN_JAX_GPU_UNROLL", raising=False)
    assert (jax_rnn._unroll("gpu"), jax_rnn._unroll("cpu")) == (8, 1)
    monkeypatch.setenv("VARLEN_JAX_GPU_UNROLL", "16")
    assert (jax_rnn._unroll("gpu"), jax_rnn._unroll("cpu")) == (16, 1)
    assert jax_rnn._scan_name(jax_rnn._unroll("gpu")) == "xla-scan unroll16", "records name the unroll that ran"
    for bad in ("0", "-2", "x", "1.5"):
        monkeypatch.setenv("VARLEN_JAX_GPU_UNROLL", bad)
        with pytest.raises(ValueError, match=f"VARLEN_JAX_GPU_UNROLL='{bad}': need a positive integer"):
            jax_rnn._unroll("gpu")
