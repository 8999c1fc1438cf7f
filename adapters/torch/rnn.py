"""PyTorch masked RNNs: two strategy units over one canonical (PyTorch-layout) weight nest.

- "packed" (default): `pack_padded_sequence` -> `nn.LSTM`/`GRU`/`RNN` -> `pad_packed_sequence` on the non-empty
  rows (PyTorch refuses length 0); weights are copied into a cached module (cuDNN's flattened buffer kept) and
  reloaded only when they changed. Kernel: "cudnn" on GPU, "onednn" for float32 LSTM batches whose non-empty rows
  all have one length (aten unwraps uniform batch_sizes to the dense oneDNN kernel), else "aten-cpu".
- "masked_loop": the cell written out per time step, the carry advanced only at valid steps (`torch.where`).
Left padding is realigned to the right (the shared `Adapter.realign`) around both.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from adapters.spec import RnnOut, RnnSpec, Strategy, map_params, strategy_table

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
        """Time-step loop on right-padded data; a row's state moves only at its valid steps (torch.where), so
        the backward direction starts at each row's own last step. Padded inputs are zeroed with `where` first:
        the input projection is one matmul over all steps, and NaN there would poison the weight gradient."""
        torch = self.torch
        valid = self.valid(self.torch.as_tensor(lengths, device=x.device), x.shape[1])[..., None]
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


class _Impl:
    """The pieces one torch RNN strategy is made of: its weights, its run on right-padded data, its kernel."""

    def __init__(self, weights, run, kernel):
        self.weights, self.run, self.kernel = weights, run, kernel


_PACKED = _Impl(lambda a, *args, **kw: a._packed_weights(*args, **kw), lambda a, *args: a._run_packed(*args),
                lambda a, *args: a._packed_kernel(*args))
_LOOP = _Impl(lambda a, *args, **kw: a._leaf_weights(*args, **kw), lambda a, *args: a._run_loop(*args),
              lambda a, spec, x, lengths: "python-loop" if np.any(lengths) else "none")


def _unit(name: str, impl: _Impl, doc: str) -> Strategy:
    return Strategy(name, lambda a, *args: a._rnn_forward(impl, *args), lambda a, *args: a._rnn_vjp(impl, *args),
                    doc=doc)


STRATEGIES = strategy_table(
    _unit("packed", _PACKED, "pack_padded_sequence + nn.LSTM/GRU/RNN + pad_packed_sequence (cuDNN / oneDNN)"),
    _unit("masked_loop", _LOOP, "cell per step, torch.where carry"),
)
