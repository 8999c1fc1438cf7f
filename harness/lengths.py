"""Length distributions from the user's own data: a file of lengths, or a tokenised text file.

A distribution is named after its file (profile "file:<stem>") in every case, record and plot; a case carries where
it came from (`lengths_file`, `lengths_column`, `lengths_kind`) so that every worker, on every machine, reads the same
numbers. Batches are drawn from it deterministically by seed (with replacement), and a length above the sweep's
max_len is truncated to it, as a user's `maxlen` would.

Formats: `.npy` (a 1-D integer array), `.csv` / `.parquet` (a column, `--lengths-column` when there are several),
anything else one integer per line; or (`kind="text"`) any text file whose lines are sequences and whose
whitespace-separated tokens are the steps (blank lines are not sequences and are skipped). Bad files raise
`LengthsError` (a ValueError) naming the file and the line.
"""
from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

KINDS = ("values", "text")


class LengthsError(ValueError):
    """A lengths file that cannot be used; the message names the file (and line)."""


def profile_name(path: str | Path) -> str:
    return f"file:{Path(path).stem}"


def source_fields(path: str | Path, column: str | None = None, kind: str = "values") -> dict:
    """The case fields that say where a file profile's lengths come from (validated: the file is read once)."""
    path = str(Path(path).resolve())
    load(path, column, kind)
    return {"profile": profile_name(path), "lengths_file": path, "lengths_column": column, "lengths_kind": kind}


@lru_cache(maxsize=16)
def load(path: str, column: str | None = None, kind: str = "values") -> np.ndarray:
    """All lengths of the file, int64, in file order."""
    p = Path(path)
    if kind not in KINDS:
        raise LengthsError(f"unknown lengths kind {kind!r}; expected one of {list(KINDS)}")
    if not p.is_file():
        raise LengthsError(f"{path}: " + ("is a directory; give a lengths file" if p.is_dir() else
                                          "not a regular file" if p.exists() else "no such file"))
    try:
        if kind == "text":
            out = _from_text(p)
        elif p.suffix == ".npy":
            out = _from_npy(p)
        elif p.suffix in (".csv", ".parquet"):
            out = _from_table(p, column)
        else:
            out = _from_lines(p)
    except OSError as e:  # unreadable (permissions, I/O): the file's problem, named with the file
        raise LengthsError(f"{path}: cannot be read ({e.strerror or e})") from None
    if out.size == 0:
        raise LengthsError(f"{path}: no lengths in the file")
    return out


def _from_text(p: Path) -> np.ndarray:
    with p.open(errors="replace") as f:
        return np.array([len(line.split()) for line in f if line.strip()], dtype=np.int64)


def _check(values, p: Path, line_of) -> np.ndarray:
    values = np.asarray(values)
    for i, v in enumerate(values.tolist()):
        try:
            ok = float(v) == int(float(v))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise LengthsError(f"{p}:{line_of(i)}: length {v!r} is not an integer")
        if int(float(v)) < 0:
            raise LengthsError(f"{p}:{line_of(i)}: negative length {int(float(v))}")
    return values.astype(np.float64).astype(np.int64)


NPY_MAGIC = b"\x93NUMPY"


def _from_npy(p: Path) -> np.ndarray:
    """A `.npy` file: NumPy's own format (its magic string first); a text file named `.npy`, or one holding pickled
    objects, is named as such (NumPy's own message talks of allow_pickle, for either)."""
    with p.open("rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise LengthsError(f"{p}: not a NumPy .npy file (it does not start with the .npy header); a file of "
                               "one length per line needs another suffix, e.g. .txt")
    try:
        a = np.load(p, allow_pickle=False)
    except ValueError as e:
        why = "it holds Python objects, not an integer array" if "allow_pickle" in str(e) else str(e)
        raise LengthsError(f"{p}: could not be read as a NumPy .npy array of lengths: {why}") from None
    if a.ndim != 1:
        raise LengthsError(f"{p}: lengths must be a 1-D array, got shape {a.shape}")
    return _check(a, p, lambda i: f"index {i}")


def _from_lines(p: Path) -> np.ndarray:
    rows = [(n, line.strip()) for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if line.strip()]
    return _check([r for _, r in rows], p, lambda i: rows[i][0])


def _from_table(p: Path, column: str | None) -> np.ndarray:
    import pandas as pd

    try:
        df = pd.read_csv(p) if p.suffix == ".csv" else pd.read_parquet(p)
    except ImportError as e:
        raise LengthsError(f"{p}: reading Parquet needs pyarrow ({e})") from None
    except Exception as e:  # noqa: BLE001 - any parse error is the file's problem, named with the file
        raise LengthsError(f"{p}: cannot be read as {p.suffix[1:]}: {e}") from None
    if column is None:
        if df.shape[1] != 1:
            raise LengthsError(f"{p}: has columns {list(df.columns)}; say which with --lengths-column")
        column = df.columns[0]
    if column not in df.columns:
        raise LengthsError(f"{p}: no column {column!r}; columns: {list(df.columns)}")
    header = 1 if p.suffix == ".csv" else 0
    return _check(df[column].to_numpy(), p, lambda i: i + 1 + header)


def sample(case: dict, batch: int, max_len: int, seed: int = 0) -> np.ndarray:
    """`batch` lengths drawn (with replacement, seeded) from the case's file, truncated to max_len."""
    data = load(case["lengths_file"], case.get("lengths_column"), case.get("lengths_kind", "values"))
    salt = zlib.crc32(case["profile"].encode())
    rng = np.random.default_rng([seed, batch, max_len, salt])
    return np.minimum(rng.choice(data, size=batch, replace=True), max_len).astype(np.int64)
