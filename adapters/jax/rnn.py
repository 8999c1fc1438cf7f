"""JAX masked RNNs: jit-compiled masked `lax.scan` strategies.

Global JAX settings made when the adapter is created (they apply to the whole process, which is why the harness
runs each framework in its own process when it times or measures):
- `jax_enable_x64`: without it JAX silently turns float64 inputs into float32. Under x64, float32 inputs still stay
  float32 here: constants are Python scalars (weakly typed, they take the array's dtype), parameters and
  cotangents are cast to x's dtype before they reach a jitted function, and integer index math never meets floats.
- `jax_default_matmul_precision = "highest"`: full float32 matmuls on GPU (no TF32), as correctness runs require.

RNN strategies (all exact, kernel "xla-scan", one `jax.jit` per (spec, strategy, side) whose own cache is keyed by
shapes and dtypes; lengths are a traced argument, so new length values never retrace, except that "bucketed" compiles
once per new bucket shape, a bounded set):
- "scan" (default): one `lax.scan` per direction and layer whose carry only advances at valid steps
  (`jnp.where(valid_t, new, old)`). The backward direction is the same scan with `reverse=True`: the carry stays
  at zero through a row's padding, so it starts at the row's own last valid step. Left padding needs no
  realignment for the same reason. No gathers at all.
- "scan_flip": the Flax `nn.RNN` recipe: realign left padding to the right, reverse each row within its own
  length with a gather (`flip_sequences`), run an unmasked scan that records every carry, take the final state
  at step length-1, flip the outputs back.
- "scan_unroll8": "scan" with `lax.scan(unroll=8)`, the usual JAX speed knob (fewer loop iterations, larger
  fused bodies; it pays on GPU, while on XLA:CPU its backward pass is about 2x slower than "scan").
- "scan_graph" (GPU): "scan_unroll8"'s program compiled with `GRAPH_OPTIONS`, which make XLA:GPU record its while
  loops into command buffers: CUDA graphs in which the device runs the loop (a conditional WHILE node) and each
  step's kernels, where by default the host launches them one by one. The "graph-captured loop" of torch's
  "graph_loop", for a step that is latency-bound on a GPU. Kernel "xla-scan cuda-graph": what XLA was asked for,
  since XLA keeps a loop it cannot record on the host without a word (its time beside "scan_unroll8"'s, the same
  program, tells; an `xla_dump_to` dump shows the command buffers). Not yet timed on a GPU.
- "bucketed": turns padding into speed. On the host (lengths are NumPy when the strategy runs) the rows are sorted
  by length and cut into <= 4 buckets by a small dynamic program over a cost model (`plan_buckets`); each bucket's
  time is trimmed to its longest row and rounded UP a ladder (1, 2, 3, 4, 6, 8, 12, ... capped at T), its batch up
  the powers of two (padded with empty rows), so jit compiles stay bounded across batches (`rnn_bucket_shapes()`
  lists them). Each bucket runs the "scan" network in its own jit (gather rows, trim, scan, pad back to T); the
  results are concatenated and put back in row order, parameter gradients summed over buckets. Exact by
  construction: a trimmed step is padding for every row of its bucket. Kernel "xla-scan bucketed[k]". On XLA:CPU
  (LSTM B=64 T=128 H=128, forward+backward) ~2.4x on a lognormal batch and ~5x on a zipf one; on an equal batch
  it is one bucket, the whole batch in order, i.e. "scan" (without its masks where every row is T long: nothing is
  padded, and the LSTM's per-step selects cost "scan" ~5% there). The price: one compile per new bucket shape (~1-3 s).
  An unmasked "saturated gate" scan was not added: it keeps every padded step, and the unmasked "scan_flip" is no
  faster than "scan" on CPU, so removing the per-step `where` cannot pay.
- "time_sliced": the rows sorted by length (in the jit), the time axis cut into <= 8 segments by the shared
  `plan_segments` with cuts on the time ladder and row counts up the batch ladder (so plans repeat across batches:
  one compile per distinct plan and shape, `rnn_sliced_plans()`), each segment one masked scan over the rows still
  running (a prefix of the sorted rows) from the carry the previous segment left, all in one jit. A row that ends
  inside a segment (or is rounded into one after its end) keeps its final state through the masked carry; its
  outputs there are 0. The reverse direction runs forward on each row reversed within its length. Unlike
  bucketing, no step is repeated and a segment pays only its own rows: ~7 us per row-step and ~20-30 us per step
  on XLA:CPU (LSTM H=128, forward+backward), so the padded row-steps are what it removes. Kernel
  "xla-scan sliced[k]"; one segment of the whole batch over every step is "scan"'s own call (unmasked where
  every row is T long, as for "bucketed").
- "concat_rows": several sequences end to end in each row of a [rows, steps] grid (`adapters.spec.pack_rows` with
  no separator: first-fit decreasing into rows as long as the longest sequence rounded up the time ladder, the row
  count on a quarter ladder), one scan per direction over the whole grid whose carry is set to 0 (`jnp.where`) at
  each sequence's first slot, so nothing passes between sequences, forward or backward; h (and c) recorded at every
  slot, each sequence's final state read at its last slot; the reverse direction over the mirrored layout (each
  sequence reversed within its own slots). Every cell, the tanh RNN too. Its gradient is written out
  (`reset_scan`, `jax.custom_vjp`): a reverse scan over the saved gate activations, W_hh's and b_hh's gradients
  one product and one sum after the loop instead of one small product per step inside it, and the slot moves'
  gradients are the inverse gathers (`moved_rows`), not scatter-adds. Where time_sliced runs every step of the
  longest row with the rows still running, packing runs the same steps for ~B/3 rows (lognormal) or ~B/8 (zipf),
  none of them idle: B=64 T=128 H=128 LSTM forward + backward on XLA:CPU (2 cores), against the padded baseline,
  4.75x (lognormal, 20x128 grid; side by side 4.90x) and 13.8x (zipf, 8x96; 13.0x), where JAX's own transpose of
  the scan gave 3.76x / 4.06x and 6.64x / 7.11x in the same session. The slot maps are arguments of the jitted
  function: one compile per grid shape (`rnn_concat_grids()`). Where packing leaves one sequence per row over
  every step (equal lengths) the grid of the GRU and the tanh RNN still runs (with the written-out gradient it
  took 0.98x and 0.74x "scan"'s time there) but the LSTM's does not: 1.00x "scan"'s time when first measured, 1.14x
  side by side on 2026-12-06 (rounds 1.11-1.15), so the LSTM runs "scan"'s own call there, as where nothing runs
  (kernel "xla-scan rows[BxT]").
  Kernel "xla-scan rows[<rows>x<steps>]".
- "concat_pallas" (GPU): "concat_rows"' grid and written-out gradient with its two loops (the forward scan and the
  gradient's reverse scan) as Pallas Triton kernels (`adapters/jax/pallas_rnn.py`): each program holds 16 rows and
  runs every step of the grid itself, so no step is a kernel launch (XLA runs a `lax.scan` step as a few kernels the
  host launches, ~15 us a step for "scan_unroll8" on an H200). Every cell. float32 products in 3xTF32 (as accurate as
  float32 here, `tests/test_pallas_rnn.py`), float64 exact. Equal lengths run its grid too (one sequence per row), not
  the masked scan. Hidden sizes above 128 run in 64-unit column blocks (W_hh in 64 x 64 tiles: one 256 x 256 tile
  would not fit a thread block's shared memory). Kernel "pallas-triton 3xtf32 rows[<rows>x<steps>]" ("pallas-triton"
  in float64; "... tiles[64] rows[...]" in column blocks). Hidden sizes above 256 run concat_rows' scans on the
  grid instead (kernel "xla-scan unroll8 rows[...]"): at H=512 XLA's compile took 298 s per grid shape and the
  forward kernel spilled 12.6 KB a thread (`pallas_rnn.MAX_HIDDEN`). On the CPU it runs past its precondition only,
  in Pallas's interpret mode (the tests); `scripts/gpu_aot.py` compiles it for an H100 there with XLA's own Triton
  and ptxas (`make gpu-aot`). Not yet timed on a GPU.
  Pallas's Triton backend is deprecated since JAX 0.11.0 (to be removed in a later version; Mosaic GPU is its
  successor).
- "bucketed", "time_sliced" and "concat_rows" unroll their scans per device (`UNROLL`): 1 on the CPU, 8 on a GPU,
  where a step is latency-bound (their kernel names then read "xla-scan unroll8 ...").
- "bucketed", "time_sliced" and "concat_rows" name the programs a batch runs from their own host planners
  (`Strategy.programs`: bucket shapes and the gradient sum per bucket count, segment plans, grid shapes), compiling
  nothing, so the bench counts the compiles of hundreds of fresh batches. On zipf lengths (B=64, T=128) each
  batch's own segment plan rarely repeats (197 new ones in 300 batches, 51 in the last 100, where the grids
  brought 14), so "time_sliced" runs a plan compiled before for the batch's shape where it covers the batch (every
  row still running at each step, steps up to the longest row: exact) within SLICE_REUSE (25%) of the own plan's
  modelled cost (`adapters.spec.reuse_segments`): 36 new plans over 300 zipf batches (4 lognormal), the plans run
  costing 1.09x (1.06x) the own plans' on average in the cost model; measured on reused zipf batches, 1.13x where
  the model said 1.17x.
- "cudnn_lstm" (GPU, LSTM, float32): `jax.experimental.rnn.lstm`, JAX's cuDNN LSTM with seq_lengths, every layer
  and direction in one call; left padding realigned; zero-length rows run as length 1 and are zeroed (cuDNN's own
  state for a zero length was seen 0.30 off on an H100). Kernel "cudnn". It has no CPU lowering, so on CPU only its
  glue is tested (around JAX's `lstm_ref` in cuDNN's place, `tests/test_rnn_fast.py`).
Padded inputs are replaced by 0 with `jnp.where` before any matmul, so NaN in padding never reaches a product whose
result is later masked (which would poison gradients), and padded outputs are selected to exactly 0.
"""
from __future__ import annotations

