"""`Adapter.programs` beyond the RNN family: the planned strategies of attention, losses and embeddings whose
compiled programs follow the lengths name them from their own host planners, and each fresh batch of a stream
compiles exactly the keys no earlier batch named (the RNN strategies' gate is in test_rnn_fast.py). The bench
counts those keys over hundreds of fresh batches (`harness.bench.planned_compiles`), which only holds if this does."""
from __future__ import annotations

import numpy as np
import pytest

import adapters
from harness.families.attention import qkv
from harness.families.embedding import cotangents_for, table_for, tokens_for
from harness.families.loss import loss_case
from tests.conftest import require
from tests.test_rnn_fast import PROGRAM_STREAM, PROGRAM_T


def compiles_as_named(fw, stream, keys_of, run) -> list[int]:
    """Run `stream` (batches' lengths) after forgetting every compiled function; for each batch, the compiles it
    adds must equal the keys `keys_of(batch)` names that no earlier batch named. The new keys per batch."""
    fw.clear_compiled()
    seen, news = set(), []
    for i, L in enumerate(stream):
        keys = keys_of(L)
        before = fw.compile_count()
        run(i, L)
        news.append(len(keys - seen))
        assert fw.compile_count() - before == news[-1], \
            f"batch {i} {L}: {fw.compile_count() - before} compiles, programs named {keys - seen} new"
        seen |= keys
    return news


@pytest.mark.parametrize("vjp", [True, False], ids=["vjp", "forward"])
@pytest.mark.parametrize("name", ["jax", "tensorflow"])
def test_attention_bucketed_names_what_each_fresh_batch_compiles(name, vjp):
    """JAX compiles one program per bucket shape, TensorFlow one per bucket count; a batch no bucket trims (every
    row full, or no row with work) runs the inner strategy's one call. Self-attention over the RNN gate's stream,
    then cross-attention with other key lengths and another key length."""
    require(name)
    fw = adapters.get(name)

    def run(i, ql, kvl=None, Tk=PROGRAM_T):
        kvl = ql if kvl is None else kvl
        q, k, v, cot = (fw.asarray(x) for x in qkv(ql, kvl, PROGRAM_T, Tk, 4, 2, 8, fill=0.0, seed=i))
        if vjp:
            return fw.attention_vjp(q, k, v, ql, kvl, cot, strategy="bucketed")
        return fw.attention(q, k, v, ql, kvl, strategy="bucketed")

    def keys(ql, kvl=None, Tk=PROGRAM_T):
        spec = {"device": "cpu"} if kvl is None else {"device": "cpu", "kv_lengths": kvl, "Tk": Tk}
        return fw.programs("attention", "bucketed", spec, ql, PROGRAM_T, vjp=vjp)

    stream = [*PROGRAM_STREAM, np.zeros(16, dtype=np.int64)]  # the last: no row with work (the inner call)
    news = compiles_as_named(fw, stream, keys, run)
    assert news[1] == 0 and sum(news) >= 3, news  # a repeated plan compiled nothing; the stream compiled
    Tk = 20  # cross-attention: other key lengths, another key length
    cross = [(L, np.minimum(np.roll(L, 3) + 2, Tk)) for L in PROGRAM_STREAM[:3]]
    news = compiles_as_named(fw, cross, lambda pair: keys(*pair, Tk), lambda i, pair: run(i, *pair, Tk))
    assert sum(news) >= 2, news


#: the stream's first batch with two steps fewer (52 valid steps, not 54): another count on the same rung of the
#: ladders (the loss's rounds both up to 64, the embedding's quarters to 56), so it compiles nothing new
NEAR = PROGRAM_STREAM[0] - np.eye(1, 16, dtype=np.int64)[0] * 2


@pytest.mark.parametrize("kind", ["softmax_ce", "sigmoid_bce"])
def test_jax_valid_only_loss_names_what_each_fresh_batch_compiles(kind):
    """One program per gathered row count on the ladder; a batch without padding runs the plain optax call."""
    require("jax")
    fw = adapters.get("jax")

    def run(i, L):
        x, z, _ = loss_case(kind, "right", "float32", lengths=L, maxlen=PROGRAM_T, dirty=False, seed=i)
        fw.masked_loss_vjp(fw.asarray(x), fw.asarray(z), L, kind=kind, strategy="valid_only")

    stream = [*PROGRAM_STREAM, NEAR]
    news = compiles_as_named(fw, stream, lambda L: fw.programs("loss", "valid_only", None, L, PROGRAM_T, vjp=True),
                             run)
    assert news[1] == news[-1] == 0 and sum(news) >= 4, news


@pytest.mark.parametrize("op", ["embed", "embedding_bag"])
def test_jax_segment_embedding_names_what_each_fresh_batch_compiles(op):
    """One program per packed length on the ladder; a batch without padding runs the plain lookup."""
    require("jax")
    fw = adapters.get("jax")
    table = fw.asarray(table_for(40, 6, seed=0, dtype="float32", nan_row=False))

    def run(i, L):
        tokens = tokens_for(L, PROGRAM_T, "right", seed=i, vocab=40, pad=-1)
        cot = cotangents_for(len(L), PROGRAM_T, 6, seed=i, dtype="float32")
        if op == "embed":
            fw.embed_vjp(tokens, table, L, cot["embed"], strategy="segment")
        else:
            fw.embedding_bag_vjp(tokens, table, L, cot["bag"], mode="mean", strategy="segment")

    stream = [*PROGRAM_STREAM, NEAR, np.zeros(16, dtype=np.int64)]  # the last: no valid token (packed length 0)
    news = compiles_as_named(fw, stream, lambda L: fw.programs("embedding", "segment", None, L, PROGRAM_T,
                                                               vjp=True), run)
    assert news[1] == news[-2] == 0 and sum(news) >= 4, news


def test_strategies_whose_programs_do_not_follow_the_lengths_name_none():
    """A strategy that compiles the same programs for every batch of a shape (or compiles nothing) has no planner
    to ask: `programs` is None, and the bench records no planner count for it."""
    L = PROGRAM_STREAM[0]
    for name, family, strategy, spec in (("jax", "loss", "optax", None), ("jax", "embedding", "take", None),
                                         ("jax", "attention", "einsum", {"device": "cpu"}),
                                         ("torch", "attention", "bucketed", {"device": "cpu"})):
        require(name)
        assert adapters.get(name).programs(family, strategy, spec, L, PROGRAM_T, vjp=True) is None, \
            (name, family, strategy)
