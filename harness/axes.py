"""The sweep axes, defined once: `varlen bench` (and its CLI choices), asv's params and the tests read them here.

A case is a flat dict (op, framework, strategy, device, dtype, batch, max_len, profile, seed and the family's own
fields, e.g. cell, input_size, hidden, num_layers, bidirectional for RNNs); `case_key` names it for resuming, for
selecting the latest record and for asv. The ops come from the family registry (`harness.families`).
"""
from __future__ import annotations

import itertools

from adapters.spec import CELLS, DEVICES
from harness.families import OPS, family_of
from harness.profiles import PROFILES

FRAMEWORKS = ("torch", "tensorflow", "jax")  # the frameworks under test (the NumPy reference is the oracle)
BATCHES = (1, 8, 64, 256)           # sequences per batch
MAX_LENS = (32, 128, 512)           # padded length T
HIDDEN = (128,)                     # hidden size H (= input size I)
DTYPES = ("float32", "float64")     # dtypes a sweep may ask for

# The quick grid: every op, framework, strategy and three length profiles at one point, plus a batch-size sweep
# and a max-length sweep on a few ops (for the report's batch and memory plots); a few minutes on 2 cores.
# Left out of the quick grid (still in full sweeps, asv and the gates): torch's jagged-tensor attention runs the
# math backend one sequence at a time on the CPU (~15 s per fwd+bwd call at the quick point, 30x the others); JAX's
# scan unrolled 8 steps, the GPU's loop (on the CPU it ran 2.2x the plain scan's time at the quick point, and its
# 8 cases took 59 s of a 1304 s `make demo` bench, 34 s of it compiling)
QUICK_SKIP = (("torch", "njt", "cpu"), ("jax", "scan_unroll8", "cpu"))
# Left out of the quick grid's batch and length sweeps (still at its main point): torch's Python step loop, ~6 s a
# call at T=512 on 2 cores, 131 s of one `make demo` for that one case (of ~27 min), the slowest strategy at every
# size, which the plots need no more points of
QUICK_SWEEP_SKIP = (*QUICK_SKIP, ("torch", "masked_loop", "cpu"))
EPOCH_OPS = ("rnn_epoch",)
# forward-only RNN and attention stay out of the quick grid (their forward + backward is the headline; the full
# sweep, asv and the gates keep them): it has to fit `make demo` on 2 cores
QUICK_OPS = tuple(op for op in OPS if op not in (*EPOCH_OPS, "rnn_forward", "attention_forward"))
QUICK_BASE = {"ops": QUICK_OPS, "batches": (64,), "max_lens": (128,),
              "profiles": ("equal", "lognormal", "zipf"), "cells": ("lstm",), "hidden": (128,),
              "dtypes": ("float32",), "skip": QUICK_SKIP, "with_files": True}
QUICK = (
    QUICK_BASE,
    # epochs: 256 sequences cut by each batching policy, the default strategy of each framework
    {**QUICK_BASE, "ops": EPOCH_OPS, "profiles": ("lognormal",), "dataset": 256},
    {**QUICK_BASE, "ops": ("masked_mean", "rnn_forward_backward"), "batches": (8, 256), "profiles": ("lognormal",),
     "with_files": False, "skip": QUICK_SWEEP_SKIP},
    {**QUICK_BASE, "ops": ("pack_unpack", "rnn_forward_backward"), "max_lens": (32, 512), "profiles": ("lognormal",),
     "with_files": False, "skip": QUICK_SWEEP_SKIP},
)
# The RNN point every note quotes: B=64, T=128, H=128, LSTM, float32.
HEADLINE = {"batch": 64, "max_len": 128, "hidden": 128, "cell": "lstm"}
# the full sweep's RNN cell is the headline's, as --quick's: the gated cells are what users train, and the
# strategies that pin a gate (saturated_gate, concat_rows) do not apply to the plain tanh cell
FULL = {"ops": OPS, "batches": BATCHES, "max_lens": MAX_LENS, "profiles": PROFILES, "cells": (HEADLINE["cell"],),
        "hidden": HIDDEN, "dtypes": ("float32",)}

CASE_KEY_FIELDS = ("op", "framework", "strategy", "device", "dtype", "batch", "max_len", "profile")
#: case fields that are not part of its identity (`case_key`)
NOT_KEY = ("lengths_file", "budget_s")

__all__ = ["BATCHES", "CELLS", "DEVICES", "DTYPES", "FRAMEWORKS", "HEADLINE", "HIDDEN", "MAX_LENS", "OPS",
           "PROFILES", "QUICK", "QUICK_BASE", "case_key", "cases"]


def case_key(case: dict) -> str:
    """The case's identity: the main axes first, then every family-specific field (cell, vocab, heads, ...)."""
    head = [f"{case.get(k, '')}" for k in CASE_KEY_FIELDS]
    # the file a "file:..." profile came from is named by the profile; its local path differs between machines; how
    # long a case is timed (`budget_s`) is how it was measured, not which case it is
    rest = [f"{k}={case[k]}" for k in sorted(case) if k not in CASE_KEY_FIELDS and k not in NOT_KEY]
    return "|".join(head + rest)


def cases(*, ops=OPS, frameworks=FRAMEWORKS, strategies: dict[str, dict[str, list[str]]] | dict[str, list[str]],
          devices=("cpu",), batches=BATCHES, max_lens=MAX_LENS, profiles=PROFILES, cells=CELLS[:1], hidden=HIDDEN,
          dtypes=("float32",), num_layers=1, bidirectional=False, seed=0, skip=(), dataset=None,
          with_files=False) -> list[dict]:
    """The cartesian sweep. `strategies[framework]` lists the strategies to run per strategy family
    ({"rnn": [...]}); a plain list is taken as the RNN strategies. `skip`: (framework, strategy, device) left out.
    A profile is a name of `harness.profiles` or the source fields of a file profile (`harness.lengths`)."""
    grid = {"cells": cells, "hidden": hidden, "num_layers": num_layers, "bidirectional": bidirectional,
            **({"dataset": dataset} if dataset else {})}
    out = []
    for op, fw, device, dtype, B, T, profile in itertools.product(ops, frameworks, devices, dtypes, batches,
                                                                  max_lens, profiles):
        base = dict(op=op, framework=fw, device=device, dtype=dtype, batch=B, max_len=T, seed=seed,
                    **(profile if isinstance(profile, dict) else {"profile": profile}))
        fam = family_of(op)
        declared = strategies.get(fw, {})
        if isinstance(declared, (list, tuple)):
            declared = {"rnn": list(declared)}
        out += fam.expand(base, grid, list(declared.get(fam.STRATEGY_FAMILY, [])) if fam.STRATEGY_FAMILY else [])
    return [c for c in out if (c["framework"], c["strategy"], c["device"]) not in set(skip)]