import os
from functools import cache, partial

import numpy as np

from adapters.spec import (
    Bucket,
    RnnOut,
    RnnSpec,
    Strategy,
    bucket_rows,
    ladder_segments,
    plan_buckets,
    remembered_pack,
    strategy_table,
    unbucket_index,
    whole_batch,
    whole_segment,
)

PARAM_KEYS = ("w_ih", "w_hh", "b_ih", "b_hh")


class JaxRnn:
    """The RNN machinery of the JAX adapter (mixed into `JaxAdapter`)."""

    def params_to_jax(self, params, dtype, device: str = "cpu") -> list[list[dict]]:
        """Canonical (PyTorch-layout) params -> the jax pytree the jitted functions take.

        The canonical layout serves as the pytree as is (lists of dicts of [G*H, in] weights, gate order kept);
        the conversion only casts to x's dtype and places the arrays on `device`.
        """
        return [[{k: self.asarray(v, device).astype(dtype) for k, v in d.items()} for d in layer] for layer in params]

    @staticmethod
    def params_from_jax(tree) -> list[list[dict]]:
        """Inverse of `params_to_jax` for gradients: the same nesting, layout (no transposes) and key order (JAX
        rebuilds dicts with sorted keys; the canonical order is w_ih, w_hh, b_ih, b_hh)."""
        return [[{k: d[k] for k in PARAM_KEYS} for d in layer] for layer in tree]

    def _rnn_forward(self, algo, spec, params, x, lengths, side, device):
        fn = self._cached(("rnn", spec, algo, side), lambda: self._jit_net(partial(self._network, spec, algo, side),
                                                                          False, options=_options(algo)))
        return self._call_net(fn, params, self.asarray(x, device), lengths, None, device, _kernel(algo))

    def _rnn_vjp(self, algo, spec, params, x, lengths, cotangents, side, device):
        fn = self._cached(("rnn_vjp", spec, algo, side),
                          lambda: self._jit_net(partial(self._network, spec, algo, side), True,
                                                options=_options(algo)))
        return self._call_net(fn, params, self.asarray(x, device), lengths, cotangents, device, _kernel(algo))

    def _cotangents(self, cotangents: dict, dtype, device) -> tuple:
        """The cotangents as the jitted functions take them: (outputs, h_n, c_n or None), in x's dtype."""
        return tuple(self.asarray(cotangents[k], device).astype(dtype) if k in cotangents else None
                     for k in ("outputs", "h_n", "c_n"))

    def _call_net(self, fn, params, x, lengths, cotangents, device, kernel: str, aux: tuple = ()):
        """One call of a `_jit_net` function (`aux`: its further arguments): the RnnOut, and with cotangents also
        the gradients (canonical)."""
        args = (self.params_to_jax(params, x.dtype, device), x, self.asarray(lengths, device))
        if cotangents is None:
            return RnnOut(*self._keep(fn(*args, *aux)), kernel)
        (outputs, h_n, c_n), g_params, g_x = self._keep(fn(*args, self._cotangents(cotangents, x.dtype, device),
                                                           *aux))
        return RnnOut(outputs, h_n, c_n, kernel), {"x": g_x, "params": self.params_from_jax(g_params)}

    def _plain_scan(self, spec, params, x, lengths, cotangents, side, device, kernel: str):
        """The masked scan's own jitted call under another strategy's kernel name (a plan that is the whole
        batch, or runs nothing); where every row is T long (nothing is padded), the same scan without its masks."""
        L = np.asarray(lengths)
        full = L.size > 0 and bool((L == x.shape[1]).all())
        algo = ("full" if full else "masked", _unroll(device))
        if cotangents is None:
            return self._rnn_forward(algo, spec, params, x, lengths, side, device)._replace(kernel=kernel)
        out, grads = self._rnn_vjp(algo, spec, params, x, lengths, cotangents, side, device)
        return out._replace(kernel=kernel), grads

    def raw_rnn(self, spec, params, x, lengths, device="cpu", *, backward=False, cotangents=None):
        """A user's masked `lax.scan` LSTM/GRU/RNN under `jax.jit` (right padding, no validation, weights already
        JAX arrays), forward or `jax.vjp` forward+backward: the baseline of the adapter's overhead."""
        jax, jnp = self.jax, self.jnp
        net = partial(self._network, spec, ("masked", 1), "right")
        p = self.params_to_jax(params, x.dtype, device)
        n = self.asarray(lengths, device)
        cot = self._cotangents(cotangents, x.dtype, device) if backward else None
        fwd = jax.jit(net)
        bwd = jax.jit(lambda p, x, n, c: jax.vjp(lambda pp, xx: net(pp, xx, n), p, x)[1](c))
        if backward:
            return lambda: jax.block_until_ready(bwd(p, x, n, cot))
        return lambda: jax.block_until_ready(fwd(p, jnp.asarray(x), n))

    def _jit_net(self, net, vjp: bool, traced=None, options: dict | None = None):
        """`jax.jit` of net(params, x, lengths, *aux) -> (outputs, h_n, c_n), or with `vjp` of (that, the parameter
        gradients, x's gradient) given the cotangents (before `aux`), compiled with XLA's `options` if given. Its
        Python body runs only when JAX traces: it counts a compile and calls `traced(x)` if given."""

        def on_trace(x):
            self._compiles += 1
            if traced is not None:
                traced(x)

        def forward(params, x, lengths, *aux):
            on_trace(x)
            return net(params, x, lengths, *aux)

        def forward_vjp(params, x, lengths, cot, *aux):
            on_trace(x)
            out, pullback = self.jax.vjp(lambda p, xx: net(p, xx, lengths, *aux), params, x)
            g_params, g_x = pullback(cot)
            return out, g_params, g_x

        fn = forward_vjp if vjp else forward
        return self.jax.jit(fn, compiler_options=options) if options else self.jax.jit(fn)

    # -- "bucketed": rows sorted by length, a few trimmed buckets, each through the jitted masked scan ------------
    def rnn_bucket_shapes(self) -> set:
        """(mode, spec, side, dtype, B, T, bucket batch, bucket steps, permuted) of every bucket function traced so
        far: the distinct compiled shapes of "bucketed", which the ladders of `plan_buckets` keep bounded."""
        return self.__dict__.setdefault("_bucket_shapes", set())

    def _bucketed(self, spec, params, x, lengths, cotangents, side, device):
        """Plan on the host (lengths are NumPy here), run each bucket, put rows back; grads when cotangents."""
        x = self.asarray(x, device)
        B, T = x.shape[:2]
        plan = self._bucket_plan(lengths, T)
        if whole_batch(plan, B, T):  # the masked scan's own jitted call
            return self._plain_scan(spec, params, x, lengths, cotangents, side, device,
                                    f"{_scan_name(_unroll(device))} bucketed[1]")
        p = self.params_to_jax(params, x.dtype, device)
        cot = None if cotangents is None else self._cotangents(cotangents, x.dtype, device)
        parts = [self._run_bucket(spec, side, p, x, lengths, b, cot, device) for b in plan]
        states = [r[0] for r in parts] if cot is not None else parts
        outputs, h_n, c_n = (self._unbucket(plan, [s[i] for s in states], axis) for i, axis in enumerate((0, 1, 1)))
        out = RnnOut(outputs, h_n, c_n, f"{_scan_name(_unroll(device))} bucketed[{len(plan)}]")
        if cot is None:
            return self._keep(out)
        grads = {"x": self._unbucket(plan, [r[2] for r in parts], 0),
                 "params": self.params_from_jax(self._sum_trees([r[1] for r in parts]))}
        return self._keep((out, grads))

    @staticmethod
    def _bucket_plan(lengths, T: int) -> list[Bucket]:
        return plan_buckets(np.asarray(lengths), T, step_cost=STEP_COST, call_cost=CALL_COST)

    def _bucketed_programs(self, spec, lengths, T: int, vjp: bool, compiled: frozenset) -> set:
        """`Strategy.programs` of "bucketed": one program per bucket shape (and whether it gathers rows), plus the
        jitted sum of the buckets' gradients, traced once per bucket count; the masked scan's where one bucket is
        the whole batch."""
        plan = self._bucket_plan(lengths, T)
        if whole_batch(plan, lengths.size, T):
            return {_plain_program(lengths, T)}
        keys = {("bucket", b.batch, b.steps, bucket_rows(b, lengths.size)[1]) for b in plan}
        return keys | ({("bucket_sum", len(plan))} if vjp and len(plan) > 1 else set())

    def _run_bucket(self, spec, side, params, x, lengths, bucket: Bucket, cot, device):
        """One bucket's jitted call; its rows padded to the bucket's batch with empty rows (length 0)."""
        rows, permute = bucket_rows(bucket, x.shape[0])
        lens = np.where(np.arange(bucket.batch) < bucket.rows.size, lengths[rows], 0)
        vjp = cot is not None
        unroll = _unroll(device)
        fn = self._cached(("rnn_bucket", spec, side, bucket.steps, vjp, permute, unroll),
                          lambda: self._bucket_fn(spec, side, bucket.steps, vjp, permute, unroll))
        args = (params, x, self.asarray(rows, device), self.asarray(lens, device))
        return fn(*args, cot) if vjp else fn(*args)

    def _unbucket(self, plan: list, parts: list, axis: int):
        """Concatenate the buckets' results along the batch axis and move every row back to its original index
        (one bucket keeps the original order and fills its batch: nothing to move)."""
        if parts[0] is None:
            return None
        if len(plan) == 1:
            return parts[0]
        where = unbucket_index(plan)
        return self.jnp.take(self.jnp.concatenate(parts, axis=axis), self.jnp.asarray(where), axis=axis)

    def _sum_trees(self, trees: list):
        """Sum the buckets' parameter gradients in one jitted call (traced once per bucket count and dtype)."""
        if len(trees) == 1:
            return trees[0]

        def total(trees):
            self._compiles += 1
            return self.jax.tree_util.tree_map(lambda *a: sum(a[1:], a[0]), *trees)

        return self._cached(("rnn_bucket_sum",), lambda: self.jax.jit(total))(trees)

    def _bucket_fn(self, spec: RnnSpec, side: str, steps: int, vjp: bool, permute: bool, unroll: int):
        """Jitted: gather the bucket's rows (unless it is the whole batch in order), trim time to `steps` on the valid
        side (steps >= every row's length), run the masked scan, pad outputs (and grad x) back to T with zeros.
        Exact: the dropped steps are padding for every row of the bucket, where the masked carry would not move."""
        jnp = self.jnp
        net = partial(self._network, spec, ("masked", unroll), side)

        def trim(a, rows):
            a = jnp.take(a, rows, axis=0) if permute else a
            return a[:, :steps] if side == "right" else a[:, a.shape[1] - steps:]

        def untrim(a, T):
            return jnp.pad(a, [(0, 0), (0, T - steps) if side == "right" else (T - steps, 0), (0, 0)])

        def traced(x, rows):  # Python body: runs only when JAX traces
            self._compiles += 1
            self.rnn_bucket_shapes().add(("vjp" if vjp else "fwd", spec, side, x.dtype.name, *x.shape[:2],
                                          rows.shape[0], steps, permute))

        def forward(params, x, rows, lengths):
            traced(x, rows)
            out, h_n, c_n = net(params, trim(x, rows), lengths)
            return untrim(out, x.shape[1]), h_n, c_n

        def forward_vjp(params, x, rows, lengths, cot):
            traced(x, rows)
            (out, h_n, c_n), pullback = self.jax.vjp(lambda p, xx: net(p, xx, lengths), params, trim(x, rows))
            c_out, c_h, c_c = cot
            pick = (lambda a: jnp.take(a, rows, axis=1)) if permute else (lambda a: a)
            g_params, g_x = pullback((trim(c_out, rows), pick(c_h), None if c_c is None else pick(c_c)))
            T = x.shape[1]
            return (untrim(out, T), h_n, c_n), g_params, untrim(g_x, T)

        return self.jax.jit(forward_vjp if vjp else forward)

    # -- "time_sliced": rows sorted by length (in the jit), the masked scan over time segments, carry across ------
    def _sliced(self, spec, params, x, lengths, cotangents, side, device):
        """Plan the segments on the host (cuts and row counts on ladders, so plans repeat across batches), run the
        plan's jitted function (one compile per distinct plan and shape, `rnn_sliced_plans()`)."""
        lengths = np.asarray(lengths)
        x = self.asarray(x, device)
        B, T = x.shape[:2]
        vjp, unroll = cotangents is not None, _unroll(device)
        shape = (vjp, spec, side, x.dtype.name, device, B, T)  # what a compiled plan is compiled for
        compiled = self.__dict__.setdefault("_sliced_compiled", {}).setdefault(shape, set())
        plan = self._sliced_plan(lengths, T, compiled)
        if not plan or whole_segment(plan, B, T):
            # nothing runs (the masked scan returns its zeros), or one segment of the whole batch over every step:
            # the masked scan's own jitted call, without the sort and gathers
            name = _scan_name(unroll)
            return self._plain_scan(spec, params, x, lengths, cotangents, side, device,
                                    f"{name} sliced[1]" if plan else name)

        def traced(x):  # the plan's compiled shapes, recorded when JAX traces
            self.rnn_sliced_plans().add(("vjp" if vjp else "fwd", spec, side, x.dtype.name, *x.shape[:2], plan))

        fn = self._cached(("rnn_sliced", spec, side, plan, vjp, unroll),
                          lambda: self._jit_net(partial(self._sliced_network, spec, side, plan, unroll), vjp, traced))
        out = self._call_net(fn, params, x, lengths, cotangents, device, f"{_scan_name(unroll)} sliced[{len(plan)}]")
        compiled.add(plan)  # compiled for this shape now: a later batch it covers may run it (`_sliced_plan`)
        return out

    @staticmethod
    def _sliced_plan(lengths, T: int, compiled=()) -> tuple:
        """The segment plan a batch runs: its own, or a plan `compiled` for its shape that covers it within
        SLICE_REUSE of its modelled cost (`ladder_segments`)."""
        return ladder_segments(lengths, T, SLICE_MAX_SEGMENTS, SLICE_STEP_COST, SLICE_CALL_COST,
                               compiled, SLICE_REUSE)

    def _sliced_programs(self, spec, lengths, T: int, vjp: bool, compiled: frozenset) -> set:
        """`Strategy.programs` of "time_sliced": one program per segment plan (the masked scan's where the plan
        is one segment of the whole batch, or runs nothing); a batch that a plan compiled before covers within
        SLICE_REUSE runs that one."""
        plan = self._sliced_plan(lengths, T, {key[1] for key in compiled if key[0] == "sliced"})
        if not plan or whole_segment(plan, lengths.size, T):
            return {_plain_program(lengths, T)}
        return {("sliced", plan)}

    def rnn_sliced_plans(self) -> set:
        """(mode, spec, side, dtype, B, T, plan) of every "time_sliced" function compiled so far."""
        return self.__dict__.setdefault("_sliced_plans", set())

    def _sliced_network(self, spec: RnnSpec, side: str, plan: tuple, unroll: int, params, x, lengths):
        """(outputs, h_n, c_n) of the network run segment by segment; traced, never eager. The rows are sorted by
        descending length; segment j runs the masked scan over its steps on the first `rows` sorted rows (every
        row still running, plus rows the batch ladder rounds in, which ended: masked, their carry does not move),
        from the carry the previous segment left. A row that ends inside a segment keeps its final state (the
        masked carry), its outputs there are 0; rows in no segment (length 0) keep the zero state. The reverse
        direction runs forward on each row reversed within its length."""
        jnp = self.jnp
        T, top = x.shape[1], plan[-1].stop
        x = jnp.where(self.valid(lengths, T, side)[..., None], x, 0)  # padding (even NaN) never reaches a matmul
        if side == "left":
            x = self.realign(x, lengths, to="right")
        order = jnp.argsort(-lengths, stable=True)
        back = jnp.argsort(order)  # sorted rows -> batch order
        n = lengths[order]
        layer_in = jnp.swapaxes(jnp.take(x, order, axis=0)[:, :top], 0, 1)  # time-major [top, B, F], sorted rows
        ok = jnp.arange(top)[:, None] < n[None, :]
        finals = []
        for layer in params:
            outs = []
            for d, p in enumerate(layer):
                seq = self._reverse_tm(layer_in, n) if d else layer_in
                y, state = self._sliced_scan(spec.cell, p, seq, ok, plan, unroll)
                outs.append(self._reverse_tm(y, n) if d else y)
                finals.append(state)
            layer_in = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        out = jnp.take(jnp.swapaxes(layer_in, 0, 1), back, axis=0)
        out = jnp.pad(out, [(0, 0), (0, T - top), (0, 0)])
        if side == "left":
            out = self.realign(out, lengths, to="left")
        h_n = jnp.stack([jnp.take(s[0], back, axis=0) for s in finals])
        c_n = jnp.stack([jnp.take(s[1], back, axis=0) for s in finals]) if spec.cell == "lstm" else None
        return out, h_n, c_n

    def _sliced_scan(self, cell: str, p: dict, seq, ok, plan: tuple, unroll: int = 1):
        """One direction over the segments: seq [top, B, in] (sorted rows, 0 at padding), ok [top, B] ->
        (outputs [top, B, H], 0 at padding; the final carry of every sorted row)."""
        jnp = self.jnp
        B = seq.shape[1]
        carry, ys = self._zero_state(cell, seq, p), []
        for seg in plan:
            rows, steps = seg.rows, slice(seg.start, seg.stop)
            y, state = self._masked_scan(cell, p, seq[steps, :rows], ok[steps, :rows], False, unroll,
                                         tuple(c[:rows] for c in carry))
            carry = tuple(jnp.concatenate([s, c[rows:]]) if rows < B else s for s, c in zip(state, carry, strict=True))
            ys.append(jnp.pad(y, [(0, 0), (0, B - rows), (0, 0)]) if rows < B else y)
        return (jnp.concatenate(ys) if len(ys) > 1 else ys[0]), carry

    # -- "concat_rows": several sequences end to end per row, the carry reset at each sequence's first step -----
    def _concat(self, spec, params, x, lengths, cotangents, side, device, pallas: bool = False):
        """Pack on the host (remembered per batch), run the grid's jitted function with the slot maps as arguments
        (one compile per grid shape, `rnn_concat_grids()`), one sequence per row included. Where nothing runs, the
        masked scan's own call runs the batch. `pallas`: the grid's two loops as Pallas kernels ("concat_pallas";
        Triton on a GPU, interpret mode elsewhere), on every grid, one sequence per row included."""
        lengths = np.asarray(lengths, dtype=np.int64)
        x = self.asarray(x, device)
        B, T = x.shape[:2]
        pallas = pallas and _pallas_fits(spec)
        pack = self._concat_pack(spec, lengths, T, pallas)
        if pack is None:
            return self._plain_scan(spec, params, x, lengths, cotangents, side, device,
                                    f"{_scan_name(_unroll(device))} rows[{B}x{T}]")
        vjp, grid, unroll = cotangents is not None, (pack.rows, pack.steps), _unroll(device)
        kernels, name = None, _scan_name(unroll)
        if pallas:
            from adapters.jax.pallas_rnn import kernel_name, rnn_loops

            kernels = rnn_loops(self.jax, spec.cell, device != "gpu")
            name = kernel_name(x.dtype.name, device != "gpu", spec.hidden_size)

        def traced(x):  # the grid's compiled shapes, recorded when JAX traces
            self.rnn_concat_grids().add(("vjp" if vjp else "fwd", spec, side, x.dtype.name, *x.shape[:2], *grid))

        fn = self._cached(("rnn_concat", spec, side, grid, vjp, unroll, kernels),
                          lambda: self._jit_net(partial(self._concat_network, spec, side, grid, unroll, kernels), vjp,
                                                traced))
        maps = tuple(self.asarray(getattr(pack, k), device) for k in ("src", "mirror", "back", "last"))
        return self._call_net(fn, params, x, lengths, cotangents, device, f"{name} rows[{grid[0]}x{grid[1]}]",
                              (maps,))

    @staticmethod
    def _concat_pack(spec, lengths, T: int, pallas: bool = False):
        """The batch's grid (no separator: the scan resets its carry itself), or None where the masked scan's own
        call runs it: nothing runs, or (`lax.scan` loops) an LSTM grid of one sequence per row over every step
        (equal lengths), which does not beat the scan there (side by side 1.14x its time, rounds 1.11-1.15,
        2026-12-06; GRU and tanh RNN grids were 0.98x and 0.74x of it and keep theirs)."""
        pack = remembered_pack(lengths, T, gap=0)
        if pack is None or (not pallas and spec.cell == "lstm" and pack.used >= np.count_nonzero(lengths)
                            and pack.steps >= T):
            return None
        return pack

    def _concat_programs(self, spec, lengths, T: int, vjp: bool, compiled: frozenset, pallas: bool = False) -> set:
        """`Strategy.programs` of "concat_rows" and "concat_pallas": one program per grid shape (the masked scan's
        where none)."""
        pack = self._concat_pack(spec, lengths, T, pallas and _pallas_fits(spec))
        return {_plain_program(lengths, T)} if pack is None else {("grid", pack.rows, pack.steps)}

    def rnn_concat_grids(self) -> set:
        """(mode, spec, side, dtype, B, T, rows, steps) of every "concat_rows" and "concat_pallas" function compiled so
        far."""
        return self.__dict__.setdefault("_concat_grids", set())

    def _concat_network(self, spec: RnnSpec, side: str, grid: tuple, unroll: int, kernels, params, x, lengths,
                        maps):
        """(outputs, h_n, c_n) of the network over the packed grid; traced, never eager. Each direction is one scan
        over the grid's steps (all rows at once) whose carry is set to 0 at every sequence's first slot, so no
        state passes from one sequence to the next, forward or backward (`jnp.where`, not a product); the scan
        records h (and c) at every slot, each sequence's final state is read at its last slot. The reverse
        direction runs over the mirrored layout (each sequence reversed within its own slots)."""
        jnp = self.jnp
        (B, T), (rows, steps) = x.shape[:2], grid
        src, mirror, back, last = maps
        x = jnp.where(self.valid(lengths, T, side)[..., None], x, 0)  # padding (even NaN) never reaches a matmul
        if side == "left":
            x = self.realign(x, lengths, to="right")

        move = moved_rows(self.jax)  # move(a, index, inverse): rows of a [N, F] by index, 0 where index < 0

        def grid_tm(a):  # slots [S, F] -> time-major grid [steps, rows, F]
            return jnp.swapaxes(a.reshape(rows, steps, -1), 0, 1)

        keep = grid_tm((src < 0) | (src % T != 0))[..., 0]  # False at each sequence's first slot: the reset
        layer_in, finals = move(x.reshape(B * T, -1), src, back), []
        for layer in params:
            outs = []
            for d, p in enumerate(layer):
                seq = move(layer_in, mirror, mirror) if d else layer_in  # the mirror is its own inverse
                history = self._reset_scan(spec.cell, p, grid_tm(seq), keep, unroll, kernels)
                flat = [jnp.swapaxes(s, 0, 1).reshape(rows * steps, -1) for s in history]  # back to slot order
                finals.append(tuple(jnp.take(s, jnp.maximum(last, 0), axis=0) for s in flat))
                outs.append(move(flat[0], mirror, mirror) if d else flat[0])
            layer_in = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        out = move(layer_in, back, src).reshape(B, T, -1)
        if side == "left":
            out = self.realign(out, lengths, to="left")
        live = (lengths > 0)[None, :, None]  # an empty row's state is 0, not the slot it was pointed at
        h_n = jnp.where(live, jnp.stack([s[0] for s in finals]), 0)
        c_n = jnp.where(live, jnp.stack([s[1] for s in finals]), 0) if spec.cell == "lstm" else None
        return out, h_n, c_n

    def _reset_scan(self, cell: str, p: dict, x, keep, unroll: int = 1, kernels: tuple | None = None) -> tuple:
        """One direction over a time-major grid x [steps, rows, in]: the carry replaced by 0 where `keep` [steps,
        rows] is False, then one cell step; returns the carry at every slot ((h,) or (h, c), [steps, rows, H]).
        The input projection of every slot is one product before the loop; the loop and its gradient are
        `reset_scan`'s (written out)."""
        proj = x @ p["w_ih"].T + p["b_ih"]
        return reset_scan(self.jax, cell, unroll, kernels)(proj, p["w_hh"], p["b_hh"], keep)

    def _network(self, spec: RnnSpec, algo: tuple, side: str, params, x, lengths):
        """(outputs [B,T,D*H], h_n, c_n) of the stacked, possibly bidirectional network; traced, never eager."""
        jnp = self.jnp
        algorithm, unroll = algo[:2]
        T = x.shape[1]
        valid = self.valid(lengths, T, side)
        x = jnp.where(valid[..., None], x, 0)  # padding (even NaN) never reaches a matmul
        if algorithm == "cudnn":
            return self._cudnn_lstm(spec, params, x, lengths, side)
        if algorithm == "flip" and side == "left":
            x = self.realign(x, lengths, to="right")
        layer_in, valid = jnp.swapaxes(x, 0, 1), valid.T  # time-major inside
        finals = []
        for layer in params:
            outs = []
            for d, p in enumerate(layer):
                if algorithm == "masked":
                    y, state = self._masked_scan(spec.cell, p, layer_in, valid, d == 1, unroll)
                elif algorithm == "full":
                    y, state = self._full_scan(spec.cell, p, layer_in, d == 1, unroll)
                else:
                    y, state = self._flip_scan(spec.cell, p, layer_in, lengths, d == 1)
                outs.append(y)
                finals.append(state)
            layer_in = jnp.concatenate(outs, axis=-1)
        out = jnp.swapaxes(layer_in, 0, 1)
        if algorithm == "flip" and side == "left":
            out = self.realign(out, lengths, to="left")
        h_n = jnp.stack([s[0] for s in finals])
        c_n = jnp.stack([s[1] for s in finals]) if spec.cell == "lstm" else None
        return out, h_n, c_n

    def _cudnn_lstm(self, spec: RnnSpec, params, x, lengths, side: str):
        """`jax.experimental.rnn.lstm` (cuDNN, seq_lengths, every layer and direction in one call) on right-aligned
        rows with padding already 0. cuDNN's packed weight vector is every (layer, direction)'s W_ih, W_hh
        flattened, then every b_ih, b_hh (PyTorch gate order), built by one concatenate, so autodiff splits the
        flat gradient back into the canonical leaves. A zero-length row runs as length 1 (cuDNN's state for a
        zero length is not the initial state: seen 0.30 off on an H100) and its outputs and states are then
        selected to 0, so nothing of that step leaks, forward or backward."""
        jnp = self.jnp
        from jax.experimental import rnn as jax_rnn

        T, live = x.shape[1], lengths > 0
        if side == "left":
            x = self.realign(x, lengths, to="right")
        pieces = [p[k] for layer in params for p in layer for k in ("w_ih", "w_hh")]
        weights = jnp.concatenate([w.reshape(-1) for w in pieces]
                                  + [p[k] for layer in params for p in layer for k in ("b_ih", "b_hh")])
        zero = jnp.zeros((spec.num_layers * spec.num_directions, x.shape[0], spec.hidden_size), x.dtype)
        y, h_n, c_n = jax_rnn.lstm(x, zero, zero, weights, jnp.maximum(lengths, 1).astype(jnp.int32),
                                   input_size=spec.input_size, hidden_size=spec.hidden_size,
                                   num_layers=spec.num_layers, dropout=0.0, bidirectional=spec.bidirectional)
        y = jnp.where(self.valid(lengths, T)[..., None], y, 0)
        if side == "left":
            y = self.realign(y, lengths, to="left")
        return y, jnp.where(live[None, :, None], h_n, 0), jnp.where(live[None, :, None], c_n, 0)

    def _reverse_tm(self, x, lengths):
        """Per-row reversal within length of a time-major [T, B, F] array (the shared `reverse_within`)."""
        return self.jnp.swapaxes(self.reverse_within(self.jnp.swapaxes(x, 0, 1), lengths), 0, 1)

    def _masked_scan(self, cell: str, p: dict, x, valid, reverse: bool, unroll: int, init: tuple | None = None):
        """One direction of one layer, the carry frozen at padded steps; x [T,B,in] is 0 at padding. `init`: the
        carry to start from (zeros if None)."""
        jnp = self.jnp
        step_fn = self._cell(cell, p)

        def step(carry, inputs):
            xt, vt = inputs
            new = step_fn(carry, xt)
            keep = vt[:, None]
            return tuple(jnp.where(keep, a, b) for a, b in zip(new, carry, strict=True)), jnp.where(keep, new[0], 0)

        proj = x @ p["w_ih"].T + p["b_ih"]  # input projection of all steps, hoisted out of the loop
        init = self._zero_state(cell, x, p) if init is None else init
        carry, ys = self.lax.scan(step, init, (proj, valid), reverse=reverse, unroll=unroll)
        return ys, carry

    def _full_scan(self, cell: str, p: dict, x, reverse: bool, unroll: int):
        """One direction of one layer over rows that are all T long (the caller knows the lengths): "scan" without
        its per-step selects, which cost it ~5% against the unmasked "scan_flip" on equal lengths (XLA:CPU, LSTM
        B=64 T=128 H=128, forward + backward)."""
        step_fn = self._cell(cell, p)

        def step(carry, xt):
            new = step_fn(carry, xt)
            return new, new[0]

        proj = x @ p["w_ih"].T + p["b_ih"]
        carry, ys = self.lax.scan(step, self._zero_state(cell, x, p), proj, reverse=reverse, unroll=unroll)
        return ys, carry

    def _flip_scan(self, cell: str, p: dict, x, lengths, reverse: bool):
        """One direction, Flax style, on right-padded x: flip within length, unmasked scan, pick the final carry."""
        jnp = self.jnp
        T = x.shape[0]
        if reverse:
            x = self._reverse_tm(x, lengths)
        step_fn = self._cell(cell, p)

        def step(carry, xt):
            new = step_fn(carry, xt)
            return new, new

        proj = x @ p["w_ih"].T + p["b_ih"]
        zero = self._zero_state(cell, x, p)
        _, history = self.lax.scan(step, zero, proj)
        last = jnp.clip(lengths - 1, 0, None)[None, :, None]
        final = tuple(jnp.where(lengths[:, None] > 0, jnp.take_along_axis(s, last, axis=0)[0], z) if T else z
                      for s, z in zip(history, zero, strict=True))
        ys = self._reverse_tm(history[0], lengths) if reverse else history[0]
        return jnp.where(self.valid(lengths, T).T[..., None], ys, 0), final

    def _zero_state(self, cell: str, x, p: dict) -> tuple:
        zero = self.jnp.zeros((x.shape[1], p["w_hh"].shape[1]), x.dtype)
        return (zero, zero) if cell == "lstm" else (zero,)

    def _cell(self, cell: str, p: dict):
        """step(carry, projected_input) -> new carry tuple (h first): `cell_step`'s, without what its gradient
        needs."""
        step = cell_step(self.jax, cell, p["w_hh"], p["b_hh"])
        return lambda carry, xt: step(carry, xt)[0]


