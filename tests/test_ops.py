"""pad / mask / pack / unpack / masked_mean of every framework against the NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import adapters
from harness.compare import close
from harness.data import EDGE_CASES, padded, ragged
from harness.tolerances import tolerance
from tests.conftest import require
from tests.strategies import ragged_batches

CASES = sorted(EDGE_CASES)
HYPO = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_same(fw, actual, expected, what):
    actual = fw.to_numpy(actual)
    assert actual.dtype == expected.dtype, f"{fw.name} {what}: dtype {actual.dtype}, expected {expected.dtype}"
    assert actual.shape == expected.shape, f"{fw.name} {what}: shape {actual.shape}, expected {expected.shape}"
    assert np.array_equal(actual, expected, equal_nan=True), (
        f"{fw.name} {what}: values differ\n got {actual.tolist()}\nwant {expected.tolist()}")


def assert_packed_same(fw, packed, expected, what):
    for field in ("data", "batch_sizes", "sorted_indices", "unsorted_indices"):
        got = fw.to_numpy(getattr(packed, field))
        want = getattr(expected, field)
        assert got.shape == want.shape and np.array_equal(got, want), (
            f"{fw.name} pack {what}: {field} = {got.tolist()}, expected {want.tolist()}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("truncate", ["right", "left"])
@pytest.mark.parametrize("maxlen", ["none", "shorter", "longer"])
def test_pad(fw, ref, case, side, truncate, maxlen, device):
    lengths, T = EDGE_CASES[case]
    seqs = ragged(lengths, (2,), seed=1)
    m = {"none": None, "shorter": max(max(lengths) - 1, 0), "longer": T + 2}[maxlen]
    kw = dict(side=side, truncate=truncate, maxlen=m, value=-7.0)
    assert_same(fw, fw.pad([fw.asarray(s, device) for s in seqs], device=device, **kw), ref.pad(seqs, **kw),
                f"pad {case} {kw}")


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
@pytest.mark.parametrize("maxlen", [None, 2, 6])
def test_pad_matches_keras_pad_sequences(any_adapter, padding, truncating, maxlen):
    require("tensorflow")
    adapters.get("tensorflow")  # sets KERAS_BACKEND before keras is imported
    import keras
    seqs = [np.arange(1, n + 1, dtype="int32") * 10 for n in (3, 0, 5, 1, 4)]
    want = keras.utils.pad_sequences(seqs, maxlen=maxlen, dtype="int32", padding=padding,
                                     truncating=truncating, value=-1)
    side = {"pre": "left", "post": "right"}
    got = any_adapter.pad([any_adapter.asarray(s) for s in seqs], side=side[padding], truncate=side[truncating],
                          maxlen=maxlen, value=-1)
    assert_same(any_adapter, got, want, f"pad vs keras padding={padding} truncating={truncating} maxlen={maxlen}")


def test_pad_keeps_integer_dtype_and_feature_dims(fw, ref):
    seqs = [np.arange(n * 6, dtype="int64").reshape(n, 2, 3) for n in (2, 0, 3)]
    assert_same(fw, fw.pad([fw.asarray(s) for s in seqs], value=5), ref.pad(seqs, value=5), "pad int64 [L,2,3]")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_mask(fw, ref, case, side, device):
    lengths, T = EDGE_CASES[case]
    assert_same(fw, fw.mask(np.array(lengths), T, side=side, device=device), ref.mask(np.array(lengths), T, side=side),
                f"mask {case} side={side}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_pack_unpack(fw, ref, case, side, device):
    lengths, T = EDGE_CASES[case]
    x = padded(lengths, T, (2,), side=side, seed=3, fill=np.nan)
    want = ref.pack(x, np.array(lengths), side=side)
    got = fw.pack(fw.asarray(x, device), np.array(lengths), side=side)
    assert_packed_same(fw, got, want, f"{case} side={side}")
    for total in (None, T + 1):
        xs, ls = fw.unpack(got, total_length=total, side=side)
        want_x, want_l = ref.unpack(want, total_length=total, side=side)
        assert_same(fw, xs, want_x, f"unpack {case} side={side} total_length={total}")
        assert np.array_equal(fw.to_numpy(ls), want_l), f"{fw.name} unpack lengths {fw.to_numpy(ls)} != {want_l}"


def test_reference_unpack_inverts_pack(ref):
    lengths, T = EDGE_CASES["zero_length"]
    x = padded(lengths, T, (2,), seed=4)
    back, ls = ref.unpack(ref.pack(x, np.array(lengths)))
    assert np.array_equal(back, x[:, : max(lengths)]) and np.array_equal(ls, lengths)


@pytest.mark.parametrize("case", [c for c in CASES if 0 not in EDGE_CASES[c].lengths])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_pack_matches_torch_pack_padded_sequence(any_adapter, case, enforce_sorted):
    require("torch")
    import torch
    lengths, T = EDGE_CASES[case]
    lengths = np.array(sorted(lengths, reverse=True) if enforce_sorted else lengths)
    x = padded(lengths, T, (3,), seed=5)
    want = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                                   batch_first=True, enforce_sorted=enforce_sorted)
    got = any_adapter.pack(any_adapter.asarray(x), lengths, enforce_sorted=enforce_sorted)
    ident = np.arange(lengths.size)
    for field in ("data", "batch_sizes", "sorted_indices", "unsorted_indices"):
        w = getattr(want, field)
        w = ident if w is None else w.numpy()  # PyTorch gives None when enforce_sorted=True
        g = any_adapter.to_numpy(getattr(got, field))
        assert np.array_equal(g, w), f"{any_adapter.name} pack {case}: {field} {g.tolist()} != torch {w.tolist()}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_masked_mean_nan_in_padding(fw, ref, case, side, dtype, device):
    lengths, T = EDGE_CASES[case]
    x = padded(lengths, T, (3,), side=side, seed=6, dtype=dtype, fill=np.nan)
    want = ref.masked_mean(x.astype("float64"), np.array(lengths), side=side)
    assert np.isfinite(want).all()
    got = fw.to_numpy(fw.masked_mean(fw.asarray(x, device), np.array(lengths), side=side))
    assert got.dtype == np.dtype(dtype), f"{fw.name} masked_mean dtype {got.dtype} != {dtype}"
    ok, err = close(got, want, tolerance(dtype, device))
    assert ok, f"{fw.name} masked_mean {case} side={side} {dtype}: max abs err {err}"
    empty = np.array(lengths) == 0
    assert (got[empty] == 0).all(), f"{fw.name} masked_mean of an empty row must be 0, got {got[empty]}"


@given(batch=ragged_batches())
@HYPO
def test_ops_on_random_ragged_batches(fw, ref, device, batch):
    lengths, T, side, seed = batch
    L = np.array(lengths)
    x = padded(L, T, (2,), side=side, seed=seed, fill=np.nan)
    seqs = ragged(L, (2,), seed=seed)
    assert_same(fw, fw.pad([fw.asarray(s, device) for s in seqs], side=side, maxlen=T, device=device),
                ref.pad(seqs, side=side, maxlen=T), f"pad {batch}")
    assert_same(fw, fw.mask(L, T, side=side, device=device), ref.mask(L, T, side=side), f"mask {batch}")
    got = fw.pack(fw.asarray(x, device), L, side=side)
    want = ref.pack(x, L, side=side)
    assert_packed_same(fw, got, want, str(batch))
    assert_same(fw, fw.unpack(got, total_length=T, side=side)[0], ref.unpack(want, total_length=T, side=side)[0],
                f"unpack {batch}")
    ok, err = close(fw.to_numpy(fw.masked_mean(fw.asarray(x, device), L, side=side)),
                    ref.masked_mean(x.astype("float64"), L, side=side), tolerance("float32", device))
    assert ok, f"{fw.name} masked_mean {batch}: max abs err {err}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_masked_mean_sums_low_precision_in_float32(any_adapter, dtype, side):
    """float16 / bfloat16 are summed in float32 and the mean returned in the input's dtype: four float16 steps of
    60000 (whose float16 sum overflows to inf) average 60000; bfloat16 steps 256, 1, 1, 1 average 64.75, which
    rounds to 65 (a bfloat16 sum gives 256 or 258: 64 or 64.5); 1, 2**-8, 2**-8, 1 and 1, 3, 3, 3 stay exact."""
    import ml_dtypes

    a = any_adapter
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    x = np.zeros((2, 5, 2), np.float32)
    x[0, :4] = 60000.0 if dtype == "float16" else np.array([256.0, 1.0, 1.0, 1.0])[:, None]
    x[1, :4] = [[1.0, 1.0], [2.0**-8, 3.0], [2.0**-8, 3.0], [1.0, 3.0]]
    if side == "left":
        x = x[:, ::-1]
    got = a.to_numpy(a.masked_mean(a.asarray(x.astype(np_dtype)), np.array([4, 4]), side=side))
    row0 = 60000.0 if dtype == "float16" else 65.0
    want = np.array([[row0] * 2, [(2 + 2**-7) / 4, 2.5]], np.float64).astype(np_dtype).astype(np.float32)
    assert a.dtype_name(a.masked_mean(a.asarray(x.astype(np_dtype)), np.array([4, 4]), side=side)) == dtype
    assert np.array_equal(got, want), f"{a.name} {dtype} {side}: got {got.tolist()}, want {want.tolist()}"


@pytest.mark.parametrize("value,dtype", [(2**63 - 1, "int64"), (2**64 - 1, "uint64"), (-(2**63), "int64"),
                                         (1e300, "float64"), (1 - 2j, "complex128")],
                         ids=["int64_max", "uint64_max", "int64_min", "float64_huge", "complex"])
def test_pad_writes_every_representable_value_exactly(any_adapter, value, dtype):
    """A pad value the dtype holds is written exactly: torch's pad_sequence takes a float (2**63 - 1 became
    -2**63, 2**64 - 1 became 0, a complex one a TypeError) and TensorFlow's cast of 1e300 went through float32."""
    a = any_adapter
    seqs = [np.array([1, 2], dtype), np.array([3], dtype)]
    want = np.array([[1, 2, value], [3, value, value]], dtype)
    for side in ("right", "left"):
        got = a.to_numpy(a.pad(seqs, value=value, maxlen=3, side=side))
        exp = want if side == "right" else np.array([[value, 1, 2], [value, value, 3]], dtype)
        assert got.dtype == exp.dtype and np.array_equal(got, exp), f"{a.name} {side}: {got.tolist()}"
