"""The results store: append-only JSON-lines files, one record (`harness.records`) per line.

Promises (the README's "Results store"):
- append only: a run opens its file with O_APPEND and never renames, truncates or deletes it (or any other);
- one record per `write`, under an exclusive `fcntl` lock and `fsync`ed before the lock is released, so two
  concurrent runs on one file interleave whole lines and a crash or kill loses at most the record being written;
- every record carries the `run_id` of the run that wrote it (and the commit); readers select by run
  (`select`: by default the latest record per case key);
- a line that is not a valid record (cut short by a kill, garbage, JSON that is not a record) is reported with its
  file and line number and the reason (`load`), never silently dropped and never a crash.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from harness.records import machine, problems  # noqa: F401 - machine: re-exported


def append(path: str | os.PathLike, record: dict) -> None:
    """Append one record as one line, under an exclusive lock, fsynced."""
    line = (json.dumps(record, default=_jsonable, allow_nan=True) + "\n").encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            _complete_last_line(fd)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _complete_last_line(fd: int) -> None:
    """If a killed writer left a partial last line, end it so the next record starts on a line of its own (the
    partial line stays, and is reported by `load` as not a record)."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


class Problem(NamedTuple):
    path: str
    line: int  # 1-based; 0 for a problem with the file itself
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why}" if self.line else f"{self.path}: {self.why}"


class Loaded(NamedTuple):
    records: list[dict]
    problems: list[Problem]


def load(paths: Iterable[str | os.PathLike], *, missing_ok: bool = False) -> Loaded:
    """Every valid record of the given files, and a `Problem` for every line (or file) that is not one."""
    records, bad = [], []
    for path in paths:
        p = Path(path)
        if not p.exists():
            if not missing_ok:
                bad.append(Problem(str(p), 0, "no such file"))
            continue
        if p.is_dir():
            bad.append(Problem(str(p), 0, "is a directory, not a results file"))
            continue
        try:
            text = p.read_text(errors="replace")
        except OSError as e:
            bad.append(Problem(str(p), 0, f"cannot be read: {e}"))
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(Problem(str(p), i, f"not JSON ({e.msg}): {line[:60]!r}"))
                continue
            why = problems(rec)
            if why:
                bad.append(Problem(str(p), i, "; ".join(why)))
            else:
                records.append(rec)
    return Loaded(records, bad)


def read(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """The valid records of the given files (missing files count as empty); see `load` for the rest."""
    return load(paths, missing_ok=True).records


def runs(records: list[dict]) -> list[str]:
    """Run ids in the order their first record was written."""
    first: dict[str, float] = {}
    for r in records:
        first.setdefault(r["run_id"], r["time"])
    return sorted(first, key=first.get)


def select(records: list[dict], *, run: str | None = None) -> list[dict]:
    """Records of one run (`run`: an id, or "latest" for the last run), or by default every source's latest
    record per case: bench by host and `key` (a completed measurement beats a failed one of an earlier run, the
    latest wins otherwise), check by (framework, device, kind, op, name, case, cell, side, direction, dtype, quantity)
    (a check worker's "started" / "done" markers: those of every run, which `report.tables.incomplete` needs),
    paired by (host, case, baseline case), floors and overhead by (host, framework, device)."""
    if run is not None:
        wanted = runs(records)[-1] if run == "latest" and records else run
        return [r for r in records if r["run_id"] == wanted]
    best: dict[tuple, dict] = {}
    for r in sorted(records, key=lambda r: r["time"]):
        k = _case_identity(r)
        old = best.get(k)
        if old is None or not (old.get("status") == "ok" and r.get("status") == "failed"
                               and old["run_id"] != r["run_id"]):
            best[k] = r
    return _newest_file_contents(list(best.values()))


def _newest_file_contents(records: list[dict]) -> list[dict]:
    """Leave out the bench and paired records of a lengths file's older contents: a file profile ("file:<name>")
    whose file changed between sweeps has cases of both contents (their keys differ by `lengths_digest`); on each
    host only the newest content's, by its newest bench record, is the profile now."""
    newest: dict[tuple, tuple[float, str]] = {}
    for r in records:
        if r["source"] == "bench" and r.get("lengths_digest"):
            k = (r.get("host"), r["profile"])
            if k not in newest or r["time"] > newest[k][0]:
                newest[k] = (r["time"], r["lengths_digest"])

    def current(r: dict) -> bool:
        if r["source"] not in ("bench", "paired") or (r.get("host"), r.get("profile")) not in newest:
            return True
        found = r.get("lengths_digest") or next(iter(re.findall(r"lengths_digest=([0-9a-f]+)", r["key"])), None)
        return found is None or found == newest[(r.get("host"), r["profile"])][1]

    return [r for r in records if current(r)]


def _case_identity(r: dict) -> tuple:
    s = r["source"]
    if s == "bench":  # two machines' measurements of one case are two results, both kept
        return (s, r.get("host"), r["key"])
    if s == "paired":
        return (s, r.get("host"), r["key"], r["base_key"])
    if s == "check" and r["kind"] in ("started", "done"):  # facts about one run: every run's are kept
        return (s, r["run_id"], r["framework"], r["device"], r["kind"], r["op"])
    if s == "check":
        return (s, r["framework"], r["device"], r["kind"], r["op"], r["name"], r["case"], r.get("cell"),
                r.get("side"), r.get("bidirectional"), r.get("dtype"), r["quantity"])
    return (s, r.get("host"), r.get("framework"), r.get("device"), r.get("op"))


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