@cache
def moved_rows(jax):
    """move(a, index, inverse): row j = row index[j] of `a` [N, F], or 0 where index[j] < 0, for a partial
    permutation (each row of `a` used at most once: the slot maps of "concat_rows") whose inverse is `inverse`. Its
    gradient is the inverse gather (`jax.custom_vjp`), a dense pass, where `jnp.take`'s transpose is a scatter-add
    (serial on XLA:CPU)."""
    jnp = jax.numpy

    def take(a, index):
        return jnp.where((index >= 0)[:, None], jnp.take(a, jnp.maximum(index, 0), axis=0), 0)

    @jax.custom_vjp
    def move(a, index, inverse):
        return take(a, index)

    move.defvjp(lambda a, index, inverse: (take(a, index), (index, inverse)),
                lambda res, ct: (take(ct, res[1]), None, None))
    return move


def cell_step(jax, cell: str, w_hh, b_hh):
    """step(carry, xw_t) -> (new carry (h first), what the written-out gradient needs: LSTM (tanh c, [i, f, g, o]),
    GRU ([r, z, n, W_hn h + b_hn],), tanh RNN ()), with xw_t = W_ih x_t + b_ih; PyTorch gate order and GRU formula.
    The one cell step of every JAX scan here (the masked ones drop the second part)."""
    jnp, sigmoid = jax.numpy, jax.nn.sigmoid
    u = w_hh.T

    def lstm(carry, x_t):
        h, c = carry
        i, f, g, o = jnp.split(x_t + h @ u + b_hh, 4, axis=-1)
        i, f, g, o = sigmoid(i), sigmoid(f), jnp.tanh(g), sigmoid(o)
        c = f * c + i * g
        tc = jnp.tanh(c)
        return (o * tc, c), (tc, jnp.concatenate([i, f, g, o], -1))

    def gru(carry, x_t):
        (h,) = carry
        xr, xz, xn = jnp.split(x_t, 3, axis=-1)
        hr, hz, hn = jnp.split(h @ u + b_hh, 3, axis=-1)
        r, z = sigmoid(xr + hr), sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return ((1 - z) * n + z * h,), (jnp.concatenate([r, z, n, hn], -1),)

    def rnn(carry, x_t):
        return (jnp.tanh(x_t + carry[0] @ u + b_hh),), ()

    return {"lstm": lstm, "gru": gru, "rnn": rnn}[cell]


