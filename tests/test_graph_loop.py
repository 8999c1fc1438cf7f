"""torch's "graph_loop" (masked_loop captured into a CUDA graph, replayed) without a GPU.

On a GPU the gates in `tests/test_rnn.py` run it for real. Here only the capture itself is stood in for: a capture
runs the core once and keeps its output tensors, a replay recomputes from the static input buffers and writes into
those same output tensors, as a CUDA graph's replay does. Everything else (static buffers, copies in, clones out,
left padding realigned outside the graph, the graph cache) is the strategy's own code, run through the whole
RNN matrix, the padding test and the Hypothesis sizes test, plus what only a replayed graph can get wrong: stale
inputs, outputs overwritten by the next call, one capture per shape.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import adapters
from adapters.spec import CELLS, RnnSpec, init_params
from harness.data import cotangents, padded
from tests import test_rnn
from tests.conftest import require
from tests.rnn_cases import against_reference


@pytest.fixture
def emulated(monkeypatch):
    """(the torch adapter with graph_loop runnable on CPU, the list of captures made): precondition lifted,
    `_capture` replaced by the stand-in described above."""
    require("torch")
    fw = adapters.get("torch")
    torch = fw.torch
    table = fw.strategy_table("rnn")
    monkeypatch.setitem(table, "graph_loop", dataclasses.replace(table["graph_loop"], supports=lambda a, **s: None))
    captures = []

    def capture(core, static):
        outs = core(*static)
        captures.append(tuple(tuple(s.shape) for s in static))

        def replay():
            fresh = core(*static)
            with torch.no_grad():
                for o, f in zip(outs, fresh, strict=True):
                    o.copy_(f)

        return replay, outs

    monkeypatch.setattr(fw, "_capture", capture)
    fw.rnn_graphs().clear()
    yield fw, captures
    fw.rnn_graphs().clear()


def test_precondition_names_the_gpu():
    require("torch")
    why = adapters.get("torch").why_not("rnn", "graph_loop", cell="lstm", device="cpu", dtype="float32")
    assert why is not None and "GPU only" in why
    assert adapters.get("torch").why_not("rnn", "graph_loop", cell="rnn", device="gpu", dtype="float64") is None


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matrix(emulated, cell, side, bidirectional, dtype):
    """The gate every RNN strategy passes (two layers, a zero-length row, NaN padding, forward-only too)."""
    test_rnn.test_rnn_matches_reference("torch", "graph_loop", cell, side, bidirectional, dtype, "cpu")
    assert emulated[1], "nothing was captured: the strategy did not take the graph path"


@pytest.mark.parametrize("cell", CELLS)
def test_padding_values_change_nothing(emulated, cell):
    test_rnn.test_padding_values_change_nothing("torch", "graph_loop", cell)


def test_random_batches_and_sizes(emulated):
    test_rnn.test_rnn_random_batches_and_sizes("torch", "graph_loop", device="cpu")


def test_replays_see_new_inputs_and_keep_old_results(emulated):
    """Three calls of one shape with other lengths, data, weights, cotangents and sides: one capture, each result
    equal to the reference, and the first call's tensors unchanged by the later replays."""
    fw, captures = emulated
    spec = RnnSpec("lstm", input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    T = 6
    kept = []
    for seed, (L, side) in enumerate([([6, 0, 3, 1], "right"), ([2, 5, 5, 0], "left"), ([1, 1, 6, 4], "right")]):
        bad, out = against_reference(fw, spec, np.array(L), T, side=side, seed=seed, strategy="graph_loop")
        assert not bad, f"call {seed} (lengths {L}, {side}): {bad}"
        kept.append((out, fw.to_numpy(out.outputs).copy(), fw.to_numpy(out.h_n).copy()))
    assert len(captures) == 1, f"{len(captures)} captures for one shape"
    assert out.kernel == "replayed python-loop"
    for out, outputs, h_n in kept:
        assert np.array_equal(fw.to_numpy(out.outputs), outputs, equal_nan=True)
        assert np.array_equal(fw.to_numpy(out.h_n), h_n)


def test_one_graph_per_mode_and_shape_and_a_bounded_cache(emulated):
    """Forward and vjp capture once each per (B, T); other shapes capture their own; at most _MAX_GRAPHS kept;
    clear_compiled drops them all (an epoch's first pass pays every capture again)."""
    from adapters.torch.rnn import _MAX_GRAPHS

    fw, captures = emulated
    spec = RnnSpec("gru", input_size=2, hidden_size=3)
    params = init_params(spec, seed=0, dtype="float32")

    def call(B, T, vjp):
        L = np.arange(B) % (T + 1)
        x = fw.asarray(padded(L, T, (2,), seed=B, dtype="float32"))
        if vjp:
            return fw.rnn_vjp(spec, params, x, L, cotangents(spec, B, T, seed=0, dtype="float32"),
                              strategy="graph_loop")
        return fw.rnn(spec, params, x, L, strategy="graph_loop")

    for _ in range(2):
        call(3, 5, False)
        call(3, 5, True)
    assert len(captures) == 2
    for T in range(6, 6 + _MAX_GRAPHS + 1):
        call(3, T, True)
    assert len(captures) == 2 + _MAX_GRAPHS + 1
    assert len(fw.rnn_graphs()) == _MAX_GRAPHS
    oldest = 6 + 1  # the least recently used shape still held; using it keeps it over the next oldest
    call(3, oldest, True)
    call(3, 100, True)
    call(3, oldest, True)
    assert len(captures) == 3 + _MAX_GRAPHS + 1, "a recently used graph was dropped before an older one"
    fw.clear_compiled()
    assert not fw.rnn_graphs()
    call(3, 5, True)
    assert len(captures) == 4 + _MAX_GRAPHS + 1


def test_all_empty_batch_captures_nothing(emulated):
    fw, captures = emulated
    spec = RnnSpec("lstm", input_size=2, hidden_size=3)
    L = np.zeros(3, dtype=int)
    bad, out = against_reference(fw, spec, L, 4, strategy="graph_loop")
    assert not bad and out.kernel == "none" and not captures


def test_a_gpu_case_peak_does_not_count_earlier_graphs(emulated, monkeypatch):
    """The bench resets the peak before each case: graphs held for earlier calls are dropped first (their memory
    pools would count in the next case's peak)."""
    fw, captures = emulated
    resets = []
    monkeypatch.setattr(fw.torch.cuda, "reset_peak_memory_stats", lambda *a: resets.append(a))
    against_reference(fw, RnnSpec("rnn", input_size=2, hidden_size=3), np.array([3, 1]), 3, strategy="graph_loop")
    assert fw.rnn_graphs() and len(captures) == 1
    fw.reset_peak_memory("cpu")
    assert fw.rnn_graphs(), "a CPU reset has no GPU pool to free"
    fw.reset_peak_memory("gpu")
    assert not fw.rnn_graphs() and resets
