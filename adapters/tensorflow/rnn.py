"""TensorFlow 2 / Keras 3 masked RNNs: six strategy units, "keras", "masked_scan", "saturated_gate", "bucketed",
"time_sliced", "concat_rows".

TensorFlow is imported in `TensorflowAdapter.__init__` (with KERAS_BACKEND=tensorflow), never at module level.
TF32 is turned off there (`enable_tensor_float_32_execution(False)`) so float32 correctness runs compare tightly,
and GPUs get memory growth so the allocator's peak reflects what the work needed.

RNN strategies, all exact and all compiled once per (spec, strategy, side, device, dtype, shapes) with
`tf.function` (lengths are a tensor argument, so new length values never retrace; "bucketed" traces once per
bucket shape, a bounded set):

- "keras" (default): `keras.layers.LSTM` / `GRU(reset_after=True)` / `SimpleRNN`, stacked, wrapped in
  `keras.layers.Bidirectional` when bidirectional, called with an explicit mask. Layers are built once per
  (spec, dtype, device) and their variables are assigned from the canonical params inside the compiled function.
  Decisions (verified numerically against a per-sequence reference):
  * Keras's generic masked loop carries the state through masked steps and `go_backwards` reverses input and mask
    together, so the math is exact for right AND left padding. But the cuDNN path (GPU, right-padded masks only)
    `tf.Assert`s that the mask is right-padded and has no fully masked row, and that assert fires at run time
    inside a compiled function instead of falling back. So the adapter always realigns left padding to right
    with a gather before the layers and back after, and gives zero-length rows a one-step mask (their input there
    is 0 and their outputs/states are replaced by zeros with `tf.where`, so nothing leaks, forward or backward).
  * Padded inputs are zeroed with `tf.where` before any matmul (NaN never meets a weight), and outputs are zeroed
    at padded steps with `tf.where` (Keras would carry the previous output there).
  * kernel: "cudnn" when the traced graph really contains a CudnnRNN op (GPU, LSTM/GRU), else "keras-while":
    Keras's TF backend runs its cell in a `tf.while_loop`. TF's oneDNN ("oneDNN custom operations are on") only
    supplies the matmul kernels inside the step, the same ones "masked_scan" uses, so calling it "onednn" would
    suggest a fused oneDNN RNN primitive that does not run. On device="cpu" the layers are built with
    use_cudnn=False so a visible GPU is never used behind the caller's back.
- "masked_scan": the cell math written out in `tf.scan` (a while loop) over time with a masked carry
  (`tf.where(valid_t, new, old)`), both directions of a layer in one scan (batched matmul over directions), the
  backward direction on per-sequence-reversed input (gather). Input projections for all steps are one einsum.
  kernel "tf-while".

- "saturated_gate" (LSTM/GRU): each row left-aligned (padding first) with one more input column, 1 on padding,
  whose kernel row saturates the input gate (LSTM) or the update gate (GRU), so the state is exactly 0 through
  the padding and no gradient flows there; then Keras's plain unmasked call per layer and direction (the reverse
  direction on each row reversed within its length). Exact with no mask at all, so on a GPU Keras's cuDNN path
  runs for any padding and zero-length rows, with none of its mask asserts (not run here: no TF GPU build). On CPU
  (LSTM B=64 T=128 H=128, forward + backward) the unmasked Keras call alone is ~7% faster than the masked one, but
  the realigning gathers take that back: in a sweep 1.00 vs "keras" 1.04 of the fastest on equal lengths. As the
  inner network of "bucketed" it was 13% slower on lognormal and 9% faster on zipf lengths (interleaved), so
  "bucketed" keeps "keras". Kernel "keras-while" (or "cudnn").
- "bucketed": the rows sorted by length into <= 4 buckets, each trimmed to its longest row rounded up a ladder of
  lengths (batch up the powers of two), each run through the "keras" network (faster than "masked_scan" on CPU) in
  a tf.function per bucket shape, results put back in row order and parameter gradients summed; the planner is
  the shared `adapters.spec.plan_buckets` with TF's own cost model (`STEP_COST`): a step of Keras's while loop costs
  ~700 us on CPU whatever the batch, so trimming pays only where many long steps go away (zipf ~2x, lognormal only
  ~1.1x). Kernel "<keras kernel> bucketed[k]". Exact by construction; `rnn_bucket_shapes()` lists the shapes.

- "time_sliced": the rows sorted by length (in the graph), the time axis cut into <= 8 segments by the shared
  `adapters.spec.plan_segments` with cuts on the time ladder and row counts up the batch ladder (so plans repeat
  across batches: one tf.function trace per distinct plan, `rnn_sliced_plans()`), each segment one call of a
  forward-only Keras layer per (layer, direction) on the rows still running, from the state the previous segment
  left. Keras carries the state through masked steps, so a row that ends inside a segment (or is rounded into one
  after its end) keeps its final state exactly; its outputs there are zeroed. The reverse direction runs forward on
  each row reversed within its length. Unlike bucketing it never repeats a step: the sequential steps are the
  longest row's (rounded up the ladder), which is what bounds TF on CPU, where a step of Keras's while loop costs
  ~200 us forward+backward before any row is computed. Generic loop on every device (cuDNN asserts that no row is
  fully masked, which rounded-in rows are). Kernel "keras-while sliced[k]".

- "concat_rows" (every cell): several sequences end to end in each row of a [rows, steps] grid
  (`adapters.spec.pack_rows` with no separator: first-fit decreasing into rows as long as the longest sequence
  rounded up the time ladder, the row count on a quarter ladder), then per (layer, direction) one `tf.scan` over the
  grid's steps, all rows at once, whose carry is set to 0 (`tf.where`) at each sequence's first slot, so no state
  passes between sequences, forward or backward; h (and c) recorded at every slot, each sequence's final state read
  at its last slot; the reverse direction over the mirrored layout (each sequence reversed within its own slots).
  Parameters stay in PyTorch's layout (no Keras layer, no weight assignment). The whole function is compiled by XLA
  (`jit_compile=True`, one trace per grid shape, `rnn_concat_grids()`) and the scan's gradient is written out
  (`_reset_scan`: a reverse scan over the saved gate activations, W_hh's gradient one product after it), because
  both of TF's own paths pay per step: Keras's while loop ~130 us a step forward + backward at 20 rows whatever the
  rows, and TF's gradient of a scan under XLA (its stacks) 21 ms where the written-out one takes 14.5 (LSTM, a
  21 x 130 grid, H=128). Measured B=64 T=128 H=128 forward + backward against the padded baseline (saturated_gate
  on equal lengths): LSTM lognormal 2.98x (side by side 2.87x; the Keras-layer grid this replaced: 1.53x / 1.42x in
  the same session), zipf 9.06x / 7.23x (Keras grid 2.64x / 2.74x); GRU 3.71x / 3.64x and 9.30x / 9.53x. Where
  packing leaves one LSTM sequence per row, saturated_gate's own function runs (kernel suffix "rows[BxT]"); the GRU
  and the tanh RNN keep their grid (faster than any Keras call on equal lengths). Row moves are gathers whose
  gradient is the inverse gather (`_moved_rows`). Kernel "xla-scan rows[<rows>x<steps>]".

"bucketed", "time_sliced" and "concat_rows" name the tf.functions a batch runs from their own host planners
(`Strategy.programs`), tracing nothing, so the bench counts the traces of hundreds of fresh batches. "time_sliced"
runs a plan traced before for the batch's shape where it covers the batch within SLICE_REUSE (25%) of the own
plan's modelled cost (`adapters.spec.reuse_segments`; own plans rarely repeat on zipf lengths: 195 new ones over
300 batches, B=64 T=128, against 28 so, at 1.04x the own plans' modelled cost on average).

Gradients come from `tf.GradientTape` inside the compiled function ("concat_rows"' scan supplies its own through
`tf.custom_gradient`); Keras-layout gradients are mapped back to the
canonical PyTorch layout (`canonical_grads`: transposed, gate order restored, a merged bias gradient goes to both
b_ih and b_hh).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from adapters.spec import (
    Bucket,
    RnnOut,
    RnnSpec,
    Strategy,
    bucket_rows,
    gated_only,
    ladder_segments,
    plan_buckets,
    remembered_pack,
    strategy_table,
    unbucket_index,
    whole_batch,
    whole_segment,
)

#: "bucketed" cost model (row-steps, see `plan_buckets`), measured on CPU for the Keras LSTM (H=128) forward +
#: backward: ~25 us per row-step, but ~700 us per step whatever the batch (a dozen small ops through TF's executor
#: in the while loop) and a few ms per call. Steps are dear, so the planner splits far less than under XLA.
STEP_COST, CALL_COST = 30.0, 150.0
#: "time_sliced": a segment is one more Keras layer call inside the same tf.function (no extra dispatch, gathers
#: or weight assignment), cheaper than a bucket; at most MAX_SEGMENTS of them
SLICE_CALL_COST, MAX_SEGMENTS = 50.0, 8
#: "time_sliced" runs a plan traced before for a batch's shape instead of tracing the batch's own where that plan
#: covers the batch and its modelled cost is at most this much above the own plan's (`reuse_segments`)
SLICE_REUSE = 0.25

#: "saturated_gate": the pre-activation the padding indicator adds to Keras's gate block 0 (LSTM i, GRU z), with
#: its sign: the input gate shut (c and h stay exactly 0), the update gate open (h stays its initial 0).
#: sigmoid(-1e4) is exactly 0 and sigmoid(1e4) exactly 1 in float16/32/64, and so are their derivatives. A test
#: patches it weaker to prove the comparison catches a leaky gate.
SATURATION = 1e4
_SATURATED_SIGN = {"lstm": -1.0, "gru": 1.0}

# Keras gate blocks in terms of PyTorch's: LSTM i,f,c,o == i,f,g,o; GRU z,r,h <- r,z,n (blocks 1,0,2).
_KERAS_BLOCKS = {"rnn": (0,), "lstm": (0, 1, 2, 3), "gru": (1, 0, 2)}


def gate_perm(cell: str, hidden: int) -> np.ndarray | None:
    """Row gather that turns PyTorch's gate order into Keras's (None when they already agree)."""
    blocks = _KERAS_BLOCKS[cell]
    if blocks == tuple(range(len(blocks))):
        return None
    return np.concatenate([np.arange(b * hidden, (b + 1) * hidden) for b in blocks])


def keras_weights(tf: Any, cell: str, p: dict) -> tuple[Any, Any, Any]:
    """Canonical {w_ih [G*H,in], w_hh [G*H,H], b_ih, b_hh} -> Keras (kernel [in,G*H], recurrent_kernel [H,G*H], bias).

    LSTM / SimpleRNN have ONE bias (b_ih + b_hh); GRU with reset_after=True keeps both as bias [2, 3H]
    (row 0 input bias, row 1 recurrent bias), which is what keeps b_hn inside r * (W_hn h + b_hn).
    """
    perm = gate_perm(cell, p["w_hh"].shape[1])
    order = (lambda a: a) if perm is None else (lambda a: tf.gather(a, perm))
    kernel = tf.transpose(order(p["w_ih"]))
    recurrent = tf.transpose(order(p["w_hh"]))
    if cell == "gru":
        return kernel, recurrent, tf.stack([order(p["b_ih"]), order(p["b_hh"])])
    return kernel, recurrent, p["b_ih"] + p["b_hh"]


def canonical_grads(tf: Any, cell: str, kernel: Any, recurrent: Any, bias: Any) -> dict[str, Any]:
    """Gradients w.r.t. Keras (kernel, recurrent_kernel, bias) -> gradients w.r.t. the canonical params.

    The adjoint of `keras_weights`: transpose back, undo the gate permutation; a merged bias b_ih + b_hh passes
    its gradient unchanged to both terms.
    """
    perm = gate_perm(cell, recurrent.shape[0])
    undo = (lambda a: a) if perm is None else (lambda a: tf.gather(a, np.argsort(perm)))
    grads = {"w_ih": undo(tf.transpose(kernel)), "w_hh": undo(tf.transpose(recurrent))}
    if cell == "gru":
        grads.update(b_ih=undo(bias[0]), b_hh=undo(bias[1]))
    else:
        grads.update(b_ih=bias, b_hh=bias)
    return grads


class _KerasNet:
    """Stacked Keras recurrent layers for one (spec, dtype, device), built once; weights assigned per call."""

    kernel_fallback = "keras-while"

    def __init__(self, tf: Any, keras: Any, spec: RnnSpec, dtype: str, use_cudnn: bool) -> None:
        self.tf, self.spec = tf, spec
        self.layers, self.cells = [], []
        for layer in range(spec.num_layers):
            net = self._make(keras, spec, dtype, use_cudnn)
            if spec.bidirectional:
                net = keras.layers.Bidirectional(net, merge_mode="concat", dtype=dtype)
                subs = [net.forward_layer, net.backward_layer]
            else:
                subs = [net]
            net.build((None, None, spec.layer_input_size(layer)))
            self.layers.append(net)
            self.cells.append([s.cell for s in subs])

    @staticmethod
    def _make(keras: Any, spec: RnnSpec, dtype: str, use_cudnn: bool) -> Any:
        kw = dict(return_sequences=True, return_state=True, dtype=dtype)
        if spec.cell == "lstm":
            return keras.layers.LSTM(spec.hidden_size, use_cudnn="auto" if use_cudnn else False, **kw)
        if spec.cell == "gru":
            return keras.layers.GRU(spec.hidden_size, reset_after=True,
                                    use_cudnn="auto" if use_cudnn else False, **kw)
        return keras.layers.SimpleRNN(spec.hidden_size, activation="tanh", **kw)

    def sources(self, params: list) -> list:
        """Assign the canonical params to the layers' variables; return those variables (what to differentiate)."""
        out = []
        for cells, dirs in zip(self.cells, params, strict=True):
            for cell, p in zip(cells, dirs, strict=True):
                vs = (cell.kernel.value, cell.recurrent_kernel.value, cell.bias.value)
                for v, w in zip(vs, self.keras_weights(p), strict=True):
                    v.assign(w)
                out.append(vs)
        return out

    def keras_weights(self, p: dict) -> tuple[Any, Any, Any]:
        """One (layer, direction)'s canonical params as its Keras (kernel, recurrent_kernel, bias)."""
        return keras_weights(self.tf, self.spec.cell, p)

    def to_canonical(self, grads: list) -> list:
        D = self.spec.num_directions
        flat = [canonical_grads(self.tf, self.spec.cell, *g) for g in grads]
        return [flat[i:i + D] for i in range(0, len(flat), D)]

    def forward(self, x: Any, lengths: Any, valid: Any, params: list) -> tuple[Any, list, list]:
        """x right-aligned and zeroed at padding -> (outputs zeroed at padding, [h per layer*dir], [c ...])."""
        tf = self.tf
        # cuDNN asserts that no row is fully masked: give empty rows one (zero-input, discarded) step.
        kmask = tf.range(x.shape[1], dtype=lengths.dtype)[None, :] < tf.maximum(lengths, 1)[:, None]
        lstm = self.spec.cell == "lstm"
        hs, cs = [], []
        for layer in self.layers:
            out, *states = layer(x, mask=kmask)  # states: h (, c) per direction, forward first
            x = tf.where(valid[..., None], out, tf.zeros_like(out))
            hs += states[0::2] if lstm else states
            cs += states[1::2] if lstm else []
        return x, hs, cs