@cache
def reset_scan(jax, cell: str, unroll: int = 1, kernels: tuple | None = None):
    """f(xw, w_hh, b_hh, keep) -> (h,) or (h, c) at every slot of a time-major grid, [steps, rows, H]: xw = W_ih x +
    b_ih [steps, rows, G*H] (PyTorch gate order and GRU formula), the carry replaced by 0 wherever `keep` [steps,
    rows] is False (each sequence's first slot of "concat_rows"), then one cell step. `kernels`: the two loops as
    Pallas kernels ((forward, backward) of `adapters.jax.pallas_rnn.rnn_loops`, "concat_pallas") instead of
    `lax.scan`s; the rest (the parameters' gradients after the loop) is the same.

    Its gradient is written out (`jax.custom_vjp`, one function per cell and unroll): the forward scan keeps each
    step's gate activations, a reverse scan turns the cotangents of h (and c) into those of the step's
    pre-activations, and W_hh's and b_hh's gradients are one product and one sum over all slots after it. JAX's own
    transpose of the scan adds each step's W_hh gradient inside the loop (one more product per step, on a few
    rows); written out, the LSTM's forward + backward over a 20 x 128 grid (H=128, XLA:CPU, 2 cores) took 7.7 ms
    against 10.8. A reset passes nothing back: the previous state's cotangent is 0 where `keep` is False, as the
    forward's `jnp.where` gave it no path."""
    jnp, lax = jax.numpy, jax.lax

    def shifted(seq, keep):  # the state each step started from: the previous slot's, 0 at a reset and at slot 0
        return jnp.where(keep[..., None], jnp.concatenate([jnp.zeros_like(seq[:1]), seq[:-1]]), 0)

    def forward(xw, w_hh, b_hh, keep, save: bool):
        """(h (and c) at every slot, what the backward pass needs if `save`)."""
        if kernels is not None:
            saved = kernels[0](xw, w_hh, b_hh, keep)  # the carry at every slot, then what the gradient needs
            return saved if save else saved[:2 if cell == "lstm" else 1]
        zero, cell_fn = jnp.zeros((xw.shape[1], w_hh.shape[1]), xw.dtype), cell_step(jax, cell, w_hh, b_hh)

        def step(carry, inputs):
            x_t, k = inputs
            new, needed = cell_fn(tuple(jnp.where(k[:, None], s, 0) for s in carry), x_t)
            return new, ((*new, *needed) if save else new)

        init = (zero, zero) if cell == "lstm" else (zero,)
        _, ys = lax.scan(step, init, (xw, keep), unroll=unroll)
        return ys

    def backward(res, cot):
        """(d xw, d W_hh, d b_hh, None): a reverse scan gives each slot's pre-activation cotangent (and that of
        W_hh h + b_hh, which differs for the GRU's n gate); the parameters' gradients are summed over slots after."""
        w_hh, keep, saved = res
        zero = jnp.zeros(cot[0].shape[1:], cot[0].dtype)
        if kernels is not None:
            prev = shifted(saved[1], keep) if cell == "lstm" else shifted(saved[0], keep) if cell == "gru" else None
            dxw, dhw = kernels[1](cot, saved, prev, keep, w_hh)
            return dxw, jnp.einsum("srg,srh->gh", dhw, shifted(saved[0], keep)), dhw.sum((0, 1)), None
        if cell == "lstm":
            hs, cs, tcs, gates = saved

            def back(carry, inputs):
                dh_t, dc_t, tc, a, c_prev, k = inputs
                i, f, g, o = jnp.split(a, 4, axis=-1)
                dh = dh_t + carry[0]
                dc = dc_t + carry[1] + dh * o * (1 - tc * tc)
                dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                                      dh * tc * o * (1 - o)], -1)
                return (jnp.where(k[:, None], dz @ w_hh, 0), jnp.where(k[:, None], dc * f, 0)), dz

            _, dxw = lax.scan(back, (zero, zero), (*cot, tcs, gates, shifted(cs, keep), keep), reverse=True,
                              unroll=unroll)
            dhw = dxw
        elif cell == "gru":
            hs, gates = saved

            def back(carry, inputs):
                dh_t, a, h_prev, k = inputs
                r, z, n, hn = jnp.split(a, 4, axis=-1)
                dh = dh_t + carry
                dn = dh * (1 - z) * (1 - n * n)
                dr = dn * hn * r * (1 - r)
                dz = dh * (h_prev - n) * z * (1 - z)
                dhw = jnp.concatenate([dr, dz, dn * r], -1)
                return jnp.where(k[:, None], dhw @ w_hh + dh * z, 0), (jnp.concatenate([dr, dz, dn], -1), dhw)

            _, (dxw, dhw) = lax.scan(back, zero, (cot[0], gates, shifted(hs, keep), keep), reverse=True,
                                     unroll=unroll)
        else:
            (hs,) = saved

            def back(carry, inputs):
                dh_t, h, k = inputs
                dz = (dh_t + carry) * (1 - h * h)
                return jnp.where(k[:, None], dz @ w_hh, 0), dz

            _, dxw = lax.scan(back, zero, (cot[0], hs, keep), reverse=True, unroll=unroll)
            dhw = dxw
        h_prev = shifted(hs, keep)
        return dxw, jnp.einsum("srg,srh->gh", dhw, h_prev), dhw.sum((0, 1)), None

    @jax.custom_vjp
    def run(xw, w_hh, b_hh, keep):
        return forward(xw, w_hh, b_hh, keep, save=False)

    def run_fwd(xw, w_hh, b_hh, keep):
        saved = forward(xw, w_hh, b_hh, keep, save=True)
        return saved[:2] if cell == "lstm" else saved[:1], (w_hh, keep, saved)

    run.defvjp(run_fwd, backward)
    return run


