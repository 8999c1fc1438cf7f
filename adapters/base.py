"""The adapter contract (ARCHITECTURE.md): one base class, one subclass per framework.

The public methods here validate their input once, in NumPy on the host, so that every framework rejects bad
input with the same `ValueError`, and then dispatch to the subclass's `_op` method, which only ever sees valid
input: lengths as a validated int64 NumPy array, `side` in ("right", "left"), a resolved maxlen, a strategy the
adapter declared. Subclasses import their framework in `__init__` and keep it as an attribute, so importing this
package imports no framework.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.spec import (
    DEVICES,
    SIDES,
    Packed,
    RnnOut,
    RnnSpec,
    check_choice,
    check_lengths,
    check_maxlen,
)


class Adapter(abc.ABC):
    """One framework behind the common contract. Arrays in, native arrays out (see `to_numpy`)."""

    name: str = "base"
    version: str = ""
    #: the exact RNN strategies, default first (a class attribute, so the registry can list them without
    #: importing the framework)
    strategies: tuple[str, ...] = ()

    # -- helpers every framework provides ---------------------------------------------------------------------
    def devices(self) -> list[str]:
        """Devices this framework can run on here: "cpu" always, "gpu" when it sees one."""
        return ["cpu"]

    @abc.abstractmethod
    def asarray(self, x: Any, device: str = "cpu") -> Any:
        """A NumPy (or native) array as a native array on `device`, dtype kept."""

    @abc.abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray:
        """A native (or NumPy) array as a NumPy array on the host."""

    def sync(self, device: str = "cpu") -> None:  # noqa: B027 - a no-op is right for synchronous frameworks
        """Block until all work queued on `device` has finished (timed callables end with this)."""

    def compile_count(self) -> int:
        """How many times this adapter has traced/compiled a function so far (jit, tf.function); 0 if it never
        compiles. The timing harness reads it around a timed region to prove nothing retraced there."""
        return 0

    def reset_peak_memory(self, device: str = "cpu") -> None:  # noqa: B027 - nothing to reset on CPU
        """Reset the allocator's peak counter on `device` (GPU only; CPU memory is measured as process RSS)."""

    def peak_memory(self, device: str = "cpu") -> int | None:
        """Peak bytes the framework's allocator held on `device` since the last reset; None where unknown."""
        return None

    def rnn_strategies(self, cell: str) -> list[str]:
        """The exact RNN strategies this adapter offers for `cell`, default first."""
        check_choice("cell", cell, ("rnn", "lstm", "gru"))
        return self._strategies(cell)

    def _strategies(self, cell: str) -> list[str]:
        return list(self.strategies)

    # -- the ops: validate, then dispatch ---------------------------------------------------------------------
    def pad(self, seqs: Sequence[Any], *, side: str = "right", value: Any = 0, maxlen: int | None = None,
            truncate: str = "right", device: str = "cpu") -> Any:
        """List of [L_i, *feat] -> [B, T, *feat] with T = maxlen or max L_i (keras `pad_sequences` values)."""
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
        longest = max(s[0] for s in shapes)
        T = longest if maxlen is None else check_maxlen(maxlen)
        return self._pad(list(seqs), T, side, value, truncate, device)

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
        batch_sizes = np.asarray(self.to_numpy(packed.batch_sizes)).astype(np.int64)
        longest = int(batch_sizes.size)
        if total_length is None:
            T = longest
        else:
            T = check_maxlen(total_length)
            if T < longest:
                raise ValueError(f"total_length={T} is shorter than the longest packed sequence ({longest})")
        return self._unpack(packed, batch_sizes, T, side)

    def masked_mean(self, x: Any, lengths: Any, *, side: str = "right") -> Any:
        """Mean over valid steps, [B, *feat]; 0 for an empty sequence; padding (even NaN) never leaks."""
        check_choice("side", side, SIDES)
        B, T = self._batch_time(x, min_rank=2)
        return self._masked_mean(x, self._lengths(lengths, batch=B, maxlen=T), side)

    def rnn(self, spec: RnnSpec, params: Any, x: Any, lengths: Any, *, side: str = "right",
            strategy: str | None = None, device: str = "cpu") -> RnnOut:
        """Masked (multi-layer, optionally bidirectional) RNN; see ARCHITECTURE.md, "RNN semantics"."""
        lengths, strategy = self._check_rnn(spec, params, x, lengths, side, strategy, device)
        return self._rnn(spec, params, x, lengths, side, strategy, device)

    def rnn_vjp(self, spec: RnnSpec, params: Any, x: Any, lengths: Any, cotangents: dict[str, Any], *,
                side: str = "right", strategy: str | None = None, device: str = "cpu") -> tuple[RnnOut, dict]:
        """(RnnOut, grads) with grads = {"x": [B,T,I], "params": nest like params} of
        sum(outputs*cot["outputs"]) + sum(h_n*cot["h_n"]) [+ sum(c_n*cot["c_n"])]."""
        lengths, strategy = self._check_rnn(spec, params, x, lengths, side, strategy, device)
        B, T = lengths.shape[0], x.shape[1]
        D, H = spec.num_directions, spec.hidden_size
        want = {"outputs": (B, T, D * H), "h_n": (spec.num_layers * D, B, H)}
        if spec.cell == "lstm":
            want["c_n"] = (spec.num_layers * D, B, H)
        if not isinstance(cotangents, dict) or set(cotangents) != set(want):
            got = sorted(cotangents) if isinstance(cotangents, dict) else type(cotangents).__name__
            raise ValueError(f"cotangents must be a dict with keys {sorted(want)}, got {got}")
        for key, shape in want.items():
            if tuple(cotangents[key].shape) != shape:
                raise ValueError(f"cotangents[{key!r}] has shape {tuple(cotangents[key].shape)}, expected {shape}")
        return self._rnn_vjp(spec, params, x, lengths, cotangents, side, strategy, device)

    def raw_rnn(self, spec: RnnSpec, params: Any, x: Any, lengths: Any, device: str = "cpu"):
        """A callable running the default strategy's framework code directly, the way a user would write it
        without varlen (no validation, no conversion), for measuring the adapter's overhead. Optional."""
        raise NotImplementedError(f"{self.name} has no raw baseline for the overhead measurement")

    # -- what a framework implements --------------------------------------------------------------------------
    @abc.abstractmethod
    def _pad(self, seqs: list, maxlen: int, side: str, value: Any, truncate: str, device: str) -> Any: ...

    @abc.abstractmethod
    def _mask(self, lengths: np.ndarray, maxlen: int, side: str, device: str) -> Any: ...

    @abc.abstractmethod
    def _pack(self, padded: Any, lengths: np.ndarray, side: str) -> Packed: ...

    @abc.abstractmethod
    def _unpack(self, packed: Packed, batch_sizes: np.ndarray, total_length: int, side: str) -> tuple[Any, Any]: ...

    @abc.abstractmethod
    def _masked_mean(self, x: Any, lengths: np.ndarray, side: str) -> Any: ...

    def _rnn(self, spec, params, x, lengths, side, strategy, device) -> RnnOut:
        raise NotImplementedError(f"{self.name} has no RNN implementation")

    def _rnn_vjp(self, spec, params, x, lengths, cotangents, side, strategy, device) -> tuple[RnnOut, dict]:
        raise NotImplementedError(f"{self.name} has no RNN gradient implementation")

    # -- validation helpers -----------------------------------------------------------------------------------
    def _check_device(self, device: str) -> None:
        check_choice("device", device, DEVICES)
        if device not in self.devices():
            raise ValueError(f"device {device!r} is not available to {self.name} here; it sees {self.devices()}")

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

    def _check_rnn(self, spec, params, x, lengths, side, strategy, device) -> tuple[np.ndarray, str]:
        if not isinstance(spec, RnnSpec):
            raise ValueError(f"spec must be a harness.RnnSpec, got {type(spec).__name__}")
        check_choice("side", side, SIDES)
        self._check_device(device)
        strategies = self.rnn_strategies(spec.cell)
        strategy = strategies[0] if strategy is None else strategy
        check_choice(f"{self.name} strategy", strategy, strategies)
        B, T = self._batch_time(x, min_rank=3, rank=3)
        if x.shape[2] != spec.input_size:
            raise ValueError(f"x has feature size {x.shape[2]} but spec.input_size is {spec.input_size}")
        check_params(spec, params)
        return self._lengths(lengths, batch=B, maxlen=T), strategy


def check_params(spec: RnnSpec, params: Any) -> None:
    """Raise ValueError unless `params` nests layers x directions x {w_ih, w_hh, b_ih, b_hh} of spec's shapes."""
    if not isinstance(params, (list, tuple)) or len(params) != spec.num_layers:
        n = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"params must be a list of {spec.num_layers} layers, got {n}")
    gh = spec.gates * spec.hidden_size
    for layer, dirs in enumerate(params):
        if not isinstance(dirs, (list, tuple)) or len(dirs) != spec.num_directions:
            raise ValueError(f"params[{layer}] must hold {spec.num_directions} direction(s)")
        want = {"w_ih": (gh, spec.layer_input_size(layer)), "w_hh": (gh, spec.hidden_size),
                "b_ih": (gh,), "b_hh": (gh,)}
        for d, p in enumerate(dirs):
            if not isinstance(p, dict) or set(p) != set(want):
                raise ValueError(f"params[{layer}][{d}] must be a dict with keys {sorted(want)}")
            for k, shape in want.items():
                if tuple(p[k].shape) != shape:
                    raise ValueError(f"params[{layer}][{d}][{k!r}] has shape {tuple(p[k].shape)}, expected {shape}")