def _direction_layers(keras: Any, spec: RnnSpec, dtype: str, use_cudnn: bool, extra_inputs: int = 0):
    """One forward-only Keras layer per (layer, direction) (`_KerasNet._make`), built for the layer's input size
    plus `extra_inputs` columns (the reverse direction runs forward on per-row reversed input): (layers, their
    cells), both nested [layer][direction]."""
    layers = []
    for layer in range(spec.num_layers):
        dirs = []
        for _ in range(spec.num_directions):
            net = _KerasNet._make(keras, spec, dtype, use_cudnn)
            net.build((None, None, spec.layer_input_size(layer) + extra_inputs))
            dirs.append(net)
        layers.append(dirs)
    return layers, [[net.cell for net in dirs] for dirs in layers]


class _SaturatedNet:
    """"saturated_gate": one forward-only, unmasked Keras layer per (layer, direction) on the rows left-aligned
    (padding first), with one more input column, 1 on padding and 0 on valid steps, whose kernel row saturates
    gate block 0 (`SATURATION`): the state is exactly 0 through the padding and exactly zero gradient flows there,
    so the layer's plain padded call (Keras's while loop on CPU, cuDNN on GPU: no mask, so none of its asserts) is
    exact. The reverse direction runs forward on each row reversed within its length, then left-aligned; the
    final state is the layer's state after step T-1, each row's last valid step. Weights assigned per call like
    `_KerasNet`, the indicator row appended to the kernel (its gradient dropped)."""

    kernel_fallback = "keras-while"
    sources = _KerasNet.sources

    def __init__(self, adapter: Any, spec: RnnSpec, dtype: str, use_cudnn: bool) -> None:
        self.adapter, self.tf, self.spec = adapter, adapter.tf, spec
        self.layers, self.cells = _direction_layers(adapter.keras, spec, dtype, use_cudnn, extra_inputs=1)

    def keras_weights(self, p: dict) -> tuple[Any, Any, Any]:
        """`_KerasNet.keras_weights` with the indicator's kernel row appended."""
        kernel, recurrent, bias = keras_weights(self.tf, self.spec.cell, p)
        row = np.zeros((1, kernel.shape[1]))
        row[0, :self.spec.hidden_size] = _SATURATED_SIGN[self.spec.cell] * SATURATION
        return self.tf.concat([kernel, self.tf.constant(row, kernel.dtype)], 0), recurrent, bias

    def to_canonical(self, grads: list) -> list:
        return _KerasNet.to_canonical(self, [(k[:-1], r, b) for k, r, b in grads])  # the indicator row's dropped

    def forward(self, x: Any, lengths: Any, valid: Any, params: list) -> tuple[Any, list, list]:
        """x right-aligned and zeroed at padding -> (outputs, exactly 0 at padding; [h per layer*dir], [c ...])."""
        tf, a = self.tf, self.adapter
        pad = tf.cast(tf.logical_not(a.valid(lengths, x.shape[1], side="left")), x.dtype)[..., None]
        hs, cs = [], []
        for dirs in self.layers:
            outs = []
            for d, layer in enumerate(dirs):
                seq = a.reverse_within(x, lengths) if d else x
                out, *state = layer(tf.concat([a.realign(seq, lengths, to="left"), pad], axis=-1))
                out = a.realign(out, lengths, to="right")  # padding steps' outputs: exactly 0
                outs.append(a.reverse_within(out, lengths) if d else out)
                hs.append(state[0])
                cs += state[1:]
            x = tf.concat(outs, axis=-1) if len(outs) > 1 else outs[0]
        return x, hs, cs


