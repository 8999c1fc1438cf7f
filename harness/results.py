"""Tidy result files: one JSON object per line, appended as soon as it is measured.

Each append is a single `write` of one line to a file opened with O_APPEND, then flushed and fsynced, so an
interrupted run or a crashed worker loses no finished record, and a half-written last line (a kill mid-write) is
skipped on reading.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def append(path: str | os.PathLike, record: dict) -> None:
    line = json.dumps(record, default=_jsonable, allow_nan=True) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """All complete records of the given JSON-lines files (missing files count as empty)."""
    out = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted write
    return out


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


@lru_cache(maxsize=1)
def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
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
            "platform": platform.platform(), "commit": commit()}
