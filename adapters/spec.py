"""The contract's value types, the strategy unit, and the host-side helpers every adapter shares.

The one leaf of the project: it depends on NumPy only, never on another module of varlen and never on a framework.
`harness` re-exports the value types (`harness.RnnSpec` is this `RnnSpec`). Everything here is host-side NumPy.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

CELLS = ("rnn", "lstm", "gru")
SIDES = ("right", "left")
DEVICES = ("cpu", "gpu")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
#: floating dtypes an RNN / masked_mean input may have (by NumPy-style name)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
#: masked_loss's kinds and reductions (ARCHITECTURE.md, "Losses")
LOSS_KINDS = ("softmax_ce", "sigmoid_bce")
LOSS_REDUCTIONS = ("token_mean", "sequence_mean", "sum")
#: the embedding family's ops, and embedding_bag's reductions over each row's valid tokens
EMBEDDING_OPS = ("embed", "embedding_bag")
EMBEDDING_MODES = ("sum", "mean", "max")


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
    #: (variant, the primitive that runs for it) where that depends on the variant of the family's op (a loss's
    #: kind, "embed" or "embedding_bag"); `kernel` then names them all
    kernels: tuple[tuple[str, str], ...] = ()
    #: for a strategy whose compiled programs follow the lengths (a plan made on the host): (adapter, spec, lengths,
    #: T, vjp, compiled) -> the keys of the programs a batch of these lengths runs (`compiled`: the keys named for
    #: its shape before it), found by the planner the strategy itself runs, without compiling or running anything.
    #: A batch compiles the keys that no earlier batch of its shape brought (`adapters.base.Adapter.programs`).
    #: None: the same programs for every batch of a shape.
    programs: Callable[..., set] | None = None

    def kernel_for(self, variant: str | None = None) -> str:
        """The primitive that runs for `variant` (`kernel` where it does not depend on it)."""
        return dict(self.kernels).get(variant, self.kernel)


def kernel_fields(kernel: str | dict[str, str]) -> dict[str, Any]:
    """A `Strategy`'s kernel fields from one name, or from one name per variant ({"softmax_ce": ...,
    "sigmoid_bce": ...}: `kernel` joins them for listings, `kernels` keeps them apart for the records)."""
    if isinstance(kernel, str):
        return {"kernel": kernel}
    names = list(kernel.values())
    shared = os.path.commonprefix(names)
    head = shared[:shared.rfind("+ ") + 2] if "+ " in shared else ""  # "a + b", "a + c" -> "a + b | c"
    return {"kernel": head + " | ".join(n[len(head):] for n in names), "kernels": tuple(kernel.items())}


def gated_only(*alternatives: str) -> Callable[..., str | None]:
    """The precondition of a "saturated_gate" strategy: it needs a gate that can hold the state at exactly 0,
    which a tanh RNN lacks; the reason names the framework's `alternatives`."""
    def supports(adapter: Any, cell: str | None = None, **spec: Any) -> str | None:
        if cell == "rnn":
            return ("a tanh RNN has no gate to saturate (the state would move on padding); use "
                    + " or ".join(f"'{a}'" for a in alternatives))
        return None
    return supports


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


def check_size(what: str, value: Any) -> None:
    """A size keyword (head_dim) must be a non-negative integer (0 is legal: attention takes Dh=0)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")


#: family -> {keyword of `Adapter.strategies(family, **spec)`: its choices, or a check(keyword, value) function for
#: sizes}: every keyword a precondition of that family reads, and the only ones its callers may pass (the base
#: class's ops pass exactly these; `attention_spec` builds the attention row's), so a misspelled keyword or an
#: unknown value is an error instead of a spec the preconditions silently ignore. mode is None for "embed" (it has
#: no mode).
STRATEGY_SPEC: dict[str, dict[str, tuple | Callable[[str, Any], None]]] = {
    "rnn": {"cell": CELLS, "device": DEVICES, "dtype": FLOAT_DTYPES},
    "loss": {"kind": LOSS_KINDS, "reduction": LOSS_REDUCTIONS, "device": DEVICES, "dtype": FLOAT_DTYPES},
    "embedding": {"op": EMBEDDING_OPS, "mode": (*EMBEDDING_MODES, None), "device": DEVICES, "dtype": FLOAT_DTYPES},
    "attention": {"device": DEVICES, "dtype": FLOAT_DTYPES, "causal": (False, True), "gqa": (False, True),
                  "side": SIDES, "cross": (False, True), "head_dim": check_size},
}


def check_strategy_spec(family: str, spec: dict[str, Any]) -> None:
    """Every keyword of a strategy spec for `family` is one of its `STRATEGY_SPEC` keywords, with a value among
    that keyword's choices: a ValueError naming the keyword (and the accepted ones) or the value otherwise."""
    accepted = STRATEGY_SPEC.get(family, {})
    for key, value in spec.items():
        check_choice(f"{family} strategy spec keyword", key, list(accepted))
        if callable(accepted[key]):
            accepted[key](key, value)
        else:
            check_choice(key, value, accepted[key])


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


