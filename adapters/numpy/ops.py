"""NumPy reference ops: pad / mask / pack / unpack / masked_mean, written for obviousness (per-row loops)."""
from __future__ import annotations

from typing import Any

import numpy as np

from adapters.spec import Packed, pack_order


class NumpyOps:
    """The non-strategy ops of the reference, plus the primitives the shared algorithms of `Adapter` use."""

    def _asarray(self, x: Any, device: str) -> np.ndarray:
        return np.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        return x.astype(np.float32) if x.dtype.name == "bfloat16" else x

    def _arange(self, n, like):
        return np.arange(n)

    def _take_time(self, x, index):
        return np.take_along_axis(x, index.reshape(*index.shape, *([1] * (x.ndim - 2))), axis=1)

    def _where(self, cond, a, b):
        return np.where(cond, a, b)

    def _copy(self, x):
        return x.copy()

    def _matmul(self, a, b):
        return a @ b

    # -- ops ---------------------------------------------------------------------------------------------------
    def _pad(self, seqs, maxlen, side, value, truncate, device):
        seqs = [np.asarray(s) for s in seqs]
        dtype = seqs[0].dtype
        out = np.full((len(seqs), maxlen, *seqs[0].shape[1:]), value, dtype=dtype)
        for i, s in enumerate(seqs):
            s = s[-maxlen:] if truncate == "left" else s[:maxlen]
            if maxlen == 0 or len(s) == 0:
                continue
            if side == "right":
                out[i, : len(s)] = s
            else:
                out[i, maxlen - len(s):] = s
        return out

    def _mask(self, lengths, maxlen, side, device):
        return self.valid(lengths, maxlen, side)

    def _rows(self, x: np.ndarray, lengths: np.ndarray, side: str) -> list[np.ndarray]:
        """Each sequence's valid steps, unpadded."""
        T = x.shape[1]
        return [x[b, :n] if side == "right" else x[b, T - n:] for b, n in enumerate(lengths)]

    def _pack(self, padded, lengths, side):
        x = np.asarray(padded)
        rows = self._rows(x, lengths, side)
        sorted_indices, unsorted_indices, batch_sizes = pack_order(lengths)
        steps = [rows[b][t] for t in range(batch_sizes.size) for b in sorted_indices[: batch_sizes[t]]]
        data = np.stack(steps) if steps else np.zeros((0, *x.shape[2:]), dtype=x.dtype)
        return Packed(data, batch_sizes, sorted_indices, unsorted_indices)

    def _unpack(self, packed, batch_sizes, sorted_indices, total_length, side):
        data = np.asarray(packed.data)
        B = sorted_indices.size
        lengths_sorted = np.array([(batch_sizes > r).sum() for r in range(B)], dtype=np.int64)
        out = np.zeros((B, total_length, *data.shape[1:]), dtype=data.dtype)
        lengths = np.zeros(B, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(batch_sizes)])
        for r, b in enumerate(sorted_indices):
            n = lengths_sorted[r]
            lengths[b] = n
            steps = [data[offsets[t] + r] for t in range(n)]
            if n:
                start = 0 if side == "right" else total_length - n
                out[b, start:start + n] = np.stack(steps)
        return out, lengths

    def _masked_mean(self, x, lengths, side):
        """float16 and bfloat16 rows are averaged in float32 (NumPy's own mean does so for float16 only; the
        frameworks do it for both), the result in x's dtype."""
        x = np.asarray(x)
        out = np.zeros((x.shape[0], *x.shape[2:]), dtype=x.dtype)
        acc = np.float32 if x.dtype.name in ("float16", "bfloat16") else x.dtype
        for b, row in enumerate(self._rows(x, lengths, side)):
            if len(row):
                out[b] = row.astype(acc).mean(axis=0)
        return out