class _SlicedNet:
    """"time_sliced": one forward-only Keras layer per (layer, direction), built once per (spec, dtype, device),
    run segment by segment from the state the previous segment left; weights assigned per call like `_KerasNet`."""

    sources = _KerasNet.sources
    keras_weights = _KerasNet.keras_weights
    to_canonical = _KerasNet.to_canonical

    def __init__(self, tf: Any, keras: Any, spec: RnnSpec, dtype: str) -> None:
        self.tf, self.spec = tf, spec
        self.layers, self.cells = _direction_layers(keras, spec, dtype, use_cudnn=False)


class _SlicedPlan:
    """One segment plan of "time_sliced" over a `_SlicedNet` (what one tf.function traces): rows sorted by length
    in the graph, each segment one Keras layer call on the rows still running (a prefix), with the mask, from the
    carried state. Keras carries the state through masked steps, so a row that ends inside a segment (or was
    rounded into it) keeps its final state exactly; its outputs there are zeroed."""

    def __init__(self, adapter: Any, net: _SlicedNet, plan: tuple) -> None:
        self.adapter, self.tf, self.net, self.plan = adapter, adapter.tf, net, plan
        self.kernel_fallback = f"keras-while sliced[{len(plan)}]"
        self.sources, self.to_canonical = net.sources, net.to_canonical

    def forward(self, x: Any, lengths: Any, valid: Any, params: list) -> tuple[Any, list, list]:
        """x right-aligned and zeroed at padding -> (outputs zeroed at padding, [h per layer*dir], [c ...])."""
        tf, plan, reverse = self.tf, self.plan, self.adapter.reverse_within
        B, T, top = x.shape[0], x.shape[1], self.plan[-1].stop
        order = tf.argsort(lengths, direction="DESCENDING", stable=True)
        back = tf.math.invert_permutation(order)
        n = tf.gather(lengths, order)
        seq_in, ok = tf.gather(x, order)[:, :top], tf.gather(valid, order)[:, :top]
        lstm, hs, cs = self.net.spec.cell == "lstm", [], []
        for dirs in self.net.layers:
            outs = []
            for d, layer in enumerate(dirs):
                seq = reverse(seq_in, n) if d else seq_in
                parts, h_parts, c_parts, state = [], [], [], None
                for j, seg in enumerate(plan):
                    init = None if state is None else [s[:seg.rows] for s in state]
                    out, *state = layer(seq[:seg.rows, seg.start:seg.stop], mask=ok[:seg.rows, seg.start:seg.stop],
                                        initial_state=init)
                    done = plan[j + 1].rows if j + 1 < len(plan) else 0  # rows [done, rows) end in this segment
                    h_parts.append(state[0][done:])
                    c_parts += [state[1][done:]] if lstm else []
                    parts.append(tf.pad(out, [(0, B - seg.rows), (0, 0), (0, 0)]))
                out = tf.where(ok[..., None], tf.concat(parts, axis=1), 0)
                outs.append(reverse(out, n) if d else out)
                empty = tf.zeros([B - plan[0].rows, h_parts[0].shape[1]], x.dtype)  # rows in no segment
                hs.append(tf.gather(tf.concat([*h_parts[::-1], empty], 0), back))
                cs += [tf.gather(tf.concat([*c_parts[::-1], empty], 0), back)] if lstm else []
            seq_in = tf.concat(outs, axis=-1) if len(outs) > 1 else outs[0]
        out = tf.gather(seq_in, back)
        return tf.pad(out, [(0, 0), (0, T - top), (0, 0)]), hs, cs


