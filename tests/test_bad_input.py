"""Every bad input of the contract raises a ValueError that names the problem (and the index), in every adapter."""
from __future__ import annotations

import numpy as np
import pytest

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
