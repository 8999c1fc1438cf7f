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
TOK = np.array([[1, 2, 3, 0], [4, 0, 1, 2]])
TAB = np.arange(15, dtype="float32").reshape(5, 3) / 10
#: binary targets with one value outside [0, 1] at a valid step (row 1 has 4 valid steps)
BCE_OVER = np.array([[0.0, 1.0, 0.5, 0.5], [0.25, 1.0, 1.5, 0.0]], "float32")


class ForeignTensor:
    """Another framework's array as an adapter sees it: a shape, and a dtype NumPy cannot read."""

    shape = (2, 4, 3)
    dtype = "foreign.float32"


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
        # vjps need a cotangent: None is one of shape () (attention_vjp's and rnn_vjp's rule)
        "embed_vjp_no_cotangent": (lambda: a.embed_vjp(TOK, TAB, L, None),
                                   "cotangent has shape (), expected (2, 4, 3) (the shape of embed's output)"),
        "bag_vjp_no_cotangent": (lambda: a.embedding_bag_vjp(TOK, TAB, L, None),
                                 "cotangent has shape (), expected (2, 3) (the shape of embedding_bag's output)"),
        "embed_empty_table": (lambda: a.embed(TOK, np.zeros((0, 3), "float32"), np.array([0, 0])),
                              "embed needs at least one table row: table has V=0"),
        "bag_empty_table": (lambda: a.embedding_bag_vjp(TOK, np.zeros((0, 3), "float32"), np.array([0, 0]),
                                                        np.ones((2, 3), "float32")),
                            "embedding_bag needs at least one table row: table has V=0"),
        "attention_no_query_heads": (lambda: a.attention(np.zeros((2, 4, 0, 3)), np.zeros((2, 4, 1, 3)),
                                                         np.zeros((2, 4, 1, 3)), L),
                                     "attention needs at least one query head and one key/value head, got Hq=0, "
                                     "Hkv=1"),
        "attention_q_nested_list": (lambda: a.attention(np.zeros((2, 4, 1, 3)).tolist(), np.zeros((2, 4, 1, 3)),
                                                        np.zeros((2, 4, 1, 3)), L),
                                    "q must be an array of rank 4 [B, T, H, Dh] (NumPy's or the framework's), "
                                    "got list"),
        "attention_v_none": (lambda: a.attention(np.zeros((2, 4, 1, 3)), np.zeros((2, 4, 1, 3)), None, L),
                             "v must be an array of rank 4 [B, T, H, Dh] (NumPy's or the framework's), got NoneType"),
        "attention_vjp_no_cotangent": (lambda: a.attention_vjp(*[np.zeros((2, 4, 1, 3), "float32")] * 3, L, None,
                                                               None),
                                       "cotangent has shape (), expected q's shape (2, 4, 1, 3)"),
        "attention_vjp_list_cotangent_shape": (lambda: a.attention_vjp(*[np.zeros((2, 4, 1, 3), "float32")] * 3, L,
                                                                       None, np.zeros((2, 4, 3)).tolist()),
                                               "cotangent has shape (2, 4, 3), expected q's shape (2, 4, 1, 3)"),
        "asarray_unknown_device": (lambda: a.asarray(X, device="tpu"),
                                   "unknown device 'tpu'; expected one of ['cpu', 'gpu']"),
        "pad_overflow_float32": (lambda: a.pad([np.zeros(2, "float32"), np.zeros(3, "float32")], value=1e40),
                                 "pad value 1e+40 is not representable in dtype float32 (its largest finite value "
                                 "is 3.40282e+38)"),
        "pad_overflow_float16": (lambda: a.pad([np.zeros(2, "float16")], value=-70000),
                                 "pad value -70000 is not representable in dtype float16 (its largest finite value "
                                 "is 65504)"),
        "pad_overflow_bfloat16": (lambda: a.pad([np.zeros(2, _bfloat16())], value=1e39),
                                  "pad value 1e+39 is not representable in dtype bfloat16 (its largest finite value "
                                  "is 3.38953e+38)"),
        "pad_int_beyond_float64": (lambda: a.pad([np.zeros(2)], value=10**400),
                                   "is not representable in dtype float64"),
        "pad_object_sequences": (lambda: a.pad([np.array([1, None], dtype=object), np.array([2], dtype=object)]),
                                 "sequences[0] has dtype object: pad takes numeric or bool sequences"),
        "pad_str_sequence": (lambda: a.pad([np.array([1.0]), np.array(["c"])]),
                             "sequences[1] has dtype str32: pad takes numeric or bool sequences"),
        "pad_str_lists": (lambda: a.pad([["a"], ["b", "c"]]),
                          "sequences[0] has dtype str32: pad takes numeric or bool sequences"),
        "rnn_vjp_int_cotangents": (lambda: a.rnn_vjp(SPEC, PARAMS, x, L, {k: np.ones(np.shape(c), np.int64) for k, c
                                                                         in cotangents(SPEC, 2, 4).items()}),
                                   "rnn cotangents['outputs'] needs floating-point x (float16, bfloat16, float32, "
                                   "float64), got dtype int64"),
        "embed_vjp_int_cotangent": (lambda: a.embed_vjp(TOK, TAB, L, np.ones((2, 4, 3), np.int64)),
                                    "embed cotangent needs floating-point x (float16, bfloat16, float32, float64), "
                                    "got dtype int64"),
        "bag_vjp_int_cotangent": (lambda: a.embedding_bag_vjp(TOK, TAB, L, np.ones((2, 3), np.int32)),
                                  "embedding_bag cotangent needs floating-point x"),
        "unpack_scalar_data": (lambda: a.unpack(Packed(np.float32(0), np.array([2, 1]), np.array([1, 0]),
                                                       np.array([1, 0]))),
                               "inconsistent Packed: data must be an array [N, *feat] of rank >= 1, got shape ()"),
        "strategy_kernel_unknown": (lambda: a.strategy_kernel("rnn", "magic"),
                                    "rnn strategy 'magic'; expected one of"),
        "rnn_params_strings": (lambda: a.rnn(SPEC, [[{**PARAMS[0][0], "b_ih": ["a"] * 8}]], x, L),
                               "params[0][0]['b_ih'] must be a numeric array"),
        "rnn_params_string_array": (lambda: a.rnn(SPEC, [[{**PARAMS[0][0], "b_ih": np.array(["a"] * 8)}]], x, L),
                                    "params[0][0]['b_ih'] must be a numeric array, got dtype str32"),
        "pack_enforce_sorted_not_bool": (lambda: a.pack(x, np.array([4, 2]), enforce_sorted="yes"),
                                         "enforce_sorted must be a bool, got 'yes'"),
        "strategies_head_dim_not_int": (lambda: a.strategies("attention", head_dim="x"),
                                        "head_dim must be a non-negative integer, got 'x'"),
        "strategies_head_dim_negative": (lambda: a.strategies("attention", head_dim=-1),
                                         "head_dim must be a non-negative integer, got -1"),
        "bce_target_over_one": (lambda: a.masked_loss(X[..., 0], BCE_OVER, L, kind="sigmoid_bce"),
                                "target 1.5 at (row 1, step 2) is outside [0, 1] (sigmoid_bce targets are "
                                "probabilities)"),
        "bce_target_nan_at_valid_step": (lambda: a.masked_loss_vjp(X[..., 0], np.where(TOK == 2, np.nan, 0.5), L,
                                                                   kind="sigmoid_bce"),
                                         "target nan at (row 0, step 1) is outside [0, 1]"),
        "bce_target_per_label": (lambda: a.masked_loss(X, np.where(np.arange(3) == 2, BCE_OVER[..., None] - 0.5, 0.5),
                                                       L, kind="sigmoid_bce"),
                                 "target -0.5 at (row 0, step 0, label 2) is outside [0, 1]"),
        "another_frameworks_array": (lambda: a.masked_mean(ForeignTensor(), L),
                                     f"{a.name} cannot take a tests.ForeignTensor (dtype foreign.float32): give a "
                                     "NumPy array"),
    }