def _moved_rows(tf: Any, a: Any, idx: Any, inv: Any) -> Any:
    """Row j of the result = row idx[j] of `a` [N, F], or 0 where idx[j] < 0, for a partial permutation (each
    row of `a` used at most once) whose inverse is `inv` [N]. Its gradient is the inverse gather, one dense pass,
    instead of tf.gather's sparse gradient summed into zeros."""

    def take(v, index):
        got = tf.gather(v, tf.maximum(index, 0))
        return tf.where((index < 0)[:, None], tf.zeros([], v.dtype), got)

    @tf.custom_gradient
    def move(v):
        return take(v, idx), lambda g: take(g, inv)

    return move(a)


def _reset_scan(tf: Any, cell: str, xw: Any, w_hh: Any, b_hh: Any, keep: Any) -> tuple:
    """One direction of "concat_rows" over a time-major grid: xw = W_ih x + b_ih [steps, rows, G*H] (PyTorch gate
    order), the carry replaced by 0 wherever `keep` [steps, rows, 1] is False (each sequence's first slot), then one
    cell step; returns h (and c for the LSTM) at every slot, [steps, rows, H].

    Its gradient is written out (`tf.custom_gradient`): the forward scan keeps each step's gate activations, a
    reverse scan turns the cotangents of h (and c) into those of the step's pre-activations, and W_hh's and b_hh's
    gradients are one product and one sum over all slots after it. TF's own gradient of a `tf.scan` pushes and pops
    every saved tensor through stacks; under XLA the written-out one took 14.5 vs 21 ms (LSTM fwd+bwd, a 21 x 130
    grid, H=128, 2 cores). A reset passes nothing back: the previous state's cotangent is 0 where `keep` is False,
    as the forward's `tf.where` gave it no path."""
    H = w_hh.shape[1]
    zeros = tf.zeros([xw.shape[1], H], xw.dtype)

    def shifted(seq):  # the state each step started from: the previous slot's, 0 at a reset and at slot 0
        return tf.where(keep, tf.concat([zeros[None], seq[:-1]], 0), tf.zeros([], seq.dtype))

    @tf.custom_gradient
    def run(xw, w_hh, b_hh):
        u = tf.transpose(w_hh)  # [H, G*H]: h @ u is W_hh h

        if cell == "lstm":
            def step(carry, inputs):
                x_t, k = inputs
                h, c = (tf.where(k, s, tf.zeros([], s.dtype)) for s in carry[:2])
                i, f, g, o = tf.split(x_t + tf.matmul(h, u) + b_hh, 4, axis=-1)
                i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
                c = f * c + i * g
                tc = tf.tanh(c)
                return o * tc, c, tc, tf.concat([i, f, g, o], -1)

            hs, cs, tcs, gates = tf.scan(step, (xw, keep), initializer=(zeros, zeros, zeros, tf.zeros_like(xw[0])))
        elif cell == "gru":
            def step(carry, inputs):
                x_t, k = inputs
                h = tf.where(k, carry[0], tf.zeros([], x_t.dtype))
                xr, xz, xn = tf.split(x_t, 3, axis=-1)
                hr, hz, hn = tf.split(tf.matmul(h, u) + b_hh, 3, axis=-1)
                r, z = tf.sigmoid(xr + hr), tf.sigmoid(xz + hz)
                n = tf.tanh(xn + r * hn)
                return (1 - z) * n + z * h, tf.concat([r, z, n, hn], -1)

            hs, gates = tf.scan(step, (xw, keep), initializer=(zeros, tf.zeros([xw.shape[1], 4 * H], xw.dtype)))
        else:
            def step(h, inputs):
                x_t, k = inputs
                return tf.tanh(x_t + tf.matmul(tf.where(k, h, tf.zeros([], h.dtype)), u) + b_hh)

            hs = tf.scan(step, (xw, keep), initializer=zeros)
        h_prev = shifted(hs)

        def grad(dhs, dcs=None):
            """(d xw, d W_hh, d b_hh); `back` returns (d h_prev, [d c_prev], d pre-activation [, d W_hh h + b_hh])."""
            if cell == "lstm":
                dcs = tf.zeros_like(cs) if dcs is None else dcs

                def back(carry, inputs):
                    dh_t, dc_t, tc, a, c_prev, k = inputs
                    i, f, g, o = tf.split(a, 4, axis=-1)
                    dh = dh_t + carry[0]
                    dc = dc_t + carry[1] + dh * o * (1 - tc * tc)
                    dz = tf.concat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                                    dh * tc * o * (1 - o)], -1)
                    return (tf.where(k, tf.matmul(dz, w_hh), tf.zeros([], dz.dtype)),
                            tf.where(k, dc * f, tf.zeros([], dz.dtype)), dz)

                _, _, dxw = tf.scan(back, (dhs, dcs, tcs, gates, shifted(cs), keep),
                                    initializer=(zeros, zeros, tf.zeros_like(xw[0])), reverse=True)
                dhw = dxw
            elif cell == "gru":
                def back(carry, inputs):
                    dh_t, a, h_p, k = inputs
                    r, z, n, hn = tf.split(a, 4, axis=-1)
                    dh = dh_t + carry[0]
                    dn = dh * (1 - z) * (1 - n * n)
                    dr = dn * hn * r * (1 - r)
                    dz = dh * (h_p - n) * z * (1 - z)
                    dhw = tf.concat([dr, dz, dn * r], -1)
                    dh_prev = tf.where(k, tf.matmul(dhw, w_hh) + dh * z, tf.zeros([], dh.dtype))
                    return dh_prev, tf.concat([dr, dz, dn], -1), dhw

                _, dxw, dhw = tf.scan(back, (dhs, gates, h_prev, keep),
                                      initializer=(zeros, tf.zeros_like(xw[0]), tf.zeros_like(xw[0])), reverse=True)
            else:
                def back(carry, inputs):
                    dh_t, h, k = inputs
                    dz = (dh_t + carry[0]) * (1 - h * h)
                    return tf.where(k, tf.matmul(dz, w_hh), tf.zeros([], dz.dtype)), dz

                _, dxw = tf.scan(back, (dhs, hs, keep), initializer=(zeros, tf.zeros_like(xw[0])), reverse=True)
                dhw = dxw
            return dxw, tf.einsum("srg,srh->gh", dhw, h_prev), tf.reduce_sum(dhw, [0, 1])

        return ((hs, cs) if cell == "lstm" else hs), grad

    out = run(xw, w_hh, b_hh)
    return tuple(out) if cell == "lstm" else (out,)


class _CanonicalLayout:
    """A network that takes the canonical (PyTorch-layout) parameters as they are: nothing to convert either way."""

    def sources(self, params: list) -> list:
        return params

    def to_canonical(self, grads: list) -> list:
        return grads


