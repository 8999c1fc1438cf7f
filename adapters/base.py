"""The adapter contract (ARCHITECTURE.md): one base class; one package per framework (`adapters/<framework>/`).

The public methods here validate their input once, in NumPy on the host, so that every framework rejects bad
input with the same `ValueError`, and then dispatch: plain ops to the subclass's `_op` method, strategy families
(e.g. "rnn") by a table lookup in the framework's `STRATEGIES` table of `adapters.spec.Strategy` units. Both only
ever see valid input: lengths as a validated int64 NumPy array, `side` in ("right", "left"), a resolved maxlen, a
strategy the adapter declared and whose precondition holds. Subclasses import their framework in `__init__` and
keep it as an attribute, so importing this package imports no framework.

Shared algorithms (the valid mask, left/right realignment, per-row reversal) are written once here on three
primitives a framework provides (`_arange`, `_take_time`, `_native_lengths`), einops-style; a framework overrides
one only for a native fast path.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from adapters.spec import (
    CELLS,
    DEVICES,
    EMBEDDING_MODES,
    FLOAT_DTYPES,
    LOSS_KINDS,
    LOSS_REDUCTIONS,
    SIDES,
    AttnOut,
    Packed,
    RnnOut,
    RnnSpec,
    Strategy,
    Unsupported,
    attention_spec,
    check_choice,
    check_lengths,
    check_maxlen,
    check_strategy_spec,
    kernel_fields,
    valid_mask,
)


class _Attn(NamedTuple):
    """Validated attention arguments: host int64 lengths, the resolved scale, the strategy unit to run."""

    q_lengths: np.ndarray
    kv_lengths: np.ndarray
    scale: float
    unit: Strategy


class Adapter(abc.ABC):
    """One framework behind the common contract. Arrays in, native arrays out (see `to_numpy`)."""

    name: str = "base"
    version: str = ""
    #: family -> the framework's strategy table (name -> `Strategy`, default first). A class attribute, so the
    #: registry can list strategies without importing the framework.
    STRATEGIES: dict[str, dict[str, Strategy]] = {}
    #: family -> {behaviour name: fn(adapter, **inputs)}: the framework's own primitive called the obvious way,
    #: without varlen's fixes (never a strategy; the harness judges each against the reference)
    NATIVES: dict[str, dict[str, Any]] = {}

    # -- helpers every framework provides ---------------------------------------------------------------------
    def devices(self) -> list[str]:
        """Devices this framework can run on here: "cpu" always, "gpu" when it sees one."""
        return ["cpu"]

    def device_report(self) -> str:
        """One line on what this framework sees (for "no GPU visible" messages)."""
        return f"{self.name} sees {self.devices()}"

    def device_name(self, device: str = "cpu") -> str | None:
        """The model of the accelerator behind `device` as its framework names it ("NVIDIA H100 80GB HBM3"), for
        the records: two machines of one host name (every VM here is "vm") and CPU model with different GPUs stay
        apart, and the report names the GPU its figures ran on. None on the CPU (the records' `cpu` field names
        it) and where the framework does not see the device."""
        return None

    def device_fields(self, device: str) -> dict:
        """{"device_name": ...} for a record of work on `device`, {} where there is no name (`device_name`)."""
        names = self.__dict__.setdefault("_device_names", {})  # asked once per device (a check writes thousands)
        if device not in names:
            names[device] = self.device_name(device) if device != "cpu" and device in self.devices() else None
        return {"device_name": str(names[device])} if names[device] else {}

    def asarray(self, x: Any, device: str = "cpu") -> Any:
        """A NumPy (or native) array as a native array on `device`, dtype kept. An unknown device, or one this
        framework does not see here, is the same ValueError as every op's (`_check_device`)."""
        if device != "cpu":  # "cpu" is always there: no check on the hot path
            self._check_device(device)
        return self._asarray(x, device)

    @abc.abstractmethod
    def _asarray(self, x: Any, device: str) -> Any:
        """`asarray` on a device already validated."""

    @abc.abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray:
        """A native (or NumPy) array as a NumPy array on the host (bfloat16 comes back as float32)."""

    def dtype_name(self, x: Any) -> str:
        """NumPy-style dtype name of an array ("float32", "bfloat16", "int64", "bool"). Another framework's array
        (a torch tensor given to the jax adapter) is a ValueError naming what was given and what is accepted."""
        if not hasattr(x, "dtype"):
            return np.asarray(x).dtype.name
        try:
            return np.dtype(x.dtype).name
        except TypeError:  # a dtype NumPy cannot read: another framework's
            kind = f"{type(x).__module__.split('.')[0]}.{type(x).__name__}"
            accepted = "a NumPy array or a nested list" if self.name == "numpy" else \
                f"a NumPy array, a nested list or a {self.name} array"
            raise ValueError(f"{self.name} cannot take a {kind} (dtype {x.dtype}): give {accepted}") from None

    def sync(self, device: str = "cpu") -> None:  # noqa: B027 - a no-op is right for synchronous frameworks
        """Block until all work queued on `device` has finished (timed callables end with this)."""

    def warmup(self, device: str = "cpu") -> None:
        """Start the backend on `device` (allocator, compiler, thread pools) so the first measured case does not
        absorb it. Default: one small op through the contract, synchronised."""
        self.to_numpy(self.masked_mean(self.asarray(np.ones((2, 3, 4), np.float32), device), np.array([3, 1])))
        self.sync(device)

    def clear_compiled(self) -> None:  # noqa: B027 - eager frameworks have nothing compiled
        """Forget every compiled function (jit / tf.function caches), so the next calls compile afresh: what a
        fresh process would pay (an epoch's time "including every compile" must not reuse an earlier case's)."""

    def compile_count(self) -> int:
        """How many times this adapter has traced/compiled a function so far (jit, tf.function); 0 if it never
        compiles. The timing harness reads it around a timed region to prove nothing retraced there."""
        return 0

    #: whether the device allocator's peak can be reset, so that `call_peak` measures one call in any process (if
    #: not, the harness measures each GPU case in a fresh process so that the peak is that case's own)
    peak_resettable: bool = True

    def reset_peak_memory(self, device: str = "cpu") -> None:  # noqa: B027 - nothing to reset on CPU
        """Before a case on `device`: drop what earlier cases left held there and reset its allocator's peak
        (torch: its CUDA graphs). `call_peak` resets the peak itself where it can, so a framework with nothing
        else to drop needs none."""

    def call_peak(self, call, device: str = "cpu") -> int | None:
        """Bytes by which one `call()` raised the framework's own allocator's peak on `device` above what it held
        just before (the inputs, and whatever earlier cases left alive), the call finished (`sync`). On the GPU every
        framework has one; on the CPU only where the allocator keeps what it took (then the process's RSS does not
        grow again and misses the call's working set). None where there is none (plain malloc'd CPU heap: RSS
        measures it)."""
        return None

    # -- floors: measured with this framework on the device being benchmarked -----------------------------------
    def _copy(self, x: Any) -> Any:
        """A copy of x on its device (floor primitive); one that writes into a buffer kept between calls keeps it
        in `self._floor_out`, which `floors` drops once measured."""
        raise NotImplementedError(f"{self.name} has no copy primitive")

    def _matmul(self, a: Any, b: Any) -> Any:
        """a @ b on their device, full float32 precision (floor primitive)."""
        raise NotImplementedError(f"{self.name} has no matmul primitive")

    def _wait(self, x: Any, device: str) -> None:
        """Block until x is computed (default: `sync`)."""
        self.sync(device)

    def floors(self, device: str = "cpu", *, copy_bytes: int = 256 * 2**20, gemm_n: int = 2048,
               repeats: int = 5) -> dict[str, float]:
        """This framework's copy bandwidth (bytes read + written per second) and float32 GEMM rate (FLOP/s) on
        `device`, best of `repeats`: the floors a case on that device is measured against."""
        import time

        self._check_device(device)
        rng = np.random.default_rng(0)
        x = self.asarray(np.ones(copy_bytes // 4, np.float32), device)
        a = self.asarray(rng.standard_normal((gemm_n, gemm_n), dtype=np.float32), device)
        b = self.asarray(rng.standard_normal((gemm_n, gemm_n), dtype=np.float32), device)
        best = {}
        for what, fn, work in (("copy_bytes_per_s", lambda: self._copy(x), 2.0 * copy_bytes),
                               ("gemm_flop_per_s", lambda: self._matmul(a, b), 2.0 * gemm_n**3)):
            self._wait(fn(), device)  # warm-up
            t_best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                self._wait(fn(), device)
                t_best = min(t_best, time.perf_counter() - t)
            best[what] = work / t_best
        self.__dict__.pop("_floor_out", None)  # `_copy`'s kept output: dropped, not held through every later case
        return best

    # -- strategies: one table per family ----------------------------------------------------------------------
    def strategy_table(self, family: str) -> dict[str, Strategy]:
        if family not in self.STRATEGIES:
            raise ValueError(f"unknown family {family!r}; {self.name} declares strategies for "
                             f"{sorted(self.STRATEGIES)}")
        return self.STRATEGIES[family]

    def strategies(self, family: str, **spec: Any) -> list[str]:
        """The exact strategies for `family` whose precondition holds for `spec` (e.g. cell="gru",
        device="gpu", dtype="float32"), default first. `spec` takes the family's keywords in
        `adapters.spec.STRATEGY_SPEC` only, each with a valid value (ValueError otherwise, the same in every
        adapter); a keyword left out constrains nothing."""
        table = self.strategy_table(family)
        check_strategy_spec(family, spec)
        return [n for n, u in table.items() if u.supports(self, **spec) is None]

    def why_not(self, family: str, strategy: str, **spec: Any) -> str | None:
        """None if `strategy` may run for `spec`, else the reason its precondition gives (`spec` as for
        `strategies`)."""
        table = self.strategy_table(family)
        check_strategy_spec(family, spec)
        check_choice(f"{self.name} {family} strategy", strategy, list(table))
        return table[strategy].supports(self, **spec)

    def natives(self, family: str) -> list[str]:
        """The native behaviours this framework records for `family`."""
        return list(self.NATIVES.get(family, {}))

    def native(self, family: str, name: str, **inputs: Any) -> Any:
        """Run native behaviour `name` of `family` (NumPy inputs in, native results out)."""
        table = self.NATIVES.get(family, {})
        check_choice(f"{self.name} {family} native behaviour", name, list(table))
        return table[name](self, **inputs)

    def strategy_kernel(self, family: str, strategy: str, variant: str | None = None) -> str:
        """The static kernel name a strategy declares ("" if its results carry it), the one that runs for
        `variant` where that matters (a loss's kind, "embed" or "embedding_bag")."""
        return self._declared(family, strategy).kernel_for(variant)

    def programs(self, family: str, strategy: str, spec: Any, lengths: Any, T: int, *, vjp: bool,
                 compiled: Any = ()) -> set | None:
        """The compiled programs a [B, T] batch of `lengths` runs under `strategy` (forward, or forward + backward
        with `vjp`), as keys found by the strategy's own host planner without compiling or running anything
        (`Strategy.programs`). `spec` is what else the family's planner reads: an RnnSpec for "rnn"; for
        "attention" {"device": ...}, with "kv_lengths" and "Tk" for cross-attention; None for "loss" and
        "embedding". `compiled`: the keys the stream's earlier batches named (what is compiled for this shape
        since `clear_compiled`), for a strategy that runs a compiled program covering a batch rather than compile
        its own ("time_sliced"). None where the programs do not depend on the lengths. Over a stream of batches of
        one shape, a batch compiles the keys that no earlier batch brought: the bench counts them over many fresh
        batches (`harness.bench.planned_compiles`)."""
        plan = self._declared(family, strategy).programs
        return None if plan is None else set(plan(self, spec, np.asarray(lengths, dtype=np.int64), int(T), vjp,
                                                  frozenset(compiled)))

    def _declared(self, family: str, strategy: str) -> Strategy:
        """The unit of a strategy the family declares, whatever its precondition says (ValueError naming the
        declared ones otherwise)."""
        table = self.strategy_table(family)
        check_choice(f"{self.name} {family} strategy", strategy, list(table))
        return table[strategy]

    def rnn_strategies(self, cell: str) -> list[str]:
        """The exact RNN strategies this adapter offers for `cell`, default first."""
        check_choice("cell", cell, CELLS)
        return self.strategies("rnn", cell=cell)

    def _unit(self, family: str, strategy: str | None, **spec: Any) -> Strategy:
        """The strategy unit to run (the default when None), after its precondition (`spec` as for
        `strategies`)."""
        table = self.strategy_table(family)
        if strategy is None:
            usable = self.strategies(family, **spec)  # checks the spec
            if not usable:
                raise ValueError(f"no {self.name} {family} strategy supports {spec}")
            strategy = usable[0]
        else:
            check_strategy_spec(family, spec)
        check_choice(f"{self.name} strategy", strategy, list(table))
        why = table[strategy].supports(self, **spec)
        if why is not None:
            raise Unsupported(f"{self.name} strategy {strategy!r} does not support {spec}: {why}")
        return table[strategy]

    # -- shared algorithms on three primitives -----------------------------------------------------------------
    def _arange(self, n: int, like: Any) -> Any:
        """Native int range [0, n) next to `like` (a native lengths array), in its integer dtype."""
        raise NotImplementedError

    def _take_time(self, x: Any, index: Any) -> Any:
        """x [B, T, ...] gathered along time with a per-row native index [B, T]."""
        raise NotImplementedError

    def _take_rows(self, x: Any, index: np.ndarray) -> Any:
        """x [B, ...] gathered along the batch axis with a host int index."""
        raise NotImplementedError

    def _regather(self, parts: list, index: np.ndarray, shape: tuple) -> Any:
        """Native arrays [b_i, t_i, ...] flattened to [b_i * t_i, ...], concatenated, followed by one zero entry,
        gathered with a host flat index [prod(shape[:2])] and reshaped to `shape` (see `adapters.attention_buckets`)."""
        raise NotImplementedError

    def _native_lengths(self, lengths: Any, like: Any) -> Any:
        """Lengths (host NumPy or native) as a native int array on `like`'s device."""
        return self.asarray(np.asarray(lengths)) if isinstance(lengths, np.ndarray) else lengths

    def valid(self, lengths: Any, maxlen: int, side: str = "right") -> Any:
        """bool [B, maxlen], True at valid steps, from native (even traced) lengths: the one valid-mask helper."""
        t = self._arange(maxlen, lengths)[None, :]
        n = lengths[:, None]
        return t < n if side == "right" else t >= maxlen - n

    def realign(self, x: Any, lengths: Any, to: str) -> Any:
        """Move each row's valid steps to the other side, order kept (to="right": left-padded -> right-padded;
        to="left": the inverse). A permutation per row, so its gradient is exact and padding only meets padding."""
        T = x.shape[1]
        if not T:
            return x
        n = self._native_lengths(lengths, x)[:, None]
        t = self._arange(T, n)[None, :]
        index = (t + T - n) % T if to == "right" else (t - (T - n)) % T
        return self._take_time(x, index)

    def reverse_within(self, x: Any, lengths: Any) -> Any:
        """Reverse each right-padded row within its own length; padding stays in place (its own inverse)."""
        T = x.shape[1]
        if not T:
            return x
        n = self._native_lengths(lengths, x)[:, None]
        t = self._arange(T, n)[None, :]
        return self._take_time(x, self._where(t < n, n - 1 - t, t))

    def _where(self, cond: Any, a: Any, b: Any) -> Any:
        raise NotImplementedError

    # -- the ops: validate, then dispatch ---------------------------------------------------------------------
    def pad(self, seqs: Sequence[Any], *, side: str = "right", value: Any = 0, maxlen: int | None = None,
            truncate: str = "right", device: str = "cpu") -> Any:
        """List of [L_i, *feat] -> [B, T, *feat] with T = maxlen or max L_i (keras `pad_sequences` values).

        The result keeps the sequences' dtype, so the arrays among them must share one: an array whose dtype
        differs is a ValueError naming both (never a silent cast, which would truncate 1.7 to 1 in an int batch).
        Plain Python lists take the arrays' dtype (an integer one only where their values survive it), or without
        arrays promote as NumPy's lists do; a sequence of zero steps takes the others' dtype (`_one_dtype`).
        """
        check_choice("side", side, SIDES)
        check_choice("truncate", truncate, SIDES)
        self._check_device(device)
        if not isinstance(seqs, (list, tuple)):
            raise ValueError(f"pad expects a list of sequences, got {type(seqs).__name__}")
        if len(seqs) == 0:
            raise ValueError("empty batch: pad got no sequences")
        shapes = [tuple(getattr(s, "shape", np.shape(s))) for s in seqs]
        for i, shape in enumerate(shapes):
            if len(shape) < 1:
                raise ValueError(f"sequence {i} is a scalar; each sequence must be at least 1-D [L, *feat]")
            if shape[1:] != shapes[0][1:]:
                raise ValueError(f"sequence {i} has feature shape {shape[1:]} but sequence 0 has {shapes[0][1:]}")
        seqs, dtype = self._one_dtype(list(seqs), shapes)
        check_pad_value(value, dtype)
        longest = max(s[0] for s in shapes)
        T = longest if maxlen is None else check_maxlen(maxlen)
        return self._pad(seqs, T, side, value, truncate, device)

    def _one_dtype(self, seqs: list, shapes: list[tuple]) -> tuple[list, str]:
        """(seqs, the result's dtype name) for `pad`, every sequence then of that dtype (the frameworks' `_pad` cast
        to sequence 0's). The arrays (anything with a dtype) of at least one step must share one dtype, the
        result's: ValueError at the first that differs. Plain lists take it, an integer or bool one only when its
        values survive the cast (a float list is rounded to a float dtype's precision, as any cast to it would);
        without arrays the lists' NumPy result type is the result's (lists promote as NumPy's do). A sequence of
        zero steps has no dtype of its own (NumPy's `np.array([])` guesses float64): it becomes an empty slice of
        the first non-empty one."""
        L = [shape[0] for shape in shapes]
        typed = {i: self.dtype_name(s) for i, s in enumerate(seqs) if hasattr(s, "dtype") and L[i] > 0}
        lists = {i: np.asarray(s) for i, s in enumerate(seqs) if not hasattr(s, "dtype") and L[i] > 0}
        named = {**typed, **{i: values.dtype.name for i, values in lists.items()}}
        for i in sorted(named):
            if not _is_numeric_dtype(named[i]):
                raise ValueError(f"sequences[{i}] has dtype {named[i]}: pad takes numeric or bool sequences")
        if typed:
            ref = min(typed)
            for i, dt in typed.items():
                if dt != typed[ref]:
                    raise ValueError(f"sequences[{i}] has dtype {dt}, sequences[{ref}] has {typed[ref]}: all "
                                     "sequences must share one dtype")
            dtype = typed[ref]
        else:
            dtype = (np.result_type(*lists.values()) if lists else np.asarray(seqs[0]).dtype).name
            if not _is_numeric_dtype(dtype):  # only sequences of zero steps: their own dtype
                raise ValueError(f"sequences[0] has dtype {dtype}: pad takes numeric or bool sequences")
        out = list(seqs)
        for i, values in lists.items():
            try:
                cast = values.astype(dtype)
            except TypeError:  # a dtype NumPy has no name for (bfloat16 without ml_dtypes)
                raise ValueError(f"sequences[{i}] is a plain list and the arrays are {dtype}: give it as a {dtype} "
                                 "array") from None
            if cast.dtype.kind in "biu" and not np.array_equal(cast, values):
                bad = values[cast != values].flat[0].item()
                raise ValueError(f"sequences[{i}] holds {bad!r}, which {dtype} (the other sequences' dtype) cannot "
                                 "hold exactly: all sequences must share one dtype")
            out[i] = cast
        first = next((s for s, n in zip(out, L, strict=True) if n > 0), None)
        if first is not None:
            out = [s if n > 0 else first[:0] for s, n in zip(out, L, strict=True)]
        return out, dtype

    def mask(self, lengths: Any, maxlen: int, *, side: str = "right", device: str = "cpu") -> Any:
        """bool [B, maxlen], True at valid steps."""
        check_choice("side", side, SIDES)
        self._check_device(device)
        maxlen = check_maxlen(maxlen)
        return self._mask(self._lengths(lengths, maxlen=maxlen), maxlen, side, device)

    def pack(self, padded: Any, lengths: Any, *, side: str = "right", enforce_sorted: bool = False) -> Packed:
        """PyTorch `pack_padded_sequence` semantics, zero-length rows and left padding included.

        With enforce_sorted=True the lengths must already be non-increasing; the returned indices are then the
        identity permutation (PyTorch returns None there; arrays keep the result's type uniform).
        """
        check_choice("side", side, SIDES)
        if not isinstance(enforce_sorted, (bool, np.bool_)):
            raise ValueError(f"enforce_sorted must be a bool, got {enforce_sorted!r}")
        B, T = self._batch_time(padded, min_rank=2)
        lengths = self._lengths(lengths, batch=B, maxlen=T)
        if enforce_sorted:
            bad = np.flatnonzero(np.diff(lengths) > 0)
            if bad.size:
                i = int(bad[0]) + 1
                raise ValueError(f"enforce_sorted=True but lengths are not sorted in decreasing order: "
                                 f"lengths[{i}]={int(lengths[i])} > lengths[{i - 1}]={int(lengths[i - 1])}")
        return self._pack(padded, lengths, side)

    def unpack(self, packed: Packed, *, total_length: int | None = None, side: str = "right") -> tuple[Any, Any]:
        """Inverse of `pack`: (padded [B, T, *feat] with zeros in padding, lengths)."""
        check_choice("side", side, SIDES)
        if not isinstance(packed, Packed):
            raise ValueError(f"unpack expects a harness.Packed, got {type(packed).__name__}")
        batch_sizes, sorted_indices = check_packed(packed, self.to_numpy)
        longest = int(batch_sizes.size)
        if total_length is None:
            T = longest
        else:
            T = check_maxlen(total_length)
            if T < longest:
                raise ValueError(f"total_length={T} is shorter than the longest packed sequence ({longest})")
        return self._unpack(packed, batch_sizes, sorted_indices, T, side)

    def masked_mean(self, x: Any, lengths: Any, *, side: str = "right") -> Any:
        """Mean over valid steps, [B, *feat]; 0 for an empty sequence; padding (even NaN) never leaks."""
        check_choice("side", side, SIDES)
        B, T = self._batch_time(x, min_rank=2)
        self._check_float("masked_mean", x)
        return self._masked_mean(x, self._lengths(lengths, batch=B, maxlen=T), side)

    def rnn(self, spec: RnnSpec, params: Any, x: Any, lengths: Any, *, side: str = "right",
            strategy: str | None = None, device: str = "cpu") -> RnnOut:
        """Masked (multi-layer, optionally bidirectional) RNN; see ARCHITECTURE.md, "RNN semantics"."""
        params, lengths, unit = self._check_rnn(spec, params, x, lengths, side, strategy, device)
        return unit.forward(self, spec, params, x, lengths, side, device)

    def rnn_vjp(self, spec: RnnSpec, params: Any, x: Any, lengths: Any, cotangents: dict[str, Any], *,
                side: str = "right", strategy: str | None = None, device: str = "cpu") -> tuple[RnnOut, dict]:
        """(RnnOut, grads) with grads = {"x": [B,T,I], "params": nest like params} of
        sum(outputs*cot["outputs"]) + sum(h_n*cot["h_n"]) [+ sum(c_n*cot["c_n"])]."""
        params, lengths, unit = self._check_rnn(spec, params, x, lengths, side, strategy, device)
        B, T = lengths.shape[0], x.shape[1]
        D, H = spec.num_directions, spec.hidden_size
        want = {"outputs": (B, T, D * H), "h_n": (spec.num_layers * D, B, H)}
        if spec.cell == "lstm":
            want["c_n"] = (spec.num_layers * D, B, H)
        if not isinstance(cotangents, dict) or set(cotangents) != set(want):
            got = sorted(cotangents) if isinstance(cotangents, dict) else type(cotangents).__name__
            raise ValueError(f"cotangents must be a dict with keys {sorted(want)}, got {got}")
        for key, shape in want.items():
            got = _shape(cotangents[key])
            if got != shape:
                raise ValueError(f"cotangents[{key!r}] has shape {got}, expected {shape}")
            self._check_float(f"rnn cotangents[{key!r}]", cotangents[key])
        return unit.vjp(self, spec, params, x, lengths, cotangents, side, device)

    # -- losses (ARCHITECTURE.md, "Losses") -------------------------------------------------------------------
    def masked_loss(self, logits: Any, targets: Any, lengths: Any, *, kind: str = "softmax_ce",
                    reduction: str = "token_mean", side: str = "right", strategy: str | None = None,
                    device: str = "cpu") -> Any:
        """Loss over valid steps only, a native 0-d array in logits' dtype; 0 (never NaN) when no step is valid.

        kind "softmax_ce": logits [B, T, C], int targets [B, T]; "sigmoid_bce": logits and float targets of one
        shape, [B, T] or [B, T, C] (a step's loss sums its C labels). reduction "token_mean" (sum over valid tokens
        / their count), "sequence_mean" (mean over non-empty rows of each row's mean) or "sum". Padded logits and
        targets may hold anything (NaN, out-of-range ids): the result is bit-identical whatever they hold.
        """
        targets, lengths, unit = self._check_loss(logits, targets, lengths, kind, reduction, side, strategy, device)
        return unit.forward(self, logits, targets, lengths, kind, reduction, side, device)

    def masked_loss_vjp(self, logits: Any, targets: Any, lengths: Any, *, kind: str = "softmax_ce",
                        reduction: str = "token_mean", side: str = "right", strategy: str | None = None,
                        device: str = "cpu") -> tuple[Any, Any]:
        """(loss, d loss / d logits): the gradient has logits' shape and dtype and is exactly 0 at padded steps."""
        targets, lengths, unit = self._check_loss(logits, targets, lengths, kind, reduction, side, strategy, device)
        return unit.vjp(self, logits, targets, lengths, kind, reduction, side, device)

    def _check_loss(self, logits, targets, lengths, kind, reduction, side, strategy, device):
        """Validate once on the host (same message in every adapter); (targets, lengths as int64 NumPy, the unit).

        Class targets of any integer dtype are taken (as NumPy and JAX take them): checked in range, then those
        that no framework indexes with (int8, uint16...; TensorFlow's losses take int32/int64 only) become their
        host int64 copy."""
        check_choice("loss kind", kind, LOSS_KINDS)
        check_choice("reduction", reduction, LOSS_REDUCTIONS)
        check_choice("side", side, SIDES)
        self._check_device(device)
        B, T = self._batch_time(logits, min_rank=2)
        check_loss_inputs(kind, tuple(logits.shape), tuple(getattr(targets, "shape", np.shape(targets))),
                          self.dtype_name(logits), self.dtype_name(targets))
        lengths = self._lengths(lengths, batch=B, maxlen=T)
        host = np.asarray(self.to_numpy(targets))
        if kind == "softmax_ce":
            check_targets_in_range(host, lengths, side, int(logits.shape[2]))
            targets = _index_array(targets, host, self.dtype_name(targets))
        else:
            check_probabilities(host, lengths, side)
        unit = self._unit("loss", strategy, kind=kind, reduction=reduction, device=device,
                          dtype=self.dtype_name(logits))
        return targets, lengths, unit

    # -- embeddings (ARCHITECTURE.md, "Embeddings") -----------------------------------------------------------
    #: embedding_bag's reductions over each row's valid tokens
    EMBEDDING_MODES = EMBEDDING_MODES

    def embed(self, tokens: Any, table: Any, lengths: Any, *, side: str = "right", strategy: str | None = None,
              device: str = "cpu") -> Any:
        """table[tokens] at valid steps, [B, T, E] native in the table's dtype, exactly 0 at padded steps.

        Padded tokens may hold anything (negative, >= V): the result is bit-identical whatever they hold. Token
        id 0 is an ordinary token (never implied padding).
        """
        tokens, lengths, unit = self._check_embedding("embed", tokens, table, lengths, None, side, strategy, device)
        return unit.forward(self, "embed", tokens, table, lengths, side, None, device)

    def embedding_bag(self, tokens: Any, table: Any, lengths: Any, *, mode: str = "mean", side: str = "right",
                      strategy: str | None = None, device: str = "cpu") -> Any:
        """[B, E]: the sum / mean / max of each row's valid tokens' vectors; an empty row gives 0.

        max's gradient goes to the position holding the maximum; where several valid positions tie (the same
        token twice) every tie-breaking rule sends the same total to that table row.
        """
        tokens, lengths, unit = self._check_embedding("embedding_bag", tokens, table, lengths, mode, side, strategy,
                                                      device)
        return unit.forward(self, "embedding_bag", tokens, table, lengths, side, mode, device)

    def embed_vjp(self, tokens: Any, table: Any, lengths: Any, cotangent: Any, *, side: str = "right",
                  strategy: str | None = None, device: str = "cpu") -> tuple[Any, Any]:
        """(embed's output, d sum(output * cotangent) / d table [V, E]); padded steps contribute nothing, whatever
        the cotangent holds there."""
        tokens, lengths, unit = self._check_embedding("embed", tokens, table, lengths, None, side, strategy, device,
                                                      vjp=True, cotangent=cotangent)
        return unit.vjp(self, "embed", tokens, table, lengths, cotangent, side, None, device)

    def embedding_bag_vjp(self, tokens: Any, table: Any, lengths: Any, cotangent: Any, *, mode: str = "mean",
                          side: str = "right", strategy: str | None = None, device: str = "cpu") -> tuple[Any, Any]:
        """(embedding_bag's output [B, E], d sum(output * cotangent) / d table [V, E])."""
        tokens, lengths, unit = self._check_embedding("embedding_bag", tokens, table, lengths, mode, side, strategy,
                                                      device, vjp=True, cotangent=cotangent)
        return unit.vjp(self, "embedding_bag", tokens, table, lengths, cotangent, side, mode, device)

    def _check_embedding(self, op: str, tokens: Any, table: Any, lengths: Any, mode: str | None, side: str,
                         strategy: str | None, device: str, vjp: bool = False,
                         cotangent: Any = None) -> tuple[Any, np.ndarray, Strategy]:
        """Validate once on the host (the same message in every adapter); (tokens, lengths as int64 NumPy, the
        unit). A vjp needs a cotangent of the output's shape (None is no cotangent: the same error as
        `attention_vjp`'s), floating-point.

        Reads the tokens back to the host to check every valid id against the table: the price of one message
        for every framework (an out-of-range id is an IndexError in torch, a clamp or NaN in JAX, zeros on TF GPU).
        Ids of any integer dtype are taken (as NumPy and JAX take them): those no framework indexes with (int8,
        uint16...: torch's F.embedding takes int32/int64 only) then become their host int64 copy. An empty table
        (V=0) is an error even where no step is valid (no framework's lookup takes one).
        """
        if op == "embedding_bag":
            check_choice("mode", mode, self.EMBEDDING_MODES)
        check_choice("side", side, SIDES)
        self._check_device(device)
        shape = tuple(getattr(tokens, "shape", np.shape(tokens)))
        if len(shape) != 2:
            raise ValueError(f"tokens must be a rank-2 integer array [B, T], got shape {shape}")
        tok_dtype = self.dtype_name(tokens) if hasattr(tokens, "dtype") else np.asarray(tokens).dtype.name
        try:
            integer = tok_dtype != "bool" and np.issubdtype(np.dtype(tok_dtype), np.integer)
        except TypeError:  # a dtype NumPy does not know (bfloat16, float8...) holds no token ids
            integer = False
        if not integer:
            raise ValueError(f"tokens must be integer token ids, got dtype {tok_dtype}")
        if shape[0] == 0:
            raise ValueError("empty batch: tokens has batch size 0")
        tshape = tuple(getattr(table, "shape", ()))
        if len(tshape) != 2:
            raise ValueError(f"table must be a rank-2 float array [V, E], got shape {tshape}")
        dtype = self.dtype_name(table)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"table must be floating-point ({', '.join(FLOAT_DTYPES)}), got dtype {dtype}")
        if tshape[0] == 0:
            raise ValueError(f"{op} needs at least one table row: table has V=0")
        B, T = shape
        lengths = self._lengths(lengths, batch=B, maxlen=T)
        ids = np.asarray(self.to_numpy(tokens))
        bad = np.argwhere(valid_mask(lengths, T, side) & ((ids < 0) | (ids >= tshape[0])))
        if bad.size:
            b, t = (int(i) for i in bad[0])
            raise ValueError(f"token id {int(ids[b, t])} at (row {b}, step {t}) is outside the table [0, {tshape[0]})")
        if vjp:
            want = (B, T, tshape[1]) if op == "embed" else (B, tshape[1])
            got = _shape(cotangent)
            if got != want:
                raise ValueError(f"cotangent has shape {got}, expected {want} (the shape of {op}'s output)")
            self._check_float(f"{op} cotangent", cotangent)
        tokens = _index_array(tokens, ids, tok_dtype)
        return tokens, lengths, self._unit("embedding", strategy, op=op, mode=mode, device=device, dtype=dtype)

    # -- attention (ARCHITECTURE.md, "Attention semantics") ----------------------------------------------------
    def attention(self, q: Any, k: Any, v: Any, q_lengths: Any, kv_lengths: Any = None, *, causal: bool = False,
                  side: str = "right", scale: float | None = None, strategy: str | None = None,
                  device: str = "cpu") -> AttnOut:
        """Masked (grouped-query, optionally causal) scaled dot-product attention over each row's valid steps.

        q [B, Tq, Hq, Dh], k/v [B, Tk, Hkv, Dh] padded on `side`; query head h reads kv head h // (Hq // Hkv).
        kv_lengths=None is self-attention (kv_lengths = q_lengths, Tk = Tq). Causal positions count from each
        row's first valid step. Outputs are exactly 0 at padded query steps and for a valid query with no valid
        key (PyTorch SDPA's convention); values in padding, even NaN, change nothing.
        """
        a = self._check_attention(q, k, v, q_lengths, kv_lengths, causal, side, scale, strategy, device)
        return a.unit.forward(self, q, k, v, a.q_lengths, a.kv_lengths, causal, side, a.scale, device)

    def attention_vjp(self, q: Any, k: Any, v: Any, q_lengths: Any, kv_lengths: Any, cotangent: Any, *,
                      causal: bool = False, side: str = "right", scale: float | None = None,
                      strategy: str | None = None, device: str = "cpu") -> tuple[AttnOut, dict[str, Any]]:
        """(AttnOut, {"q", "k", "v"}): the gradients of sum(outputs * cotangent), exactly 0 at padded steps and
        zero for the keyless queries' contribution; cotangent has q's shape (its padded entries are ignored)."""
        a = self._check_attention(q, k, v, q_lengths, kv_lengths, causal, side, scale, strategy, device)
        got = _shape(cotangent)  # a nested list is taken, as by every vjp; None is a cotangent of shape ()
        if got != tuple(q.shape):
            raise ValueError(f"cotangent has shape {got}, expected q's shape {tuple(q.shape)}")
        self._check_float("attention cotangent", cotangent)
        return a.unit.vjp(self, q, k, v, a.q_lengths, a.kv_lengths, cotangent, causal, side, a.scale, device)

    def attention_strategies(self, **spec: Any) -> list[str]:
        """The exact attention strategies whose precondition holds for `spec` (device, dtype, causal, gqa, side,
        cross, head_dim), default first."""
        return self.strategies("attention", **spec)

    def attention_allowed(self, q_lengths: Any, kv_lengths: Any, Tq: int, Tk: int, side: str, causal: bool) -> Any:
        """bool [B, Tq, Tk], True where a query may read a key: the key is valid and, when causal, its position
        (counted from the row's first valid step) is <= the query's. Built from native (even traced) lengths on
        the shared primitives, so every framework masks identically."""
        allowed = self.valid(kv_lengths, Tk, side)[:, None, :]
        if not causal:
            return allowed
        tq, tk = self._arange(Tq, q_lengths)[None, :, None], self._arange(Tk, kv_lengths)[None, None, :]
        if side == "left":
            tq, tk = tq - (Tq - q_lengths[:, None, None]), tk - (Tk - kv_lengths[:, None, None])
        return allowed & (tk <= tq)

    def _check_attention(self, q, k, v, q_lengths, kv_lengths, causal, side, scale, strategy, device) -> _Attn:
        """Validate once, in NumPy, for every framework: shapes, heads, dtypes, lengths, causal, scale, choices."""
        check_choice("side", side, SIDES)
        self._check_device(device)
        if not isinstance(causal, (bool, np.bool_)):
            raise ValueError(f"causal must be a bool, got {causal!r}")
        for name, x in (("q", q), ("k", k), ("v", v)):
            _need_array(name, x, "of rank 4 [B, T, H, Dh]")
            shape = tuple(x.shape)
            if len(shape) != 4:
                raise ValueError(f"{name} must be rank 4 [B, T, H, Dh], got shape {shape}")
            self._check_float(f"attention {name}", x)
        B, Tq, Hq, Dh = (int(s) for s in q.shape)
        _, Tk, Hkv, _ = (int(s) for s in k.shape)
        if B == 0:
            raise ValueError("empty batch: q has batch size 0")
        if tuple(v.shape) != tuple(k.shape):
            raise ValueError(f"v has shape {tuple(v.shape)} but k has {tuple(k.shape)}; they must match")
        if k.shape[0] != B:
            raise ValueError(f"k has batch size {k.shape[0]} but q has {B}")
        if k.shape[3] != Dh:
            raise ValueError(f"head dim mismatch: q has Dh={Dh} but k/v have Dh={k.shape[3]}")
        if Hq == 0 or Hkv == 0:
            raise ValueError(f"attention needs at least one query head and one key/value head, got Hq={Hq}, "
                             f"Hkv={Hkv}")
        if Hq % Hkv:
            raise ValueError(f"Hq={Hq} query heads is not a multiple of Hkv={Hkv} key/value heads")
        dtypes = {self.dtype_name(x) for x in (q, k, v)}
        if len(dtypes) > 1:
            raise ValueError(f"q, k and v must share one dtype, got {sorted(dtypes)}")
        q_lengths = self._lengths(q_lengths, batch=B, maxlen=Tq)
        if kv_lengths is None:
            if Tk != Tq:
                raise ValueError(f"kv_lengths=None means self-attention, but k has Tk={Tk} steps and q Tq={Tq}")
            kv_lengths = q_lengths
        else:
            kv_lengths = self._lengths(kv_lengths, batch=B, maxlen=Tk)
        if causal:
            diff = np.flatnonzero(kv_lengths != q_lengths)
            if diff.size:
                i = int(diff[0])
                raise ValueError(f"causal attention needs kv_lengths == q_lengths (self-attention), but at index "
                                 f"{i} kv_length {int(kv_lengths[i])} != q_length {int(q_lengths[i])}")
        if scale is None:
            scale = 1.0 / float(np.sqrt(Dh)) if Dh else 1.0
        elif isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) \
                or not np.isfinite(scale):
            raise ValueError(f"scale must be a finite number or None, got {scale!r}")
        unit = self._unit("attention", strategy, **attention_spec(device, dtypes.pop(), causal, Hq, Hkv, side,
                                                                  q_lengths, kv_lengths, Tq, Tk, Dh))
        return _Attn(q_lengths, kv_lengths, float(scale), unit)

    def raw_rnn(self, spec: RnnSpec, params: Any, x: Any, lengths: Any, device: str = "cpu", *,
                backward: bool = False, cotangents: dict | None = None):
        """A callable running the default strategy's framework code directly, the way a user would write it
        without varlen (no validation, no conversion; compiled where users compile), forward or forward +
        backward, for measuring the adapter's overhead. Optional."""
        raise NotImplementedError(f"{self.name} has no raw baseline for the overhead measurement")

    # -- what a framework implements --------------------------------------------------------------------------
    @abc.abstractmethod
    def _pad(self, seqs: list, maxlen: int, side: str, value: Any, truncate: str, device: str) -> Any: ...

    @abc.abstractmethod
    def _mask(self, lengths: np.ndarray, maxlen: int, side: str, device: str) -> Any: ...

    @abc.abstractmethod
    def _pack(self, padded: Any, lengths: np.ndarray, side: str) -> Packed: ...

    @abc.abstractmethod
    def _unpack(self, packed: Packed, batch_sizes: np.ndarray, sorted_indices: np.ndarray, total_length: int,
                side: str) -> tuple[Any, Any]: ...

    @abc.abstractmethod
    def _masked_mean(self, x: Any, lengths: np.ndarray, side: str) -> Any: ...

    # -- validation helpers -----------------------------------------------------------------------------------
    def _check_device(self, device: str) -> None:
        check_choice("device", device, DEVICES)
        if device not in self.devices():
            raise ValueError(f"device {device!r} is not available to {self.name} here; it sees {self.devices()}")

    def _check_float(self, op: str, x: Any) -> None:
        dt = self.dtype_name(x)
        if dt not in FLOAT_DTYPES:
            raise ValueError(f"{op} needs floating-point x ({', '.join(FLOAT_DTYPES)}), got dtype {dt}")

    def _lengths(self, lengths: Any, *, batch: int | None = None, maxlen: int | None = None) -> np.ndarray:
        if isinstance(lengths, (list, tuple)):
            lengths = np.asarray(lengths)
        return check_lengths(np.asarray(self.to_numpy(lengths)), batch=batch, maxlen=maxlen)

    @staticmethod
    def _batch_time(x: Any, *, min_rank: int, rank: int | None = None) -> tuple[int, int]:
        shape = tuple(getattr(x, "shape", ()))
        if rank is not None and len(shape) != rank:
            raise ValueError(f"expected a rank-{rank} array [B, T, features], got shape {shape}")
        if len(shape) < min_rank:
            raise ValueError(f"expected an array of rank >= {min_rank} [B, T, ...], got shape {shape}")
        if shape[0] == 0:
            raise ValueError("empty batch: the input has batch size 0")
        return int(shape[0]), int(shape[1])

    def _check_rnn(self, spec, params, x, lengths, side, strategy, device) -> tuple[list, np.ndarray, Strategy]:
        if not isinstance(spec, RnnSpec):
            raise ValueError(f"spec must be a harness.RnnSpec, got {type(spec).__name__}")
        check_choice("side", side, SIDES)
        self._check_device(device)
        B, T = self._batch_time(x, min_rank=3, rank=3)
        if x.shape[2] != spec.input_size:
            raise ValueError(f"x has feature size {x.shape[2]} but spec.input_size is {spec.input_size}")
        self._check_float("rnn", x)
        unit = self._unit("rnn", strategy, cell=spec.cell, device=device, dtype=self.dtype_name(x))
        params = check_params(spec, params)
        return params, self._lengths(lengths, batch=B, maxlen=T), unit