def _bfloat16():
    import ml_dtypes

    return ml_dtypes.bfloat16


CASE_NAMES = sorted(ops(type("Dummy", (), {"asarray": staticmethod(np.asarray), "name": "dummy"})))


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


def test_cotangents_as_nested_lists_work_like_arrays(any_adapter):
    """rnn_vjp takes its cotangents as nested lists, as embed_vjp does (its shape check read `.shape`)."""
    a = any_adapter
    x, L = a.asarray(X + 0.5), np.array([2, 4])
    cot = {k: np.linspace(-1, 1, np.size(c)).reshape(np.shape(c)) for k, c in cotangents(SPEC, 2, 4).items()}
    want = a.to_numpy(a.rnn_vjp(SPEC, PARAMS, x, L, cot)[1]["x"])
    got = a.to_numpy(a.rnn_vjp(SPEC, PARAMS, x, L, {k: c.tolist() for k, c in cot.items()})[1]["x"])
    assert np.allclose(got, want, rtol=1e-6, atol=1e-7) and np.abs(want).sum() > 0, f"{a.name}: list cotangents"


def test_to_numpy_turns_bfloat16_into_float32(any_adapter):
    import ml_dtypes

    a = any_adapter
    x = np.array([1.5, -2.25, 3.0], dtype=ml_dtypes.bfloat16)
    native = a.asarray(x)
    got = a.to_numpy(native)
    assert got.dtype == np.float32 and got.tolist() == [1.5, -2.25, 3.0], f"{a.name}: {got!r}"
    assert a.dtype_name(native) == "bfloat16"


