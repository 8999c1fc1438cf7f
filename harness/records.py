"""The record schema: every line of a results file is one record of one of these kinds.

check, bench, asv and the report all go through here: writers build records with `make`, which stamps the schema
version, the run id, the machine and the time and refuses a record that lacks a required field; readers validate
each line with `problems` and never guess at a column that the schema does not promise.

`kernel` is always the name of the code path that ran (e.g. "cudnn", "onednn", "xla-scan"), or "" when nothing
ran; an error message lives in `error`, never in `kernel`.
"""
from __future__ import annotations

import math
import numbers
import os
import platform
import subprocess
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from adapters.spec import DEVICES

ROOT = Path(__file__).resolve().parent.parent

SCHEMA_VERSION = 2

Num = (int, float)
STR, INT, FLOAT, BOOL = str, int, float, bool
# field -> type; a value may be None only where the field is optional
COMMON_REQUIRED = {"source": STR, "schema": INT, "run_id": STR, "time": FLOAT, "host": STR, "commit": STR}
#: device_name: the accelerator's model where the record is of work on one (`Adapter.device_name`)
COMMON_OPTIONAL = {"cpu": STR, "cores": INT, "python": STR, "platform": STR, "malloc": STR, "device_name": STR}

SOURCES: dict[str, tuple[dict, dict]] = {
    # source: (required fields, optional fields)
    "check": ({"framework": STR, "version": STR, "device": STR, "kind": STR, "op": STR, "name": STR, "case": STR,
               "quantity": STR, "equivalent": BOOL, "max_abs_err": FLOAT, "kernel": STR},
              {"cell": STR, "side": STR, "bidirectional": BOOL, "dtype": STR, "num_layers": INT, "error": STR,
               "why": STR, "detail": STR, "cells": INT, "fix": STR, "judged": BOOL, "strategies": STR}),
    "bench": ({"key": STR, "framework": STR, "op": STR, "strategy": STR, "device": STR, "dtype": STR, "batch": INT,
               "max_len": INT, "profile": STR, "status": STR},
              {"version": STR, "kernel": STR, "error": STR, "seed": INT, "features": INT, "cell": STR, "hidden": INT,
               "input_size": INT, "num_layers": INT, "bidirectional": BOOL, "median_s": FLOAT, "p25_s": FLOAT,
               "p75_s": FLOAT, "repeats": INT, "number": INT, "retraced": BOOL, "setup_s": FLOAT,
               "compiles_in_setup": INT, "first_call_s": FLOAT, "compile_s": FLOAT, "valid_tokens": INT,
               "padded_tokens": INT, "padding_fraction": FLOAT, "valid_tokens_per_s": FLOAT,
               "padded_tokens_per_s": FLOAT, "sec_per_M_valid_tokens": FLOAT, "floor": STR, "work": FLOAT,
               "floor_s": FLOAT, "fraction_of_floor": FLOAT, "ideal_share": FLOAT, "device_peak_bytes": INT,
               "peak_rss_bytes": INT, "peak_bytes": INT, "faulted_bytes_per_call": FLOAT, "memory_method": STR,
               "floor_copy_bytes_per_s": FLOAT, "budget_s": FLOAT,
               "floor_gemm_flop_per_s": FLOAT, "floor_source": STR, "lengths_file": STR, "lengths_column": STR,
               "lengths_kind": STR, "lengths_digest": STR, "lengths_over_max_len": INT, "lengths_count": INT,
               "stream_batches": INT, "stream_compiles": INT, "stream_compile_s": FLOAT, "stream_error": STR,
               "plan_batches": INT, "plan_programs": INT, "plan_compiles": INT, "plan_compiles_streamed": INT,
               "plan_compiles_tail": INT}),
    "floors": ({"device": STR, "copy_bytes_per_s": FLOAT, "gemm_flop_per_s": FLOAT},
               {"framework": STR, "version": STR}),
    "overhead": ({"framework": STR, "strategy": STR, "op": STR, "device": STR, "raw_median_s": FLOAT,
                  "adapter_median_s": FLOAT, "overhead_ratio": FLOAT},
                 {"version": STR, "batch": INT, "max_len": INT, "hidden": INT, "cell": STR, "profile": STR,
                  "repeats": INT, "kernel": STR}),
    # a bench speedup timed again side by side (harness.paired): the fastest strategy on `profile` and the padded
    # baseline (`base_*`: the fastest on `equal` lengths of the same shape), called in alternation in one process
    "paired": ({"key": STR, "base_key": STR, "framework": STR, "op": STR, "device": STR, "dtype": STR, "batch": INT,
                "max_len": INT, "profile": STR, "strategy": STR, "kernel": STR, "base_strategy": STR,
                "base_kernel": STR, "median_s": FLOAT, "base_median_s": FLOAT, "ratio": FLOAT, "ratio_p25": FLOAT,
                "ratio_p75": FLOAT, "rounds": INT, "number": INT},
               {"version": STR, "cell": STR, "hidden": INT, "input_size": INT, "num_layers": INT,
                "bidirectional": BOOL, "padding_fraction": FLOAT, "ideal_share": FLOAT, "ratio_of": STR}),
}
# bench records with status "ok" must carry the measurement itself
BENCH_OK_REQUIRED = ("median_s", "p25_s", "p75_s", "valid_tokens", "padded_tokens", "padding_fraction",
                     "valid_tokens_per_s", "kernel")