class _GridPlan(_CanonicalLayout):
    """One grid shape (rows x steps) of "concat_rows" (what one XLA-compiled tf.function traces). The batch's slot
    maps (`RowPack`, as tensors) are arguments of the traced function, set here while it traces, so one trace
    serves every batch that packs into the same grid. Parameters stay in PyTorch's layout (no Keras layer)."""

    def __init__(self, spec: RnnSpec, rows: int, steps: int, tf: Any) -> None:
        self.tf, self.spec, self.rows, self.steps = tf, spec, rows, steps
        self.kernel_fallback = f"xla-scan rows[{rows}x{steps}]"
        self.maps: dict = {}

    def forward(self, x: Any, lengths: Any, valid: Any, params: list) -> tuple[Any, list, list]:
        """x right-aligned and zeroed at padding -> (outputs zeroed at padding, [h per layer*dir], [c ...]). The
        reverse direction runs forward over the mirrored layout (each sequence reversed in its own slots), so both
        directions' outputs of a step, and their final states, sit in known slots."""
        tf, m, rows, steps = self.tf, self.maps, self.rows, self.steps
        B, T = x.shape[0], x.shape[1]

        def grid_tm(a):  # slots [rows * steps, F] -> time-major grid [steps, rows, F]
            return tf.transpose(tf.reshape(a, [rows, steps, -1]), [1, 0, 2])

        def slots(a):  # the inverse of grid_tm
            return tf.reshape(tf.transpose(a, [1, 0, 2]), [rows * steps, -1])

        keep = grid_tm(((m["src"] < 0) | (m["src"] % T != 0))[:, None])  # False at each sequence's first step
        seq = _moved_rows(tf, tf.reshape(x, [B * T, -1]), m["src"], m["back"])  # 0 on padding slots
        hs, cs = [], []
        for dirs in params:
            outs = []
            for d, p in enumerate(dirs):
                inp = grid_tm(_moved_rows(tf, seq, m["mirror"], m["mirror"]) if d else seq)
                xw = tf.einsum("sri,gi->srg", inp, p["w_ih"]) + p["b_ih"]
                states = [slots(s) for s in _reset_scan(tf, self.spec.cell, xw, p["w_hh"], p["b_hh"], keep)]
                at_last = [tf.gather(s, tf.maximum(m["last"], 0)) for s in states]  # an empty row's: zeroed later
                hs.append(at_last[0])
                cs += at_last[1:]
                outs.append(_moved_rows(tf, states[0], m["mirror"], m["mirror"]) if d else states[0])
            seq = tf.concat(outs, -1) if len(outs) > 1 else outs[0]
        return tf.reshape(_moved_rows(tf, seq, m["back"], m["src"]), [B, T, -1]), hs, cs


class _ScanNet(_CanonicalLayout):
    """The cell math in `tf.scan` with a masked carry; both directions of a layer share one scan."""

    kernel_fallback = "tf-while"

    def __init__(self, adapter: Any, spec: RnnSpec) -> None:
        self.adapter, self.tf, self.spec = adapter, adapter.tf, spec

    def forward(self, x: Any, lengths: Any, valid: Any, params: list) -> tuple[Any, list, list]:
        tf, reverse = self.tf, self.adapter.reverse_within  # per-sequence reversal; its own inverse
        valid_tm = tf.transpose(valid)[:, None, :, None]  # [T, 1, B, 1]
        hs, cs = [], []
        for dirs in params:
            xs = tf.stack([x, reverse(x, lengths)][: len(dirs)])  # [D, B, T, in]
            w = {k: tf.stack([p[k] for p in dirs]) for k in dirs[0]}
            xw = tf.einsum("dbti,dgi->tdbg", xs, w["w_ih"]) + w["b_ih"][:, None, :]
            seq, last = self._scan(xw, valid_tm, w["w_hh"], w["b_hh"])
            ys = tf.transpose(seq, [1, 2, 0, 3])  # [D, B, T, H]
            y = tf.concat([ys[0], reverse(ys[1], lengths)] if len(dirs) == 2 else [ys[0]], axis=-1)
            x = tf.where(valid[..., None], y, tf.zeros_like(y))
            hs += tf.unstack(last[0])
            cs += tf.unstack(last[1]) if len(last) == 2 else []
        return x, hs, cs

    def _scan(self, xw: Any, valid_tm: Any, w_hh: Any, b_hh: Any) -> tuple[Any, tuple]:
        tf, cell = self.tf, self.spec.cell
        zeros = tf.zeros([xw.shape[1], xw.shape[2], w_hh.shape[2]], dtype=xw.dtype)  # [D, B, H]
        init = (zeros, zeros) if cell == "lstm" else (zeros,)

        def step(carry, elems):
            xw_t, v_t = elems
            hw = tf.matmul(carry[0], w_hh, transpose_b=True) + b_hh[:, None, :]
            new = _cell_step(tf, cell, xw_t, hw, carry)
            return tuple(tf.where(v_t, n, o) for n, o in zip(new, carry, strict=True))

        seq = tf.scan(step, (xw, valid_tm), initializer=init)
        return seq[0], tuple(s[-1] for s in seq)


def _cell_step(tf: Any, cell: str, xw: Any, hw: Any, carry: tuple) -> tuple:
    """One step in PyTorch's formulation: xw = W_ih x + b_ih, hw = W_hh h + b_hh (gate blocks in torch order)."""
    if cell == "rnn":
        return (tf.tanh(xw + hw),)
    if cell == "lstm":
        i, f, g, o = tf.split(xw + hw, 4, axis=-1)
        c = tf.sigmoid(f) * carry[1] + tf.sigmoid(i) * tf.tanh(g)
        return tf.sigmoid(o) * tf.tanh(c), c
    xr, xz, xn = tf.split(xw, 3, axis=-1)
    hr, hz, hn = tf.split(hw, 3, axis=-1)
    r, z = tf.sigmoid(xr + hr), tf.sigmoid(xz + hz)
    n = tf.tanh(xn + r * hn)
    return ((1 - z) * n + z * carry[0],)


