"""PyTorch adapter: PyTorch's own variable-length primitives, with their gaps filled.

PyTorch already speaks the contract's dialect (`pack_padded_sequence`, `PackedSequence`, `pad_sequence`,
`nn.LSTM`/`nn.GRU`/`nn.RNN` and a weight layout that *is* the canonical one), so this adapter mostly calls those
and patches what they refuse: zero-length rows, left padding, and `torch.sort`'s unstable tie order.

TF32 is switched off in `__init__` (matmul and cuDNN), process-wide, so float32 GPU runs compare tightly.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from adapters.base import Adapter
from harness.spec import Packed, RnnOut, RnnSpec, map_params, pack_order, to_left_index, to_right_index

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


class TorchAdapter(Adapter):
    """PyTorch behind the contract. RNN strategies: "packed" (default) and "masked_loop".

    Decisions where the contract is silent: `pad` keeps seqs[0]'s dtype and reads non-tensor sequences through
    NumPy (so Python floats become float64, as in the reference); `pack`'s batch_sizes live on the CPU like
    PyTorch's, the indices on the data's device; `unpack` returns lengths as an int64 CPU tensor; `rnn` on a
    batch whose lengths are all 0 runs nothing and reports kernel "none"."""

    name = "torch"
    strategies = ("packed", "masked_loop")
    _DEVICES = {"cpu": "cpu", "gpu": "cuda"}

    def __init__(self) -> None:
        import torch
        import torch.nn.utils.rnn as rnn_utils

        self.torch = torch
        self.rnn_utils = rnn_utils
        self.version = torch.__version__
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 correctness runs compare tightly
        torch.backends.cudnn.allow_tf32 = False
        self._modules: dict[tuple, Any] = {}
        self._loaded: dict[int, tuple[list, list]] = {}  # id(module) -> (weights last loaded, their versions)

    # -- helpers ----------------------------------------------------------------------------------------------
    def devices(self) -> list[str]:
        return ["cpu", "gpu"] if self.torch.cuda.is_available() else ["cpu"]

    def asarray(self, x: Any, device: str = "cpu") -> Any:
        if isinstance(x, np.ndarray) and (not x.flags.writeable or any(s < 0 for s in x.strides)):
            x = np.array(x)  # torch.as_tensor warns on read-only arrays and refuses negative strides
        return self.torch.as_tensor(x, device=self._DEVICES[device])

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, self.torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def sync(self, device: str = "cpu") -> None:
        if device == "gpu":
            self.torch.cuda.synchronize()

    def reset_peak_memory(self, device: str = "cpu") -> None:
        if device == "gpu":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_memory(self, device: str = "cpu") -> int | None:
        return int(self.torch.cuda.max_memory_allocated()) if device == "gpu" else None

    def _native(self, x: Any) -> Any:
        """A tensor where it already lives; anything else onto the CPU."""
        return x if isinstance(x, self.torch.Tensor) else self.asarray(np.asarray(x))

    def _realign(self, x: Any, index: np.ndarray) -> Any:
        """Gather along time with a host-built [B, T] index (left <-> right padding); a permutation per row, so
        its gradient is exact and padding only ever meets padding."""
        idx = self.torch.as_tensor(index, device=x.device).view(*index.shape, *([1] * (x.ndim - 2)))
        return self.torch.take_along_dim(x, idx, dim=1)

    def _valid(self, lengths: np.ndarray, maxlen: int, side: str, device: Any) -> Any:
        t = self.torch.arange(maxlen, device=device)[None, :]
        n = self.torch.as_tensor(lengths, device=device)[:, None]
        return t < n if side == "right" else t >= maxlen - n

    # -- ops ---------------------------------------------------------------------------------------------------
    def _pad(self, seqs, maxlen, side, value, truncate, device):
        """pad_sequence after keras-style truncation, then extended to exactly maxlen (pad_sequence pads to the
        longest row only)."""
        torch = self.torch
        seqs = [s if isinstance(s, torch.Tensor) else np.asarray(s) for s in seqs]
        first = self.asarray(seqs[0], device)
        rows = [self.asarray(s, device).to(first.dtype) for s in seqs]
        rows = [r[:maxlen] if truncate == "right" else r[max(len(r) - maxlen, 0):] for r in rows]
        out = self.rnn_utils.pad_sequence(rows, batch_first=True, padding_value=value, padding_side=side)
        missing = maxlen - out.shape[1]
        if missing:
            fill = out.new_full((out.shape[0], missing, *out.shape[2:]), value)
            out = torch.cat([out, fill] if side == "right" else [fill, out], dim=1)
        return out

    def _mask(self, lengths, maxlen, side, device):
        return self._valid(lengths, maxlen, side, self._DEVICES[device])

    def _pack(self, padded, lengths, side):
        """pack_padded_sequence on the non-empty rows in our stable order (torch.sort breaks ties arbitrarily;
        enforce_sorted=True lengths come out as the identity order); empty rows sort last and add no data."""
        torch = self.torch
        x = self._native(padded)
        if side == "left":
            x = self._realign(x, to_right_index(lengths, x.shape[1], side))
        sorted_indices, unsorted_indices, batch_sizes = pack_order(lengths)
        n = int(np.count_nonzero(lengths))
        if n:
            rows = sorted_indices[:n]
            if n < x.shape[0] or np.any(rows != np.arange(n)):
                x = x.index_select(0, torch.as_tensor(rows, device=x.device))
            packed = self.rnn_utils.pack_padded_sequence(x, torch.as_tensor(lengths[rows]), batch_first=True)
            data, batch_sizes = packed.data, packed.batch_sizes
        else:
            data, batch_sizes = x.new_zeros((0, *x.shape[2:])), torch.as_tensor(batch_sizes)
        return Packed(data, batch_sizes, torch.as_tensor(sorted_indices, device=data.device),
                      torch.as_tensor(unsorted_indices, device=data.device))

    def _unpack(self, packed, batch_sizes, total_length, side):
        """pad_packed_sequence on the non-empty rows, zero rows appended, then scattered to the original order.
        lengths come back as an int64 CPU tensor, like PyTorch's."""
        torch = self.torch
        data = self._native(packed.data)
        order = np.asarray(self.to_numpy(packed.sorted_indices)).astype(np.int64)
        B, n, feat = order.size, int(batch_sizes[0]) if batch_sizes.size else 0, data.shape[1:]
        lengths = np.zeros(B, dtype=np.int64)
        lengths[order] = (batch_sizes[None, :] > np.arange(B)[:, None]).sum(axis=1)
        if n:
            seq = self.rnn_utils.PackedSequence(data, torch.as_tensor(batch_sizes))
            rows = self.rnn_utils.pad_packed_sequence(seq, batch_first=True, total_length=total_length)[0]
        else:
            rows = data.new_zeros((0, total_length, *feat))
        if n < B:
            rows = torch.cat([rows, data.new_zeros((B - n, total_length, *feat))])
        out = torch.empty_like(rows).index_copy_(0, torch.as_tensor(order, device=data.device), rows)
        if side == "left":
            out = self._realign(out, to_left_index(lengths, total_length))
        return out, torch.as_tensor(lengths)

    def _masked_mean(self, x, lengths, side):
        """Sum of `where`-selected steps over max(length, 1): NaN padding is never read, empty rows give 0."""
        torch = self.torch
        x = self._native(x)
        B, T, extra = x.shape[0], x.shape[1], [1] * (x.ndim - 2)
        valid = self._valid(lengths, T, side, x.device).view(B, T, *extra)
        total = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)
        count = torch.as_tensor(np.maximum(lengths, 1), device=x.device).view(B, *extra)
        return (total / count).to(x.dtype)

    # -- RNN ---------------------------------------------------------------------------------------------------
    def _rnn(self, spec, params, x, lengths, side, strategy, device):
        x = self.asarray(x, device)
        with self.torch.no_grad():
            weights, _ = self._weights(spec, params, x, strategy, grad=False)
            out, h, c = self._forward(spec, weights, x, lengths, side, strategy)
        return RnnOut(out, h, c, self._kernel(spec, strategy, x, lengths))

    def raw_rnn(self, spec, params, x, lengths, device="cpu"):
        """pack_padded_sequence -> nn.LSTM/GRU/RNN -> pad_packed_sequence under no_grad, written the usual way
        (weights loaded once, lengths as a CPU tensor, right padding, no zero-length rows)."""
        torch, utils = self.torch, self.rnn_utils
        x = self.asarray(x, device)
        module = self._module(spec, x.dtype, x.device)
        with torch.no_grad():
            for name, value in to_torch_names(params).items():
                getattr(module, name).copy_(self._native(value))
        lengths_t = torch.as_tensor(np.asarray(lengths))

        def run():
            with torch.no_grad():
                packed = utils.pack_padded_sequence(x, lengths_t, batch_first=True, enforce_sorted=False)
                out, state = module(packed)
                return utils.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], state

        return run

    def _rnn_vjp(self, spec, params, x, lengths, cotangents, side, strategy, device):
        """Autograd through the strategy itself, x and the weights as leaves; cotangents go straight into
        torch.autograd.grad (no loss sum, so nothing multiplies a cotangent by a constant-zero output)."""
        torch = self.torch
        x = self.asarray(x, device).detach().requires_grad_(True)
        weights, named = self._weights(spec, params, x, strategy, grad=True)
        out, h, c = self._forward(spec, weights, x, lengths, side, strategy)
        outs = [out, h] + ([c] if c is not None else [])
        cots = [self.asarray(cotangents[k], device).to(x.dtype) for k in ("outputs", "h_n", "c_n")[:len(outs)]]
        leaves = [x, *named.values()]
        if np.any(lengths):
            grads = torch.autograd.grad(outs, leaves, cots, allow_unused=True)
        else:  # nothing ran: the outputs are constants
            grads = [None] * len(leaves)
        grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, leaves, strict=True)]
        result = RnnOut(out.detach(), h.detach(), None if c is None else c.detach(),
                        self._kernel(spec, strategy, x, lengths))
        return result, {"x": grads[0], "params": from_torch_names(spec, dict(zip(named, grads[1:], strict=True)))}

    def _forward(self, spec, weights, x, lengths, side, strategy):
        """Right-align, run the strategy on right-padded data, align back. Returns (outputs, h_n, c_n)."""
        T = x.shape[1]
        if not np.any(lengths):
            return self._empty(spec, x)
        if side == "left":
            x = self._realign(x, to_right_index(lengths, T, side))
        run = self._run_packed if strategy == "packed" else self._run_loop
        out, h, c = run(spec, weights, x, lengths)
        if side == "left":
            out = self._realign(out, to_left_index(lengths, T))
        return out, h, c

    def _empty(self, spec, x):
        """Every row has length 0: zero outputs and states, nothing runs."""
        D, H, (B, T) = spec.num_directions, spec.hidden_size, x.shape[:2]
        state = x.new_zeros((spec.num_layers * D, B, H))
        return x.new_zeros((B, T, D * H)), state, state.clone() if spec.cell == "lstm" else None

    def _kernel(self, spec, strategy, x, lengths) -> str:
        """What ran. CPU "packed" LSTM in float32 goes to oneDNN only when every packed row has the same length
        (aten's packed lstm unwraps uniform batch_sizes to the dense oneDNN kernel); all else is aten's loop."""
        torch = self.torch
        if not np.any(lengths):
            return "none"
        if strategy == "masked_loop":
            return "python-loop"
        if x.device.type == "cuda":
            return "cudnn" if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled else "aten-cuda"
        nonzero = lengths[lengths > 0]
        uniform = bool(np.all(nonzero == nonzero[0]))
        mkldnn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        if spec.cell == "lstm" and x.dtype == torch.float32 and mkldnn and uniform:
            return "onednn"
        return "aten-cpu"

    def _weights(self, spec, params, x, strategy, grad):
        """(weights the strategy runs on, {torch name: leaf tensor}). "packed" copies the canonical arrays into
        a cached nn module (a few memcpys; keeps cuDNN's flattened weight buffer); "masked_loop" wraps them."""
        if strategy == "packed":
            module = self._module(spec, x.dtype, x.device)
            self._load(module, to_torch_names(params))
            return module, dict(module.named_parameters()) if grad else {}
        leaf = lambda v: self._native(v).to(device=x.device, dtype=x.dtype).detach().requires_grad_(grad)
        weights = map_params(leaf, params)
        return weights, to_torch_names(weights)

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
        """Time-step loop on right-padded data; a row's state moves only at its valid steps (torch.where), so
        the backward direction starts at each row's own last step. Padded inputs are zeroed with `where` first:
        the input projection is one matmul over all steps, and NaN there would poison the weight gradient."""
        torch = self.torch
        valid = self._valid(lengths, x.shape[1], "right", x.device)[..., None]
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