def check_params(spec: RnnSpec, params: Any) -> list:
    """`params` as layers x directions x {w_ih, w_hh, b_ih, b_hh} of spec's shapes; array-likes (nested lists)
    become NumPy arrays, native arrays are kept. ValueError naming the offending entry otherwise."""
    if not isinstance(params, (list, tuple)) or len(params) != spec.num_layers:
        n = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"params must be a list of {spec.num_layers} layers, got {n}")
    gh = spec.gates * spec.hidden_size
    out = []
    for layer, dirs in enumerate(params):
        if not isinstance(dirs, (list, tuple)) or len(dirs) != spec.num_directions:
            raise ValueError(f"params[{layer}] must hold {spec.num_directions} direction(s)")
        want = {"w_ih": (gh, spec.layer_input_size(layer)), "w_hh": (gh, spec.hidden_size),
                "b_ih": (gh,), "b_hh": (gh,)}
        row = []
        for d, p in enumerate(dirs):
            if not isinstance(p, dict) or set(p) != set(want):
                raise ValueError(f"params[{layer}][{d}] must be a dict with keys {sorted(want)}")
            q = {}
            for k, shape in want.items():
                where = f"params[{layer}][{d}][{k!r}]"
                if hasattr(p[k], "shape"):
                    v = p[k]
                    if isinstance(v, np.ndarray) and not _is_numeric_dtype(v.dtype.name):
                        raise ValueError(f"{where} must be a numeric array, got dtype {v.dtype.name}")
                else:
                    try:
                        v = np.asarray(p[k], dtype=np.float64)
                    except (TypeError, ValueError) as e:
                        raise ValueError(f"{where} must be a numeric array: {e}") from None
                if tuple(v.shape) != shape:
                    raise ValueError(f"params[{layer}][{d}][{k!r}] has shape {tuple(v.shape)}, expected {shape}")
                q[k] = v
            row.append(q)
        out.append(row)
    return out


