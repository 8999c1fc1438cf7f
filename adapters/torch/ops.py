"""PyTorch ops: pad / mask / pack / unpack / masked_mean on PyTorch's own variable-length primitives.

`pad_sequence`, `pack_padded_sequence` and `pad_packed_sequence` do the work; this module patches what they
refuse: zero-length rows, left padding (the shared `realign`), exact `maxlen`, and `torch.sort`'s unstable ties.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from adapters.spec import Packed, lengths_from_batch_sizes, pack_order


class TorchOps:
    """The non-strategy ops of the torch adapter (mixed into `TorchAdapter`, which holds `self.torch`)."""

    def _native(self, x: Any) -> Any:
        """A tensor where it already lives; anything else onto the CPU."""
        return x if isinstance(x, self.torch.Tensor) else self.asarray(np.asarray(x))

    # -- ops ---------------------------------------------------------------------------------------------------
    def _pad(self, seqs, maxlen, side, value, truncate, device):
        """pad_sequence after keras-style truncation, then extended to exactly maxlen (pad_sequence pads to the
        longest row only)."""
        torch = self.torch
        seqs = [s if isinstance(s, torch.Tensor) else np.asarray(s) for s in seqs]
        first = self.asarray(seqs[0], device)
        rows = [self.asarray(s, device).to(first.dtype) for s in seqs]
        rows = [r[:maxlen] if truncate == "right" else r[max(len(r) - maxlen, 0):] for r in rows]
        # pad_sequence takes a float padding value: a complex one, or an int a float would round (2**63 - 1), is
        # written afterwards with a select
        inexact = isinstance(value, (complex, np.complexfloating)) or (
            isinstance(value, (int, np.integer)) and int(float(value)) != int(value))
        out = self.rnn_utils.pad_sequence(rows, batch_first=True, padding_value=0 if inexact else value,
                                          padding_side=side)
        missing = maxlen - out.shape[1]
        if missing:
            fill = out.new_full((out.shape[0], missing, *out.shape[2:]), 0 if inexact else value)
            out = torch.cat([out, fill] if side == "right" else [fill, out], dim=1)
        if inexact:
            kept = torch.as_tensor([len(r) for r in rows], device=out.device)
            valid = self.valid(kept, maxlen, side).view(*out.shape[:2], *([1] * (out.ndim - 2)))
            out = torch.where(valid, out, torch.full((), value, dtype=out.dtype, device=out.device))
        return out

    def _mask(self, lengths, maxlen, side, device):
        return self.valid(self.torch.as_tensor(lengths, device=self._DEVICES[device]), maxlen, side)

    def _pack(self, padded, lengths, side):
        """pack_padded_sequence on the non-empty rows in our stable order (torch.sort breaks ties arbitrarily;
        enforce_sorted=True lengths come out as the identity order); empty rows sort last and add no data."""
        torch = self.torch
        x = self._native(padded)
        if side == "left":
            x = self.realign(x, lengths, to="right")
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

    def _unpack(self, packed, batch_sizes, sorted_indices, total_length, side):
        """pad_packed_sequence on the non-empty rows, zero rows appended, then scattered to the original order.
        lengths come back as an int64 CPU tensor, like PyTorch's."""
        torch = self.torch
        data = self._native(packed.data)
        order = sorted_indices
        B, n, feat = order.size, int(batch_sizes[0]) if batch_sizes.size else 0, data.shape[1:]
        lengths = lengths_from_batch_sizes(batch_sizes, order)
        if n:
            seq = self.rnn_utils.PackedSequence(data, torch.as_tensor(batch_sizes))
            rows = self.rnn_utils.pad_packed_sequence(seq, batch_first=True, total_length=total_length)[0]
        else:
            rows = data.new_zeros((0, total_length, *feat))
        if n < B:
            rows = torch.cat([rows, data.new_zeros((B - n, total_length, *feat))])
        out = torch.empty_like(rows).index_copy_(0, torch.as_tensor(order, device=data.device), rows)
        if side == "left":
            out = self.realign(out, lengths, to="left")
        return out, torch.as_tensor(lengths)

    def _masked_mean(self, x, lengths, side):
        """Sum of `where`-selected steps over max(length, 1): NaN padding is never read, empty rows give 0. float16
        and bfloat16 are summed in float32 (as NumPy's mean does float16: four steps of 60000 overflow float16)
        and the mean returned in x's dtype."""
        torch = self.torch
        x = self._native(x)
        B, T, extra = x.shape[0], x.shape[1], [1] * (x.ndim - 2)
        valid = self.valid(self.torch.as_tensor(lengths, device=x.device), T, side).view(B, T, *extra)
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        total = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1, dtype=acc)
        count = torch.as_tensor(np.maximum(lengths, 1), device=x.device).view(B, *extra)
        return (total / count).to(x.dtype)

