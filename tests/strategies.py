"""Hypothesis strategies for ragged batches: lengths (zero-length rows included), padded length, side, seed."""
from __future__ import annotations

from hypothesis import strategies as st

from adapters.spec import SIDES


@st.composite
def ragged_batches(draw, max_batch: int = 6, max_len: int = 7):
    """(lengths tuple, T >= max(lengths), side, seed)."""
    batch = draw(st.integers(1, max_batch))
    lengths = tuple(draw(st.lists(st.integers(0, max_len), min_size=batch, max_size=batch)))
    T = draw(st.integers(max(lengths), max_len + 2))
    side = draw(st.sampled_from(SIDES))
    seed = draw(st.integers(0, 2**16))
    return lengths, T, side, seed


@st.composite
def rnn_shapes(draw):
    """Small RNN sizes: (input_size, hidden_size, num_layers, bidirectional)."""
    return (draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 2)), draw(st.booleans()))


@st.composite
def attention_batches(draw, max_batch: int = 5, max_len: int = 6):
    """(q_lengths, kv_lengths or None (self-attention), Tq, Tk, causal, side, (Hq, Hkv), Dh, seed): zero-length
    rows, keyless valid queries (cross) and rows with one key all occur."""
    ql, Tq, side, seed = draw(ragged_batches(max_batch, max_len))
    Tq = max(Tq, 1)
    cross = draw(st.booleans())
    if cross:
        kvl = tuple(draw(st.lists(st.integers(0, max_len), min_size=len(ql), max_size=len(ql))))
        Tk = draw(st.integers(max(max(kvl), 1), max_len + 2))
    else:
        kvl, Tk = None, Tq
    causal = not cross and draw(st.booleans())
    heads = draw(st.sampled_from([(1, 1), (2, 2), (2, 1), (4, 2)]))
    return ql, kvl, Tq, Tk, causal, side, heads, draw(st.sampled_from([1, 4, 16])), seed


@st.composite
def loss_batches(draw, max_batch: int = 5, max_len: int = 6):
    """(lengths, T, classes (1 included), side, reduction, kind, label_axis, seed)."""
    from adapters.base import LOSS_REDUCTIONS
    from harness.families.loss import KINDS

    lengths, T, side, seed = draw(ragged_batches(max_batch, max_len))
    kind, label_axis = draw(st.sampled_from(KINDS))
    return (lengths, max(T, 1), draw(st.sampled_from([1, 2, 5])), side, draw(st.sampled_from(LOSS_REDUCTIONS)), kind,
            label_axis, seed)


@st.composite
def embedding_batches(draw, max_batch: int = 5, max_len: int = 6):
    """(lengths, T, vocab (1 included), dim, side, (op, mode), seed)."""
    from harness.families.embedding import VARIANTS

    lengths, T, side, seed = draw(ragged_batches(max_batch, max_len))
    return (lengths, T, draw(st.sampled_from([1, 2, 7])), draw(st.sampled_from([1, 3])), side,
            draw(st.sampled_from(VARIANTS)), seed)
