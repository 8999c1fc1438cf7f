"""The contract's value types, the strategy unit, and the host-side helpers every adapter shares.

The one leaf of the project: it depends on NumPy only, never on another module of varlen and never on a framework.
`harness` re-exports the value types (`harness.RnnSpec` is this `RnnSpec`). Everything here is host-side NumPy.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

CELLS = ("rnn", "lstm", "gru")
SIDES = ("right", "left")
DEVICES = ("cpu", "gpu")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
#: floating dtypes an RNN / masked_mean input may have (by NumPy-style name)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class Unsupported(ValueError):
    """A strategy's precondition (`supports`) excludes this input/device/dtype; the message says why."""


def _always(adapter: Any, **spec: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Strategy:
    """One exact way to compute one op family in one framework: the unit every adapter declares.

    `supports(adapter, **spec) -> None | reason` is the precondition (Keras's `cudnn_ok` idea): None when the
    strategy may run for this spec/device/dtype, else a one-line reason. `forward` and `vjp` take the adapter and
    the family's validated arguments (see `adapters.base`); their results carry the name of the kernel that ran.
    Dispatch is a table lookup in the framework module's `STRATEGIES` dict (default first).
    """

    name: str
    forward: Callable[..., Any]
    vjp: Callable[..., Any]
    supports: Callable[..., str | None] = _always
    doc: str = ""
    #: the framework primitive that runs, where it does not depend on the input (e.g. "F.embedding_bag");
    #: families whose kernel depends on the input (RNN: cuDNN or not) return it in their result instead
    kernel: str = ""


def strategy_table(*units: Strategy) -> dict[str, Strategy]:
    """name -> unit, in declaration order (the first is the default)."""
    return {u.name: u for u in units}


@dataclass(frozen=True)
class RnnSpec:
    """Shape of a (possibly stacked, possibly bidirectional) recurrent network.

    cell: "rnn" (tanh), "lstm" or "gru"; the weights follow PyTorch's layout and gate order.
    """

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.cell, str) or self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; expected one of {CELLS}")
        for field in ("input_size", "hidden_size", "num_layers"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RnnSpec.{field} must be a positive integer, got {value!r}")
        if not isinstance(self.bidirectional, (bool, np.bool_)):
            raise ValueError(f"RnnSpec.bidirectional must be a bool, got {self.bidirectional!r}")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions


class RnnOut(NamedTuple):
    """Result of `Adapter.rnn`: arrays are the adapter's native type (use `adapter.to_numpy`).

    outputs [B, T, D*H] aligned like the input, 0 at padded steps; h_n / c_n [num_layers*D, B, H] at each
    sequence's true end (c_n only for LSTM); kernel names the code path that actually ran.
    """

    outputs: Any
    h_n: Any
    c_n: Any
    kernel: str


class AttnOut(NamedTuple):
    """Result of `Adapter.attention`: outputs [B, Tq, Hq, Dh] in the adapter's native type, aligned like q and
    exactly 0 at padded query steps; kernel names the code path that actually ran (e.g. "sdpa-flash-cpu")."""

    outputs: Any
    kernel: str


class Packed(NamedTuple):
    """A packed batch with PyTorch `PackedSequence` semantics (see ARCHITECTURE.md)."""

    data: Any
    batch_sizes: Any
    sorted_indices: Any
    unsorted_indices: Any


def init_params(spec: RnnSpec, seed: int = 0, dtype: str = "float32") -> list[list[dict[str, np.ndarray]]]:
    """Deterministic weights in PyTorch's layout: params[layer][direction] = {w_ih, w_hh, b_ih, b_hh}.

    Uniform in [-1/sqrt(H), 1/sqrt(H)] like PyTorch's default, drawn from one seeded generator in a fixed order.
    """
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(spec.hidden_size)
    gh = spec.gates * spec.hidden_size
    params = []
    for layer in range(spec.num_layers):
        dirs = []
        for _ in range(spec.num_directions):
            shapes = {
                "w_ih": (gh, spec.layer_input_size(layer)),
                "w_hh": (gh, spec.hidden_size),
                "b_ih": (gh,),
                "b_hh": (gh,),
            }
            dirs.append({k: rng.uniform(-bound, bound, s).astype(dtype) for k, s in shapes.items()})
        params.append(dirs)
    return params


def map_params(fn, params):
    """Apply `fn` to every array of a params nest, keeping the nesting."""
    return [[{k: fn(v) for k, v in d.items()} for d in layer] for layer in params]


# ----------------------------------------------------------------------------------------------------------------
# Validation shared by every adapter: the base class calls these before dispatching to a framework.


def check_choice(what: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {list(choices)}")


def check_lengths(lengths: np.ndarray, *, batch: int | None = None, maxlen: int | None = None) -> np.ndarray:
    """Validate a 1-D integer lengths array (already on the host) and return it as int64."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths.shape}")
    if lengths.dtype == bool or not (np.issubdtype(lengths.dtype, np.integer) or lengths.size == 0):
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if batch is not None and lengths.shape[0] != batch:
        raise ValueError(f"lengths has {lengths.shape[0]} entries but the batch has {batch}")
    if lengths.size == 0:
        raise ValueError("empty batch: lengths has no entries")
    neg = np.flatnonzero(lengths < 0)
    if neg.size:
        raise ValueError(f"negative length {int(lengths[neg[0]])} at index {int(neg[0])}")
    if maxlen is not None:
        over = np.flatnonzero(lengths > maxlen)
        if over.size:
            i = int(over[0])
            raise ValueError(f"length {int(lengths[i])} at index {i} exceeds the padded length T={maxlen}")
    return lengths.astype(np.int64)


def check_maxlen(maxlen: Any) -> int:
    if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 0:
        raise ValueError(f"maxlen must be a non-negative integer, got {maxlen!r}")
    return int(maxlen)


def valid_mask(lengths: np.ndarray, maxlen: int, side: str = "right") -> np.ndarray:
    """bool [B, maxlen], True at valid steps (host-side NumPy; adapters use it only to build index arrays)."""
    t = np.arange(maxlen)[None, :]
    lengths = np.asarray(lengths)[:, None]
    return t < lengths if side == "right" else t >= maxlen - lengths


def to_right_index(lengths: np.ndarray, maxlen: int, side: str) -> np.ndarray:
    """Gather index [B, T] that moves each row's valid steps to the front (right padding) keeping order.

    For side="right" it is the identity. It is its own inverse's complement: `to_left_index` undoes it.
    """
    t = np.arange(maxlen)[None, :]
    lengths = np.asarray(lengths, dtype=np.int64)[:, None]
    if side == "right":
        return np.broadcast_to(t, (lengths.shape[0], maxlen)).copy()
    return (t + maxlen - lengths) % max(maxlen, 1)


def to_left_index(lengths: np.ndarray, maxlen: int) -> np.ndarray:
    """Gather index [B, T] that turns a right-padded row back into a left-padded one."""
    t = np.arange(maxlen)[None, :]
    lengths = np.asarray(lengths, dtype=np.int64)[:, None]
    return (t - (maxlen - lengths)) % max(maxlen, 1)


def reverse_index(lengths: np.ndarray, maxlen: int) -> np.ndarray:
    """Gather index [B, T] reversing each right-padded row within its own length; padding stays in place."""
    t = np.arange(maxlen)[None, :]
    lengths = np.asarray(lengths, dtype=np.int64)[:, None]
    return np.where(t < lengths, lengths - 1 - t, t)


def pack_order(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted_indices, unsorted_indices, batch_sizes) of PyTorch's packing: stable sort on descending length."""
    lengths = np.asarray(lengths, dtype=np.int64)
    sorted_indices = np.argsort(-lengths, kind="stable")
    unsorted_indices = np.empty_like(sorted_indices)
    unsorted_indices[sorted_indices] = np.arange(sorted_indices.size)
    maxlen = int(lengths.max()) if lengths.size else 0
    batch_sizes = (lengths[None, :] > np.arange(maxlen)[:, None]).sum(axis=1).astype(np.int64)
    return sorted_indices, unsorted_indices, batch_sizes


def lengths_from_batch_sizes(batch_sizes: np.ndarray, sorted_indices: np.ndarray) -> np.ndarray:
    """Each original row's length from a packing's batch_sizes and sorted_indices (the inverse of `pack_order`)."""
    batch_sizes = np.asarray(batch_sizes, dtype=np.int64)
    sorted_indices = np.asarray(sorted_indices, dtype=np.int64)
    lengths = np.zeros(sorted_indices.size, dtype=np.int64)
    lengths[sorted_indices] = (batch_sizes[None, :] > np.arange(sorted_indices.size)[:, None]).sum(axis=1)
    return lengths


def packed_rows(lengths: np.ndarray, sorted_indices: np.ndarray, maxlen: int, side: str) -> np.ndarray:
    """Flat index (b*T + t) of each packed row: time-major over the sorted batch, valid steps only."""
    lengths = np.asarray(lengths, dtype=np.int64)
    sorted_lengths = lengths[sorted_indices]
    steps, ranks = np.nonzero(np.arange(maxlen)[:, None] < sorted_lengths[None, :])
    b = np.asarray(sorted_indices)[ranks]
    return b * maxlen + (steps if side == "right" else steps + maxlen - lengths[b])