#: cost model of "bucketed" on XLA:CPU (LSTM, H=128), in row-steps (see `adapters.spec.plan_buckets`): ~20 us per
#: row-step, ~40 us per step, ~1 ms per call.
STEP_COST, CALL_COST = 2.0, 64.0
#: "time_sliced" (see `adapters.spec.plan_segments`), in row-steps: on XLA:CPU (LSTM H=128, forward + backward) a
#: step of the masked scan costs ~7 us per row plus ~20-30 us whatever the rows, so ~3 rows; a segment is one more
#: scan in the same jit (no dispatch, a little slicing and padding). At most SLICE_MAX_SEGMENTS scans per
#: direction: each one is compiled, so more segments cost compile time.
SLICE_STEP_COST, SLICE_CALL_COST, SLICE_MAX_SEGMENTS = 3.0, 16.0, 8
#: "time_sliced" runs a plan compiled before for a batch's shape instead of compiling the batch's own where that
#: plan covers the batch and its modelled cost is at most this much above the own plan's (`reuse_segments`)
SLICE_REUSE = 0.25
#: lax.scan's unroll in "bucketed", "time_sliced" and "concat_rows" (their fallbacks to one masked scan included),
#: per device. GPU: an RNN step there is latency-bound, and on an H200 (JAX 0.11.2; B=64 T=128 H=128 LSTM forward +
#: backward) scan_unroll8 took 3.86 ms against scan's 6.38, while these three, at unroll 1, took 1.72-1.86x
#: scan_unroll8's time on equal lengths (their plain-scan fallback): 8 there (not yet timed on a GPU, nor is
#: concat_rows' grid with its written-out gradient, which now runs equal lengths too). CPU: unroll 8 made
#: concat_rows 1.2-1.4x and time_sliced 1.1-1.4x slower on lognormal and zipf here (2 cores): 1.
UNROLL = {"cpu": 1, "gpu": 8}
#: the environment variable that overrides UNROLL["gpu"] (a positive integer), for timing other unrolls on a lent
#: GPU without a code change: the records' kernel names carry the unroll ("xla-scan unroll16 rows[24x128]")
GPU_UNROLL_ENV = "VARLEN_JAX_GPU_UNROLL"


