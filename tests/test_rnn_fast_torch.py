"""The torch RNN strategies that turn padding into speed ("saturated_gate", "bucketed", "time_sliced",
"concat_rows"): what
test_rnn.py's parametrized gate does not reach — the preconditions, several buckets and segments (down to one per
distinct length, up to one for the whole batch), a skewed float64 batch held tightly, all rows full (the no-gather
path), and proof that the reference comparison catches a gate that is not saturated.
"""
from __future__ import annotations

import numpy as np
import pytest

import adapters
from adapters.spec import RnnSpec, init_params, map_params
from harness.compare import close
from harness.data import cotangents, padded
from harness.tolerances import tolerance
from tests.conftest import require
from tests.rnn_cases import against_reference

require("torch")

SKEWED = np.array([40, 1, 0, 3, 2, 38, 1, 17, 2, 0, 5, 1, 39, 2, 3, 1])  # a few long rows, many short, two empty
T = 40


@pytest.fixture(scope="module")
def fw():
    return adapters.get("torch")


def run_case(fw, strategy, spec, lengths, side="right", dtype="float64", seed=0):
    """(comparison against the float64 reference, the result) for one rnn_vjp with NaN in padding."""
    return against_reference(fw, spec, lengths, T, side=side, dtype=dtype, seed=seed, strategy=strategy)


def test_saturated_gate_excludes_the_tanh_rnn_with_a_reason(fw):
    why = fw.why_not("rnn", "saturated_gate", cell="rnn", device="cpu", dtype="float32")
    assert why and "gate" in why
    assert "saturated_gate" not in fw.rnn_strategies("rnn")
    assert {"saturated_gate", "bucketed"} <= set(fw.rnn_strategies("lstm")) & set(fw.rnn_strategies("gru"))
    assert "bucketed" in fw.rnn_strategies("rnn")
    assert fw.rnn_strategies("lstm")[0] == "packed"  # the default is unchanged


