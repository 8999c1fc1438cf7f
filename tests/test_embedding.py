"""Embeddings: every strategy of every framework against the NumPy float64 reference, bad input, native behaviours
and recipes with their expected verdicts, and pairwise agreement between frameworks.

The strategy gate (harness/families/embedding.py) covers embed and embedding_bag sum/mean/max, forward + VJP,
float32/float64, both sides, a zero-length row and an all-empty batch, garbage padded ids (negative, out of range)
with a NaN table row only they could reach, and bit-identical results whatever the padded ids hold; and Hypothesis'
random batches (vocabularies of 1-7 ids, both sides, every variant, float64) for every strategy.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import assume, given, settings

import adapters
from adapters.spec import valid_mask
from harness.axes import FRAMEWORKS
from harness.compare import close
from harness.families import embedding as fam
from harness.families.base import doc_why
from harness.tolerances import tolerance
from tests.conftest import on_device, require, strategy_params
from tests.strategies import embedding_batches

STRATS = strategy_params("embedding")


def adapter_on(name, device):
    require(name)
    return on_device(adapters.get(name), device)


@pytest.mark.parametrize("name,strategy", STRATS)
def test_strategy_matches_reference(name, strategy, device, ref):
    fw = adapter_on(name, device)
    recs = list(fam.strategy_records(fw, ref, strategy, device))
    assert recs, f"{name}/{strategy} ran no cell"
    bad = [(r["op"], r["case"], r["side"], r["dtype"], r["quantity"], r["max_abs_err"], r.get("error", ""))
           for r in recs if not r["equivalent"]]
    assert not bad, f"{name}/{strategy}: {len(bad)} failing cells, e.g. {bad[:4]}"


@pytest.mark.parametrize("name,strategy", STRATS)
def test_strategy_on_random_batches(name, strategy, device, ref):
    """Random lengths (zero-length rows), vocabularies down to one id, garbage padded ids, every variant, float64,
    against the reference."""
    fw = adapter_on(name, device)

    @given(batch=embedding_batches())
    @settings(max_examples=12, deadline=None)
    def run(batch):
        lengths, T, vocab, dim, side, (op, mode), seed = batch
        assume(fw.why_not("embedding", strategy, op=op, mode=mode, device=device, dtype="float64") is None)
        L = np.array(lengths)
        tokens = fam.tokens_for(L, T, side, seed=seed, vocab=vocab)
        table = fam.table_for(vocab, dim, seed=seed, nan_row=False)
        cot = fam.cotangents_for(L.size, T, dim, seed=seed)
        want = fam.run_vjp(ref, op, mode, tokens, table, L, cot, side=side)
        got = fam.run_vjp(fw, op, mode, tokens, fw.asarray(table, device), L,
                          {k: fw.asarray(v, device) for k, v in cot.items()}, side=side, strategy=strategy,
                          device=device)
        for what, g, w in zip(("output", "grad_table"), got, want, strict=True):
            ok, err = close(g, w, tolerance("float64", device))
            assert ok, f"{name}/{strategy} {batch}: {what} off by {err}"

    run()


@pytest.mark.parametrize("name,strategy", STRATS)
def test_forward_matches_vjp_and_zero_T(name, strategy, device, ref):
    """The forward-only path agrees with the VJP's output; T = 0 gives [B, 0, E] / zero bags."""
    fw = adapter_on(name, device)
    L, T = np.array([3, 0, 2]), 3
    tokens, table = fam.tokens_for(L, T, "left"), fam.table_for(dtype="float32")
    cot = fam.cotangents_for(3, T, dtype="float32")
    tol = tolerance("float32", device)
    for op, mode in fam.VARIANTS:
        if fw.why_not("embedding", strategy, op=op, mode=mode) is not None:
            continue
        kw = dict(side="left", strategy=strategy, device=device)
        out, _ = fam.run_vjp(fw, op, mode, tokens, table, L, cot, **kw)
        fwd = fw.embed(tokens, table, L, **kw) if op == "embed" else fw.embedding_bag(tokens, table, L, mode=mode,
                                                                                       **kw)
        ok, err = close(fw.to_numpy(fwd), out, tol)
        assert ok, f"{name}/{strategy} {op} {mode}: forward differs from the VJP's output by {err}"
        empty = np.zeros((3, 0), np.int64)
        got = fw.to_numpy(fw.embed(empty, table, np.zeros(3, int), strategy=strategy, device=device) if op == "embed"
                          else fw.embedding_bag(empty, table, np.zeros(3, int), mode=mode, strategy=strategy,
                                                device=device))
        want = np.zeros((3, 0, fam.E) if op == "embed" else (3, fam.E), np.float32)
        assert got.shape == want.shape and not got.any(), f"{name}/{strategy} {op} {mode} with T=0 gave {got}"