class TensorflowRnn:
    """The RNN machinery of the TensorFlow adapter (mixed into `TensorflowAdapter`)."""

    def _keras_net(self, spec: RnnSpec, dtype: str, device: str) -> Any:
        key = (spec, dtype, device)
        if key not in self._nets:
            with self.tf.device(self._dev(device)):
                self._nets[key] = _KerasNet(self.tf, self.keras, spec, dtype, use_cudnn=device == "gpu")
        return self._nets[key]

    def _saturated_net(self, spec: RnnSpec, dtype: str, device: str) -> Any:
        key = ("saturated", spec, dtype, device)
        if key not in self._nets:
            with self.tf.device(self._dev(device)):
                self._nets[key] = _SaturatedNet(self, spec, dtype, use_cudnn=device == "gpu")
        return self._nets[key]

    def _function(self, mode: str, impl: _Impl, spec: RnnSpec, side: str, dtype: str, device: str):
        """The cached tf.function for this configuration (it traces once per input shape)."""
        key = (mode, spec, impl.name, side, dtype, device)
        if key not in self._fns:
            net = impl.net(self, spec, dtype, device)
            self._fns[key] = self._trace(self._body(key, net, side, with_grad=mode == "vjp"))
        return self._fns[key], key

    def _trace(self, body, jit: bool = False):
        """`tf.function(body)`, autograph off, compiled by XLA when `jit`. A partial: TF keys its "frequent
        retracing" warning on the code object, which all bodies share."""
        return self.tf.function(functools.partial(body), autograph=False, jit_compile=jit or None)

    def _call(self, fn, key: tuple, x, L, params, cotangents, device: str):
        """Run a compiled RNN function: RnnOut, or with cotangents (cast to x's dtype) (RnnOut, grads)."""
        tf = self.tf
        with tf.device(self._dev(device)):
            if cotangents is None:
                return RnnOut(*fn(x, L, params), self._kernels[key])
            cot = {k: tf.cast(self.asarray(v, device), x.dtype) for k, v in cotangents.items()}
            (out, h_n, c_n), gx, gp = fn(x, L, params, cot)
        return RnnOut(out, h_n, c_n, self._kernels[key]), {"x": gx, "params": gp}

    def _body(self, key: tuple, net: Any, side: str, with_grad: bool):
        tf = self.tf

        def run(x, lengths, params, cot=None):
            self._traces += 1  # Python body: runs only while tracing
            sources = net.sources(params)
            if not with_grad:
                result = self._forward(net, x, lengths, params, side)
                self._kernels[key] = self._kernel_name(net)
                return result
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch([x, sources])
                out, h_n, c_n = self._forward(net, x, lengths, params, side)
                loss = self._loss(out, h_n, c_n, cot)
            self._kernels[key] = self._kernel_name(net)
            gx, gs = tape.gradient(loss, [x, sources], unconnected_gradients=tf.UnconnectedGradients.ZERO)
            dense = tf.nest.map_structure(tf.convert_to_tensor, [gx, net.to_canonical(gs)])  # no IndexedSlices
            return (out, h_n, c_n), *dense

        return run

    def _forward(self, net: Any, x: Any, lengths: Any, params: list, side: str) -> tuple[Any, Any, Any]:
        """Realign to right padding, zero padded inputs (so NaN never reaches a matmul), run, realign back."""
        tf = self.tf
        valid = self.valid(lengths, x.shape[1])
        if side == "left":
            x = self.realign(x, lengths, to="right")
        out, hs, cs = net.forward(tf.where(valid[..., None], x, tf.zeros_like(x)), lengths, valid, params)
        if side == "left":
            out = self.realign(out, lengths, to="left")
        nonempty = (lengths > 0)[None, :, None]
        h_n = tf.where(nonempty, tf.stack(hs), 0)
        c_n = tf.where(nonempty, tf.stack(cs), 0) if cs else None
        return out, h_n, c_n

    def _loss(self, out: Any, h_n: Any, c_n: Any, cot: dict) -> Any:
        """sum(outputs*cot) + sum(h_n*cot) [+ sum(c_n*cot)]: its gradient is the requested VJP."""
        rs = self.tf.reduce_sum
        loss = rs(out * cot["outputs"]) + rs(h_n * cot["h_n"])
        return loss + rs(c_n * cot["c_n"]) if c_n is not None else loss

    def _kernel_name(self, net: Any) -> str:
        ops = self.tf.compat.v1.get_default_graph().get_operations()
        return "cudnn" if any(op.type.startswith("CudnnRNN") for op in ops) else net.kernel_fallback

    def _inputs(self, spec: RnnSpec, params: list, x: Any, lengths: np.ndarray, device: str):
        tf = self.tf
        with tf.device(self._dev(device)):
            x = self.asarray(x, device)
            params = [[{k: self._tensor(self.asarray(v, device), x.dtype) for k, v in p.items()} for p in dirs]
                      for dirs in params]
            return x, tf.constant(lengths), params

    def _empty(self, impl: _Impl, spec: RnnSpec, x: Any) -> RnnOut:
        """T == 0: every sequence is empty, nothing to run (a scan over zero steps is not defined in Keras)."""
        tf = self.tf
        B, D, H = x.shape[0], spec.num_directions, spec.hidden_size
        state = tf.zeros([spec.num_layers * D, B, H], x.dtype)
        return RnnOut(tf.zeros([B, 0, D * H], x.dtype), state, state if spec.cell == "lstm" else None,
                      impl.kernel_fallback)

    def _rnn_forward(self, impl, spec, params, x, lengths, side, device):
        x, L, params = self._inputs(spec, params, x, lengths, device)
        if x.shape[1] == 0:
            return self._empty(impl, spec, x)
        fn, key = self._function("fwd", impl, spec, side, x.dtype.name, device)
        return self._call(fn, key, x, L, params, None, device)

    def _rnn_vjp(self, impl, spec, params, x, lengths, cotangents, side, device):
        tf = self.tf
        x, L, params = self._inputs(spec, params, x, lengths, device)
        if x.shape[1] == 0:
            zeros = [[{k: tf.zeros_like(v) for k, v in p.items()} for p in dirs] for dirs in params]
            return self._empty(impl, spec, x), {"x": tf.zeros_like(x), "params": zeros}
        fn, key = self._function("vjp", impl, spec, side, x.dtype.name, device)
        return self._call(fn, key, x, L, params, cotangents, device)

    def _plain(self, impl, spec, params, x, lengths, cotangents, side, device, suffix: str):
        """The strategy `impl` run as it is (forward, or vjp with cotangents), `suffix` added to its kernel name:
        what "bucketed" / "time_sliced" run when there is nothing to split."""
        if cotangents is None:
            out = self._rnn_forward(impl, spec, params, x, lengths, side, device)
            return out._replace(kernel=out.kernel + suffix)
        out, grads = self._rnn_vjp(impl, spec, params, x, lengths, cotangents, side, device)
        return out._replace(kernel=out.kernel + suffix), grads

    # -- "bucketed": rows sorted by length into a few trimmed buckets, each through one strategy's network -------
    def rnn_bucket_shapes(self) -> set:
        """(mode, spec, strategy, side, dtype, B, T, bucket batch, bucket steps, permuted) of every bucket function
        traced so far: the distinct compiled shapes of "bucketed", which the ladders of `plan_buckets` bound."""
        return self.__dict__.setdefault("_bucket_shapes", set())

    def _bucketed(self, impl, spec, params, x, lengths, cotangents, side, device):
        """Plan on the host (lengths are NumPy here), run each bucket's tf.function, put the rows back."""
        args = (impl, spec, params, x, lengths, cotangents, side, device)
        if x.shape[1] == 0:  # T == 0, nothing to run: the plain path returns the zeros
            return self._plain(*args, " bucketed[0]")
        tf = self.tf
        plan = _bucket_plan(lengths, x.shape[1])
        if whole_batch(plan, x.shape[0], x.shape[1]):  # the strategy's own tf.function
            return self._plain(*args, " bucketed[1]")
        x, _, params = self._inputs(spec, params, x, lengths, device)
        with tf.device(self._dev(device)):
            cot = None if cotangents is None else {k: tf.cast(self.asarray(v, device), x.dtype)
                                                   for k, v in cotangents.items()}
            parts = [self._run_bucket(impl, spec, side, device, params, x, lengths, b, cot) for b in plan]
            kernel = f"{parts[0][0]} bucketed[{len(plan)}]"
            states = [r[1] for r in parts] if cot is not None else [r[1:] for r in parts]
            out = RnnOut(*(self._unbucket(plan, [s[i] for s in states], axis) for i, axis in enumerate((0, 1, 1))),
                         kernel)
            if cot is None:
                return out
            g_params = tf.nest.map_structure(lambda *g: tf.add_n(g) if len(g) > 1 else g[0], *[r[3] for r in parts])
            return out, {"x": self._unbucket(plan, [r[2] for r in parts], 0), "params": g_params}

    def _run_bucket(self, impl, spec, side, device, params, x, lengths, bucket: Bucket, cot):
        """One bucket's tf.function call -> (kernel, *its results); rows padded with empty rows (length 0)."""
        rows, permute = bucket_rows(bucket, x.shape[0])
        lens = np.where(np.arange(bucket.batch) < bucket.rows.size, lengths[rows], 0)
        mode = "fwd" if cot is None else "vjp"
        key = ("bucket", mode, spec, impl.name, side, x.dtype.name, device, bucket.batch, bucket.steps, permute)
        if key not in self._fns:
            net = impl.net(self, spec, x.dtype.name, device)
            inner = self._body(key, net, side, with_grad=cot is not None)
            self._fns[key] = self._trace(self._bucket_body(key, inner, side, bucket.steps, permute))
        args = (x, self.tf.constant(rows), self.tf.constant(lens), params)
        result = self._fns[key](*args) if cot is None else self._fns[key](*args, cot)
        return (self._kernels[key], *result)

    def _bucket_body(self, key: tuple, inner, side: str, steps: int, permute: bool):
        """Gather the bucket's rows (unless it is the whole batch in order), trim time to `steps` on the valid side
        (steps >= every row's length), run the strategy's body, pad outputs (and grad x) back to T with zeros.
        Exact: the dropped steps are padding for every row of the bucket."""
        tf = self.tf

        def pick(a, rows, axis=0):
            return tf.gather(a, rows, axis=axis) if permute else a

        def trim(a, rows):
            a = pick(a, rows)
            return a[:, :steps] if side == "right" else a[:, a.shape[1] - steps:]

        def untrim(a, T):
            return tf.pad(a, [(0, 0), (0, T - steps) if side == "right" else (T - steps, 0), (0, 0)])

        def run(x, rows, lengths, params, cot=None):
            self.rnn_bucket_shapes().add(key[1:6] + tuple(x.shape[:2]) + key[7:])
            T = x.shape[1]
            if cot is None:
                out, h_n, c_n = inner(trim(x, rows), lengths, params)
                return untrim(out, T), h_n, c_n
            cot = {k: trim(v, rows) if k == "outputs" else pick(v, rows, axis=1) for k, v in cot.items()}
            (out, h_n, c_n), gx, gp = inner(trim(x, rows), lengths, params, cot)
            return (untrim(out, T), h_n, c_n), untrim(gx, T), gp

        return run

    def _unbucket(self, plan: list, parts: list, axis: int):
        """Concatenate the buckets' results along the batch axis and move every row back to its original index
        (one bucket keeps the original order and fills its batch: nothing to move)."""
        if parts[0] is None:
            return None
        if len(plan) == 1:
            return parts[0]
        where = unbucket_index(plan)
        return self.tf.gather(self.tf.concat(parts, axis=axis), where, axis=axis)

    # -- "time_sliced": rows sorted by length, Keras layers over time segments, the state carried across --------
    def _sliced(self, spec, params, x, lengths, cotangents, side, device):
        """Plan the segments on the host (cuts and row counts on ladders, so plans repeat across batches), run the
        plan's tf.function (one trace per distinct plan, `rnn_sliced_plans()`)."""
        lengths = np.asarray(lengths)
        T, B = np.shape(x)[1], lengths.size
        mode = "fwd" if cotangents is None else "vjp"
        shape = ("sliced", mode, spec, side, self.dtype_name(x), device, B, T)  # what a plan is traced for
        traced = self.__dict__.setdefault("_sliced_compiled", {}).setdefault(shape, set())
        plan = _sliced_plan(lengths, T, traced)
        if not plan or whole_segment(plan, B, T):
            # nothing runs (the Keras path returns the zeros), or one segment of the whole batch over every step:
            # Keras's own masked call, without the sort and gathers
            return self._plain(_KERAS, spec, params, x, lengths, cotangents, side, device, " sliced[1]" if plan else "")
        x, L, params = self._inputs(spec, params, x, lengths, device)
        key = (*shape, plan)
        if key not in self._fns:
            base = (spec, x.dtype.name, device)
            if ("sliced", *base) not in self._nets:
                with self.tf.device(self._dev(device)):
                    self._nets[("sliced", *base)] = _SlicedNet(self.tf, self.keras, *base[:2])
            net = _SlicedPlan(self, self._nets[("sliced", *base)], plan)
            self._fns[key] = self._trace(self._body(key, net, side, mode == "vjp"))
            self.rnn_sliced_plans().add(key[1:])
        out = self._call(self._fns[key], key, x, L, params, cotangents, device)
        traced.add(plan)  # traced for this shape now: a later batch it covers may run it (`_sliced_plan`)
        return out

    def rnn_sliced_plans(self) -> set:
        """(mode, spec, side, dtype, device, B, T, plan) of every "time_sliced" function traced so far."""
        return self.__dict__.setdefault("_sliced_plans", set())

    # -- "concat_rows": several sequences end to end per row, the state reset between them ----------------------
    def _concat(self, spec, params, x, lengths, cotangents, side, device):
        """Pack on the host (remembered per batch, no separator: the scan resets its carry itself), run the grid's
        XLA-compiled tf.function with the slot maps as arguments (one trace per grid shape, `rnn_concat_grids()`).
        Where nothing runs, or packing leaves one LSTM sequence per row, the batch runs as one padded Keras call
        (saturated_gate's function; the tanh RNN's: the Keras layers'): on equal lengths (B=64 T=128 H=128, fwd +
        bwd, 2 cores) the LSTM's grid took 1.09x saturated_gate's time, while the GRU's took 0.73x and the tanh
        RNN's 0.41x the best Keras call, so those two keep their grid."""
        lengths = np.asarray(lengths, dtype=np.int64)
        T, B = np.shape(x)[1], lengths.size
        pack = _concat_pack(spec, lengths, T)
        if pack is None:
            plain = _concat_plain(spec)
            return self._plain(plain, spec, params, x, lengths, cotangents, side, device, f" rows[{B}x{T}]")
        x, L, params = self._inputs(spec, params, x, lengths, device)
        mode = "fwd" if cotangents is None else "vjp"
        key = ("concat", mode, spec, side, x.dtype.name, device, B, T, pack.rows, pack.steps)
        if key not in self._fns:
            plan = _GridPlan(spec, pack.rows, pack.steps, self.tf)
            inner = self._body(key, plan, side, mode == "vjp")

            def with_maps(x, lengths, maps, params, cot=None):
                plan.maps = maps
                return inner(x, lengths, params) if cot is None else inner(x, lengths, params, cot)

            self._fns[key] = self._trace(with_maps, jit=True)
            self.rnn_concat_grids().add(key[1:])
        with self.tf.device(self._dev(device)):
            maps = {k: self.tf.constant(getattr(pack, k)) for k in ("src", "mirror", "back", "last")}
        fn = self._fns[key]
        return self._call(lambda x, L, p, *cot: fn(x, L, maps, p, *cot), key, x, L, params, cotangents, device)

    def rnn_concat_grids(self) -> set:
        """(mode, spec, side, dtype, device, B, T, rows, steps) of every "concat_rows" function traced so far."""
        return self.__dict__.setdefault("_concat_grids", set())

    def raw_rnn(self, spec, params, x, lengths, device="cpu", *, backward=False, cotangents=None):
        """Stacked Keras layers called with a `tf.sequence_mask` under one `tf.function`, the way a Keras user
        writes it (right padding, weights assigned once, no validation), forward or with `tf.GradientTape`."""
        tf = self.tf
        net = self._keras_net(spec, self.dtype_name(x), device)
        with tf.device(self._dev(device)):
            x = self.asarray(x, device)
            weights = [[{k: tf.cast(self.asarray(v, device), x.dtype) for k, v in p.items()} for p in d]
                       for d in params]
            sources = net.sources(weights)
            L = tf.constant(np.asarray(lengths))
            cot = {k: tf.cast(self.asarray(v, device), x.dtype) for k, v in (cotangents or {}).items()}

        def forward(x, L):
            mask = tf.sequence_mask(L, x.shape[1])
            out, states = x, []
            for layer in net.layers:
                out, *st = layer(out, mask=mask)
                states += st
            return out, states

        @tf.function(autograph=False)
        def run(x, L):
            return forward(x, L)

        @tf.function(autograph=False)
        def run_backward(x, L):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out, states = forward(x, L)
                loss = tf.reduce_sum(out * cot["outputs"]) + sum(tf.reduce_sum(s) for s in states)
            return tape.gradient(loss, [x, sources])

        def call():
            with tf.device(self._dev(device)):
                return (run_backward if backward else run)(x, L)

        return call