@pytest.mark.parametrize("side,layers,bi", [("left", 2, True), ("right", 1, False)], ids=["left-2xbi", "right-1xuni"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bucketed_with_several_buckets_matches_reference(fw, cell, side, layers, bi):
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=layers, bidirectional=bi)
    bad, out = run_case(fw, "bucketed", spec, SKEWED, side=side)
    k = int(out.kernel.split("[")[1].split("]")[0])
    assert k >= 2 and out.kernel.startswith("bucketed["), out.kernel
    assert not bad, f"bucketed {cell} kernel={out.kernel}: {bad}"


@pytest.mark.parametrize("plan", ["model", "every_length", "one_segment"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_time_sliced_with_any_segmentation_matches_reference(fw, cell, plan, monkeypatch):
    """The cost model's cuts, a cut at every distinct length (no row ends inside a segment) and one segment for
    the whole batch (every row but the longest runs on over padding) are all exact."""
    import adapters.torch.rnn as torch_rnn

    costs = {"model": None, "every_length": (0.0, 0.0), "one_segment": (0.0, 1e9)}[plan]
    if costs is not None:
        monkeypatch.setattr(torch_rnn, "_SLICE_COST", {k: costs for k in torch_rnn._SLICE_COST})
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    bad, out = run_case(fw, "time_sliced", spec, SKEWED, side="left")
    k = int(out.kernel.split("[")[1].split("]")[0])
    want = {"model": range(2, 17), "every_length": [len(set(SKEWED[SKEWED > 0]))], "one_segment": [1]}[plan]
    assert out.kernel.startswith("sliced[") and k in want, out.kernel
    assert not bad, f"time_sliced {cell} kernel={out.kernel}: {bad}"


@pytest.mark.parametrize("strategy", ["saturated_gate", "bucketed", "time_sliced", "concat_rows"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_float64_exact_on_a_skewed_batch(fw, strategy, cell):
    """Far tighter than the float64 gate: the saturated gate is exact, not merely close."""
    spec = RnnSpec(cell, input_size=3, hidden_size=5, num_layers=1, bidirectional=True)
    x = padded(SKEWED, T, (3,), side="right", seed=1, dtype="float64", fill=np.nan)
    params = init_params(spec, seed=1, dtype="float64")
    cot = cotangents(spec, SKEWED.size, T, seed=1, dtype="float64")
    want, want_g = fw.rnn_vjp(spec, params, fw.asarray(x), SKEWED, cot, strategy="masked_loop")
    got, got_g = fw.rnn_vjp(spec, params, fw.asarray(x), SKEWED, cot, strategy=strategy)
    for a, b in [(got.outputs, want.outputs), (got.h_n, want.h_n), (got_g["x"], want_g["x"])]:
        np.testing.assert_allclose(fw.to_numpy(a), fw.to_numpy(b), rtol=1e-12, atol=1e-14)
    for gd, wd in zip(got_g["params"][0], want_g["params"][0], strict=True):
        for key in gd:
            np.testing.assert_allclose(fw.to_numpy(gd[key]), fw.to_numpy(wd[key]), rtol=1e-12, atol=1e-14)
    if cell == "lstm":
        np.testing.assert_allclose(fw.to_numpy(got.c_n), fw.to_numpy(want.c_n), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("strategy", ["saturated_gate", "bucketed", "time_sliced", "concat_rows"])
def test_all_rows_full_and_all_empty(fw, strategy, cell):
    """All rows of length T take the no-gather path (saturated_gate: no indicator column either); all rows empty
    run nothing."""
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    bad, out = run_case(fw, strategy, spec, np.full(5, T), dtype="float32")
    assert not bad, f"{strategy} full rows kernel={out.kernel}: {bad}"
    bad, out = run_case(fw, strategy, spec, np.zeros(3, dtype=np.int64))
    assert not bad and out.kernel == "none"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_weak_saturation_is_caught(fw, cell, monkeypatch):
    """The comparison is sharp enough to see a leaky gate: with the constant at 1 the state moves on padding."""
    import adapters.torch.rnn as torch_rnn

    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=1, bidirectional=True)
    bad, _ = run_case(fw, "saturated_gate", spec, SKEWED)
    assert not bad
    monkeypatch.setattr(torch_rnn, "_SATURATION", 1.0)
    bad, _ = run_case(fw, "saturated_gate", spec, SKEWED)
    assert {"outputs", "h_n"} <= set(bad), bad


def test_time_sliced_needs_the_frozen_cell_state(fw, monkeypatch):
    """Rows ending inside a segment keep c only because the indicator freezes it: with a weak constant, c_n of
    those rows moves on padding and the comparison says so (h_n is read at the last valid step either way)."""
    import adapters.torch.rnn as torch_rnn

    monkeypatch.setattr(torch_rnn, "_SLICE_COST", {k: (0.0, 1e9) for k in torch_rnn._SLICE_COST})  # one segment
    spec = RnnSpec("lstm", input_size=3, hidden_size=4, num_layers=1, bidirectional=True)
    bad, _ = run_case(fw, "time_sliced", spec, SKEWED)
    assert not bad
    monkeypatch.setattr(torch_rnn, "_SATURATION", 1.0)
    bad, _ = run_case(fw, "time_sliced", spec, SKEWED)
    assert "c_n" in bad and "outputs" not in bad, bad


@pytest.mark.parametrize("holes", [0, 3, 9])  # of 12 destination rows: dense (no hole, few holes), then sparse
def test_row_gather_both_paths_and_their_backward(fw, holes):
    """The row gather the strategies move rows with, against numpy: destination j = source row m[j], 0 where
    m[j] = -1 (a NaN source row never shows there), and its backward is the inverse map (each moved source row
    gets its destination's gradient, the others 0)."""
    import adapters.torch.rnn as torch_rnn

    torch, rng = fw.torch, np.random.default_rng(holes)
    n_src, n_dst, F = 15, 12, 3
    m = np.full(n_dst, -1, dtype=np.int64)
    keep = rng.choice(n_dst, n_dst - holes, replace=False)
    m[keep] = rng.choice(n_src, keep.size, replace=False)
    src = rng.standard_normal((n_src, F))
    src[np.setdiff1d(np.arange(n_src), m)] = np.nan  # rows no destination names
    fwd, bwd = torch_rnn.gather_plans(torch, m, n_src, "cpu")
    assert (fwd.index is None) == (2 * holes > n_dst)  # dense unless most destination rows are padding
    leaf = torch.tensor(src, requires_grad=True)
    got = torch_rnn.row_gather(torch)(leaf, fwd, bwd)
    want = np.zeros((n_dst, F))
    want[m >= 0] = src[m[m >= 0]]
    np.testing.assert_array_equal(got.detach().numpy(), want)
    cot = rng.standard_normal((n_dst, F))
    (grad,) = torch.autograd.grad(got, leaf, torch.tensor(cot))
    want_grad = np.zeros((n_src, F))
    want_grad[m[m >= 0]] = cot[m >= 0]
    np.testing.assert_array_equal(grad.numpy(), want_grad)


@pytest.mark.parametrize("strategy", ["time_sliced", "bucketed", "saturated_gate", "concat_rows"])
def test_maps_are_built_once_per_batch(fw, strategy, monkeypatch):
    """A batch run again reuses its row maps and device indices; other lengths, T or dtype build anew (and the
    results stay exact), and so does every batch after `clear_compiled`."""
    import adapters.torch.rnn as torch_rnn

    built = []
    plans = torch_rnn.gather_plans
    monkeypatch.setattr(torch_rnn, "gather_plans", lambda *a, **kw: built.append(a[2]) or plans(*a, **kw))
    spec = RnnSpec("lstm", input_size=3, hidden_size=4, num_layers=1, bidirectional=True)
    lengths = np.array([7, 2, 5, 0, 6, 3, 1, 7, 4, 2, 9, 11, 1, 1, 2, 13])
    counts = []
    for T_, dtype in [(13, "float32"), (13, "float32"), (14, "float32"), (13, "float64"), (13, "float64")]:
        x = fw.asarray(padded(lengths, T_, (3,), seed=3, dtype=dtype))
        fw.rnn(spec, init_params(spec, seed=3, dtype=dtype), x, lengths, strategy=strategy)
        counts.append(len(built))
    fresh = np.diff([0, *counts])
    assert fresh[0] > 0 and fresh[1] == 0 and fresh[2] > 0 and fresh[4] == 0, (strategy, counts)
    if strategy != "bucketed":  # its maps hold no dtype (indices only)
        assert fresh[3] > 0, counts
    bad, _ = run_case(fw, strategy, spec, lengths, dtype="float32")  # T=40: exact with maps built anew
    assert not bad and len(built) > counts[-1]
    n = len(built)
    fw.clear_compiled()  # as a fresh process (an epoch's first pass; the GPU peak-memory reset): plans again
    fw.rnn(spec, init_params(spec, seed=3, dtype="float64"), x, lengths, strategy=strategy)
    assert len(built) > n


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_plans_one_call_where_the_h200_timed_every_split_slower(cell):
    """On CUDA a call costs ~160 steps and a step the same for any row count (H200: one call of B=64 T=128 2.5 ms,
    two segments 3.7-4.8 ms, 3-4 buckets 8.8-10.9 ms): the headline batch gets one call over its longest row's
    steps; the CPU plans still split it, and on CUDA a batch of 8192 rows splits again."""
    import adapters.torch.rnn as torch_rnn
    from harness.profiles import lengths_for

    for profile in ("lognormal", "zipf"):
        L = lengths_for(profile, 64, 128)
        assert [(s.start, s.stop, s.rows) for s in torch_rnn._slice_plan(L, cell, True)] == [(0, L.max(), 64)]
        assert [r.size for r in torch_rnn._bucket_plan(L, cell, True)] == [64]
        assert len(torch_rnn._slice_plan(L, cell, False)) >= 2 and len(torch_rnn._bucket_plan(L, cell, False)) >= 2
    big = lengths_for("lognormal", 8192, 256)
    assert len(torch_rnn._slice_plan(big, cell, True)) >= 2 and len(torch_rnn._bucket_plan(big, cell, True)) >= 2


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bucketed_and_time_sliced_as_planned_on_cuda_match_reference(fw, cell, monkeypatch):
    """The CUDA plans (one bucket of the non-empty rows, trimmed; one segment of every row) run here with the CPU's
    kernels: exact on the skewed batch with empty rows, left-padded, 2 layers both ways."""
    import adapters.torch.rnn as torch_rnn

    for table in ("_BUCKET_COST", "_SLICE_COST"):
        monkeypatch.setattr(torch_rnn, table, {k: torch_rnn._CUDA_COST for k in getattr(torch_rnn, table)})
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    for strategy, kernel in (("bucketed", "bucketed[1]x "), ("time_sliced", "sliced[1]x ")):
        bad, out = run_case(fw, strategy, spec, SKEWED, side="left")
        assert out.kernel.startswith(kernel), out.kernel
        assert not bad, f"{strategy} {cell} kernel={out.kernel}: {bad}"


# -- concat_rows: sequences end to end per row, a reset slot between them, the LSTM's c_n read out -----------------
def test_concat_layout_by_hand():
    """Lengths [6, 1, 0, 1], T=8. LSTM: each sequence takes its steps plus a hold and a read-out slot (8, 3, 3 in
    rows of 8): row 0 = sequence 0 (steps 0-5, hold, read-out); row 1 = sequence 1 (step, hold, read-out), a
    reset, sequence 3 (step, hold, read-out), a reset. Slots are time-major (slot = step * 2 + row). GRU: no
    extra slot, rows of 6: row 0 = sequence 0; row 1 = sequence 1, a reset, sequence 3, resets. With one
    sequence per row (or nothing) there is no layout."""
    import adapters.torch.rnn as torch_rnn

    lay = torch_rnn.concat_layout(np.array([6, 1, 0, 1]), "lstm", 8)
    assert (lay["rows"], lay["steps"]) == (2, 8)
    assert lay["src"].tolist() == [0, 8, 1, -1, 2, -1, 3, -1, 4, 24, 5, -1, -1, -1, -1, -1]
    assert lay["mirror"].tolist() == [10, 1, 8, -1, 6, -1, 4, -1, 2, 9, 0, -1, -1, -1, -1, -1]
    kinds = lay["indicator"]
    assert [np.flatnonzero(kinds[:, k]).tolist() for k in range(3)] == [[3, 11, 12], [5, 13, 14], [7, 15]]
    assert lay["last"].tolist() == [10, 1, -1, 9] and lay["readout"].tolist() == [14, 5, -1, 13]
    assert np.array_equal(lay["back"][lay["src"][lay["src"] >= 0]], np.flatnonzero(lay["src"] >= 0))
    gru = torch_rnn.concat_layout(np.array([6, 1, 0, 1]), "gru", 8)
    assert (gru["rows"], gru["steps"]) == (2, 6)
    assert gru["src"].tolist() == [0, 8, 1, -1, 2, 24, 3, -1, 4, -1, 5, -1]
    assert np.flatnonzero(gru["indicator"][:, 0]).tolist() == [3, 7, 9, 11] and gru["last"].tolist() == [10, 1, -1, 5]
    assert torch_rnn.concat_layout(np.array([5, 0, 1]), "lstm", 5) is None  # one sequence per row
    assert torch_rnn.concat_layout(np.array([5, 5]), "gru", 5) is None


@pytest.mark.parametrize("side,layers,bi,dtype", [("left", 2, True, "float64"), ("right", 1, False, "float32"),
                                                  ("right", 2, True, "float32"), ("left", 1, False, "float64")])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_concat_rows_packs_and_matches_reference(fw, cell, side, layers, bi, dtype):
    """The skewed batch (two empty rows) packs into a grid of far fewer rows than the batch has; every quantity
    matches the float64 reference, c_n read out mid-row included, NaN in padding."""
    import adapters.torch.rnn as torch_rnn

    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=layers, bidirectional=bi)
    bad, out = run_case(fw, "concat_rows", spec, SKEWED, side=side, dtype=dtype, seed=4)
    lay = torch_rnn.concat_layout(SKEWED, cell, T)
    assert out.kernel.startswith(f"rows[{lay['rows']}x{lay['steps']}]x ") and lay["rows"] < SKEWED.size / 2, out.kernel
    assert not bad, f"concat_rows {cell} kernel={out.kernel}: {bad}"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_concat_rows_needs_its_resets(fw, cell, monkeypatch):
    """With the saturation constant at 1 the state leaks from one sequence into the next one of its row, and the
    LSTM's hold and read-out no longer isolate c_n: the comparison says so."""
    import adapters.torch.rnn as torch_rnn

    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=1, bidirectional=True)
    monkeypatch.setattr(torch_rnn, "_SATURATION", 1.0)
    bad, _ = run_case(fw, "concat_rows", spec, SKEWED)
    assert {"outputs", "h_n"} <= set(bad) and (cell == "gru" or "c_n" in bad), bad


def test_concat_rows_gru_gives_b_in_back_its_gradient(fw, monkeypatch):
    """The GRU's reset column holds -b_in; built from the b_ih leaf, autograd takes back from b_in what the resets
    added to it. A detached copy of the column leaves b_in's gradient wrong, and only the gradients."""
    import adapters.torch.rnn as torch_rnn

    columns = torch_rnn.concat_columns
    monkeypatch.setattr(torch_rnn, "concat_columns",
                        lambda torch, cell, p, H, *a: columns(torch, cell, p, H, *a).detach())
    bad, _ = run_case(fw, "concat_rows", RnnSpec("gru", input_size=3, hidden_size=4), SKEWED)
    assert set(bad) == {"grad_params"}, bad


def _large_cell_state(params):
    """Forget gates near 1 (both biases +6) and strong input and candidate weights: c grows to ~20 over 40 steps."""
    H = params[0][0]["w_hh"].shape[1]
    for dirs in params:
        for p in dirs:
            p["b_ih"][H:2 * H] = 6.0
            p["b_hh"][H:2 * H] = 6.0
            p["b_ih"][:H] = 4.0
            p["w_ih"][2 * H:3 * H] *= 8.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_concat_rows_reads_out_large_cell_states(fw, dtype, monkeypatch):
    """c_n of |c| up to ~20 behind forget biases of +12 in all reads out within the dtype's tolerance: the
    read-out's forget gate cancels the user's biases, so h = tanh(f c) stays far from 1. A read-out column that
    does not cancel them (f = sigmoid(-8 + 12), h = tanh(0.98 c) ~ 1) loses c_n."""
    import adapters.torch.rnn as torch_rnn

    spec = RnnSpec("lstm", input_size=3, hidden_size=4, num_layers=1, bidirectional=True)
    ref = adapters.get("numpy").rnn(spec, init_params(spec, seed=2, dtype="float64"),
                                    padded(SKEWED, T, (3,), seed=2, dtype="float64"), SKEWED)
    params = init_params(spec, seed=2, dtype="float64")
    _large_cell_state(params)
    big = adapters.get("numpy").rnn(spec, params, padded(SKEWED, T, (3,), seed=2, dtype="float64"), SKEWED)
    assert np.abs(big.c_n).max() > 15 > 3 * np.abs(ref.c_n).max()
    bad, _ = against_reference(fw, spec, SKEWED, T, dtype=dtype, seed=2, strategy="concat_rows",
                               tweak=_large_cell_state)
    assert not bad, bad
    columns = torch_rnn.concat_columns

    def uncancelled(torch, cell, p, H, *a):
        col = columns(torch, cell, p, H, *a).clone()
        col[H:2 * H, 1] = torch_rnn._READOUT_F
        return col

    monkeypatch.setattr(torch_rnn, "concat_columns", uncancelled)
    bad, _ = against_reference(fw, spec, SKEWED, T, dtype=dtype, seed=2, strategy="concat_rows",
                               tweak=_large_cell_state)
    assert "c_n" in bad, bad


def _growing_cell_state(params):
    """Every gate's bias +20 and no weights: i, f, o and g are exactly 1 in float32, so c grows by exactly 1 a step
    there (c_n = the length; the float64 reference's f = 1 - 2e-9 leaves it ~0.4 short at 20 000)."""
    for dirs in params:
        for p in dirs:
            for k in p:
                p[k][...] = 0.0
            p["b_ih"][...] = 20.0


def test_concat_rows_reads_out_the_cell_state_of_long_sequences(fw, monkeypatch):
    """|c_n| up to 20 000 behind a 20 000-step sequence reads out within float32's tolerance: the read-out's f
    shrinks with the grid's steps, keeping |f c_n| < 1. With f = sigmoid(-8) on every grid, tanh(f c_n) rounded
    towards 1 and c_n came out 4 off (inf at 40 000). Forward only: float32's saturated gates have a derivative of
    exactly 0 where float64's is ~2e-9, so every strategy's parameter gradients differ from the reference here
    (packed's and concat_rows' alike, 0.75 off, measured when this test was written; packed takes ~2 minutes)."""
    import adapters.torch.rnn as torch_rnn

    spec = RnnSpec("lstm", input_size=1, hidden_size=1)
    lengths, steps = np.array([20000, 10000, 3]), 20000
    x = padded(lengths, steps, (1,), seed=0, dtype="float32")
    params = init_params(spec, seed=0, dtype="float32")
    _growing_cell_state(params)
    want = adapters.get("numpy").rnn(spec, map_params(lambda a: a.astype("float64"), params), x.astype("float64"),
                                     lengths)
    assert np.abs(want.c_n).max() > 19999

    def errors():
        out = fw.rnn(spec, params, fw.asarray(x), lengths, strategy="concat_rows")
        assert out.kernel.startswith("rows[2x"), out.kernel  # two sequences share a row: the read-out ran
        return {q: close(fw.to_numpy(getattr(out, q)), getattr(want, q), tolerance("float32"))
                for q in ("outputs", "h_n", "c_n")}

    bad = {q: err for q, (ok, err) in errors().items() if not ok}
    assert not bad, bad
    monkeypatch.setattr(torch_rnn, "readout_preactivation", lambda steps: torch_rnn._READOUT_F)
    assert not errors()["c_n"][0]
