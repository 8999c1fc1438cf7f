"""PyTorch masked RNNs: seven strategy units over one canonical (PyTorch-layout) weight nest.

- "packed" (default): `pack_padded_sequence` -> `nn.LSTM`/`GRU`/`RNN` -> `pad_packed_sequence` on the non-empty
  rows (PyTorch refuses length 0); weights are copied into a cached module (cuDNN's flattened buffer kept) and
  reloaded only when they changed. Kernel: "cudnn" on GPU, "onednn" for float32 LSTM batches whose non-empty rows
  all have one length (aten unwraps uniform batch_sizes to the dense oneDNN kernel), else "aten-cpu".
- "masked_loop": the cell written out per time step, the carry advanced only at valid steps (`torch.where`).
- "saturated_gate" (LSTM/GRU): padding first plus an indicator input that pins a gate, one fused padded call.
- "bucketed": rows sorted into <= 4 length buckets (cost model), each run trimmed by saturated_gate / packed.
- "time_sliced": rows sorted by length, the fused kernel over <= 16 time segments with the state carried across;
  rows that end inside a segment run on, masked (LSTM: c frozen by an indicator input). Both cost models are per
  device: on CUDA a call costs ~160 steps and rows are nearly free (`_CUDA_COST`, from an H200), so a batch of up
  to ~1000 rows runs as one call over its longest row's steps.
- "graph_loop" (GPU): masked_loop's step loop captured once per shape into a CUDA graph and replayed.
- "concat_rows" (LSTM/GRU): the non-empty sequences first-fit end to end into few rows, one fused padded call per
  layer and direction over that grid (oneDNN / cuDNN / aten); indicator inputs reset the state to exactly 0
  between sequences (LSTM i and f shut; GRU z and r shut, b_in cancelled). The fused kernel outputs h only, so
  each LSTM sequence is followed by a hold slot (i, o shut, f open: c kept, h = 0) and a read-out slot (o open,
  f = sigmoid(-8) whatever the biases, less on grids over ~3000 steps: h = tanh(f c), |f c| < 1), and
  c_n = atanh(h) / f. Unlike time_sliced it runs the
  longest sequence's steps once for ~a third of the rows (lognormal): B=64 T=128 H=128 LSTM fwd+bwd on 2 CPU
  cores, 12.0 vs 14.9 ms (lognormal, a 21x130 grid), 6.0 vs 7.8 ms (zipf, 11x90). Kernel "rows[<rows>x<steps>]x
  <fused kernel>"; where packing leaves one sequence per row, saturated_gate's call runs the batch.
Left padding is realigned to the right (the shared `Adapter.realign`) around all of them.
"""
from __future__ import annotations

import collections
import functools
import math
from typing import Any

import numpy as np

from adapters.spec import (
    RnnOut,
    RnnSpec,
    Strategy,
    cheapest_cuts,
    cut_points,
    gated_only,
    inverse_map,
    map_params,
    memo_by_lengths,
    pack_rows,
    plan_segments,
    round_up,
    shape_ladder,
    strategy_table,
)

_TORCH_KEYS = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}


def torch_name(key: str, layer: int, direction: int) -> str:
    """The nn.RNN/LSTM/GRU parameter name of canonical `key` ("w_ih", ...) at (layer, direction)."""
    return f"{_TORCH_KEYS[key]}_l{layer}{'_reverse' if direction else ''}"


def to_torch_names(params: Any) -> dict[str, Any]:
    """Canonical nest -> {torch parameter name: array}. PyTorch's layout is the canonical one: naming only."""
    return {torch_name(k, layer, d): v for layer, dirs in enumerate(params) for d, p in enumerate(dirs)
            for k, v in p.items()}


