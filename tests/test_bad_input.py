"""Every bad input of the contract raises a ValueError that names the problem (and the index), in every adapter."""
from __future__ import annotations

import numpy as np
import pytest

from adapters.spec import Packed
from harness import RnnSpec, init_params
from harness.data import cotangents

SPEC = RnnSpec("lstm", input_size=3, hidden_size=2)
PARAMS = init_params(SPEC)
X = np.zeros((2, 4, 3), dtype="float32")


def ops(a):
    """name -> (callable on adapter a, message fragment the ValueError must contain)."""
    x = a.asarray(X)
    L = np.array([2, 4])
    return {
        "negative_length": (lambda: a.mask(np.array([2, -1]), 4), "negative length -1 at index 1"),
        "length_over_T": (lambda: a.masked_mean(x, np.array([2, 5])), "index 1 exceeds"),
        "count_ne_batch": (lambda: a.masked_mean(x, np.array([1, 2, 3])), "3 entries but the batch has 2"),
        "float_lengths": (lambda: a.mask(np.array([1.5, 2.0]), 4), "must be integers"),
        "bool_lengths": (lambda: a.mask(np.array([True, False]), 4), "must be integers"),
        "lengths_2d": (lambda: a.mask(np.array([[1, 2]]), 4), "must be 1-D"),
        "empty_batch_mask": (lambda: a.mask(np.array([], dtype=np.int64), 4), "empty batch"),
        "empty_batch_pad": (lambda: a.pad([]), "empty batch"),
        "pad_feature_mismatch": (lambda: a.pad([np.zeros((2, 3)), np.zeros((1, 4))]), "sequence 1 has feature shape"),
        "pad_negative_maxlen": (lambda: a.pad([np.zeros(2)], maxlen=-1), "maxlen"),
        "mean_rank_1": (lambda: a.masked_mean(a.asarray(np.zeros(3)), np.array([1])), "rank"),
        "unknown_side": (lambda: a.mask(L, 4, side="middle"), "unknown side 'middle'"),
        "unknown_truncate": (lambda: a.pad([np.zeros(2)], truncate="both"), "unknown truncate"),
        "unknown_device": (lambda: a.mask(L, 4, device="tpu"), "unknown device 'tpu'"),
        "unsorted_enforce_sorted": (lambda: a.pack(x, np.array([2, 4]), enforce_sorted=True), "lengths[1]=4"),
        "unpack_total_too_short": (lambda: a.unpack(a.pack(x, L), total_length=2), "total_length=2"),
        "rnn_rank_2": (lambda: a.rnn(SPEC, PARAMS, a.asarray(X[0]), L), "rank-3"),
        "rnn_feature_size": (lambda: a.rnn(SPEC, PARAMS, a.asarray(np.zeros((2, 4, 5), "float32")), L),
                             "feature size 5 but spec.input_size is 3"),
        "rnn_lengths_over_T": (lambda: a.rnn(SPEC, PARAMS, x, np.array([5, 1])), "length 5 at index 0 exceeds"),
        "rnn_unknown_strategy": (lambda: a.rnn(SPEC, PARAMS, x, L, strategy="magic"), "strategy 'magic'"),
        "rnn_unknown_side": (lambda: a.rnn(SPEC, PARAMS, x, L, side="up"), "unknown side"),
        "rnn_unknown_device": (lambda: a.rnn(SPEC, PARAMS, x, L, device="tpu"), "unknown device"),
        "rnn_bad_params": (lambda: a.rnn(SPEC, init_params(RnnSpec("gru", 3, 2)), x, L), "has shape"),
        "rnn_wrong_params_nesting": (lambda: a.rnn(SPEC, PARAMS * 2, x, L), "list of 1 layers"),
        "rnn_empty_batch": (lambda: a.rnn(SPEC, PARAMS, a.asarray(np.zeros((0, 4, 3), "float32")),
                                          np.array([], np.int64)), "empty batch"),
        "vjp_missing_c_n": (lambda: a.rnn_vjp(SPEC, PARAMS, x, L, {"outputs": np.zeros((2, 4, 2)),
                                                                   "h_n": np.zeros((1, 2, 2))}), "cotangents"),
        "vjp_cot_shape": (lambda: a.rnn_vjp(SPEC, PARAMS, x, L, {**cotangents(SPEC, 2, 4),
                                                                "h_n": np.zeros((1, 3, 2))}), "cotangents['h_n']"),
        "unknown_cell_strategies": (lambda: a.rnn_strategies("transformer"), "unknown cell 'transformer'"),
        "rnn_bool_x": (lambda: a.rnn(SPEC, PARAMS, a.asarray(X.astype(bool)), L), "floating-point x"),
        "rnn_int_x": (lambda: a.rnn(SPEC, PARAMS, a.asarray(X.astype(np.int64)), L), "got dtype int64"),
        "mean_int_x": (lambda: a.masked_mean(a.asarray(X.astype(np.int32)), L), "floating-point x"),
        "pad_nan_into_int": (lambda: a.pad([np.array([1, 2]), np.array([3])], value=np.nan),
                             "pad value nan is not representable in dtype int64"),
        "pad_half_into_bool": (lambda: a.pad([np.array([True]), np.array([False])], value=0.5),
                               "not representable in dtype bool"),
        "pad_mixed_dtypes": (lambda: a.pad([np.array([1, 2], np.int32), np.array([1.7, 2.9], np.float32)]),
                             "sequences[1] has dtype float32, sequences[0] has int32: all sequences must share one "
                             "dtype"),
        "pad_mixed_native_dtypes": (lambda: a.pad([a.asarray(np.array(s)) for s in ([1], [2], [0.5, 1.5])]),
                                    "sequences[2] has dtype float64, sequences[0] has int64"),
        "pad_lossy_list": (lambda: a.pad([np.array([1, 2], np.int32), [], [3.5]]),
                           "sequences[2] holds 3.5, which int32 (the other sequences' dtype) cannot hold exactly"),
        "strategies_unknown_keyword": (lambda: a.strategies("rnn", cel="lstm"),
                                       "unknown rnn strategy spec keyword 'cel'; expected one of ['cell', 'device', "
                                       "'dtype']"),
        "strategies_unknown_cell": (lambda: a.strategies("rnn", cell="xyz"), "unknown cell 'xyz'"),
        "strategies_unknown_device": (lambda: a.strategies("rnn", cell="lstm", device="tpu"), "unknown device 'tpu'"),
        "strategies_unknown_dtype": (lambda: a.strategies("loss", kind="softmax_ce", dtype="int8"),
                                     "unknown dtype 'int8'"),
        "strategies_unknown_reduction": (lambda: a.strategies("loss", reduction="avg"), "unknown reduction 'avg'"),
        "strategies_unknown_mode": (lambda: a.strategies("embedding", op="embedding_bag", mode="median"),
                                    "unknown mode 'median'"),
        "strategies_unknown_op": (lambda: a.strategies("embedding", op="bag"), "unknown op 'bag'"),
        "attention_strategies_unknown_side": (lambda: a.attention_strategies(side="up"), "unknown side 'up'"),
        "attention_strategies_unknown_keyword": (lambda: a.attention_strategies(heads=2),
                                                 "unknown attention strategy spec keyword 'heads'"),
        "why_not_unknown_keyword": (lambda: a.why_not("rnn", a.strategies("rnn")[0], cells="gru"),
                                    "unknown rnn strategy spec keyword 'cells'"),
        "why_not_unknown_cell": (lambda: a.why_not("rnn", a.strategies("rnn")[0], cell="xyz"), "unknown cell 'xyz'"),
        "unit_unknown_keyword": (lambda: a._unit("loss", a.strategies("loss")[0], kinds="softmax_ce"),
                                 "unknown loss strategy spec keyword 'kinds'"),
        "unit_default_unknown_keyword": (lambda: a._unit("loss", None, kinds="softmax_ce"),
                                         "unknown loss strategy spec keyword 'kinds'"),
        "unpack_bad_batch_sizes": (lambda: a.unpack(Packed(np.zeros((3, 2)), np.array([1, 2]), np.array([0, 1]),
                                                          np.array([0, 1]))), "batch_sizes must not increase"),
        "unpack_bad_indices": (lambda: a.unpack(Packed(np.zeros((3, 2)), np.array([2, 1]), np.array([0, 0]),
                                                      np.array([0, 1]))), "not a permutation"),
        "unpack_rows_mismatch": (lambda: a.unpack(Packed(np.zeros((4, 2)), np.array([2, 1]), np.array([1, 0]),
                                                        np.array([1, 0]))), "data has 4 rows"),
        "rnn_params_lists_bad_shape": (lambda: a.rnn(SPEC, [[{k: np.zeros(3).tolist() for k in PARAMS[0][0]}]], x, L),
                                       "has shape"),
    }


