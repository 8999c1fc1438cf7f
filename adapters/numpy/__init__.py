"""The NumPy float64 reference: the oracle every framework is compared with (`ops.py`, `rnn.py`).

Written for obviousness, not speed: loops over sequences, each one handled unpadded.
"""
from __future__ import annotations

import numpy as np

from adapters.base import Adapter
from adapters.numpy import attention, embedding, loss, rnn
from adapters.numpy.attention import NumpyAttention
from adapters.numpy.ops import NumpyOps


class NumpyAdapter(NumpyOps, NumpyAttention, Adapter):
    name = "numpy"
    STRATEGIES = {"rnn": rnn.STRATEGIES, "loss": loss.STRATEGIES,
                  "attention": attention.STRATEGIES, "embedding": embedding.STRATEGIES}
    NATIVES = {"attention": attention.NATIVES, "embedding": embedding.NATIVES}

    def __init__(self) -> None:
        self.np = np
        self.version = np.__version__


__all__ = ["NumpyAdapter"]