def _unroll(device: str) -> int:
    if device == "gpu" and os.environ.get(GPU_UNROLL_ENV):
        text = os.environ[GPU_UNROLL_ENV]
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{GPU_UNROLL_ENV}={text!r}: need a positive integer (lax.scan's unroll on the GPU)")
        return int(text)
    return UNROLL.get(device, 1)


def _plain_program(lengths: np.ndarray, T: int) -> tuple:
    """The key of the masked scan's own program (`_plain_scan`): unmasked where every row is T long."""
    return ("scan", "full" if lengths.size > 0 and bool((lengths == T).all()) else "masked")


def _scan_name(unroll: int) -> str:
    return "xla-scan" if unroll == 1 else f"xla-scan unroll{unroll}"


def _unit(name: str, algorithm: str, unroll: int, doc: str, graph: bool = False, **extra) -> Strategy:
    algo = (algorithm, unroll, "graph") if graph else (algorithm, unroll)
    return Strategy(name, lambda a, *args: a._rnn_forward(algo, *args), lambda a, *args: a._rnn_vjp(algo, *args),
                    doc=doc, **extra)


def _kernel(algo: tuple) -> str:
    if algo[0] == "cudnn":
        return "cudnn"
    return "xla-scan cuda-graph" if _graph(algo) else "xla-scan"


def _graph(algo: tuple) -> bool:
    """Whether `algo` is compiled with `GRAPH_OPTIONS` ("scan_graph")."""
    return algo[2:] == ("graph",)


#: XLA's compile options of "scan_graph" (`jax.jit(compiler_options=...)`, this program only; XLA:CPU ignores
#: them): XLA:GPU records the scans' while loops (and conditionals) into command buffers, i.e. CUDA graphs in which
#: the loop is a conditional WHILE node run by the device, besides what it records by default (fusions, cuBLAS and
#: cuBLASLt GEMMs, cuDNN, custom calls, dynamic-slice fusions), and graphs of any size (default: 5 commands). By
#: default XLA:GPU records no while loop, so the host launches each step's kernels (a GEMM and a few fusions,
#: microseconds each at B=64 H=128, where a step is latency-bound). The names are XLA's CommandBufferCmdType
#: values, as a whole list: a jit's options take no "+WHILE" (XLA_FLAGS's syntax).
GRAPH_OPTIONS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE,DYNAMIC_SLICE_FUSION",
    "xla_gpu_graph_min_graph_size": 1,
}


