"""The sweep axes, defined once: asv's params, `varlen bench` and the tests all read them from here.

A case is a flat dict (op, framework, strategy, device, dtype, batch, max_len, profile, seed and, for RNNs, cell,
input_size, hidden, num_layers, bidirectional); `case_key` names it for resuming and for asv.
"""
from __future__ import annotations

import itertools

OPS = ("pad", "mask", "pack_unpack", "masked_mean", "rnn_forward", "rnn_forward_backward")
RNN_OPS = ("rnn_forward", "rnn_forward_backward")
FRAMEWORKS = ("torch", "tensorflow", "jax")
DEVICES = ("cpu", "gpu")
BATCHES = (1, 8, 64, 256)           # sequences per batch
MAX_LENS = (32, 128, 512)           # padded length T
PROFILES = ("equal", "uniform", "lognormal", "zipf", "outlier")
CELLS = ("lstm", "gru", "rnn")
HIDDEN = (128,)                     # hidden size H (= input size I)
DTYPES = ("float32",)
FEATURES = 64                       # feature size of the non-RNN ops' inputs

# The quick grid: every op, framework, strategy and three length profiles at one point, plus a batch-size sweep
# and a max-length sweep on a few ops (for the report's batch and memory plots); a few minutes on 2 cores.
QUICK_BASE = {"ops": OPS, "batches": (64,), "max_lens": (128,), "profiles": ("equal", "lognormal", "zipf"),
              "cells": ("lstm",), "hidden": (128,), "dtypes": ("float32",)}
QUICK = (
    QUICK_BASE,
    {**QUICK_BASE, "ops": ("masked_mean", "rnn_forward_backward"), "batches": (8, 256), "profiles": ("lognormal",)},
    {**QUICK_BASE, "ops": ("pack_unpack", "rnn_forward_backward"), "max_lens": (32, 512), "profiles": ("lognormal",)},
)
# The RNN point every note quotes: B=64, T=128, H=128, LSTM, float32.
HEADLINE = {"batch": 64, "max_len": 128, "hidden": 128, "cell": "lstm"}


def case_key(case: dict) -> str:
    keys = ("op", "framework", "strategy", "device", "dtype", "batch", "max_len", "profile", "cell", "hidden",
            "num_layers", "bidirectional", "seed")
    return "|".join(f"{case.get(k, '')}" for k in keys)


def cases(*, ops=OPS, frameworks=FRAMEWORKS, strategies: dict[str, list[str]], devices=("cpu",), batches=BATCHES,
          max_lens=MAX_LENS, profiles=PROFILES, cells=CELLS[:1], hidden=HIDDEN, dtypes=DTYPES, num_layers=1,
          bidirectional=False, seed=0) -> list[dict]:
    """The cartesian sweep. `strategies[framework]` lists the RNN strategies to run (non-RNN ops have none)."""
    out = []
    for op, fw, device, dtype, B, T, profile in itertools.product(ops, frameworks, devices, dtypes, batches,
                                                                  max_lens, profiles):
        base = dict(op=op, framework=fw, device=device, dtype=dtype, batch=B, max_len=T, profile=profile, seed=seed)
        if op in RNN_OPS:
            for cell, H, strategy in itertools.product(cells, hidden, strategies.get(fw, [])):
                out.append({**base, "strategy": strategy, "cell": cell, "hidden": H, "input_size": H,
                            "num_layers": num_layers, "bidirectional": bidirectional})
        else:
            out.append({**base, "strategy": op, "features": FEATURES})
    return out