#: bfloat16's largest finite value, (2 - 2**-7) * 2**127 (NumPy's finfo does not know bfloat16)
BFLOAT16_MAX = (2 - 2**-7) * 2.0**127


def check_pad_value(value: Any, dtype: str) -> None:
    """`pad`'s value must be representable in the sequences' dtype (no NaN into ints, no 0.5 into bools, no 1e40
    into float32: a finite value beyond the dtype's largest is an error, as torch and TensorFlow make it, not inf as
    a NumPy cast would; inf and NaN themselves go into any floating dtype)."""
    kind = np.dtype(dtype).kind if dtype != "bfloat16" else "f"
    exact = isinstance(value, (int, np.integer))  # bool included: compared as an int, not through a float
    try:
        v = complex(value)
    except OverflowError:  # an int beyond any float: only an integer dtype may still be asked about it
        if kind not in "iub":
            raise ValueError(f"pad value {value!r} is not representable in dtype {dtype}") from None
        v = complex(0)
    except (TypeError, ValueError):
        raise ValueError(f"pad value {value!r} is not a number") from None
    if kind in "iub":
        if not exact and (v.imag or not np.isfinite(v.real) or v.real != int(v.real)):
            raise ValueError(f"pad value {value!r} is not representable in dtype {dtype}")
        n = int(value) if exact else int(v.real)  # 2**64 - 1 stays exact (a float would round it up)
        lo, hi = (0, 1) if kind == "b" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
        if not lo <= n <= hi:
            raise ValueError(f"pad value {value!r} is not representable in dtype {dtype}")
    elif kind == "f" and v.imag:
        raise ValueError(f"pad value {value!r} is not representable in dtype {dtype}")
    elif kind in "fc":
        top = BFLOAT16_MAX if dtype == "bfloat16" else float(np.finfo(dtype).max)
        if any(np.isfinite(part) and abs(part) > top for part in (v.real, v.imag)):
            raise ValueError(f"pad value {value!r} is not representable in dtype {dtype} (its largest finite value "
                             f"is {top:.6g})")