def _options(algo: tuple) -> dict | None:
    return dict(GRAPH_OPTIONS) if _graph(algo) else None


def _graph_ok(adapter, device: str = "cpu", **spec) -> str | None:
    """scan_graph's precondition: command buffers are XLA:GPU's (on the CPU the program is scan_unroll8's)."""
    if device != "gpu":
        return "XLA:GPU command buffers (CUDA graphs) exist on GPUs only; on the CPU this is scan_unroll8's program"
    return None


def _cudnn_ok(adapter, cell: str | None = None, device: str = "cpu", dtype: str | None = None, **spec) -> str | None:
    """cudnn_lstm's precondition: jax.experimental.rnn lowers to cuDNN only (no CPU path), LSTM, float32."""
    if device != "gpu":
        return "jax.experimental.rnn.lstm runs on CUDA GPUs only (cuDNN; it has no CPU lowering)"
    if cell is not None and cell != "lstm":
        return "jax.experimental.rnn offers the LSTM only"
    if dtype is not None and dtype != "float32":
        return f"jax.experimental.rnn.lstm is run in float32 only here, not {dtype}"
    return None


def _pallas_fits(spec: RnnSpec) -> bool:
    """Whether concat_pallas's kernels take this hidden size; above it concat_rows' scans run its grid (and its
    kernel name says so: `adapters.jax.pallas_rnn.MAX_HIDDEN`)."""
    from adapters.jax.pallas_rnn import fits

    return fits(spec.hidden_size)