class _Impl:
    """What one TF RNN strategy is made of: its name, its network (Keras layers or a tf.scan) and the kernel
    name when the traced graph holds no cuDNN op."""

    def __init__(self, name: str, net, kernel_fallback: str) -> None:
        self.name, self.net, self.kernel_fallback = name, net, kernel_fallback


def _keras_layers_ok(adapter: Any = None, device: str | None = None, dtype: str | None = None,
                     **spec: Any) -> str | None:
    """The precondition of every strategy that runs Keras's recurrent layers: on TensorFlow's CPU they have no
    bfloat16 kernel (InvalidArgumentError: "Value for attr 'T' of bfloat16 is not in the list of allowed values"),
    whatever the cell; "masked_scan" (its own tf.scan) runs there. A spec without a device means the default, "cpu".
    Reads no adapter (a static precondition)."""
    if dtype == "bfloat16" and device in (None, "cpu"):
        return ("Keras's recurrent layers have no bfloat16 kernel on TensorFlow's CPU (InvalidArgumentError); "
                "use 'masked_scan'")
    return None


def _saturated_ok(adapter: Any = None, **spec: Any) -> str | None:
    return gated_only("keras", "bucketed")(adapter, **spec) or _keras_layers_ok(adapter, **spec)


def _concat_ok(adapter: Any = None, cell: str | None = None, **spec: Any) -> str | None:
    """concat_rows runs saturated_gate's Keras LSTM where packing leaves one sequence per row."""
    why = _keras_layers_ok(adapter, **spec) if cell == "lstm" else None
    return None if why is None else f"an LSTM grid of one sequence per row runs saturated_gate's Keras layers: {why}"