def check_packed(packed: Packed, to_numpy) -> tuple[np.ndarray, np.ndarray]:
    """Validate a `Packed` once for every adapter: (batch_sizes, sorted_indices) as int64 NumPy arrays."""
    batch_sizes = np.asarray(to_numpy(packed.batch_sizes))
    sorted_indices = np.asarray(to_numpy(packed.sorted_indices))
    unsorted_indices = np.asarray(to_numpy(packed.unsorted_indices))
    for name, a in (("batch_sizes", batch_sizes), ("sorted_indices", sorted_indices),
                    ("unsorted_indices", unsorted_indices)):
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"inconsistent Packed: {name} must be a 1-D integer array, got shape {a.shape} "
                             f"dtype {a.dtype}")
    B = sorted_indices.size
    if B == 0:
        raise ValueError("empty batch: the Packed has no rows")
    if not np.array_equal(np.sort(sorted_indices), np.arange(B)):
        raise ValueError(f"inconsistent Packed: sorted_indices is not a permutation of 0..{B - 1}")
    if unsorted_indices.size != B or not np.array_equal(unsorted_indices[sorted_indices], np.arange(B)):
        raise ValueError("inconsistent Packed: unsorted_indices is not the inverse of sorted_indices")
    bad = np.flatnonzero((batch_sizes < 1) | (batch_sizes > B))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"inconsistent Packed: batch_sizes[{i}]={int(batch_sizes[i])} is outside [1, {B}]")
    up = np.flatnonzero(np.diff(batch_sizes) > 0)
    if up.size:
        i = int(up[0]) + 1
        raise ValueError(f"inconsistent Packed: batch_sizes must not increase (batch_sizes[{i}]="
                         f"{int(batch_sizes[i])} > batch_sizes[{i - 1}]={int(batch_sizes[i - 1])})")
    shape = _shape(packed.data)
    if len(shape) < 1:
        raise ValueError(f"inconsistent Packed: data must be an array [N, *feat] of rank >= 1, got shape {shape}")
    rows = int(shape[0])
    if rows != int(batch_sizes.sum()):
        raise ValueError(f"inconsistent Packed: data has {rows} rows but batch_sizes sum to {int(batch_sizes.sum())}")
    return batch_sizes.astype(np.int64), sorted_indices.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# Losses: the host-side validation every adapter shares (ARCHITECTURE.md, "Losses"); the choices, LOSS_KINDS and
