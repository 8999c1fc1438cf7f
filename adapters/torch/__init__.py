"""PyTorch adapter: PyTorch's own variable-length primitives, with their gaps filled (`ops.py`, `rnn.py`).

PyTorch already speaks the contract's dialect (`pack_padded_sequence`, `PackedSequence`, `pad_sequence`,
`nn.LSTM`/`nn.GRU`/`nn.RNN` and a weight layout that *is* the canonical one), so this adapter mostly calls those
and patches what they refuse: zero-length rows, left padding, and `torch.sort`'s unstable tie order.

TF32 is switched off in `__init__` (matmul and cuDNN), process-wide, so float32 GPU runs compare tightly.

Decisions where the contract is silent: `pad` keeps seqs[0]'s dtype and reads non-tensor sequences through NumPy
(so Python floats become float64, as in the reference); `pack`'s batch_sizes live on the CPU like PyTorch's, the
indices on the data's device; `unpack` returns lengths as an int64 CPU tensor; `rnn` on a batch whose lengths are
all 0 runs nothing and reports kernel "none"; `to_numpy` returns bfloat16 as float32 (NumPy has no bfloat16).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from adapters.base import Adapter
from adapters.torch import attention, embedding, loss, rnn
from adapters.torch.attention import TorchAttention
from adapters.torch.embedding import TorchEmbedding
from adapters.torch.loss import TorchLoss
from adapters.torch.ops import TorchOps
from adapters.torch.rnn import TorchRnn


class TorchAdapter(TorchOps, TorchLoss, TorchRnn, TorchAttention, TorchEmbedding, Adapter):
    """PyTorch behind the contract."""

    name = "torch"
    STRATEGIES = {"rnn": rnn.STRATEGIES, "loss": loss.STRATEGIES,
                  "attention": attention.STRATEGIES, "embedding": embedding.STRATEGIES}
    NATIVES = {"loss": loss.NATIVES, "attention": attention.NATIVES, "embedding": embedding.NATIVES}
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

    def device_name(self, device: str = "cpu") -> str | None:
        return self.torch.cuda.get_device_name(0) if device == "gpu" and self.torch.cuda.is_available() else None

    def device_report(self) -> str:
        cuda = self.torch.version.cuda
        return (f"torch {self.version} sees {self.devices()} (CUDA build: {cuda or 'no, a CPU-only build'}, "
                f"{self.torch.cuda.device_count()} CUDA device(s))")

    def _asarray(self, x: Any, device: str) -> Any:
        if isinstance(x, np.ndarray) and (not x.flags.writeable or any(s < 0 for s in x.strides)):
            x = np.array(x)  # torch.as_tensor warns on read-only arrays and refuses negative strides
        if isinstance(x, np.ndarray) and x.dtype.name == "bfloat16":  # NumPy's bfloat16 (ml_dtypes): exact via f32
            return self.torch.as_tensor(x.astype(np.float32), device=self._DEVICES[device]).to(self.torch.bfloat16)
        return self.torch.as_tensor(x, device=self._DEVICES[device])

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, self.torch.Tensor):
            x = x.detach()
            if x.dtype == self.torch.bfloat16:
                x = x.float()
            return x.cpu().numpy()
        return np.asarray(x)

    def dtype_name(self, x: Any) -> str:
        if isinstance(x, self.torch.Tensor):
            return str(x.dtype).removeprefix("torch.")
        return super().dtype_name(x)

    def sync(self, device: str = "cpu") -> None:
        if device == "gpu":
            self.torch.cuda.synchronize()

    def reset_peak_memory(self, device: str = "cpu") -> None:
        """On the GPU also drops the CUDA graphs graph_loop holds for earlier calls and the device indices the RNN
        strategies remember per batch (their memory would count in this case's peak): `clear_compiled`."""
        if device == "gpu":
            self.clear_compiled()
            self.torch.cuda.reset_peak_memory_stats()

    def call_peak(self, call, device: str = "cpu") -> int | None:
        """GPU: the caching allocator's peak of allocated bytes during one call (reset just before it) above what
        was allocated then. CPU: None (plain heap, RSS measures it)."""
        if device != "gpu":
            return None
        cuda = self.torch.cuda
        cuda.synchronize()
        before = cuda.memory_allocated()
        cuda.reset_peak_memory_stats()
        call()
        cuda.synchronize()
        return max(int(cuda.max_memory_allocated()) - int(before), 0)

    # -- primitives of the shared algorithms and the floors ---------------------------------------------------
    def _arange(self, n, like):
        return self.torch.arange(n, device=like.device)

    def _take_time(self, x, index):
        return self.torch.take_along_dim(x, index.view(*index.shape, *([1] * (x.ndim - 2))), dim=1)

    def _take_rows(self, x, index):
        return x.index_select(0, self.torch.as_tensor(index, device=x.device))

    def _regather(self, parts, index, shape):
        flat = [p.reshape(-1, *shape[2:]) for p in parts]
        flat.append(flat[0].new_zeros((1, *shape[2:])))
        return self.torch.cat(flat).index_select(0, self.torch.as_tensor(index, device=flat[0].device)).reshape(shape)

    def _native_lengths(self, lengths, like):
        if isinstance(lengths, self.torch.Tensor):
            return lengths.to(like.device)
        return self.torch.as_tensor(np.asarray(lengths), device=like.device)

    def _where(self, cond, a, b):
        return self.torch.where(cond, a, b)

    def _copy(self, x):
        """Into a buffer kept between calls: the copy's bandwidth, not the CPU allocator's page faults."""
        out = getattr(self, "_floor_out", None)
        if out is None or out.shape != x.shape or out.device != x.device:
            out = self._floor_out = self.torch.empty_like(x)
        return out.copy_(x)

    def _matmul(self, a, b):
        return a @ b


__all__ = ["TorchAdapter"]