# -- the programs a batch's plan runs (`Strategy.programs`: the bench counts them over many fresh batches) ---------
def _bucket_plan(lengths, T: int) -> list:
    return plan_buckets(np.asarray(lengths), T, step_cost=STEP_COST, call_cost=CALL_COST)


def _sliced_plan(lengths, T: int, compiled=()) -> tuple:
    """The segment plan a batch runs: its own, or a plan `compiled` (traced) for its shape that covers it within
    SLICE_REUSE of its modelled cost (`ladder_segments`)."""
    return ladder_segments(lengths, T, MAX_SEGMENTS, STEP_COST, SLICE_CALL_COST, compiled, SLICE_REUSE)


def _concat_pack(spec: RnnSpec, lengths, T: int):
    """The batch's grid (no separator: the scan resets its carry itself), or None where one padded Keras call runs
    it (`_concat_plain`): nothing runs, or packing leaves one LSTM sequence per row."""
    pack = remembered_pack(lengths, T, gap=0)
    if pack is None or (spec.cell == "lstm" and pack.used >= np.count_nonzero(lengths)):
        return None
    return pack


def _concat_plain(spec: RnnSpec) -> _Impl:
    return _KERAS if spec.cell == "rnn" else _SATURATED


def _plain_programs(impl: _Impl, T: int) -> set:
    """The program of strategy `impl`'s own call (`_plain`): its tf.function, none where there is no step (its
    zeros are made without one)."""
    return {("plain", impl.name)} if T else set()


def _bucketed_programs(adapter, spec, lengths, T: int, vjp: bool, compiled: frozenset) -> set:
    """"bucketed": one tf.function per bucket shape (and whether it gathers rows); Keras's own where one bucket is
    the whole batch (or nothing runs)."""
    if not T:
        return _plain_programs(_KERAS, T)
    plan = _bucket_plan(lengths, T)
    if whole_batch(plan, lengths.size, T):
        return _plain_programs(_KERAS, T)
    return {("bucket", b.batch, b.steps, bucket_rows(b, lengths.size)[1]) for b in plan}


def _sliced_programs(adapter, spec, lengths, T: int, vjp: bool, compiled: frozenset) -> set:
    """"time_sliced": one tf.function per segment plan; Keras's own where the plan is one segment of the whole
    batch, or runs nothing; a batch that a plan traced before covers within SLICE_REUSE runs that one."""
    plan = _sliced_plan(lengths, T, {key[1] for key in compiled if key[0] == "sliced"})
    return _plain_programs(_KERAS, T) if not plan or whole_segment(plan, lengths.size, T) else {("sliced", plan)}


def _concat_programs(adapter, spec, lengths, T: int, vjp: bool, compiled: frozenset) -> set:
    """"concat_rows": one XLA-compiled tf.function per grid shape; the padded Keras call's where none."""
    pack = _concat_pack(spec, lengths, T)
    return _plain_programs(_concat_plain(spec), T) if pack is None else {("grid", pack.rows, pack.steps)}


def _unit(impl: _Impl, doc: str, **kw: Any) -> Strategy:
    return Strategy(impl.name, lambda a, *args: a._rnn_forward(impl, *args),
                    lambda a, *args: a._rnn_vjp(impl, *args), doc=doc, **kw)


_KERAS = _Impl("keras", lambda a, spec, dtype, device: a._keras_net(spec, dtype, device), "keras-while")
_SATURATED = _Impl("saturated_gate", lambda a, spec, dtype, device: a._saturated_net(spec, dtype, device),
                   "keras-while")

STRATEGIES = strategy_table(
    _unit(_KERAS, "keras.layers LSTM/GRU/SimpleRNN with an explicit mask (cuDNN on GPU)", supports=_keras_layers_ok),
    _unit(_Impl("masked_scan", lambda a, spec, dtype, device: _ScanNet(a, spec), "tf-while"),
          "tf.scan with a masked carry, both directions in one scan"),
    _unit(_SATURATED, "left-aligned rows + a padding-indicator input whose weight saturates the input (LSTM) / "
          "update (GRU) gate: Keras's plain unmasked call per layer and direction (cuDNN on GPU)",
          supports=_saturated_ok),
    Strategy("bucketed",
             lambda a, spec, params, x, L, side, dev: a._bucketed(_KERAS, spec, params, x, L, None, side, dev),
             lambda a, spec, params, x, L, cot, side, dev: a._bucketed(_KERAS, spec, params, x, L, cot, side, dev),
             supports=_keras_layers_ok,
             doc="rows sorted by length into <= 4 trimmed buckets (shapes on a ladder), each through the Keras "
                 "layers (the faster network on CPU)",
             programs=_bucketed_programs),
    Strategy("concat_rows",
             lambda a, spec, params, x, L, side, dev: a._concat(spec, params, x, L, None, side, dev),
             lambda a, spec, params, x, L, cot, side, dev: a._concat(spec, params, x, L, cot, side, dev),
             supports=_concat_ok,
             doc="several sequences end to end per row (first-fit decreasing, grid shapes on ladders), one "
                 "XLA-compiled tf.scan per layer and direction over the grid with the carry reset to 0 at each "
                 "sequence's first step, its gradient written out (a reverse scan)",
             programs=_concat_programs),
    Strategy("time_sliced",
             lambda a, spec, params, x, L, side, dev: a._sliced(spec, params, x, L, None, side, dev),
             lambda a, spec, params, x, L, cot, side, dev: a._sliced(spec, params, x, L, cot, side, dev),
             supports=_keras_layers_ok,
             doc="rows sorted by length, Keras layers over <= 8 time segments (cuts and row counts on ladders), "
                 "the state carried across; masked steps carry each row's final state",
             programs=_sliced_programs),
)