# LOSS_REDUCTIONS, live in `adapters.spec` (imported above, so `adapters.base.LOSS_REDUCTIONS` still works).


def check_loss_inputs(kind: str, logits_shape: tuple, targets_shape: tuple, logits_dtype: str,
                      targets_dtype: str) -> None:
    """Ranks, shapes and dtypes of a masked loss's logits and targets (ValueError naming the problem)."""
    if logits_dtype not in FLOAT_DTYPES:
        raise ValueError(f"masked_loss needs floating-point logits ({', '.join(FLOAT_DTYPES)}), got dtype "
                         f"{logits_dtype}")
    if kind == "softmax_ce":
        if len(logits_shape) != 3:
            raise ValueError(f"softmax_ce expects logits of rank 3 [B, T, C], got shape {logits_shape}")
        if logits_shape[2] == 0:
            raise ValueError("softmax_ce needs at least one class: logits have C=0")
        if targets_shape != logits_shape[:2]:
            raise ValueError(f"softmax_ce expects targets of shape [B, T] = {logits_shape[:2]}, got "
                             f"{targets_shape}")
        if not _is_int_dtype(targets_dtype):
            raise ValueError(f"softmax_ce expects integer class targets, got dtype {targets_dtype}")
        return
    if len(logits_shape) not in (2, 3):
        raise ValueError(f"sigmoid_bce expects logits of rank 2 [B, T] or 3 [B, T, C], got shape {logits_shape}")
    if targets_shape != logits_shape:
        raise ValueError(f"sigmoid_bce expects targets of the logits' shape {logits_shape}, got {targets_shape}")
    if targets_dtype not in FLOAT_DTYPES:
        raise ValueError(f"sigmoid_bce expects floating-point targets, got dtype {targets_dtype}")


