"""The ops family: pad / mask / pack + unpack / masked mean (no strategies: each op is one framework call)."""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from adapters.spec import SIDES
from harness.compare import close, exactly_equal
from harness.data import EDGE_CASES, padded, ragged
from harness.families.base import Prepared, exact, record
from harness.profiles import case_lengths, padding_fraction
from harness.tolerances import tolerance

NAME = "ops"
STRATEGY_FAMILY = None
OPS = {"pad": "pad", "mask": "mask", "pack_unpack": "pack + unpack", "masked_mean": "masked mean"}
CHECK_OPS = ("pad", "mask", "pack", "unpack", "masked_mean")
FEATURES = 64  # feature size of the ops' inputs in benchmarks
ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def expand(base: dict, grid: dict, strategies: list[str]) -> list[dict]:
    return [{**base, "strategy": base["op"], "features": FEATURES}]


def check_records(fw, ref, device: str = "cpu") -> Iterator[dict]:
    """pad / mask / pack / unpack / masked_mean on every edge case and side, NaN in padding."""
    for case, side in itertools.product(sorted(EDGE_CASES), SIDES):
        lengths, T = EDGE_CASES[case]
        L = np.array(lengths)
        seqs = ragged(L, (2,), seed=1)
        x = padded(L, T, (2,), side=side, seed=2, fill=np.nan)
        base = dict(kind="op", case=case, side=side, dtype="float32")
        got = fw.pad([fw.asarray(s, device) for s in seqs], side=side, maxlen=T, device=device)
        yield record(fw, device, op="pad", name="pad", quantity="padded",
                     **exact(fw.to_numpy(got), ref.pad(seqs, side=side, maxlen=T)), **base)
        yield record(fw, device, op="mask", name="mask", quantity="mask",
                     **exact(fw.to_numpy(fw.mask(L, T, side=side, device=device)), ref.mask(L, T, side=side)),
                     **base)
        p, q = fw.pack(fw.asarray(x, device), L, side=side), ref.pack(x, L, side=side)
        ok = all(exactly_equal(fw.to_numpy(getattr(p, f)), getattr(q, f))[0] for f in q._fields)
        yield record(fw, device, op="pack", name="pack", quantity="packed", equivalent=ok,
                     max_abs_err=0.0 if ok else float("inf"), **base)
        yield record(fw, device, op="unpack", name="unpack", quantity="padded",
                     **exact(fw.to_numpy(fw.unpack(p, total_length=T, side=side)[0]),
                             ref.unpack(q, total_length=T, side=side)[0]), **base)
        ok, err = close(fw.to_numpy(fw.masked_mean(fw.asarray(x, device), L, side=side)),
                        ref.masked_mean(x.astype("float64"), L, side=side), tolerance("float32", device))
        yield record(fw, device, op="masked_mean", name="masked_mean", quantity="mean", equivalent=ok,
                     max_abs_err=err, **base)


def prepare(adapter, case: dict) -> Prepared:
    """Inputs of one op case on its device; work = ideal bytes moved (copy floor)."""
    op, device, dtype = case["op"], case["device"], case["dtype"]
    B, T, F = case["batch"], case["max_len"], case.get("features", FEATURES)
    L = case_lengths(case, B, T)
    n_valid, item = int(L.sum()), ELEMENT_BYTES[dtype]
    x = adapter.asarray(padded(L, T, (F,), seed=case.get("seed", 0), dtype=dtype), device)
    if op == "pad":
        seqs = [adapter.asarray(s, device) for s in ragged(L, (F,), dtype=dtype)]
        run, work = (lambda: adapter.pad(seqs, maxlen=T, device=device)), (n_valid + B * T) * F * item
    elif op == "mask":
        run, work = (lambda: adapter.mask(L, T, device=device)), B * T + B * 8
    elif op == "pack_unpack":
        run, work = (lambda: adapter.unpack(adapter.pack(x, L), total_length=T)), (3 * n_valid + B * T) * F * item
    elif op == "masked_mean":
        run, work = (lambda: adapter.masked_mean(x, L)), (n_valid + B) * F * item
    else:
        raise ValueError(f"unknown op {op!r} in family {NAME}; expected one of {list(OPS)}")
    return Prepared(run, n_valid, B * T, padding_fraction(L, T), work, "copy", n_valid / (B * T))