def test_strategy_preconditions_name_a_reason():
    """Every declared strategy either runs an op or says why not (the precondition is static for `op`)."""
    for name in adapters.available():
        fw = adapters.get(name)
        for s in adapters.declared_strategies(name, "embedding"):
            for op in ("embed", "embedding_bag"):
                why = fw.why_not("embedding", s, op=op)
                assert why is None or (isinstance(why, str) and why), f"{name}/{s} {op}: {why!r}"
            assert fw.strategy_kernel("embedding", s), f"{name}/{s} declares no kernel"
        assert fw.strategies("embedding", op="embed"), f"{name} has no strategy for embed"


# -- bad input: the same message from every adapter ------------------------------------------------------------------
TOK = np.array([[1, 2, -5], [0, 3, 3]])
TAB = np.ones((4, 2))
LEN = np.array([2, 3])


def _bad_cases():
    i = dict(tokens=TOK, table=TAB, lengths=LEN)
    return {
        "float tokens": ({**i, "tokens": TOK.astype(float)}, {},
                         r"tokens must be integer token ids, got dtype float64"),
        "bool tokens": ({**i, "tokens": TOK > 0}, {}, r"tokens must be integer token ids, got dtype bool"),
        "rank-3 tokens": ({**i, "tokens": TOK[..., None]}, {}, r"tokens must be a rank-2 integer array \[B, T\], got "
                                                              r"shape \(2, 3, 1\)"),
        "int table": ({**i, "table": TAB.astype(int)}, {}, r"table must be floating-point .*got dtype int64"),
        "rank-1 table": ({**i, "table": TAB[0]}, {}, r"table must be a rank-2 float array \[V, E\], got shape \(2,\)"),
        "empty batch": ({**i, "tokens": TOK[:0], "lengths": LEN[:0]}, {}, r"empty batch: tokens has batch size 0"),
        "length > T": ({**i, "lengths": np.array([2, 4])}, {}, r"length 4 at index 1 exceeds the padded length T=3"),
        "negative length": ({**i, "lengths": np.array([-1, 3])}, {}, r"negative length -1 at index 0"),
        "lengths count": ({**i, "lengths": np.array([2])}, {}, r"lengths has 1 entries but the batch has 2"),
        "float lengths": ({**i, "lengths": LEN.astype(float)}, {}, r"lengths must be integers, got dtype float64"),
        "valid id >= V": ({**i, "tokens": np.array([[1, 4, 0], [0, 3, 3]])}, {},
                          r"token id 4 at \(row 0, step 1\) is outside the table \[0, 4\)"),
        "negative valid id": ({**i, "tokens": np.array([[1, 2, 0], [0, -3, 3]])}, {},
                              r"token id -3 at \(row 1, step 1\) is outside the table \[0, 4\)"),
        "left: valid id": ({**i}, {"side": "left"}, r"token id -5 at \(row 0, step 2\) is outside the table \[0, 4\)"),
        "unknown side": (i, {"side": "middle"}, r"unknown side 'middle'; expected one of \['right', 'left'\]"),
        "unknown device": (i, {"device": "tpu"}, r"unknown device 'tpu'; expected one of \['cpu', 'gpu'\]"),
        "unknown strategy": (i, {"strategy": "nope"}, r"unknown \w+ strategy 'nope'; expected one of"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("op", ["embed", "embedding_bag"])
def test_bad_input_same_message(any_adapter, case, op):
    inputs, kw, message = BAD[case]
    fn = any_adapter.embed if op == "embed" else any_adapter.embedding_bag
    with pytest.raises(ValueError, match=message):
        fn(inputs["tokens"], inputs["table"], inputs["lengths"], **kw)


def test_bad_mode_and_cotangent(any_adapter):
    fw = any_adapter
    with pytest.raises(ValueError, match=r"unknown mode 'median'; expected one of \['sum', 'mean', 'max'\]"):
        fw.embedding_bag(TOK, TAB, LEN, mode="median")
    with pytest.raises(ValueError, match=r"cotangent has shape \(2, 3\), expected \(2, 3, 2\)"):
        fw.embed_vjp(TOK, TAB, LEN, np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"cotangent has shape \(2, 3, 2\), expected \(2, 2\)"):
        fw.embedding_bag_vjp(TOK, TAB, LEN, np.ones((2, 3, 2)))


def test_padded_ids_may_hold_anything(any_adapter):
    """-5 sits in row 0's padding (length 2): legal, and the result equals the 0-padded one."""
    fw = any_adapter
    a = fw.to_numpy(fw.embed(TOK, TAB, LEN))
    b = fw.to_numpy(fw.embed(np.where(TOK < 0, 0, TOK), TAB, LEN))
    assert np.array_equal(a, b), f"{fw.name}: padded ids changed the result"


# -- native behaviours and recipes: the verdicts we expect ------------------------------------------------------
#: native behaviour -> quantity -> expected verdict (a new native must be added here with its verdicts)
NATIVE_VERDICTS = {
    "padding_idx_0": {"outputs": True, "grad_table": False},
    "embedding_bag_padding_idx_0": {"outputs": False, "grad_table": False},
    "keras_embedding_mask_zero": {"outputs": False, "grad_table": False},
    "global_average_pooling_1d_masked": {"outputs": False, "grad_table": True},
    "take_pad_id_past_vocab": {"outputs": False, "grad_table": True},
    "segment_max_empty_row": {"outputs": False, "grad_table": True},
}
#: (recipe, side) -> quantity -> expected verdict
IDIOM_VERDICTS = {
    ("mask_from_tokens", "right"): {"outputs": False, "bag_mean": False, "grad_table": False},
    ("embed_mask_rnn_final_state", "right"): {"outputs": True, "h_n": False},
    ("embed_mask_rnn_final_state", "left"): {"outputs": False, "h_n": False},
}


def _verdicts(recs) -> dict:
    out: dict = {}
    for r in recs:
        out.setdefault(r["name"], {})[r["quantity"]] = r["equivalent"]
    return out


def test_native_verdicts(fw, ref, device):
    got = _verdicts(fam.native_records(fw, ref, device))
    assert set(got) == set(fw.natives("embedding")), f"{fw.name}: natives without records"
    assert got, f"{fw.name} records no embedding native behaviour"
    for name, verdicts in got.items():
        assert name in NATIVE_VERDICTS, f"{fw.name} native {name!r} has no expected verdicts in this test"
        assert verdicts == NATIVE_VERDICTS[name], f"{fw.name} native {name}: got {verdicts}, expected " \
                                                  f"{NATIVE_VERDICTS[name]}"
        assert doc_why(fw.NATIVES["embedding"][name]), f"{fw.name} native {name} has no why"


def test_recipe_verdicts(fw, ref, device):
    got: dict = {}
    strategies = set(fw.strategy_table("rnn")) | set(fw.strategy_table("embedding"))
    for r in fam.idiom_records(fw, ref, device):
        got.setdefault((r["name"], r["side"]), {})[r["quantity"]] = r["equivalent"]
        assert r["why"], f"recipe {r['name']} has no why"
        assert r["kernel"] and r["kernel"] not in strategies, f"{r['name']}: kernel {r['kernel']!r} names no kernel"
    assert got == IDIOM_VERDICTS, f"{fw.name}: recipe verdicts {got}, expected {IDIOM_VERDICTS}"


# -- pairwise agreement ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b", [pytest.param(a, b, id=f"{a}-{b}") for a, b in itertools.combinations(FRAMEWORKS, 2)])
def test_frameworks_agree_pairwise(a, b, device):
    """Default strategies, float64, every variant: outputs and table gradients agree between two frameworks."""
    fa, fb = adapter_on(a, device), adapter_on(b, device)
    L, T = np.array([4, 0, 1, 3, 4]), 5
    tokens, table, cot = fam.tokens_for(L, T, "right"), fam.table_for(), fam.cotangents_for(5, T)
    tol = tolerance("float64", device)
    for op, mode in fam.VARIANTS:
        ra = fam.run_vjp(fa, op, mode, tokens, table, L, cot, device=device)
        rb = fam.run_vjp(fb, op, mode, tokens, table, L, cot, device=device)
        for q, x, y in zip(("outputs", "grad_table"), ra, rb, strict=True):
            ok, err = close(x, y, tol)
            assert ok, f"{a} vs {b} {op} {mode} {q}: max abs err {err}"


def test_check_records_validate(ref):
    """Every record the family writes passes the schema (one framework suffices: the fields are shared)."""
    from harness import records

    name = next((n for n in FRAMEWORKS if n in adapters.available()), None)
    if name is None:
        pytest.skip("no framework installed")
    recs = list(fam.check_records(adapters.get(name), ref, dtypes=("float64",)))
    assert {r["kind"] for r in recs} == {"strategy", "native", "idiom"}
    for r in recs:
        records.make(**r)



def test_jax_segment_compiles_only_when_the_token_count_crosses_a_rung(ref):
    """JAX's segment strategy packs the valid tokens to a count on a ladder (`shape_ladder`, quarters): batches
    whose totals share a rung (41, 44 and 47 tokens: 48) reuse one compiled function per variant, exact each time
    with garbage padded ids; 49 tokens (rung 56) compiles once more."""
    require("jax")
    fw = adapters.get("jax")
    T, table = 16, fam.table_for()
    tol = tolerance("float64", "cpu")

    def run_all(lengths):
        lengths = np.asarray(lengths)
        tokens, cot = fam.tokens_for(lengths, T, "right"), fam.cotangents_for(lengths.size, T)
        for op, mode in (("embed", None), ("embedding_bag", "mean")):
            kw = dict(side="right", strategy="segment", device="cpu")
            got = fam.run_vjp(fw, op, mode, tokens, table, lengths, cot, **kw)
            want = fam.run_vjp(ref, op, mode, tokens, table, lengths, cot, side="right")
            for g, w in zip(got, want, strict=True):
                ok, err = close(g, w, tol)
                assert ok, f"{op} {mode} lengths {lengths.tolist()}: off by {err}"

    run_all([16, 9, 4, 0, 12])  # 41 tokens
    before = fw.compile_count()
    run_all([15, 10, 6, 1, 12])  # 44
    run_all([16, 16, 3, 0, 12])  # 47
    assert fw.compile_count() == before, "a token count on the same rung compiled again"
    run_all([16, 16, 5, 0, 12])  # 49
    assert fw.compile_count() == before + 2, "a new rung compiles once per variant"


@pytest.mark.parametrize("op", ["embed_forward_backward", "embedding_bag_mean"])
def test_prepare_counts_bytes_for_the_floor_and_tokens_for_the_ideal(op, device):
    # the ideal is linear in the valid tokens (as for RNNs and losses); the dense [V, E] table gradient counts in
    # the bytes the copy floor is measured against, not in the ideal's share
    name = FRAMEWORKS[0]
    fw = adapter_on(name, device)
    strategy = next(s for s in adapters.declared_strategies(name, "embedding") if fam._offers(name, s, op))
    case = dict(op=op, device=device, dtype="float32", batch=4, max_len=16, profile="lognormal", strategy=strategy,
                vocab=50, embed_dim=8)
    p = fam.prepare(fw, case)
    from harness.profiles import lengths_for

    L = lengths_for("lognormal", 4, 16, 0)
    n = int(L.sum())
    assert 0 < n < 4 * 16
    rows = 4 * n if op == "embed_forward_backward" else 2 * n + 2 * 4  # token rows moved, + one row per bag
    assert p.work == (rows + 50) * 8 * 4
    assert p.ideal_share == pytest.approx(n / (4 * 16))


INT_DTYPES = ["int8", "int16", "int32", "uint8", "uint16", "uint32", "uint64"]


@pytest.mark.parametrize("name,strategy", STRATS)
def test_token_ids_of_every_integer_dtype(name, strategy, device):
    """Token ids of any integer dtype give what int64 ids give (NumPy and JAX take them; torch's F.embedding and
    TF's gathers take int32/int64 only, so the adapter casts after checking them), forward and VJP; the expected
    values are NumPy's own lookup and scatter-add, not the reference adapter."""
    fw = adapter_on(name, device)
    tokens, L = np.array([[1, 2, 3, 0], [4, 0, 1, 2]]), np.array([2, 4])
    table = np.arange(15, dtype=np.float32).reshape(5, 3) / 8
    valid = valid_mask(L, 4)
    rows = np.where(valid[..., None], table[tokens], 0)
    grad = np.zeros_like(table)
    np.add.at(grad, tokens[valid], 1.0)
    bag_grad = np.zeros_like(table)
    np.add.at(bag_grad, tokens[valid], (1.0 / np.repeat(L, L))[:, None])
    for dtype in INT_DTYPES:
        ids = fw.asarray(tokens.astype(dtype), device)
        for op, want, want_grad in (("embed", rows, grad), ("embedding_bag", rows.sum(1) / L[:, None], bag_grad)):
            if fw.why_not("embedding", strategy, op=op, mode="mean" if op == "embedding_bag" else None) is not None:
                continue
            kw = dict(strategy=strategy, device=device)
            if op == "embed":
                out, g = fw.embed_vjp(ids, table, L, np.ones(want.shape, np.float32), **kw)
            else:
                out, g = fw.embedding_bag_vjp(ids, table, L, np.ones(want.shape, np.float32), mode="mean", **kw)
            for what, got, exp in (("output", out, want), ("grad", g, want_grad)):
                got = fw.to_numpy(got)
                assert np.allclose(got, exp, rtol=1e-6, atol=1e-7), f"{name}/{strategy} {op} {dtype} {what}: {got}"