def no_padding(lengths: np.ndarray, maxlen: int) -> bool:
    """True when every row fills all `maxlen` >= 1 steps: a batch with no padding, where an exact strategy needs no
    mask (the embedding strategies then run their plain lookup and reductions: masking every step of a full
    batch cost 1.5-1.9x the plain lookup on this CPU, in every framework)."""
    return maxlen > 0 and bool(np.all(np.asarray(lengths) == maxlen))


def to_left_index(lengths: np.ndarray, maxlen: int) -> np.ndarray:
    """Gather index [B, T] that turns a right-padded row back into a left-padded one."""
    t = np.arange(maxlen)[None, :]
    lengths = np.asarray(lengths, dtype=np.int64)[:, None]
    return (t - (maxlen - lengths)) % max(maxlen, 1)


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


# ----------------------------------------------------------------------------------------------------------------
# Length bucketing, planned on the host, shared by every framework's "bucketed" strategy (each passes its own
# cost model: a step of its loop costs about as much as `step_cost` extra rows, a call `call_cost` row-steps).

MAX_BUCKETS = 4


def shape_ladder(limit: int, halves: bool = True, quarters: bool = False) -> np.ndarray:
    """Sizes a bucket may have along one axis: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and, with halves,
    1.5x them; with quarters also 1.25x and 1.75x: 4, 5, 6, 7, 8, 10, 12, 14, 16, ...), capped at `limit`, which is
    always on the ladder. Rounding up to it wastes < 50% (< 100% without halves, < 25% with quarters) and keeps the
    number of compiled shapes logarithmic in `limit`, whatever lengths the batches bring."""
    ladder = {limit}
    size = 1
    fractions = (0, 1, 2, 3) if quarters else (0, 2) if halves else (0,)
    while size < limit:
        ladder.update(v for v in (size + size * k // 4 for k in fractions) if v < limit)
        size *= 2
    return np.array(sorted(ladder), dtype=np.int64)


def inverse_map(idx: np.ndarray, n_src: int) -> np.ndarray:
    """The inverse of a row map that uses each source row at most once: where each source row went, or -1."""
    inv = np.full(n_src, -1, dtype=np.int64)
    used = idx >= 0
    inv[idx[used]] = np.flatnonzero(used)
    return inv


def round_up(values, ladder: np.ndarray) -> np.ndarray:
    """Each value rounded up to the smallest ladder entry >= it (values <= ladder[-1])."""
    return ladder[np.searchsorted(ladder, np.asarray(values), side="left")]


class Bucket(NamedTuple):
    """One bucket of a plan: the original indices of its rows (longest first) and its padded shape."""

    rows: np.ndarray  # int64 [n], n <= batch
    batch: int  # rows after padding with empty rows (on the batch ladder)
    steps: int  # trimmed time length (on the time ladder, >= the longest row, <= T)


def bucket_rows(bucket: Bucket, B: int) -> tuple[np.ndarray, bool]:
    """A bucket's rows padded to its batch (with its first row, run as an empty row: length 0) and whether they are
    anything but the whole batch in order (the bucket's program then gathers them)."""
    rows = np.concatenate([bucket.rows, np.full(bucket.batch - bucket.rows.size, bucket.rows[0])])
    return rows, not np.array_equal(rows, np.arange(B))


def whole_batch(plan: list[Bucket], B: int, T: int) -> bool:
    """Whether a bucket plan is one bucket of every row, in order, over every step: nothing to gather or trim, so
    the plain strategy's own call does the same work."""
    return len(plan) == 1 and plan[0].steps == T and np.array_equal(plan[0].rows, np.arange(B))


def plan_buckets(lengths: np.ndarray, T: int, max_buckets: int = MAX_BUCKETS, step_cost: float = 2.0,
                 call_cost: float = 64.0) -> list[Bucket]:
    """Split a batch into <= max_buckets buckets of rows sorted by length, minimising the modelled cost
    sum(call_cost + steps * (step_cost + batch)), where each bucket's batch and steps are rounded up their ladders.

    A dynamic program over cut points of the sorted rows (`cut_points`; O(k B^2) in NumPy up to PLAN_ROWS rows).
    One bucket keeps the rows in their original order (nothing to permute back). Zero-length rows cost nothing and
    ride in the last bucket.
    """
    B = lengths.size
    order = np.argsort(-lengths, kind="stable")
    longest = lengths[order]
    steps = round_up(np.clip(longest, min(T, 1), None), shape_ladder(T)) if T else np.zeros(B, np.int64)
    cuts = cut_points(steps)
    width = cuts[None, :] - cuts[:, None]  # [i, j] -> rows cuts[i]..cuts[j]
    batch = np.zeros_like(width)
    batch[width > 0] = round_up(width[width > 0], shape_ladder(B, halves=False))
    m = cuts.size - 1
    cost = np.full((m + 1, m + 1), np.inf)
    cost[:m] = np.where(width[:m] > 0, call_cost + steps[cuts[:m], None] * (step_cost + batch[:m]), np.inf)
    bounds = cheapest_cuts(cost, max_buckets)
    if len(bounds) == 2:
        return [Bucket(np.arange(B), B, int(steps[0]))]
    return [Bucket(order[cuts[i]:cuts[j]], int(batch[i, j]), int(steps[cuts[i]])) for i, j in zip(bounds, bounds[1:])]


def cheapest_cuts(cost: np.ndarray, max_parts: int) -> list[int]:
    """Cut points 0 = c_0 < c_1 < ... < c_k = n (k <= max_parts) minimising sum(cost[c_i, c_i+1]), for a cost
    matrix [n+1, n+1] (inf where a part may not go from i to j). A dynamic program, one NumPy min per part count
    (O(k n^2) work, O(k) Python steps); ties go to the fewest parts."""
    n = cost.shape[0] - 1
    best, cuts, totals = np.where(np.arange(n + 1) == 0, 0.0, np.inf), [], []
    for _ in range(max(1, max_parts)):
        through = best[:, None] + cost
        cuts.append(through.argmin(axis=0))
        best = through.min(axis=0)
        totals.append(best[n])
    bounds = [n]
    for j in range(int(np.argmin(totals)), -1, -1):
        bounds.append(int(cuts[j][bounds[-1]]))
    return bounds[::-1]


#: a planner cuts between any two rows of a batch up to this many rows; above it only where the sorted rows' key
#: changes (see `cut_points`), so planning stays O(runs^2) instead of O(rows^2) (4096 rows: 2.8 s -> ms)
PLAN_ROWS = 256


def cut_points(keys: np.ndarray, coarse: np.ndarray | None = None) -> np.ndarray:
    """Where a planner may cut rows sorted so that equal keys are adjacent: 0, 1, ..., n for up to PLAN_ROWS rows,
    else the starts of the runs of equal `keys` (and n), or of equal `coarse` keys (the same rows' keys rounded up
    a ladder, adjacent too) when there are still more than PLAN_ROWS runs. Cutting inside a run of equal keys never
    pays when a bucket's cost is linear in its rows for a given shape: moving the run's rows into the cheaper of
    the two buckets costs no more and can only shrink the other's shape (exact up to batch-ladder rounding)."""
    n = keys.size
    if n <= PLAN_ROWS:
        return np.arange(n + 1)
    for k in (keys, coarse):
        if k is None:
            break
        runs = np.concatenate([[0], np.flatnonzero(k[1:] != k[:-1]) + 1, [n]])
        if runs.size - 1 <= PLAN_ROWS:
            break
    return runs


class Segment(NamedTuple):
    """One time segment of a time-sliced run: steps [start, stop) of the rows sorted by descending length, of
    which the first `rows` (those longer than `start`) are still running."""

    start: int
    stop: int
    rows: int


MAX_SEGMENTS = 16


def plan_segments(sorted_lengths: np.ndarray, max_segments: int = MAX_SEGMENTS, step_cost: float = 4.0,
                  call_cost: float = 64.0, cuts: np.ndarray | None = None,
                  rows_ladder: np.ndarray | None = None) -> list[Segment]:
    """Cut the time axis of non-empty rows sorted by descending length into <= max_segments segments, each
    starting where some row ends, minimising sum(call_cost + (stop - start) * (rows + step_cost)): a segment runs
    every row longer than its start, so rows that end inside it run on (padded work) until its stop. Cutting at
    every distinct length is the exact "active batch constant" schedule; fewer cuts trade padded row-steps for
    fewer calls. `sorted_lengths` must be non-increasing and positive.

    For compiled frameworks, `cuts` restricts the cut positions (e.g. a `shape_ladder`; the last segment then
    stops at the smallest cut >= the longest row) and `rows_ladder` rounds each segment's row count up (the extra
    rows are rows that already ended, or empty ones), so the segment shapes repeat across batches."""
    longest = int(sorted_lengths[0])
    if cuts is None:
        ends = np.unique(sorted_lengths)  # ascending distinct lengths: the possible segment stops
    else:
        cuts = np.asarray(cuts)
        ends = np.concatenate([cuts[(cuts > 0) & (cuts < longest)], [cuts[np.searchsorted(cuts, longest)]]])
    starts = np.concatenate([[0], ends])  # candidate cut positions c_0 = 0 < c_1 < ... < c_m (>= longest)
    active = (sorted_lengths[None, :] > starts[:, None]).sum(axis=1)  # rows running from each cut
    if rows_ladder is not None:
        active = round_up(active, rows_ladder)
    span = starts[None, :] - starts[:, None]  # [i, j] -> c_j - c_i
    cost = np.where(span > 0, call_cost + span * (active[:, None] + step_cost), np.inf)
    bounds = cheapest_cuts(cost, max_segments)
    return [Segment(int(starts[i]), int(starts[j]), int(active[i])) for i, j in zip(bounds, bounds[1:])]


def ladder_segments(lengths: np.ndarray, T: int, max_segments: int, step_cost: float, call_cost: float,
                    compiled=(), reuse: float = 0.0) -> tuple:
    """A compiled framework's segment plan of a [B, T] batch: `plan_segments` over its non-empty rows, cuts on the
    time ladder and row counts up the batch ladder of powers of two (so plans repeat across batches and compiles
    stay few); () when nothing runs (no step or no non-empty row). Given the plans `compiled` for the batch's shape
    so far, a batch whose own plan is not among them runs one of them that covers it within `reuse` of its own
    plan's modelled cost (`reuse_segments`); an own plan of one segment of the whole batch is kept (the strategy
    runs its plain call there)."""
    lengths = np.asarray(lengths)
    if not T or not np.any(lengths):
        return ()
    plan = tuple(plan_segments(np.sort(lengths[lengths > 0])[::-1], max_segments=max_segments, step_cost=step_cost,
                               call_cost=call_cost, cuts=shape_ladder(T),
                               rows_ladder=shape_ladder(lengths.size, halves=False)))
    if whole_segment(plan, lengths.size, T):
        return plan
    return reuse_segments(lengths, plan, compiled, step_cost, call_cost, reuse)


def segments_cost(plan: tuple, step_cost: float, call_cost: float) -> float:
    """A segment plan's modelled cost, `plan_segments`' objective: sum(call_cost + steps * (rows + step_cost))."""
    return float(sum(call_cost + (s.stop - s.start) * (s.rows + step_cost) for s in plan))


def reuse_segments(lengths: np.ndarray, plan: tuple, compiled, step_cost: float, call_cost: float,
                   tolerance: float) -> tuple:
    """The segment plan a compiled framework runs for a batch of `lengths` whose own plan is `plan`, given the plans
    `compiled` for its shape so far: `plan` itself where it is among them, else the cheapest of them that covers
    the batch (at each step at least as many rows as are still running there, the rows sorted by descending
    length, and steps up to the longest row: exact, the extra rows and steps are masked and their carry does not
    move) if its modelled cost (`segments_cost`) is within `tolerance` of `plan`'s, else `plan` (a new compile).
    Own plans follow every batch's lengths and rarely repeat on skewed lengths (zipf, B=64 T=128: 197 new plans
    over 300 fresh batches); reusing a covering one cuts what a stream compiles for a little more work. Equal
    costs are ordered by the plans themselves, so the choice does not depend on the order `compiled` lists them in
    (the runtime's compiled set and the planner's keys give the same plan)."""
    compiled = set(compiled)
    if not compiled or plan in compiled:
        return plan
    limit = (1.0 + tolerance) * segments_cost(plan, step_cost, call_cost)
    lengths = np.asarray(lengths)
    top = int(lengths.max(initial=0))
    running = (lengths[None, :] > np.arange(top)[:, None]).sum(axis=1)  # [top]: rows still running at each step
    best = None
    for cost, other in sorted((segments_cost(p, step_cost, call_cost), p) for p in compiled):
        if cost > limit:
            break
        if other[-1].stop >= top and np.all(np.repeat([s.rows for s in other],
                                                      [s.stop - s.start for s in other])[:top] >= running):
            best = other
            break
    return plan if best is None else best


def whole_segment(plan: tuple, B: int, T: int) -> bool:
    """Whether a segment plan is one segment of every row over every step: the plain strategy's own call does
    the same work, without the sort and gathers."""
    return len(plan) == 1 and plan[0].rows == B and plan[0].stop == T


class RowPack(NamedTuple):
    """Several sequences end to end in each row of a [rows, steps] slot grid (flat slot = row * steps + position),
    separator slots between two sequences of a row (one, or none: `pack_rows`'s gap), the rest of a row padding.
    Maps between the right-padded [B, T] batch (flat b * T + t) and the slots; -1 where there is nothing (a
    separator or padding slot, a padded step, an empty row)."""

    rows: int  # rows of the grid (on the rows ladder)
    steps: int  # its row length (on the time ladder, >= the longest sequence)
    src: np.ndarray  # [rows * steps] the (b, t) each slot holds, -1 on separators and padding
    mirror: np.ndarray  # [rows * steps] the slot of the same sequence holding the mirrored step (t -> L-1-t);
    #                     an involution, the identity off the sequences: the layout of the reverse direction
    back: np.ndarray  # [B * T] the slot of each (b, t), -1 on padding: the inverse of src
    last: np.ndarray  # [B] the slot of each sequence's last step, -1 for an empty row
    used: int  # rows the packing filled (<= rows)


def pack_rows(lengths: np.ndarray, T: int, gap: int = 1, ladder: bool = True) -> RowPack | None:
    """Pack the non-empty sequences of a [B, T] batch end to end into few rows: first-fit decreasing into rows as
    long as the longest sequence rounded up the time ladder, a sequence needing its length plus `gap` separator
    slots unless it opens a row (0 where the state is reset at a sequence's first step instead of on a
    separator); the row count rounded up a fine ladder (`shape_ladder`, quarters) so that grids repeat across
    batches. With `ladder` False (an eager framework: no compiled shape to reuse) the grid is exactly the
    longest sequence by the rows filled. None when nothing runs (no step or no non-empty row)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    B = lengths.size
    if not T or not np.any(lengths):
        return None
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] > 0]
    steps = int(round_up(lengths[order[0]], shape_ladder(T))) if ladder else int(lengths[order[0]])
    fill = np.zeros(order.size, dtype=np.int64)  # slots taken in each row opened so far (at most one per sequence)
    start, row_of, opened = np.empty(B, np.int64), np.empty(B, np.int64), 0
    for b in order:
        n = lengths[b]
        room = np.flatnonzero(fill[:opened] + gap + n <= steps)
        j = int(room[0]) if room.size else opened
        opened += j == opened
        start[b] = fill[j] + gap * (fill[j] > 0)  # after the separator unless it opens the row
        fill[j] = start[b] + n
        row_of[b] = j
    rows = int(round_up(opened, shape_ladder(B, quarters=True))) if ladder else opened
    n = lengths[order]
    first = row_of[order] * steps + start[order]  # each sequence's first slot
    t = np.arange(T)[None, :]
    valid = t < n[:, None]
    slot = (first[:, None] + t)[valid]
    src = np.full(rows * steps, -1, dtype=np.int64)
    src[slot] = (order[:, None] * T + t)[valid]
    mirror = np.arange(rows * steps)
    mirror[slot] = (first[:, None] + n[:, None] - 1 - t)[valid]
    back = np.full(B * T, -1, dtype=np.int64)
    back[src[slot]] = slot
    last = np.full(B, -1, dtype=np.int64)
    last[order] = first + n - 1
    return RowPack(rows, steps, src, mirror, back, last, opened)


def memo_by_lengths(plan: Callable, maxsize: int = 16) -> Callable:
    """`plan(lengths, *keys)` remembered for the last `maxsize` distinct (int64 lengths, *keys): a strategy's run
    and its kernel name (asked for apart) plan once per batch, and a batch timed again plans nothing (and copies no
    index to the device). A plan's arrays are made read-only, as they are shared; a list comes back as a tuple.
    The returned function's `cache_clear()` forgets them all."""

    @lru_cache(maxsize=maxsize)
    def cached(raw: bytes, *keys):
        result = plan(np.frombuffer(raw, dtype=np.int64), *keys)
        if result is None:
            return None
        for part in result:
            if isinstance(part, np.ndarray):
                part.flags.writeable = False
        return result if isinstance(result, tuple) else tuple(result)

    def remembered(lengths, *keys):
        return cached(np.asarray(lengths, dtype=np.int64).tobytes(), *keys)

    remembered.cache_clear = cached.cache_clear
    return remembered


_packs = memo_by_lengths(pack_rows, maxsize=64)


def remembered_pack(lengths: np.ndarray, T: int, gap: int = 1) -> RowPack | None:
    """`pack_rows`, remembered per batch (the last 64 distinct ones; `memo_by_lengths`)."""
    return _packs(lengths, T, gap)


def forget_packings() -> None:
    """Empty `remembered_pack`'s memory (an adapter's `clear_compiled`: a case's first call plans afresh)."""
    _packs.cache_clear()


def unbucket_index(plan: list[Bucket]) -> np.ndarray:
    """For the buckets' results concatenated along the batch axis (each padded to its `batch` rows), the position
    of every original row: gathering with it puts each row back at its original index."""
    where = np.empty(sum(b.rows.size for b in plan), np.int64)
    offset = 0
    for b in plan:
        where[b.rows] = offset + np.arange(b.rows.size)
        offset += b.batch
    return where


def attention_spec(device: str, dtype: str, causal: bool, Hq: int, Hkv: int, side: str, q_lengths: np.ndarray,
                   kv_lengths: np.ndarray, Tq: int, Tk: int, head_dim: int) -> dict[str, Any]:
    """What the attention strategies' preconditions read: device, dtype, causal, gqa (Hq != Hkv), side, cross
    (other key lengths or another key length than the queries') and head_dim (Dh)."""
    return dict(device=device, dtype=dtype, causal=bool(causal), gqa=Hq != Hkv, side=side,
                cross=Tk != Tq or not np.array_equal(q_lengths, kv_lengths), head_dim=int(head_dim))


class AttnBucket(NamedTuple):
    """One bucket of an attention plan: the original indices of its rows (most work first) and its shape."""

    rows: np.ndarray  # int64 [n], n <= batch
    batch: int  # rows after padding with empty rows (on the batch ladder when the plan uses ladders)
    q_steps: int  # trimmed query length (>= the bucket's longest query, <= Tq)
    kv_steps: int  # trimmed key/value length (>= its longest key row, <= Tk)


def plan_attention(q_lengths: np.ndarray, kv_lengths: np.ndarray, Tq: int, Tk: int, *,
                   max_buckets: int = MAX_BUCKETS, call_cost: float = 0.0, token_cost: float = 0.0,
                   ladders: bool = True) -> list[AttnBucket]:
    """Split the rows that do attention work (a valid query and a valid key) into <= max_buckets buckets, rows
    sorted by their work q_len x kv_len, minimising sum(call_cost + batch * (q_steps * kv_steps + token_cost *
    (q_steps + kv_steps))): attention's work is quadratic in the trimmed lengths, plus a linear part (the masks,
    the copies, the output) and a fixed cost per call, all in units of one (row, query, key) score. With
    `ladders` (compiled frameworks) a bucket's batch and lengths are rounded up their ladders (with halves: a
    padded row costs a whole row of scores, unlike an RNN step's few) so compiled shapes stay few. Rows with no
    work are in no bucket (their outputs and gradients are 0); an all-work batch that one untrimmed bucket serves
    best keeps its original row order. [] when no row has work."""
    ql, kvl = np.asarray(q_lengths, np.int64), np.asarray(kv_lengths, np.int64)
    B = ql.size
    work = np.flatnonzero((ql > 0) & (kvl > 0))
    if not work.size:
        return []
    # most work first, rows with equal (q_len, kv_len) adjacent (`cut_points`); with too many distinct pairs, the
    # pairs rounded up the ladders first
    pair = ql[work] * (Tk + 1) + kvl[work]
    order = np.lexsort((pair, -ql[work] * kvl[work]))
    cuts = cut_points(pair[order])
    if cuts.size - 1 > PLAN_ROWS:
        q, k = round_up(ql[work], shape_ladder(Tq)), round_up(kvl[work], shape_ladder(Tk))
        order = np.lexsort((pair, -ql[work] * kvl[work], q * (Tk + 1) + k, -q * k))
        cuts = cut_points((q * (Tk + 1) + k)[order])
    order = work[order]
    m = cuts.size - 1
    upper = np.arange(m)[None, :] >= np.arange(m)[:, None]  # [i, j]: run j is in a bucket starting at run i
    longest = [np.maximum.accumulate(np.where(upper, np.maximum.reduceat(x[order], cuts[:-1])[None, :], 0), axis=1)
               for x in (ql, kvl)]
    width = cuts[None, 1:] - cuts[:-1, None]  # [i, j] -> rows of runs i..j
    if ladders:
        longest = [round_up(x, shape_ladder(T)) for x, T in zip(longest, (Tq, Tk))]
        width = np.where(upper, round_up(np.clip(width, 1, None), shape_ladder(B)), 0)
    qs, ks = longest
    cost = np.full((m + 1, m + 1), np.inf)
    cost[:m, 1:] = np.where(upper, call_cost + width * (qs * ks + token_cost * (qs + ks)), np.inf)
    bounds = cheapest_cuts(cost, max_buckets)
    plan = [AttnBucket(order[cuts[i]:cuts[j]], int(width[i, j - 1]), int(qs[i, j - 1]), int(ks[i, j - 1]))
            for i, j in zip(bounds, bounds[1:])]
    if len(plan) == 1 and work.size == B and (plan[0].q_steps, plan[0].kv_steps) == (Tq, Tk):
        return [AttnBucket(np.arange(B), B, Tq, Tk)]
    return plan


def attention_unbucket_index(plan: list[AttnBucket], B: int, T: int, side: str, kv: bool = False) -> np.ndarray:
    """int64 [B * T]: for the buckets' results (query-shaped, or key-shaped with `kv`) each flattened to
    [batch * steps, ...] and concatenated, followed by one zero entry, the flat position that every original
    (row, step) takes its value from: its bucket's entry inside the bucket's trimmed window, else the zero."""
    index = np.full((B, T), -1, np.int64)
    offset = 0
    for b in plan:
        s = b.kv_steps if kv else b.q_steps
        start = 0 if side == "right" else T - s
        index[b.rows, start:start + s] = offset + np.arange(b.rows.size)[:, None] * s + np.arange(s)[None, :]
        offset += b.batch * s
    index[index < 0] = offset
    return index.reshape(-1)


def computes_only(kind: str):
    """The precondition of a loss strategy that computes one `kind` ("softmax_ce" or "sigmoid_bce") only."""
    def supports(adapter, **spec) -> str | None:
        return None if spec.get("kind", kind) == kind else f"this strategy computes {kind} only"
    return supports