#: "started" / "done": a check worker began / finished a family (`harness.check`), so that a strategy whose
#: worker was cut off is never called exact on the cells it happened to reach
CHECK_KINDS = ("op", "strategy", "idiom", "native", "error", "started", "done")
STATUSES = ("ok", "failed", "unsupported")


def new_run_id() -> str:
    """A fresh run id: sortable by time, unique across hosts and processes."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


RUN_ENV = "VARLEN_RUN_ID"


def run_id() -> str:
    """This run's id: inherited by worker processes through VARLEN_RUN_ID, created once per top-level run."""
    if not os.environ.get(RUN_ENV):
        os.environ[RUN_ENV] = new_run_id()
    return os.environ[RUN_ENV]


def make(source: str, **fields: Any) -> dict:
    """A valid record of `source`: schema version, run id, machine and time added; ValueError if invalid."""
    rec = {**machine(), "time": time.time(), **fields, "source": source, "schema": SCHEMA_VERSION,
           "run_id": fields.get("run_id") or run_id()}
    bad = problems(rec)
    if bad:
        raise ValueError(f"not a valid {source} record: {'; '.join(bad)}")
    return rec


def _type_ok(value: Any, kind: type) -> bool:
    if kind is FLOAT:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is INT:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) or (
            isinstance(value, float) and value.is_integer())
    if kind is BOOL:
        return isinstance(value, bool)
    return isinstance(value, kind)


def problems(rec: Any) -> list[str]:
    """Why `rec` is not a valid record (empty list if it is)."""
    if not isinstance(rec, dict):
        return [f"a record is a JSON object, got {type(rec).__name__}"]
    source = rec.get("source")
    if source not in SOURCES:
        return [f"unknown source {source!r}; expected one of {list(SOURCES)}"]
    required, optional = SOURCES[source]
    out = []
    for name, kind in {**COMMON_REQUIRED, **required}.items():
        if rec.get(name) is None:
            out.append(f"missing required field {name!r}")
        elif not _type_ok(rec[name], kind):
            out.append(f"field {name!r} should be {kind.__name__}, got {rec[name]!r}")
    for name, kind in {**COMMON_OPTIONAL, **optional}.items():
        if rec.get(name) is not None and not _type_ok(rec[name], kind):
            out.append(f"field {name!r} should be {kind.__name__}, got {rec[name]!r}")
    if _type_ok(rec.get("schema"), INT) and rec["schema"] > SCHEMA_VERSION:
        out.append(f"schema {rec['schema']} is newer than this varlen's ({SCHEMA_VERSION}): its fields may mean "
                   "something else here; read it with the varlen that wrote it")
    if isinstance(rec.get("device"), str) and rec["device"] not in DEVICES:
        out.append(f"device {rec['device']!r} is not one of {list(DEVICES)}")
    if source == "bench" and rec.get("status") not in STATUSES:
        out.append(f"status {rec.get('status')!r} is not one of {list(STATUSES)}")
    if source == "bench" and rec.get("status") == "ok":
        out += [f"an ok bench record needs {f!r}" for f in BENCH_OK_REQUIRED if rec.get(f) is None]
    if source == "bench" and rec.get("status") in ("failed", "unsupported") and not rec.get("error"):
        out.append(f"a {rec.get('status')} bench record needs its 'error' (the reason)")
    if source == "check" and rec.get("kind") not in CHECK_KINDS:
        out.append(f"check kind {rec.get('kind')!r} is not one of {list(CHECK_KINDS)}")
    if source == "check" and isinstance(rec.get("max_abs_err"), float) and math.isnan(rec["max_abs_err"]):
        out.append("max_abs_err is NaN")
    return out


@lru_cache(maxsize=1)
def commit() -> str:
    """The checkout's commit, "+dirty" when tracked files differ from it (the code that ran is not that commit's:
    an H200 run of a copied tree whose git metadata lagged its files recorded the older commit as clean)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD") or "unknown"
        return head + ("+dirty" if head != "unknown" and git("status", "--porcelain", "--untracked-files=no")
                       else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=1)
def machine() -> dict:
    """Host facts attached to every record (no framework is imported here)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "commit": commit(),
            "malloc": os.environ.get("GLIBC_TUNABLES") or "default"}  # how the process's allocator ran (proc.py)
