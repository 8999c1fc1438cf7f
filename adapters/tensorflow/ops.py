"""TensorFlow ops: pad / mask / pack / unpack / masked_mean on RaggedTensor, gathers and scatters."""
from __future__ import annotations

import numpy as np

from adapters.spec import Packed


class TensorflowOps:
    """The non-strategy ops of the TensorFlow adapter (mixed into `TensorflowAdapter`, which holds `self.tf`)."""

    def _tensor(self, x, dtype=None):
        """A native tensor where it already lives (no device move), optionally cast."""
        tf = self.tf
        t = x if isinstance(x, tf.Tensor) else tf.convert_to_tensor(np.asarray(x))
        return t if dtype is None or t.dtype == dtype else tf.cast(t, dtype)

    def _pad(self, seqs, maxlen, side, value, truncate, device):
        """`keras.utils.pad_sequences` values through a RaggedTensor.

        Unlike pad_sequences (whose dtype defaults to int32) the result keeps the sequences' dtype (the one they
        all share: `Adapter.pad` rejects mixed dtypes). Right truncation is `to_tensor`'s own; left truncation
        slices the ragged rows; left padding rolls each right-padded row by a gather.
        """
        tf = self.tf
        arrays = [s if isinstance(s, tf.Tensor) else np.asarray(s) for s in seqs]
        dtype = tf.as_dtype(arrays[0].dtype)
        lens = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        feat = list(arrays[0].shape[1:])
        with tf.device(self._dev(device)):
            if any(isinstance(a, tf.Tensor) for a in arrays):
                values = tf.concat([tf.cast(a, dtype) for a in arrays], axis=0)
            else:  # one host->device conversion instead of one per sequence
                values = tf.convert_to_tensor(np.concatenate(arrays).astype(dtype.as_numpy_dtype, copy=False))
            rt = tf.RaggedTensor.from_row_lengths(values, lens)
            if truncate == "left":  # keep the last maxlen items (to_tensor's own truncation keeps the first)
                rt = rt[:, -maxlen:] if maxlen else rt[:, :0]
            fill = tf.constant(np.asarray(value).astype(dtype.as_numpy_dtype))  # tf.cast(1e300) overflows float32
            out = rt.to_tensor(default_value=fill, shape=[len(arrays), maxlen, *feat])
            if side == "left" and maxlen:
                out = self.realign(out, tf.constant(np.minimum(lens, maxlen)), to="left")
        return out

    def _mask(self, lengths, maxlen, side, device):
        with self.tf.device(self._dev(device)):
            return self.valid(self.tf.constant(lengths), maxlen, side)

    def _pack(self, padded, lengths, side):
        tf = self.tf
        x = self._tensor(padded)
        L = tf.constant(lengths)
        if side == "left" and x.shape[1]:
            x = self.realign(x, L, to="right")
        sorted_indices = tf.cast(tf.argsort(L, direction="DESCENDING", stable=True), tf.int64)
        longest = int(lengths.max())
        valid_tm = tf.range(longest, dtype=tf.int64)[:, None] < tf.gather(L, sorted_indices)[None, :]  # [T, B]
        time_major = tf.transpose(tf.gather(x[:, :longest], sorted_indices), [1, 0, *range(2, len(x.shape))])
        return Packed(data=tf.boolean_mask(time_major, valid_tm),
                      batch_sizes=tf.reduce_sum(tf.cast(valid_tm, tf.int64), axis=1),
                      sorted_indices=sorted_indices,
                      unsorted_indices=tf.math.invert_permutation(sorted_indices))

    def _unpack(self, packed, batch_sizes, sorted_indices, total_length, side):
        tf = self.tf
        data = self._tensor(packed.data)
        sorted_indices = tf.constant(sorted_indices)
        B = int(sorted_indices.shape[0])
        valid_tm = tf.range(B, dtype=tf.int64)[None, :] < tf.constant(batch_sizes)[:, None]  # [T, B], sorted rows
        lengths_sorted = tf.reduce_sum(tf.cast(valid_tm, tf.int64), axis=0)
        pos = tf.where(valid_tm)  # (t, r) in row-major order == the order of packed.data
        t, r = pos[:, 0], pos[:, 1]
        if side == "left":
            t = t + total_length - tf.gather(lengths_sorted, r)
        index = tf.stack([tf.gather(sorted_indices, r), t], axis=1)
        out = tf.scatter_nd(index, data, [B, total_length, *data.shape[1:]])
        return out, tf.scatter_nd(sorted_indices[:, None], lengths_sorted, [B])

    def _masked_mean(self, x, lengths, side):
        """Sum of `tf.where`-selected valid steps over max(n, 1): NaN in padding never meets an arithmetic op.
        float16 and bfloat16 are summed in float32 (as NumPy's mean does float16) and the mean returned in x's
        dtype."""
        tf = self.tf
        x = self._tensor(x)
        acc = tf.float32 if x.dtype in (tf.float16, tf.bfloat16) else x.dtype
        m = tf.reshape(self.valid(tf.constant(lengths), x.shape[1], side), [*x.shape[:2]] + [1] * (len(x.shape) - 2))
        total = tf.reduce_sum(tf.cast(tf.where(m, x, tf.zeros_like(x)), acc), axis=1)
        n = tf.reshape(tf.constant(np.maximum(lengths, 1)), [-1] + [1] * (len(x.shape) - 2))
        return tf.cast(total / tf.cast(n, acc), x.dtype)