CASE_NAMES = sorted(ops(type("Dummy", (), {"asarray": staticmethod(np.asarray)})))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_raises_value_error(any_adapter, case):
    call, fragment = ops(any_adapter)[case]
    with pytest.raises(ValueError) as err:
        call()
    assert fragment in str(err.value), f"{any_adapter.name} {case}: message {str(err.value)!r} lacks {fragment!r}"


def test_unknown_cell_in_spec():
    with pytest.raises(ValueError, match="unknown cell 'lstmx'"):
        RnnSpec("lstmx", 3, 2)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        RnnSpec("gru", 3, 0)


def test_rnn_spec_validates_field_types():
    with pytest.raises(ValueError, match="bidirectional must be a bool, got 'no'"):
        RnnSpec("lstm", 3, 2, bidirectional="no")
    with pytest.raises(ValueError, match="unknown cell"):
        RnnSpec(["lstm"], 3, 2)


def test_pad_takes_empty_sequences_and_lists_as_the_arrays_dtype(any_adapter):
    """A sequence of zero steps has no dtype of its own (NumPy guesses float64 for `[]` and `np.array([])`): it is
    no mixed dtype, and the result keeps the other sequences' dtype wherever it stands. Plain lists take the
    arrays' dtype where their values survive it, and without arrays promote as NumPy's lists do (3.5 is kept)."""
    a = any_adapter
    for seqs, dtype, want in (([[1, 2], [], [3]], "int64", [[1, 2], [0, 0], [3, 0]]),
                              ([[], np.array([1, 2], np.int32)], "int32", [[0, 0], [1, 2]]),
                              ([np.array([1, 2]), np.array([])], "int64", [[1, 2], [0, 0]]),
                              ([np.array([1, 2], np.int32), [3, 4]], "int32", [[1, 2], [3, 4]]),
                              ([[3, 4], np.array([1.5], np.float32)], "float32", [[3.0, 4.0], [1.5, 0.0]]),
                              ([[1, 2], [3.5]], "float64", [[1.0, 2.0], [3.5, 0.0]])):
        out = a.pad(seqs)
        assert a.dtype_name(out) == dtype and a.to_numpy(out).tolist() == want, f"{a.name} {seqs}: {out!r}"


def test_params_as_nested_lists_work_like_arrays(any_adapter):
    a = any_adapter
    x, L = a.asarray(X + 0.5), np.array([2, 4])
    as_lists = [[{k: v.tolist() for k, v in d.items()} for d in layer] for layer in PARAMS]
    want = a.to_numpy(a.rnn(SPEC, PARAMS, x, L).outputs)
    got = a.to_numpy(a.rnn(SPEC, as_lists, x, L).outputs)
    assert np.allclose(got, want, rtol=1e-6, atol=1e-7), f"{a.name}: nested-list params differ"


def test_to_numpy_turns_bfloat16_into_float32(any_adapter):
    import ml_dtypes

    a = any_adapter
    x = np.array([1.5, -2.25, 3.0], dtype=ml_dtypes.bfloat16)
    native = a.asarray(x)
    got = a.to_numpy(native)
    assert got.dtype == np.float32 and got.tolist() == [1.5, -2.25, 3.0], f"{a.name}: {got!r}"
    assert a.dtype_name(native) == "bfloat16"