def from_torch_names(spec: RnnSpec, named: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """{torch parameter name: array} -> canonical nest (the inverse of `to_torch_names`)."""
    return [[{k: named[torch_name(k, layer, d)] for k in _TORCH_KEYS} for d in range(spec.num_directions)]
            for layer in range(spec.num_layers)]


#: pre-activation added on padded steps: sigmoid(-1e4) and 1 - sigmoid(1e4) are exactly 0 in every float dtype,
#: and 1e4 fits float16. A test monkeypatches it weaker to prove the comparison catches a leaky gate.
_SATURATION = 1e4
#: cell -> {gate index in PyTorch's order: sign}: LSTM i-gate shut (i = 0 keeps c = h = 0), GRU z-gate open
#: (z = 1 keeps h = its initial 0)
_SATURATED_GATE = {"lstm": {0: -1.0}, "gru": {1: 1.0}}
#: time_sliced's LSTM cell-state freeze: input gate shut (i = 0), forget gate open (f = 1): c_t = 1 * c + 0 * g
_FROZEN_CELL = {0: -1.0, 1: 1.0}
#: (step, call) of the split strategies on CUDA, in row-steps, from an H200 (torch 2.11, cuDNN, B=64 T=128 H=128
#: LSTM forward + backward): the whole batch in one call took 2.53 ms, 2 time segments running 88 steps in all
#: (zipf) 3.65 ms, so a call ~1.45 ms and a step ~8.4 us whatever its rows (latency-bound: a step costs what ~1024
#: rows do, a call what ~160 steps do); 2 segments over 128 steps (lognormal) took 4.81 ms, 3-4 buckets (120-252
#: steps in all) 8.8-10.9 ms, the GRU alike. Since a step costs the same for any row count up to ~1000 rows, cutting
#: rows away saves little and every cut costs a call (buckets also run their steps one bucket after another): at
#: such batches both plans are one call over the longest row's steps.
_CUDA_COST = (1024.0, 160 * 1024.0)
#: bucket cost model, in row-steps: a bucket of b rows padded to t steps costs t * (b + step) + call, with
#: (cell, on CUDA) -> (step, call): on CPU measured at H=128 (fwd+bwd): oneDNN's LSTM step costs ~2-4 rows of
#: work, aten's GRU/RNN step (a dozen small autograd ops) ~12-16 rows; a call (weight reorders, gathers) ~64
#: row-steps; on CUDA `_CUDA_COST`
_BUCKET_COST = {("lstm", False): (4.0, 64.0), ("gru", False): (16.0, 64.0), ("rnn", False): (16.0, 64.0),
                ("lstm", True): _CUDA_COST, ("gru", True): _CUDA_COST, ("rnn", True): _CUDA_COST}
_MAX_BUCKETS = 4
#: CUDA graphs graph_loop keeps (each holds its own memory pool), least recently used dropped first
_MAX_GRAPHS = 4
#: time_sliced cost model (see `plan_segments`), (cell, on CUDA) -> (step, call) in row-steps: on CPU as for
#: buckets (measured, H=128 fwd+bwd: a oneDNN LSTM step ~30 us ~ 4 rows, a call ~0.5 ms); on CUDA `_CUDA_COST`
#: (it was (256, 1024), a guess, before a GPU timed it: 2 segments, 1.5-1.9x slower than one call)
_SLICE_COST = dict(_BUCKET_COST)
#: concat_rows' LSTM read-out: the forget gate's pre-activation on the read-out slot (the user's biases cancelled by
#: the indicator column itself, the previous h exactly 0): f = sigmoid(-8) ~ 3.4e-4 on grids of up to ~3000 steps,
#: lower on longer ones (`readout_preactivation`)
_READOUT_F = -8.0


def readout_preactivation(steps: int) -> float:
    """The read-out's forget-gate pre-activation on a grid of `steps` steps: min(-8, -ln steps), so that
    f = sigmoid(pre) <= 1 / (1 + steps). An LSTM's |c| grows by at most 1 a step (|i g| <= 1, f <= 1), so a sequence
    of at most `steps` steps ends with |c_n| <= steps and the read-out's h = tanh(f c_n) has |f c_n| < 1: off tanh's
    flat ends, c_n = atanh(h) / f within ~1e-7 relative in float32. A fixed f = sigmoid(-8) lost c_n to tanh's
    rounding to 1 beyond |c_n| ~ 1000 (2e-4 off at 20 000, inf at 40 000, on a 40 000-step sequence). f * c_n stays a
    normal float32 for |c_n| above ~1e-34 * steps / 3000."""
    return min(_READOUT_F, -math.log(steps))


def with_indicator(torch, w_ih, hidden: int, gates: dict[int, float]):
    """w_ih with one more input column (the padding indicator's weights): 0 except sign * _SATURATION on each
    named gate block. `cat`ed from the canonical leaf, so w_ih's gradient is the canonical one exactly; the
    constant column gets none."""
    col = w_ih.new_zeros((w_ih.shape[0], 1))
    for gate, sign in gates.items():
        col[gate * hidden:(gate + 1) * hidden] = sign * _SATURATION
    return torch.cat([w_ih, col], dim=1)


def longest_first(lengths: np.ndarray) -> np.ndarray:
    """The non-empty rows' indices, sorted by descending length (stable)."""
    order = np.argsort(-lengths, kind="stable")
    return order[lengths[order] > 0]


def bucket_rows(lengths: np.ndarray, cell: str = "lstm", max_buckets: int = _MAX_BUCKETS,
                cuda: bool = False) -> list[np.ndarray]:
    """The non-empty rows, sorted by descending length (stable), cut into <= max_buckets contiguous buckets that
    minimise the cost model's padded work plus per-step and per-call overheads (`spec.cheapest_cuts` over
    `spec.cut_points`). A bucket's first row is its longest."""
    order = longest_first(lengths)
    if not order.size:
        return []
    step, call = _BUCKET_COST[(cell, cuda)]
    first = lengths[order]
    cuts = cut_points(first, round_up(first, shape_ladder(int(first[0]))))
    width = cuts[None, :] - cuts[:, None]  # bucket = sorted rows [cuts[i], cuts[j])
    m = cuts.size - 1
    cost = np.full((m + 1, m + 1), np.inf)
    cost[:m] = np.where(width[:m] > 0, first[cuts[:m], None] * (width[:m] + step) + call, np.inf)
    bounds = cheapest_cuts(cost, max_buckets)
    return [order[cuts[i]:cuts[j]] for i, j in zip(bounds, bounds[1:])]


def _nest(spec: RnnSpec, flat) -> list[list[dict[str, Any]]]:
    """[w_ih, w_hh, b_ih, b_hh of each (layer, direction), in order] -> the canonical nest."""
    it = iter(flat)
    return [[{k: next(it) for k in _TORCH_KEYS} for _ in range(spec.num_directions)] for _ in range(spec.num_layers)]


#: every `_memo_by_lengths` cache, so `clear_memos` can empty them all
_MEMOS: list = []


def _memo_by_lengths(plan):
    """`adapters.spec.memo_by_lengths(plan)`, registered so that `clear_memos` empties it."""
    memo = memo_by_lengths(plan)
    _MEMOS.append(memo)
    return memo


def clear_memos() -> None:
    """Forget every remembered plan and map (and the device indices they hold)."""
    for cached in _MEMOS:
        cached.cache_clear()


_segments = _memo_by_lengths(lambda lengths, step, call: plan_segments(lengths[longest_first(lengths)],
                                                                       step_cost=step, call_cost=call))
#: (costs: the cost model bucket_rows reads itself, passed only to key the memo)
_buckets = _memo_by_lengths(lambda lengths, cell, costs, k, cuda: bucket_rows(lengths, cell, k, cuda))


def _slice_plan(lengths: np.ndarray, cell: str, cuda: bool) -> tuple:
    """time_sliced's segments (remembered per lengths and cost model)."""
    return _segments(lengths, *_SLICE_COST[(cell, cuda)])


def _bucket_plan(lengths: np.ndarray, cell: str, cuda: bool) -> tuple:
    """bucketed's row groups (remembered per lengths and cost model)."""
    return _buckets(lengths, cell, _BUCKET_COST[(cell, cuda)], _MAX_BUCKETS, cuda)


def row_map(src_rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Flat source-row index of each destination row, -1 where the destination is padding (filled with 0)."""
    return np.where(valid, src_rows, -1).reshape(-1).astype(np.int64)


def _sliced_setup_of(lengths: np.ndarray, cell: str, T: int, directions: int, torch, device, dtype) -> tuple:
    """time_sliced's segments and its device-side gather plans for one batch: (segments, per direction the
    stack's plan (None: the stack is the batch itself), per direction the plan of each row's last step (None if
    every row ends at a segment's stop), the run-on indicator column [stack rows, 1] in `dtype` (None if no row
    runs on), the plan from sorted rows back to batch order (None if the rows already are in order), whether the
    segment blocks are batch-major (else time-major))."""
    B = lengths.size
    order = longest_first(lengths)
    segments = _slice_plan(lengths, cell, device.type == "cuda")
    # segments time-major ([steps, rows], what oneDNN / cuDNN run on: no transposed copies in and out), except one
    # segment of full rows, which is the batch itself in batch-major order (no gather at all going forward)
    batch_first = len(segments) == 1 and bool(np.all(lengths == T))
    layouts = [slice_layout(lengths, order, segments, T, bool(d), not batch_first) for d in range(directions)]
    run_on = bool(layouts[0]["ended"].any())  # some row ends inside a segment (else each ends at a cut)
    plans = [None if lay["identity"] else gather_plans(torch, lay["src"], B * T, device) for lay in layouts]
    lasts = [gather_plans(torch, lay["last"], lay["src"].size, device) if run_on else None for lay in layouts]
    ended = torch.as_tensor(layouts[0]["ended"], dtype=dtype, device=device)[:, None] if run_on else None
    by_row = None if order.size == B and np.all(order == np.arange(B)) else \
        gather_plans(torch, inverse_map(order, B), order.size, device)
    return segments, plans, lasts, ended, by_row, batch_first


#: (the cost model `_slice_plan` reads is passed only to key the memo: a patched model plans again)
_sliced_setups = _memo_by_lengths(lambda lengths, cell, T, directions, torch, device, dtype, costs:
                                  _sliced_setup_of(lengths, cell, T, directions, torch, device, dtype))


def _sliced_setup(lengths, cell, T, directions, torch, device, dtype) -> tuple:
    """`_sliced_setup_of`, remembered per batch (lengths, shape, device, dtype and cost model): a batch run
    again builds no host maps and copies no index to the device."""
    costs = _SLICE_COST[(cell, device.type == "cuda")]
    return _sliced_setups(lengths, cell, T, directions, torch, device, dtype, costs)


def slice_layout(lengths: np.ndarray, order: np.ndarray, segments, T: int, reverse: bool,
                 time_major: bool = False) -> dict[str, np.ndarray]:
    """Host row maps of time_sliced for one direction, over the stack of all segments' input blocks (segment j a
    [rows_j, steps_j] block, or [steps_j, rows_j] when `time_major`; row r = the r-th longest row `order[r]`):
    "src" = each stack row's flat source row b*T + t in the right-padded batch (t reversed within the row's length
    for the reverse direction), -1 on the steps a row runs on past its end; "ended" = those run-on rows; "last" =
    for each original row b the stack row of its last step (its final state), -1 for an empty row; "identity" =
    the stack is the batch itself (every row full, in order, forward, batch-major: nothing to gather)."""
    src, ended, offset = [], [], 0
    last = np.full(lengths.size, -1, dtype=np.int64)
    for seg in segments:
        t = np.arange(seg.start, seg.stop)[None, :]
        n = lengths[order[:seg.rows]][:, None]
        valid = t < n
        step = n - 1 - t if reverse else t
        rows = np.where(valid, order[:seg.rows, None] * T + step, -1)  # [rows, steps]
        src.append((rows.T if time_major else rows).reshape(-1))
        ended.append(~(valid.T if time_major else valid).reshape(-1))
        width = seg.stop - seg.start
        stops = (n[:, 0] > seg.start) & (n[:, 0] <= seg.stop)
        i, s = np.flatnonzero(stops), n[stops, 0] - 1 - seg.start  # sorted row within the segment, its last step
        last[order[:seg.rows][stops]] = offset + (s * seg.rows + i if time_major else i * width + s)
        offset += seg.rows * width
    src = np.concatenate(src)
    identity = src.size == lengths.size * T and bool(np.all(src == np.arange(src.size)))
    return {"src": src, "ended": np.concatenate(ended), "last": last, "identity": identity}


def _layouts(lengths: np.ndarray, T: int) -> dict[str, Any]:
    """Host row maps between right-padded [B, T] rows (flat b*T + t) and saturated_gate's two layouts: "left"
    (valid steps last, order kept) and "rev" (valid steps last, reversed: position T-1 holds step 0). "left" is
    None where it is the identity (all rows full: no gather at all)."""
    B = lengths.size
    t = np.arange(T)[None, :]
    n = lengths[:, None]
    base = np.arange(B)[:, None] * T
    valid_left = t >= T - n
    full = bool(np.all(lengths == T))
    return {"valid_left": valid_left, "left": None if full else row_map(base + t - (T - n), valid_left),
            "rev": row_map(base + T - 1 - t, valid_left)}


class GatherPlan(collections.namedtuple("GatherPlan", "rows dst size index holes")):
    """One direction of a row map for `row_gather`, as device tensors: destination row j = source row
    `index[j]`; `size` destination rows. Sparse (`index` None: most destination rows are padding): zeros, then
    the source `rows` copied to the destination `dst` rows. Dense (`rows` and `dst` None): one index_select by
    `index` (padding rows clamped to source row 0), then the `holes` (padding rows, None if none) set to 0."""


def gather_plans(torch, idx: np.ndarray, n_src: int, device) -> tuple[GatherPlan, GatherPlan]:
    """(forward, backward) `GatherPlan`s of a row map for `row_gather`, the backward one from the inverse map.
    Dense where at most half the destination rows are padding (one pass over the destination, no zero fill of
    what is then overwritten), sparse otherwise (a zero fill is cheaper than gathering padding)."""
    plans, as_t = [], lambda a: torch.as_tensor(a, device=device)
    for m in (idx, inverse_map(idx, n_src)):
        hole = m < 0
        n_holes = int(hole.sum())
        if 2 * n_holes <= m.size and n_src:
            plans.append(GatherPlan(None, None, m.size, as_t(np.maximum(m, 0)),
                                    as_t(np.flatnonzero(hole)) if n_holes else None))
        else:
            dst = np.flatnonzero(~hole)
            plans.append(GatherPlan(as_t(m[dst]), as_t(dst), m.size, None, None))
    return plans[0], plans[1]


@functools.cache
def row_gather(torch):
    """`gather(src [N, F], forward plan, backward plan) -> [M, F]`: the destination rows a row map names, copied
    from src, all others 0, for a map that uses each source row at most once (a partial permutation). Its
    backward is the inverse gather: one pass or zeros plus one copy of the rows that moved, instead of the
    zero-fill + scatter-add that index_select/take_along_dim backward with. Padding rows are never kept (the
    dense path's reads of source row 0 there are overwritten by 0), so NaN there reaches neither a matmul nor a
    gradient."""

    def take(src, plan: GatherPlan):
        if plan.index is None:
            return src.new_zeros((plan.size, src.shape[1])).index_copy_(0, plan.dst, src.index_select(0, plan.rows))
        out = src.index_select(0, plan.index)
        return out if plan.holes is None else out.index_fill_(0, plan.holes, 0)

    class RowGather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, src, fwd, bwd):
            ctx.bwd = bwd
            return take(src, fwd)

        @staticmethod
        def backward(ctx, grad):
            return take(grad.contiguous(), ctx.bwd), None, None

    return RowGather.apply


def _saturated_setup_of(lengths: np.ndarray, T: int, torch, device, dtype) -> tuple:
    """saturated_gate's device-side maps for one batch: ({"left": plan, "rev": plan}, "left" left out where every
    row is full; the padding indicator [B, T, 1] in `dtype`, None where every row is full (no padding step: no
    indicator column, the plain fused call is exact); [B, 1] which rows are non-empty (a 0-length row's state is
    exactly 0))."""
    B, maps = lengths.size, _layouts(lengths, T)
    plans = {k: gather_plans(torch, maps[k], B * T, device) for k in ("left", "rev") if maps[k] is not None}
    pad_col = None if maps["left"] is None else \
        torch.as_tensor(~maps["valid_left"], dtype=dtype, device=device).reshape(B, T, 1)
    return plans, pad_col, torch.as_tensor(lengths > 0, device=device)[:, None]


#: saturated_gate's maps, remembered per batch (lengths, T, device, dtype)
_saturated_setup = _memo_by_lengths(_saturated_setup_of)


def _bucket_setup_of(lengths: np.ndarray, cell: str, T: int, torch, device, costs) -> tuple:
    """bucketed's device-side maps for one batch of several buckets: the (forward, backward) plans between the
    right-padded [B, T] rows and the stack of all buckets' trimmed rows (bucket after bucket, each [rows, its
    longest row]), and the index that puts the buckets' states (then the empty rows') back in batch order.
    (`costs` keys the memo only: `_bucket_plan` reads the cost model itself.)"""
    B, groups = lengths.size, _bucket_plan(lengths, cell, device.type == "cuda")
    src, offset = np.full((B, T), -1, dtype=np.int64), 0  # src: each (row, step)'s row in the bucket stack
    for rows in groups:
        t, n = int(lengths[rows[0]]), lengths[rows][:, None]
        steps = np.arange(t)[None, :]
        src[rows, :t] = np.where(steps < n, offset + np.arange(rows.size)[:, None] * t + steps, -1)
        offset += rows.size * t
    into = np.full(offset, -1, dtype=np.int64)  # the inverse: each stack row's (row, step), or padding
    into[src[src >= 0]] = np.flatnonzero(src.reshape(-1) >= 0)
    fwd, bwd = gather_plans(torch, into, B * T, device)
    back = torch.as_tensor(np.argsort(np.concatenate([*groups, np.flatnonzero(lengths == 0)])), device=device)
    return fwd, bwd, back


_bucket_setups = _memo_by_lengths(_bucket_setup_of)


def _bucket_setup(lengths, cell, T, torch, device) -> tuple:
    """`_bucket_setup_of`, remembered per batch (lengths, T, device and the cost model)."""
    return _bucket_setups(lengths, cell, T, torch, device, (_BUCKET_COST[(cell, device.type == "cuda")],
                                                            _MAX_BUCKETS))


class ConcatSetup(collections.namedtuple("ConcatSetup", "rows steps x keep mirror back last readout indicator")):
    """concat_rows' device-side maps for one batch, over the time-major slot grid ([steps, rows], slot =
    step * rows + row): `x` per direction the gather of a layer-0 input out of the right-padded [B * T] rows (the
    reverse direction's each sequence reversed within its slots); `keep` / `mirror` a layer's output with every
    slot but the sequences' zeroed, in its own / the mirrored layout (the next layer's input); `back` per direction
    the gather of the [B * T] outputs (the reverse direction's, and `mirror`, only when there is one); `last` /
    `readout` the slot of each row's last step / of its LSTM read-out (0 for an empty row); `indicator` the
    [slots, k] indicator inputs (LSTM hold, read-out, reset; GRU reset). Each a (forward, backward) pair of
    `GatherPlan`s for `row_gather`."""


def concat_layout(lengths: np.ndarray, cell: str, T: int) -> dict[str, Any] | None:
    """Host maps of concat_rows for one batch (None where packing leaves one sequence per row, or nothing runs):
    the non-empty sequences first-fit into rows (`pack_rows`, exact grid: no compiled shape to reuse), each LSTM
    sequence followed by a hold and a read-out slot, one reset slot between two sequences of a row, the rest of a
    row reset slots too; maps over the time-major grid (slot = step * rows + row), -1 where nothing is read."""
    lstm = cell == "lstm"
    extra = 2 if lstm else 0  # the LSTM's hold and read-out slots after each sequence
    pack = pack_rows(np.where(lengths > 0, lengths + extra, 0), T + extra, gap=1, ladder=False)
    if pack is None or pack.used >= np.count_nonzero(lengths):
        return None
    rows, steps, Te = pack.rows, pack.steps, T + extra
    S = rows * steps
    to_tm = (np.arange(S) % steps) * rows + np.arange(S) // steps  # row-major slot -> time-major slot
    b, t = np.divmod(np.maximum(pack.src, 0), Te)
    n = lengths[b]
    valid = (pack.src >= 0) & (t < n)
    src = np.full(S, -1, np.int64)
    src[to_tm[valid]] = (b * T + t)[valid]
    last = np.where(lengths > 0, pack.last - extra, -1)  # row-major slot of each sequence's last step
    first = last - (lengths - 1)
    mirror = np.full(S, -1, np.int64)  # each step's slot <-> the slot of its mirrored step (t <-> n - 1 - t)
    mirror[to_tm[valid]] = to_tm[(first[b] + n - 1 - t)[valid]]
    kinds = np.zeros((S, 3 if lstm else 1))
    if lstm:
        kinds[to_tm[(pack.src >= 0) & (t == n)], 0] = 1.0  # hold
        kinds[to_tm[(pack.src >= 0) & (t == n + 1)], 1] = 1.0  # read-out
    kinds[to_tm[pack.src < 0], -1] = 1.0  # reset: separators and the rows' ends
    back = np.full(lengths.size * T, -1, np.int64)
    back[src[src >= 0]] = np.flatnonzero(src >= 0)
    live = lengths > 0
    last_tm = np.where(live, to_tm[np.maximum(last, 0)], -1)
    readout = np.where(live, to_tm[np.maximum(last + extra, 0)], -1)
    return {"rows": rows, "steps": steps, "src": src, "mirror": mirror, "back": back, "last": last_tm,
            "readout": readout, "indicator": kinds}


def _concat_setup_of(lengths: np.ndarray, cell: str, T: int, directions: int, torch, device,
                     dtype) -> ConcatSetup | None:
    """`concat_layout`'s maps as device-side gather plans (None: one sequence per row, or nothing runs); the
    reverse direction's (`x[1]`, `back[1]`, `mirror`) only for a bidirectional network."""
    lay = concat_layout(lengths, cell, T)
    if lay is None:
        return None
    S, BT, src, mir, back = lay["rows"] * lay["steps"], lengths.size * T, lay["src"], lay["mirror"], lay["back"]
    plans = lambda idx, n: gather_plans(torch, idx, n, device)
    has = src >= 0
    x, out_back, mirror = [plans(src, BT)], [plans(back, S)], None
    if directions == 2:
        x.append(plans(np.where(has, src[np.maximum(mir, 0)], -1), BT))
        out_back.append(plans(np.where(back >= 0, mir[np.maximum(back, 0)], -1), S))
        mirror = plans(mir, S)
    return ConcatSetup(lay["rows"], lay["steps"], x, plans(np.where(has, np.arange(S), -1), S), mirror, out_back,
                       plans(lay["last"], S), plans(lay["readout"], S),
                       torch.as_tensor(lay["indicator"], dtype=dtype, device=device))


#: concat_rows' maps, remembered per batch (lengths, cell, T, directions, device, dtype)
_concat_setup = _memo_by_lengths(_concat_setup_of)


def concat_columns(torch, cell: str, p: dict, hidden: int, readout: float = _READOUT_F):
    """concat_rows' indicator columns of w_ih [gates * H, k], in PyTorch's gate order. LSTM (i, f, g, o), columns hold,
    read-out, reset: hold keeps c and zeroes h (i shut, f open, o shut: c = 1 * c + 0 * g, h = 0 * tanh(c)); read-out
    scales c by f = sigmoid(readout) (`readout_preactivation`) and shows it (i shut, o open: h = tanh(f * c)), f's
    column cancelling the user's two biases (so f does not depend on them, and their gradient through it is 0); reset
    zeroes the state (i, f shut: c = 0, h = o * tanh(0) = 0). GRU (r, z, n), one reset column: r and z shut and the
    candidate's input bias cancelled (x W + b_in is exactly 0 on a zero input: h = 1 * tanh(0) + 0 * h). The
    bias-cancelling entries are built from the canonical leaves, so autograd gives those biases back what the columns
    took; the constant entries get no gradient. Every path to the previous state through a hold, reset or read-out goes
    through a gate whose value and derivative are exactly 0, except c's: through the hold (f = 1) and the read-out (f),
    the path c_n's gradient takes."""
    H, sat, b_ih, b_hh = hidden, _SATURATION, p["b_ih"], p["b_hh"]
    block = lambda *values: p["w_ih"].new_tensor(values).expand(H, len(values))
    if cell == "lstm":
        f = torch.stack([torch.full_like(b_ih[H:2 * H], sat), readout - b_ih[H:2 * H] - b_hh[H:2 * H],
                         torch.full_like(b_ih[H:2 * H], -sat)], dim=1)
        return torch.cat([block(-sat, -sat, -sat), f, block(0.0, 0.0, 0.0), block(-sat, sat, 0.0)])
    return torch.cat([block(-sat), block(-sat), -b_ih[2 * H:, None]])


class TorchRnn:
    """The RNN machinery of the torch adapter (mixed into `TorchAdapter`)."""

    def _rnn_forward(self, impl, spec, params, x, lengths, side, device):
        x = self.asarray(x, device)
        with self.torch.no_grad():
            weights, _ = impl.weights(self, spec, params, x, grad=False)
            out, h, c = self._aligned(impl, spec, weights, x, lengths, side)
        return RnnOut(out, h, c, impl.kernel(self, spec, x, lengths))

    def _rnn_vjp(self, impl, spec, params, x, lengths, cotangents, side, device):
        """Autograd through the strategy itself, x and the weights as leaves; cotangents go straight into
        torch.autograd.grad (no loss sum, so nothing multiplies a cotangent by a constant-zero output)."""
        torch = self.torch
        x = self.asarray(x, device).detach().requires_grad_(True)
        weights, named = impl.weights(self, spec, params, x, grad=True)
        out, h, c = self._aligned(impl, spec, weights, x, lengths, side)
        outs = [out, h] + ([c] if c is not None else [])
        cots = [self.asarray(cotangents[k], device).to(x.dtype) for k in ("outputs", "h_n", "c_n")[:len(outs)]]
        leaves = [x, *named.values()]
        if np.any(lengths):
            grads = torch.autograd.grad(outs, leaves, cots, allow_unused=True)
        else:  # nothing ran: the outputs are constants
            grads = [None] * len(leaves)
        grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, leaves, strict=True)]
        result = RnnOut(out.detach(), h.detach(), None if c is None else c.detach(),
                        impl.kernel(self, spec, x, lengths))
        return result, {"x": grads[0], "params": from_torch_names(spec, dict(zip(named, grads[1:], strict=True)))}

    def raw_rnn(self, spec, params, x, lengths, device="cpu", *, backward=False, cotangents=None):
        """pack_padded_sequence -> nn.LSTM/GRU/RNN -> pad_packed_sequence, written the usual way (weights loaded
        once into a module, lengths as a CPU tensor, right padding, no zero-length rows); with backward=True,
        the same plus `torch.autograd.grad` of sum(outputs*cot) + sum(h_n*cot) [+ sum(c_n*cot)]."""
        torch, utils = self.torch, self.rnn_utils
        x = self.asarray(x, device)
        module = self._module(spec, x.dtype, x.device)
        with torch.no_grad():
            for name, value in to_torch_names(params).items():
                getattr(module, name).copy_(self._native(value))
        lengths_t = torch.as_tensor(np.asarray(lengths))
        cot = {k: self.asarray(v, device).to(x.dtype) for k, v in (cotangents or {}).items()}
        leaves = [x.detach().requires_grad_(True), *module.parameters()]

        def forward(inp):
            packed = utils.pack_padded_sequence(inp, lengths_t, batch_first=True, enforce_sorted=False)
            out, state = module(packed)
            return utils.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], state

        def run():
            with torch.no_grad():
                return forward(x)

        def run_backward():
            out, state = forward(leaves[0])
            h, c = state if spec.cell == "lstm" else (state, None)
            outs = [out, h] + ([c] if c is not None else [])
            return torch.autograd.grad(outs, leaves, [cot[k] for k in ("outputs", "h_n", "c_n")[:len(outs)]])

        return run_backward if backward else run

    def _aligned(self, impl, spec, weights, x, lengths, side):
        """Right-align, run the strategy on right-padded data, align back. Returns (outputs, h_n, c_n)."""
        if not np.any(lengths):
            return self._empty(spec, x)
        if side == "left":
            x = self.realign(x, lengths, to="right")
        out, h, c = impl.run(self, spec, weights, x, lengths)
        if side == "left":
            out = self.realign(out, lengths, to="left")
        return out, h, c

    def _empty(self, spec, x):
        """Every row has length 0: zero outputs and states, nothing runs."""
        D, H, (B, T) = spec.num_directions, spec.hidden_size, x.shape[:2]
        state = x.new_zeros((spec.num_layers * D, B, H))
        return x.new_zeros((B, T, D * H)), state, state.clone() if spec.cell == "lstm" else None

    def _packed_weights(self, spec, params, x, grad):
        """(cached nn module holding the canonical weights, {torch name: its parameter} when grads are wanted):
        a few memcpys, and cuDNN's flattened weight buffer is kept."""
        module = self._module(spec, x.dtype, x.device)
        self._load(module, to_torch_names(params))
        return module, dict(module.named_parameters()) if grad else {}

    def _leaf_weights(self, spec, params, x, grad):
        """The canonical arrays as (leaf) tensors of x's dtype and device, named like nn parameters."""
        leaf = lambda v: self._native(v).to(device=x.device, dtype=x.dtype).detach().requires_grad_(grad)
        weights = map_params(leaf, params)
        return weights, to_torch_names(weights)

    def _packed_kernel(self, spec, x, lengths) -> str:
        """What "packed" ran. CPU float32 LSTM goes to oneDNN only when every packed row has the same length
        (aten's packed lstm unwraps uniform batch_sizes to the dense oneDNN kernel); all else is aten's loop."""
        torch = self.torch
        if not np.any(lengths):
            return "none"
        if x.device.type == "cuda":
            return "cudnn" if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled else "aten-cuda"
        nonzero = lengths[lengths > 0]
        uniform = bool(np.all(nonzero == nonzero[0]))
        mkldnn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        if spec.cell == "lstm" and x.dtype == torch.float32 and mkldnn and uniform:
            return "onednn"
        return "aten-cpu"

    def _load(self, module, named: dict) -> None:
        """Copy the canonical weights into `module`, unless they are the very tensors loaded last time, unchanged
        since (same objects, same in-place version counters: a training step that updates them in place bumps the
        counter). The cache holds the tensors themselves, so their ids cannot be reused by new objects. NumPy
        params are always copied: NumPy has no version counter to prove them unchanged."""
        torch = self.torch
        values = list(named.values())
        stamp = [v._version if isinstance(v, torch.Tensor) else None for v in values]
        last = self._loaded.get(id(module))
        if (last is not None and None not in stamp and last[1] == stamp
                and all(a is b for a, b in zip(last[0], values, strict=True))):
            return
        with torch.no_grad():
            for name, value in named.items():
                getattr(module, name).copy_(self._native(value))
        self._loaded[id(module)] = (values, stamp)

    def _module(self, spec, dtype, device):
        """One nn.RNN/LSTM/GRU per (spec, dtype, device): its parameters are overwritten on every call."""
        key = (spec, dtype, str(device))
        if key not in self._modules:
            nn = self.torch.nn
            cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[spec.cell]
            self._modules[key] = cls(spec.input_size, spec.hidden_size, num_layers=spec.num_layers,
                                     bidirectional=spec.bidirectional, batch_first=True, dtype=dtype, device=device)
        return self._modules[key]

    def _run_packed(self, spec, module, x, lengths):
        """pack_padded_sequence -> module -> pad_packed_sequence on the non-empty rows (PyTorch refuses length 0),
        scattered back with zeros. Padding is never read (packing copies valid steps only), so NaN there is
        harmless forward and backward. Tie order of torch.sort does not matter here: ties run identically."""
        torch, B, T = self.torch, x.shape[0], x.shape[1]
        keep = np.flatnonzero(lengths)
        rows = None
        if keep.size < B:
            rows = torch.as_tensor(keep, device=x.device)
            x, lengths = x.index_select(0, rows), lengths[keep]
        packed = self.rnn_utils.pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=True,
                                                     enforce_sorted=False)
        out, state = module(packed)
        out = self.rnn_utils.pad_packed_sequence(out, batch_first=True, total_length=T)[0]
        h, c = state if spec.cell == "lstm" else (state, None)
        if rows is not None:
            out = out.new_zeros((B, *out.shape[1:])).index_copy(0, rows, out)
            h, c = (None if s is None else s.new_zeros((s.shape[0], B, s.shape[2])).index_copy(1, rows, s)
                    for s in (h, c))
        return out, h, c

    def _run_loop(self, spec, weights, x, lengths):
        return self._loop(spec, weights, x, self.valid(self.torch.as_tensor(lengths, device=x.device), x.shape[1]))

    def _loop(self, spec, weights, x, valid):
        """Time-step loop on right-padded data; a row's state moves only at its valid steps (torch.where), so
        the backward direction starts at each row's own last step. Padded inputs are zeroed with `where` first:
        the input projection is one matmul over all steps, and NaN there would poison the weight gradient.
        `valid` is a [B, T] bool tensor and nothing here reads host data, so `graph_loop` captures it whole."""
        torch = self.torch
        valid = valid[..., None]
        inp = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
        hs, cs = [], []
        for dirs in weights:
            outs = []
            for d, p in enumerate(dirs):
                out, h, c = self._loop_direction(spec.cell, inp, valid, p, reverse=d == 1)
                outs.append(out)
                hs.append(h)
                cs.append(c)
            inp = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        return inp, torch.stack(hs), torch.stack(cs) if spec.cell == "lstm" else None

    def _loop_direction(self, cell, x, valid, p, reverse):
        torch = self.torch
        B, T = x.shape[:2]
        gi = torch.nn.functional.linear(x, p["w_ih"], p["b_ih"])
        h = x.new_zeros((B, p["w_hh"].shape[1]))
        c = h if cell == "lstm" else None
        outs = [None] * T
        for t in reversed(range(T)) if reverse else range(T):
            h_new, c_new = self._step(cell, gi[:, t], h, c, p["w_hh"], p["b_hh"])
            v = valid[:, t]
            h = torch.where(v, h_new, h)
            if c is not None:
                c = torch.where(v, c_new, c)
            outs[t] = torch.where(v, h_new, torch.zeros_like(h_new))
        return torch.stack(outs, dim=1), h, c

    def _step(self, cell, gi, h, c, w_hh, b_hh):
        """One cell update in PyTorch's gate order (LSTM i,f,g,o; GRU r,z,n with r applied to W_hn h + b_hn)."""
        torch = self.torch
        gh = torch.nn.functional.linear(h, w_hh, b_hh)
        if cell == "rnn":
            return torch.tanh(gi + gh), None
        if cell == "lstm":
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        ir, iz, in_ = gi.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return n + z * (h - n), None

    # -- saturated_gate: padding first, a gate pinned shut on it, one fused padded call ---------------------------
    def _run_saturated(self, spec, weights, x, lengths):
        """Right-padded in and out. Each direction runs on its own row layout: forward on left-aligned rows
        (padding first), reverse on each row reversed within its length and left-aligned. Every padded step
        carries an indicator input whose weight saturates a gate, so the state is exactly 0 until each row's
        first valid step and the last step is each row's true end: the fused padded kernel then needs no
        packing. Layouts change by row gathers that write padding as 0 (NaN in padded x never reaches a matmul;
        the indicator alone drives the gate) and whose backward is the inverse gather."""
        torch, (B, T) = self.torch, x.shape[:2]
        gather = row_gather(torch)
        dev = x.device
        plans, pad_col, live = _saturated_setup(lengths, T, torch, dev, x.dtype)
        inp, hs, cs = x, [], []
        for dirs in weights:
            flat = inp.reshape(B * T, inp.shape[2])
            outs = []
            for d, p in enumerate(dirs):
                plan = plans.get("rev" if d else "left")
                seq = flat if plan is None else gather(flat, *plan)
                out, h, c = self._saturated_direction(spec.cell, seq.reshape(B, T, -1), pad_col, p)
                out = out.reshape(B * T, -1)
                outs.append(out if plan is None else gather(out, plan[1], plan[0]))
                hs.append(h)
                cs.append(c)
            inp = (torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]).reshape(B, T, -1)
        zero = x.new_zeros(())
        h_n = torch.where(live, torch.stack(hs), zero)
        c_n = torch.where(live, torch.stack(cs), zero) if spec.cell == "lstm" else None
        return inp, h_n, c_n

    def _saturated_direction(self, cell, seq, pad_col, p):
        """One fused padded `torch._VF.lstm/gru` call (what nn.LSTM/GRU run: oneDNN / cuDNN / aten) on left-aligned
        `seq` plus the indicator column (`with_indicator`; none when `pad_col` is None: no padding). `train` follows
        grad mode: oneDNN and cuDNN keep their backward workspace only in training mode (dropout is 0, so nothing
        else changes)."""
        torch, B, H = self.torch, seq.shape[0], p["w_hh"].shape[1]
        h0 = seq.new_zeros((1, B, H))
        if pad_col is None:
            weights, inp = [p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"]], seq
        else:
            weights = [with_indicator(torch, p["w_ih"], H, _SATURATED_GATE[cell]), p["w_hh"], p["b_ih"], p["b_hh"]]
            inp = torch.cat([seq, pad_col], dim=2)
        train = torch.is_grad_enabled()
        if cell == "lstm":
            out, h, c = torch._VF.lstm(inp, (h0, h0), weights, True, 1, 0.0, train, False, True)
            return out, h[0], c[0]
        out, h = torch._VF.gru(inp, h0, weights, True, 1, 0.0, train, False, True)
        return out, h[0], None

    def _saturated_kernel(self, spec, x, lengths) -> str:
        """What saturated_gate ran: cuDNN on GPU; on CPU aten sends float32 padded LSTM input to oneDNN, the rest
        (GRU, float64) to its own per-step loop."""
        torch = self.torch
        if not np.any(lengths):
            return "none"
        if x.device.type == "cuda":
            return "cudnn" if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled else "aten-cuda"
        mkldnn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        return "onednn" if spec.cell == "lstm" and x.dtype == torch.float32 and mkldnn else "aten-cpu"

    # -- bucketed: rows sorted by length, each bucket trimmed to its own longest row ----------------------------
    def _run_bucketed(self, inner, spec, weights, x, lengths):
        """Right-padded in and out. All buckets' rows, each bucket trimmed to its longest row, are row-gathered
        out of x in one pass (then split into views), run by `inner`, and row-gathered back into [B, T] in one
        pass (padding and 0-length rows written as 0); gathers of a partial permutation, so autograd moves
        gradients back by the inverse gather, exactly, and x's gradient is assembled once, not per bucket."""
        torch, (B, T) = self.torch, x.shape[:2]
        gather, dev = row_gather(torch), x.device
        groups = _bucket_plan(lengths, spec.cell, dev.type == "cuda")
        if len(groups) == 1 and groups[0].size == B:  # one bucket of every row: no reordering, only the trim
            t = int(lengths.max())
            out, h, c = inner.run(self, spec, weights, x if t == T else x[:, :t], lengths)
            return out if t == T else torch.nn.functional.pad(out, (0, 0, 0, T - t)), h, c
        fwd, bwd, back = _bucket_setup(lengths, spec.cell, T, torch, dev)
        stack = gather(x.reshape(B * T, x.shape[2]), fwd, bwd)
        steps = [int(lengths[rows[0]]) for rows in groups]
        outs, hs, cs = [], [], []  # split, not slices: its backward is one concatenation, not a zero fill per bucket
        for rows, t, seq in zip(groups, steps, torch.split(stack, [r.size * t for r, t in zip(groups, steps)]),
                                strict=True):
            out, h, c = inner.run(self, spec, weights, seq.reshape(rows.size, t, -1), lengths[rows])
            outs.append(out.reshape(rows.size * t, -1))
            hs.append(h)
            cs.append(c)
        out = gather(torch.cat(outs) if len(outs) > 1 else outs[0], bwd, fwd)
        n_empty = int(np.count_nonzero(lengths == 0))
        h, c = (None if s[0] is None else self._states(s, n_empty, back) for s in (hs, cs))
        return out.reshape(B, T, -1), h, c

    def _states(self, parts, n_empty, back):
        """Bucket states [layers*D, b, H] joined along the batch, zeros appended for the 0-length rows (which run
        in no bucket), put back in batch order."""
        state = self.torch.cat(parts, dim=1)
        if n_empty:
            state = self.torch.cat([state, state.new_zeros((state.shape[0], n_empty, state.shape[2]))], dim=1)
        return state.index_select(1, back)

    def _bucketed_kernel(self, spec, x, lengths) -> str:
        """"bucketed[k]x <inner kernel>", k the number of buckets that ran."""
        if not np.any(lengths):
            return "none"
        inner = _fastest_inner(spec).kernel(self, spec, x, lengths)
        return f"bucketed[{len(_bucket_plan(lengths, spec.cell, x.device.type == 'cuda'))}]x {inner}"

    # -- time_sliced: rows sorted by length, the fused kernel over time segments, the state carried across ------
    def _run_sliced(self, spec, weights, x, lengths):
        """Right-padded in and out. The non-empty rows, sorted by descending length, run through the time segments
        of `plan_segments`: each segment is one fused `torch._VF` call over the rows still running at its start (a
        prefix of the sorted rows), from the state the previous segment left them. All segments' inputs are
        row-gathered out of x in one pass into one stack (each segment a contiguous [rows, steps, F] block, the
        reverse direction reading each row reversed within its length), and the outputs gathered back in one pass;
        the gathers' backward is the inverse gather and the split's a single concatenation, so no per-segment
        zero-filled gradient buffers. Rows that end inside a segment run on over zero input: their outputs there
        are never gathered back, h_n is read at each row's last valid step, and for the LSTM an indicator input on
        those steps freezes c (input gate shut, forget gate open: c_t = 1 * c_{t-1} + 0 * g exactly), so c_n is
        the segment's final c. Nothing after a row's end reaches a kept value, so no gradient flows there."""
        torch, (B, T) = self.torch, x.shape[:2]
        gather = row_gather(torch)
        segments, plans, lasts, ended, by_row, batch_first = _sliced_setup(lengths, spec.cell, T, spec.num_directions,
                                                                           torch, x.device, x.dtype)
        run_on, n0 = ended is not None, segments[0].rows
        states = lambda s: s if by_row is None else gather(s, *by_row)  # sorted rows -> batch order, 0 if empty
        sizes = [seg.rows * (seg.stop - seg.start) for seg in segments]
        flat, hs, cs = x.reshape(B * T, x.shape[2]), [], []
        for dirs in weights:
            outs = []
            for d, p in enumerate(dirs):
                stack = flat if plans[d] is None else gather(flat, *plans[d])
                freeze = ended if spec.cell == "lstm" else None
                if freeze is not None:
                    stack = torch.cat([stack, freeze], dim=1)
                parts = torch.split(stack, sizes) if len(sizes) > 1 else (stack,)  # one segment: no split node
                out, h, c = self._sliced_direction(spec.cell, parts, segments, p, n0, freeze is not None,
                                                   batch_first)
                outs.append(out if plans[d] is None else gather(out, plans[d][1], plans[d][0]))
                hs.append(gather(out, *lasts[d]) if run_on else states(h))
                cs.append(None if c is None else states(c))
            flat = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        c_n = torch.stack(cs) if spec.cell == "lstm" else None
        return flat.reshape(B, T, -1), torch.stack(hs), c_n

    def _sliced_direction(self, cell, parts, segments, p, n0, freeze, batch_first):
        """One direction over the segments' input blocks ([rows, steps] when `batch_first`, else [steps, rows]):
        (the output stack [sum rows*steps, H] in the input stack's row order, h and c (LSTM, else None) at each
        sorted row's last segment [n0, H]; h there is the row's final state when it ends at its segment's stop, c
        always: frozen when `freeze` adds the column)."""
        torch, H = self.torch, p["w_hh"].shape[1]
        w_ih = with_indicator(torch, p["w_ih"], H, _FROZEN_CELL) if freeze else p["w_ih"]
        weights = [w_ih, p["w_hh"], p["b_ih"], p["b_hh"]]
        fused = {"lstm": torch._VF.lstm, "gru": torch._VF.gru, "rnn": torch._VF.rnn_tanh}[cell]
        train = torch.is_grad_enabled()
        h = parts[0].new_zeros((1, n0, H))
        c = h if cell == "lstm" else None
        outs, h_parts, c_parts = [], [], []
        for i, (seg, part) in enumerate(zip(segments, parts, strict=True)):
            steps = seg.stop - seg.start
            part = part.reshape((seg.rows, steps, -1) if batch_first else (steps, seg.rows, -1))
            if cell == "lstm":
                out, h, c = fused(part, (h[:, :seg.rows], c[:, :seg.rows]), weights, True, 1, 0.0, train, False,
                                  batch_first)
            else:
                out, h = fused(part, h[:, :seg.rows], weights, True, 1, 0.0, train, False, batch_first)
            done = segments[i + 1].rows if i + 1 < len(segments) else 0  # rows [done, rows) end in this segment
            h_parts.append(h[0, done:])
            if c is not None:
                c_parts.append(c[0, done:])
            outs.append(out.reshape(-1, H))
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        join = lambda ps: ps[0] if len(ps) == 1 else torch.cat(ps[::-1])  # sorted order: longest rows end last
        return out, join(h_parts), join(c_parts) if c is not None else None

    def _sliced_kernel(self, spec, x, lengths) -> str:
        """"sliced[k]x <fused kernel>", k the number of time segments (fused calls per layer and direction)."""
        if not np.any(lengths):
            return "none"
        k = len(_slice_plan(lengths, spec.cell, x.device.type == "cuda"))
        return f"sliced[{k}]x {self._saturated_kernel(spec, x, lengths)}"

    # -- concat_rows: several sequences end to end per row, a reset slot between them -----------------------------
    def _run_concat(self, spec, weights, x, lengths):
        """Right-padded in and out. The non-empty sequences packed end to end into few rows (`concat_layout`), one
        fused padded `torch._VF` call per layer and direction over the time-major grid, with indicator inputs
        (`concat_columns`) that reset the state to exactly 0 between sequences and, for the LSTM, read c_n out
        after each sequence: the fused kernel outputs h only, so a hold slot zeroes h keeping c, and a read-out
        slot outputs h = tanh(f * c_n) with the known f; c_n = atanh(h) / f, within a few float32 roundings,
        its gradient exact in exact arithmetic. The reverse direction runs over each sequence reversed within its
        own slots; a layer's output is zeroed off the sequences before the next layer reads it. Where packing
        leaves one sequence per row, saturated_gate's single call runs the batch."""
        torch, (B, T) = self.torch, x.shape[:2]
        setup = _concat_setup(lengths, spec.cell, T, spec.num_directions, torch, x.device, x.dtype)
        if setup is None:
            return self._run_saturated(spec, weights, x, lengths)
        gather = row_gather(torch)
        flat = x.reshape(B * T, x.shape[2])
        seqs = [gather(flat, *plan) for plan in setup.x]
        hs, cs = [], []
        for layer, dirs in enumerate(weights):
            outs = []
            for seq, p in zip(seqs, dirs, strict=True):
                out, c_n = self._concat_direction(spec.cell, seq, setup, p)
                outs.append(out)
                hs.append(gather(out, *setup.last))
                cs.append(c_n)
            if layer + 1 == len(weights):
                break
            own = [gather(out, *setup.keep) for out in outs]  # zero off the sequences, in its own layout
            if len(outs) == 1:
                seqs = own
            else:  # forward layout: [fwd, rev mirrored]; the reverse direction's: [fwd mirrored, rev]
                seqs = [torch.cat([own[0], gather(outs[1], *setup.mirror)], dim=1),
                        torch.cat([gather(outs[0], *setup.mirror), own[1]], dim=1)]
        parts = [gather(out, *plan) for out, plan in zip(outs, setup.back, strict=True)]
        y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return y.reshape(B, T, -1), torch.stack(hs), torch.stack(cs) if spec.cell == "lstm" else None

    def _concat_direction(self, cell, seq, setup: ConcatSetup, p):
        """One fused call over the grid (`seq` [slots, F], zero off the sequences): (its output [slots, H], the
        LSTM's c_n of every row read out (0 for an empty row), else None)."""
        torch, H = self.torch, p["w_hh"].shape[1]
        w_ih = torch.cat([p["w_ih"], concat_columns(torch, cell, p, H, readout_preactivation(setup.steps))], dim=1)
        inp = torch.cat([seq, setup.indicator], dim=1).reshape(setup.steps, setup.rows, -1)
        weights, h0 = [w_ih, p["w_hh"], p["b_ih"], p["b_hh"]], inp.new_zeros((1, setup.rows, H))
        train = torch.is_grad_enabled()
        if cell != "lstm":
            return torch._VF.gru(inp, h0, weights, True, 1, 0.0, train, False, False)[0].reshape(-1, H), None
        out = torch._VF.lstm(inp, (h0, h0), weights, True, 1, 0.0, train, False, False)[0].reshape(-1, H)
        f = torch.sigmoid(w_ih[H:2 * H, -2] + p["b_ih"][H:2 * H] + p["b_hh"][H:2 * H])  # the read-out's forget gate
        return out, torch.atanh(row_gather(torch)(out, *setup.readout)) / f

    def _concat_kernel(self, spec, x, lengths) -> str:
        """"rows[<rows>x<steps>]x <fused kernel>" (the grid one call ran on; B x T where nothing packed)."""
        if not np.any(lengths):
            return "none"
        setup = _concat_setup(lengths, spec.cell, x.shape[1], spec.num_directions, self.torch, x.device, x.dtype)
        grid = f"{lengths.size}x{x.shape[1]}" if setup is None else f"{setup.rows}x{setup.steps}"
        return f"rows[{grid}]x {self._saturated_kernel(spec, x, lengths)}"

    # -- graph_loop: masked_loop captured once per shape into a CUDA graph, then replayed ------------------------
    def _graph_loop(self, spec, params, x, lengths, cotangents, side, device):
        """masked_loop's step loop (forward, or forward + `autograd.grad` with the cotangents) captured once per
        (mode, spec, dtype, device, B, T) and replayed: the lengths enter only as the [B, T] valid mask, a tensor
        input, so one graph serves every length distribution of that shape. Left padding is realigned outside
        the graph (its gather index depends on the lengths); so are the cotangent of the outputs (in) and the
        outputs and x's gradient (out)."""
        torch, lengths = self.torch, np.asarray(lengths)
        if not np.any(lengths):  # nothing runs: masked_loop's zeros, nothing to capture
            if cotangents is None:
                return self._rnn_forward(_LOOP, spec, params, x, lengths, side, device)
            return self._rnn_vjp(_LOOP, spec, params, x, lengths, cotangents, side, device)
        x = self.asarray(x, device)
        B, T = x.shape[:2]
        if side == "left":
            x = self.realign(x, lengths, to="right")
        valid = self.valid(torch.as_tensor(lengths, device=x.device), T)
        flat = [self._native(v).to(device=x.device, dtype=x.dtype) for dirs in params for p in dirs
                for v in (p[k] for k in _TORCH_KEYS)]
        n_w, n_state = len(flat), 2 if spec.cell == "lstm" else 1
        nest = functools.partial(_nest, spec)
        kernel = "cuda-graph python-loop" if x.device.type == "cuda" else "replayed python-loop"
        if cotangents is None:
            def core(x, valid, *ws):
                with torch.no_grad():
                    return [o for o in self._loop(spec, nest(ws), x, valid) if o is not None]

            out, h, *c = self._replay(("fwd", spec, x.dtype, x.device, B, T), core, [x, valid, *flat], grad=())
            if side == "left":
                out = self.realign(out, lengths, to="left")
            return RnnOut(out, h, c[0] if c else None, kernel)

        cots = [self.asarray(cotangents[k], device).to(x.dtype) for k in ("outputs", "h_n", "c_n")[:1 + n_state]]
        if side == "left":
            cots[0] = self.realign(cots[0], lengths, to="right")

        def core(x, valid, *rest):
            ws, cot = rest[:n_w], rest[n_w:]
            with torch.enable_grad():
                outs = [o for o in self._loop(spec, nest(ws), x, valid) if o is not None]
                grads = torch.autograd.grad(outs, [x, *ws], cot, allow_unused=True)
            leaves = [x, *ws]
            return [o.detach() for o in outs] + [torch.zeros_like(v) if g is None else g
                                                 for g, v in zip(grads, leaves, strict=True)]

        res = self._replay(("vjp", spec, x.dtype, x.device, B, T), core, [x, valid, *flat, *cots],
                           grad=[0, *range(2, n_w + 2)])  # x and the weights, not the mask
        outs, gx, gw = res[:1 + n_state], res[1 + n_state], res[2 + n_state:]
        out = outs[0]
        if side == "left":
            out, gx = self.realign(out, lengths, to="left"), self.realign(gx, lengths, to="left")
        return RnnOut(out, outs[1], outs[2] if n_state == 2 else None, kernel), {"x": gx, "params": nest(gw)}

    def _replay(self, key: tuple, core, inputs: list, grad) -> list:
        """core(*static) captured once per key (`_capture`) over static copies of `inputs` (those at the `grad`
        positions as autograd leaves); every call copies `inputs` into them, replays, and returns clones of the
        outputs (a replay overwrites the captured output memory). At most _MAX_GRAPHS kept, least recent out."""
        torch, graphs = self.torch, self.rnn_graphs()
        if key in graphs:
            graphs.move_to_end(key)
        else:
            grad = set(grad)
            static = [t.detach().clone().requires_grad_(i in grad) for i, t in enumerate(inputs)]
            graphs[key] = (static, *self._capture(core, static))
            while len(graphs) > _MAX_GRAPHS:
                graphs.popitem(last=False)
        static, replay, outs = graphs[key]
        with torch.no_grad():
            for s, t in zip(static, inputs, strict=True):
                s.copy_(t)
        replay()
        return [o.clone() for o in outs]

    def _capture(self, core, static: list) -> tuple:
        """(replay, output tensors) of `core(*static)` captured into a CUDA graph, after warm-up runs on the
        capture's own side stream (autograd and cuBLAS set themselves up, handles included, outside the capture,
        as PyTorch's CUDA-graph notes ask)."""
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                core(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            outs = core(*static)
        return graph.replay, outs

    def rnn_graphs(self):
        """key -> (static inputs, replay, outputs) of the CUDA graphs `graph_loop` holds (LRU order)."""
        return self.__dict__.setdefault("_graphs", collections.OrderedDict())

    def clear_compiled(self) -> None:
        """Drop graph_loop's captured graphs and the plans and row maps (with their device indices) the strategies
        remember per batch: the next call captures and plans afresh, as in a fresh process."""
        self.rnn_graphs().clear()
        clear_memos()


class _Impl:
    """The pieces one torch RNN strategy is made of: its weights, its run on right-padded data, its kernel."""

    def __init__(self, weights, run, kernel):
        self.weights, self.run, self.kernel = weights, run, kernel


_PACKED = _Impl(lambda a, *args, **kw: a._packed_weights(*args, **kw), lambda a, *args: a._run_packed(*args),
                lambda a, *args: a._packed_kernel(*args))
_LOOP = _Impl(lambda a, *args, **kw: a._leaf_weights(*args, **kw), lambda a, *args: a._run_loop(*args),
              lambda a, spec, x, lengths: "python-loop" if np.any(lengths) else "none")
_SATURATED = _Impl(lambda a, *args, **kw: a._leaf_weights(*args, **kw), lambda a, *args: a._run_saturated(*args),
                   lambda a, *args: a._saturated_kernel(*args))

_SLICED = _Impl(lambda a, *args, **kw: a._leaf_weights(*args, **kw), lambda a, *args: a._run_sliced(*args),
                lambda a, *args: a._sliced_kernel(*args))
_CONCAT = _Impl(lambda a, *args, **kw: a._leaf_weights(*args, **kw), lambda a, *args: a._run_concat(*args),
                lambda a, *args: a._concat_kernel(*args))


def _fastest_inner(spec: RnnSpec) -> _Impl:
    """The exact whole-batch kernel a bucket runs: a gated cell takes the saturated fused call, a tanh RNN (no
    gate to saturate) takes packing."""
    return _PACKED if spec.cell == "rnn" else _SATURATED


_BUCKETED = _Impl(lambda a, spec, *args, **kw: _fastest_inner(spec).weights(a, spec, *args, **kw),
                  lambda a, spec, *args: a._run_bucketed(_fastest_inner(spec), spec, *args),
                  lambda a, *args: a._bucketed_kernel(*args))


def _unit(name: str, impl: _Impl, doc: str, supports=None) -> Strategy:
    extra = {} if supports is None else {"supports": supports}
    return Strategy(name, lambda a, *args: a._rnn_forward(impl, *args), lambda a, *args: a._rnn_vjp(impl, *args),
                    doc=doc, **extra)


def _cuda_only(adapter: Any, device: str = "cpu", **spec: Any) -> str | None:
    """graph_loop's precondition: CUDA graphs capture CUDA kernels."""
    if device != "gpu":
        return "a CUDA graph captures CUDA kernels: GPU only (on CPU, masked_loop is the same loop uncaptured)"
    return None


def _resettable(adapter: Any, cell: str | None = None, **spec: Any) -> str | None:
    """concat_rows' precondition: its indicator inputs reset the state to exactly 0 between the sequences sharing a
    row (and read each LSTM sequence's c_n out) by shutting gates (LSTM i and f, GRU r and z), which a tanh RNN
    lacks; time_sliced and bucketed, which need no reset, run it."""
    if cell == "rnn":
        return ("a tanh RNN has no gate to reset its state to 0 between the sequences sharing a row (each would "
                "start from the previous one's state); use 'time_sliced' or 'bucketed'")
    return None


STRATEGIES = strategy_table(
    _unit("packed", _PACKED, "pack_padded_sequence + nn.LSTM/GRU/RNN + pad_packed_sequence (cuDNN / oneDNN)"),
    _unit("masked_loop", _LOOP, "cell per step, torch.where carry"),
    _unit("saturated_gate", _SATURATED, "left-aligned rows + a padding-indicator input whose weight saturates the "
          "input (LSTM) / update (GRU) gate: one fused padded call per layer and direction (oneDNN / cuDNN)",
          supports=gated_only("packed", "bucketed")),
    _unit("bucketed", _BUCKETED, "rows sorted by length into <= 4 buckets chosen by a cost model, each trimmed to "
          "its own longest row and run with saturated_gate (LSTM/GRU) or packed (RNN)"),
    Strategy("graph_loop",
             lambda a, spec, params, x, L, side, dev: a._graph_loop(spec, params, x, L, None, side, dev),
             lambda a, spec, params, x, L, cot, side, dev: a._graph_loop(spec, params, x, L, cot, side, dev),
             supports=_cuda_only,
             doc="masked_loop's step loop captured once per shape into a CUDA graph (forward, or forward + "
                 "autograd.grad) and replayed: one launch instead of a dozen kernels per step; lengths enter as a "
                 "mask tensor, so one graph serves every length distribution of a shape"),
    _unit("time_sliced", _SLICED, "rows sorted by length, the fused kernel (oneDNN / cuDNN / aten) over <= 16 time "
          "segments chosen by a cost model, (h, c) carried across; rows ending inside a segment run on, masked, "
          "with c frozen by a padding-indicator input (LSTM)"),
    _unit("concat_rows", _CONCAT, "sequences end to end in few rows (first-fit), one fused padded call per layer "
          "and direction over that grid (oneDNN / cuDNN / aten), indicator inputs that reset the state to exactly 0 "
          "between sequences and read each LSTM sequence's c_n out mid-row",
          supports=_resettable),
)