def check_targets_in_range(targets: np.ndarray, lengths: np.ndarray, side: str, classes: int) -> None:
    """Every VALID class target lies in [0, C); padded targets may hold anything."""
    bad = np.argwhere(valid_mask(lengths, targets.shape[1], side) & ((targets < 0) | (targets >= classes)))
    if bad.size:
        b, t = (int(i) for i in bad[0])
        raise ValueError(f"target {int(targets[b, t])} at (row {b}, step {t}) is outside [0, {classes}) "
                         f"(C={classes} classes)")


def _need_array(name: str, x: Any, what: str) -> None:
    """Attention's q, k and v are arrays only (NumPy's or the framework's), as the frameworks' attention functions
    take them: a nested list (or None) is refused by its type, not read as a shape ()."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{name} must be an array {what} (NumPy's or the framework's), got {type(x).__name__}")


def _shape(x: Any) -> tuple:
    """The shape of a native array, NumPy array or nested list."""
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _is_numeric_dtype(name: str) -> bool:
    """bool, integer, floating (bfloat16 included) or complex: what every framework's arrays hold (no object,
    string or datetime)."""
    if name in FLOAT_DTYPES:
        return True
    try:
        return np.dtype(name).kind in "biufc"
    except TypeError:  # a dtype NumPy does not know (a framework's string type, float8...)
        return False


def check_probabilities(targets: np.ndarray, lengths: np.ndarray, side: str) -> None:
    """Every VALID binary target ([B, T] or [B, T, C]) lies in [0, 1] (NaN does not); padded ones may hold
    anything."""
    valid = valid_mask(lengths, targets.shape[1], side)
    bad = np.argwhere((valid[..., None] if targets.ndim == 3 else valid) & ~((targets >= 0) & (targets <= 1)))
    if bad.size:
        b, t = (int(i) for i in bad[0][:2])
        label = f", label {int(bad[0][2])}" if targets.ndim == 3 else ""
        raise ValueError(f"target {float(targets[tuple(bad[0])]):g} at (row {b}, step {t}{label}) is outside [0, 1] "
                         "(sigmoid_bce targets are probabilities)")


#: the integer dtypes every framework indexes with (torch's F.embedding takes only these, TF's losses too)
INDEX_DTYPES = ("int32", "int64")


def _index_array(x: Any, host: np.ndarray, dtype: str) -> Any:
    """Integer ids `x` (validated where valid) as every framework's index kernels take them: x itself when int32
    or int64, else its host copy `host` as int64 (padded ids may wrap: they are never read)."""
    return x if dtype in INDEX_DTYPES else host.astype(np.int64)


def _is_int_dtype(name: str) -> bool:
    try:
        return name != "bool" and np.issubdtype(np.dtype(name), np.integer)
    except TypeError:  # a dtype NumPy does not know (bfloat16, float8...) is no integer dtype
        return False


def loss_weights(lengths: np.ndarray, maxlen: int, side: str, reduction: str, dtype: str = "float64") -> np.ndarray:
    """[B, T] host weights w with loss = sum(per_step_loss * w): 1 (sum), 1/N (token_mean) or 1/(n_b * rows)
    (sequence_mean) at valid steps and 0 at padded ones, so an empty row or batch contributes exactly 0. Built once
    on the host from the validated lengths, so a jitted strategy never retraces on new lengths."""
    n = lengths.astype(np.float64)
    if reduction == "sum":
        per_row = np.ones_like(n)
    elif reduction == "token_mean":
        per_row = np.full_like(n, 1.0 / max(n.sum(), 1.0))
    else:
        per_row = 1.0 / (np.maximum(n, 1.0) * max(int(np.count_nonzero(lengths)), 1))
    return np.where(valid_mask(lengths, maxlen, side), per_row[:, None], 0.0).astype(dtype)


def valid_steps(lengths: np.ndarray, maxlen: int, side: str, reduction: str,
                dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    """The valid steps of a [B, maxlen] batch as flat (row * maxlen + step) positions, row-major, and their
    `loss_weights`: what the "valid_only" loss strategies gather and weigh."""
    at = np.flatnonzero(valid_mask(lengths, maxlen, side).reshape(-1))
    return at, loss_weights(lengths, maxlen, side, reduction, dtype).reshape(-1)[at]


def valid_only_kernels(softmax_ce: str, sigmoid_bce: str) -> dict[str, str]:
    """A "valid_only" loss strategy's kernel name per kind, from the primitive it runs on the gathered rows."""
    return {kind: f"valid rows gathered (skipped when nothing is padded) + {primitive}"
            for kind, primitive in (("softmax_ce", softmax_ce), ("sigmoid_bce", sigmoid_bce))}


def valid_only_unit(kernel: str | dict[str, str], doc: str, programs=None) -> Strategy:
    """The "valid_only" loss unit of a framework whose adapter has `_valid_only_run(logits, targets, lengths, kind,
    reduction, side, device, grad)` (TensorFlow, JAX; torch's runs through its own `_loss_run`); `kernel` per kind
    as for `adapters.spec.kernel_fields`; `programs` its `Strategy.programs` where its compiles follow the
    lengths."""
    return Strategy("valid_only", lambda fw, *a: fw._valid_only_run(*a, grad=False),
                    lambda fw, *a: fw._valid_only_run(*a, grad=True), supports=lambda fw, **spec: None,
                    doc=doc, programs=programs, **kernel_fields(kernel))
