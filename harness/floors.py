"""This machine's floors, measured in the same run: memory copy bandwidth and float32 GEMM rate (NumPy).

A record's `fraction_of_floor` = (work / floor rate) / measured time: 1.0 means the op ran at the copy bandwidth
(pad/mask/pack/mean) or GEMM rate (RNNs, valid tokens only) its worker's framework measured on that device. The
report measures against the machine's floor instead, the best rate any framework measured there
(`harness.report.tables.machine_floors`): one framework's primitive can fall far short (torch's float32 GEMM ran
at ~190 GFLOP/s on a 2-core AMD EPYC where XLA's reached ~460), and a fraction of it reads above 1 for no kernel's
merit. Nothing sensible runs much above the machine's floor.
"""
from __future__ import annotations

import time

import numpy as np


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes/s of a large array copy, counting bytes read plus bytes written (best of `repeats`)."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def gemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """float32 FLOP/s of an n x n x n matrix product through NumPy's BLAS (best of `repeats`)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def measure() -> dict:
    return {"copy_bytes_per_s": copy_bandwidth(), "gemm_flop_per_s": gemm_rate()}


def rnn_flops(cell: str, input_size: int, hidden: int, num_layers: int, directions: int, valid_tokens: int,
              backward: bool) -> float:
    """Matrix-product FLOPs of a masked RNN over the valid tokens only; backward costs two more products."""
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    per_token = sum(2 * gates * hidden * ((input_size if layer == 0 else hidden * directions) + hidden)
                    for layer in range(num_layers)) * directions
    return per_token * valid_tokens * (3 if backward else 1)