def test_asarray_refuses_a_device_it_does_not_see(any_adapter, monkeypatch):
    """asarray validates its device like every op: a GPU this framework does not see is the same ValueError (not
    torch's AssertionError, JAX's RuntimeError, or TensorFlow silently staying on the CPU)."""
    a = any_adapter
    monkeypatch.setattr(a, "devices", lambda: ["cpu"])
    with pytest.raises(ValueError) as err:
        a.asarray(X, device="gpu")
    assert str(err.value) == f"device 'gpu' is not available to {a.name} here; it sees ['cpu']", str(err.value)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bfloat16_rnn_strategies_run_or_refuse(any_adapter, cell):
    """On the CPU every RNN strategy in bfloat16 either is listed by `strategies` and runs (the default first), or
    is not listed and refuses with `Unsupported` (a ValueError giving its reason): none crashes inside the framework
    (TensorFlow's Keras layers have no bfloat16 CPU kernel)."""
    import ml_dtypes

    from adapters.spec import Unsupported

    a, spec = any_adapter, RnnSpec(cell, 3, 2)
    x = a.asarray(np.linspace(-1, 1, 24).reshape(2, 4, 3).astype(ml_dtypes.bfloat16))
    listed = a.strategies("rnn", cell=cell, device="cpu", dtype="bfloat16")
    assert listed and a.strategies("rnn", cell=cell, dtype="bfloat16") == listed, listed
    for strategy in a.strategy_table("rnn"):
        if strategy in listed:
            out = a.rnn(spec, init_params(spec), x, np.array([3, 1]), strategy=strategy)
            assert a.dtype_name(out.outputs) == "bfloat16", (a.name, strategy)
        else:
            with pytest.raises(Unsupported, match=f"{a.name} strategy '{strategy}' does not support"):
                a.rnn(spec, init_params(spec), x, np.array([3, 1]), strategy=strategy)


def test_attention_cotangent_as_nested_list_works_like_an_array(any_adapter):
    """attention_vjp takes its cotangent as a nested list, as rnn_vjp and embed_vjp do (its shape check read
    `.shape` and called every list one of shape ())."""
    a = any_adapter
    rng = np.random.default_rng(3)
    q, k = (rng.standard_normal((2, 4, 2, 3)).astype("float32") for _ in range(2))
    cot = rng.standard_normal((2, 4, 2, 3))
    L = np.array([3, 1])
    want = a.attention_vjp(q, k, k, L, None, cot)[1]
    got = a.attention_vjp(q, k, k, L, None, cot.tolist())[1]
    for name in ("q", "k", "v"):
        assert np.array_equal(a.to_numpy(got[name]), a.to_numpy(want[name])), f"{a.name}: grad {name} differs"
    assert np.any(a.to_numpy(want["q"]) != 0), "the cotangent reached no gradient: the comparison proves nothing"