def _pallas_ok(adapter, device: str = "cpu", **spec) -> str | None:
    """concat_pallas's precondition: Triton kernels (CUDA GPUs)."""
    if device != "gpu":
        return ("Pallas's Triton kernels run on CUDA GPUs only; on the CPU Pallas has its interpret mode, which the "
                "tests run")
    return None


STRATEGIES = strategy_table(
    _unit("scan", "masked", 1, "lax.scan, carry frozen at padded steps"),
    _unit("scan_flip", "flip", 1, "Flax nn.RNN recipe: flip within length, unmasked scan, pick the final carry"),
    _unit("scan_unroll8", "masked", 8, "scan with lax.scan(unroll=8)"),
    _unit("scan_graph", "masked", 8, "scan_unroll8 with its while loops captured in CUDA graphs (XLA:GPU command "
          "buffers)", graph=True, supports=_graph_ok),
    _unit("cudnn_lstm", "cudnn", 1, "jax.experimental.rnn.lstm (cuDNN) with seq_lengths; zero-length rows run as "
          "length 1 and are zeroed", supports=_cudnn_ok),
    Strategy("bucketed", lambda a, spec, params, x, L, side, dev: a._bucketed(spec, params, x, L, None, side, dev),
             lambda a, spec, params, x, L, cot, side, dev: a._bucketed(spec, params, x, L, cot, side, dev),
             doc="rows sorted by length into <= 4 trimmed buckets (shapes on a ladder), each a masked scan",
             programs=lambda a, *args: a._bucketed_programs(*args)),
    Strategy("time_sliced", lambda a, spec, params, x, L, side, dev: a._sliced(spec, params, x, L, None, side, dev),
             lambda a, spec, params, x, L, cot, side, dev: a._sliced(spec, params, x, L, cot, side, dev),
             doc="rows sorted by length, the masked scan over <= 8 time segments (cuts and row counts on ladders) "
                 "with the carry passed on, all in one jit per plan",
             programs=lambda a, *args: a._sliced_programs(*args)),
    Strategy("concat_rows", lambda a, spec, params, x, L, side, dev: a._concat(spec, params, x, L, None, side, dev),
             lambda a, spec, params, x, L, cot, side, dev: a._concat(spec, params, x, L, cot, side, dev),
             doc="several sequences end to end per row (first-fit decreasing, grid shapes on ladders), one scan per "
                 "direction over the grid with the carry reset to 0 at each sequence's first step",
             programs=lambda a, *args: a._concat_programs(*args)),
    Strategy("concat_pallas",
             lambda a, spec, params, x, L, side, dev: a._concat(spec, params, x, L, None, side, dev, pallas=True),
             lambda a, spec, params, x, L, cot, side, dev: a._concat(spec, params, x, L, cot, side, dev, pallas=True),
             doc="concat_rows' grid with its two loops (forward, written-out backward) as Pallas Triton kernels "
                 "in which each block of 16 rows runs every step (hidden sizes up to 256; above, concat_rows' scans)",
             supports=_pallas_ok, programs=lambda a, *args: a._concat_programs(*args, pallas=True)),
)
