"""Length distributions from the user's own data: a file of lengths, or a tokenised text file.

A distribution is named after its file (profile "file:<stem>") in every case, record and plot; a case carries where
it came from (`lengths_file`, `lengths_column` for a table, `lengths_kind`) so that every worker, on every machine,
reads the same numbers, and a digest of those numbers (`lengths_digest`), so that a file edited in place, or another
file of the same name, is another case (for --resume and the report). Batches are drawn from it deterministically by
seed (with replacement), and a length above the sweep's max_len is truncated to it, as a user's `maxlen` would
(`truncation_warnings` says how many; a bench record carries `lengths_over_max_len` of `lengths_count`).

Formats, by suffix in any case: `.npy` (a 1-D integer array), `.csv` / `.parquet` (a column, `--lengths-column` when
there are several; a CSV's first non-blank line is its header, and one that is all numbers is refused as a missing
header; Parquet needs pyarrow), anything else one integer per line (UTF-8, a byte-order mark allowed); or
(`kind="text"`) any text file whose lines are sequences and whose whitespace-separated tokens are the steps (blank
lines are not sequences and are skipped). Lengths are integers >= 0, read exactly (`3.0` is 3, `2.5`, `nan` and `inf`
are refused); one above 2**63 - 1 is read as 2**63 - 1, longer than any max_len, which truncates it. Bad files raise
`LengthsError` (a ValueError) naming the file and the line.
"""
from __future__ import annotations

import hashlib
import importlib.util
import numbers
import re
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

KINDS = ("values", "text")
TABLES = (".csv", ".parquet")  # the suffixes read as tables, the only files that --lengths-column applies to
#: the longest length kept as it is (the int64 maximum); a longer one is read as this, which every max_len truncates
MAX_LENGTH = int(np.iinfo(np.int64).max)


class LengthsError(ValueError):
    """A lengths file that cannot be used; the message names the file (and line)."""


def profile_name(path: str | Path) -> str:
    return f"file:{Path(path).stem}"


def suffix(path: str | Path) -> str:
    """The file's suffix in lower case (`data.CSV` is a CSV)."""
    return Path(path).suffix.lower()


def is_table(path: str | Path) -> bool:
    """Whether `--lengths FILE` reads the file as a table (CSV or Parquet), whose column --lengths-column names."""
    return suffix(path) in TABLES


def source_fields(path: str | Path, column: str | None = None, kind: str = "values") -> dict:
    """The case fields that say where a file profile's lengths come from (validated: the file is read once), and
    what they are: `lengths_digest` (12 hex digits of SHA-256 over the lengths). Only a table keeps `column`."""
    path = str(Path(path).resolve())
    column = column if kind == "values" and is_table(path) else None
    _, dig = _loaded(path, column, kind)
    return {"profile": profile_name(path), "lengths_file": path, "lengths_column": column, "lengths_kind": kind,
            "lengths_digest": dig}


def digest(values: np.ndarray) -> str:
    """12 hex digits of SHA-256 over the lengths as little-endian int64, in file order."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<i8").tobytes()).hexdigest()[:12]


def load(path: str, column: str | None = None, kind: str = "values") -> np.ndarray:
    """All lengths of the file, int64, in file order."""
    return _loaded(path, column, kind)[0]


def _loaded(path: str, column: str | None, kind: str) -> tuple[np.ndarray, str]:
    """(lengths, digest), read again when the file's size or modification time changed."""
    p = Path(path)
    if kind not in KINDS:
        raise LengthsError(f"unknown lengths kind {kind!r}; expected one of {list(KINDS)}")
    if not p.is_file():
        raise LengthsError(f"{path}: " + ("is a directory; give a lengths file" if p.is_dir() else
                                          "not a regular file" if p.exists() else "no such file"))
    st = p.stat()
    return _read(str(path), column, kind, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _read(path: str, column: str | None, kind: str, mtime_ns: int, size: int) -> tuple[np.ndarray, str]:
    p = Path(path)
    try:
        if kind == "text":
            out = _from_text(p)
        elif suffix(p) == ".npy":
            out = _from_npy(p)
        elif is_table(p):
            out = _from_table(p, column)
        else:
            out = _from_lines(p)
    except OSError as e:  # unreadable (permissions, I/O): the file's problem, named with the file
        raise LengthsError(f"{path}: cannot be read ({e.strerror or e})") from None
    if out.size == 0:
        raise LengthsError(f"{path}: no lengths in the file")
    out.flags.writeable = False  # shared by every caller of the cache
    return out, digest(out)


def _from_text(p: Path) -> np.ndarray:
    with p.open(encoding="utf-8-sig", errors="replace") as f:
        return np.array([len(line.split()) for line in f if line.strip()], dtype=np.int64)


_INT = re.compile(r"[+-]?[0-9]+")


def _as_int(v) -> int | None:
    """The exact integer of one value as read (a line's text, or an array's number), or None if it is none.
    An integer literal is exact at any size (no float in between); other text is read as a float would be."""
    if isinstance(v, str):
        s = v.strip()
        if _INT.fullmatch(s):
            if len(s.lstrip("+-").lstrip("0")) > 19:  # beyond int64 either way: no need to convert every digit
                return -MAX_LENGTH - 1 if s.startswith("-") else MAX_LENGTH + 1
            return int(s)
        try:
            v = float(s)
        except ValueError:
            return None
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        f = float(v)
        return int(f) if f.is_integer() else None  # False for inf and nan
    return None


def _check(values, p: Path, line_of) -> np.ndarray:
    """Every value an integer >= 0, as int64: exact, and one above MAX_LENGTH read as MAX_LENGTH."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":  # integers already: only the sign to check
        neg = np.flatnonzero(values < 0)
        if neg.size:
            raise LengthsError(f"{p}:{line_of(int(neg[0]))}: negative length {values[neg[0]]}")
        return np.minimum(values, MAX_LENGTH).astype(np.int64)
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values.tolist() if isinstance(values, np.ndarray) else values):
        n = _as_int(v)
        if n is None:
            raise LengthsError(f"{p}:{line_of(i)}: length {v!r} is not an integer")
        if n < 0:
            raise LengthsError(f"{p}:{line_of(i)}: negative length {v.strip() if isinstance(v, str) else n}")
        out[i] = min(n, MAX_LENGTH)
    return out


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
    rows = _nonblank(p)
    return _check([r for _, r in rows], p, lambda i: rows[i][0])


def _nonblank(p: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line: the lines a lengths file (or a CSV) is made of."""
    text = p.read_text(encoding="utf-8-sig", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _from_table(p: Path, column: str | None) -> np.ndarray:
    """A CSV (its first non-blank line the header) or a Parquet file: one column of lengths."""
    csv = suffix(p) == ".csv"
    if not csv and not any(importlib.util.find_spec(m) for m in ("pyarrow", "fastparquet")):
        raise LengthsError(f"{p}: reading Parquet needs pyarrow: pip install pyarrow")
    import pandas as pd

    try:
        df = pd.read_csv(p) if csv else pd.read_parquet(p)
    except ImportError:
        raise LengthsError(f"{p}: reading Parquet needs pyarrow: pip install pyarrow") from None
    except Exception as e:  # noqa: BLE001 - any parse error is the file's problem, named with the file
        raise LengthsError(f"{p}: cannot be read as {suffix(p)[1:]}: {e}") from None
    # pandas skips blank lines: a CSV's row i is its (i + 2)-th non-blank line (the header the first)
    lines = _nonblank(p) if csv else []
    if csv and lines and all(_NUMBER.fullmatch(str(c).strip()) for c in df.columns):
        raise LengthsError(f"{p}:{lines[0][0]}: the first line {lines[0][1]!r} is a number, not a header: a CSV of "
                           "lengths needs a header line naming its columns (e.g. 'length'), or give one length per "
                           "line in a .txt file")
    if column is None:
        if df.shape[1] != 1:
            raise LengthsError(f"{p}: has columns {list(df.columns)}; say which with --lengths-column")
        column = df.columns[0]
    if column not in df.columns:
        raise LengthsError(f"{p}: no column {column!r}; columns: {list(df.columns)}")
    return _check(df[column].to_numpy(), p, (lambda i: lines[i + 1][0]) if csv else (lambda i: i + 1))


def sample(case: dict, batch: int, max_len: int, seed: int = 0) -> np.ndarray:
    """`batch` lengths drawn (with replacement, seeded) from the case's file, truncated to max_len; LengthsError if
    the file's lengths are no longer those the case was made from (its `lengths_digest`)."""
    data, dig = _loaded(case["lengths_file"], case.get("lengths_column"), case.get("lengths_kind", "values"))
    if case.get("lengths_digest") not in (None, dig):
        raise LengthsError(f"{case['lengths_file']}: its lengths changed since the sweep read it (digest {dig}, the "
                           f"case's {case['lengths_digest']})")
    salt = zlib.crc32(case["profile"].encode())
    rng = np.random.default_rng([seed, batch, max_len, salt])
    return np.minimum(rng.choice(data, size=batch, replace=True), max_len).astype(np.int64)


def truncated(case: dict) -> dict:
    """Record fields of a file profile's case: how many of its file's lengths exceed the case's max_len (and are
    truncated to it), `lengths_over_max_len`, of `lengths_count`; {} for a named profile."""
    if not case.get("lengths_file"):
        return {}
    data = load(case["lengths_file"], case.get("lengths_column"), case.get("lengths_kind", "values"))
    return {"lengths_over_max_len": int(np.count_nonzero(data > case["max_len"])), "lengths_count": int(data.size)}


def truncation_warnings(sources: list[dict], max_lens) -> list[str]:
    """One line per file profile (`source_fields`) and max_len at which some of its lengths exceed max_len, for
    the CLI to print, e.g. "/data/lengths.txt: 2 of 4 lengths (50%) exceed --max-len 16 and are truncated to it"."""
    out = []
    for src in sources:
        for T in sorted(set(max_lens)):
            f = truncated({**src, "max_len": T})
            k, n = f["lengths_over_max_len"], f["lengths_count"]
            if k:
                out.append(f"{src['lengths_file']}: {k} of {n} lengths ({100 * k / n:.3g}%) exceed --max-len {T} "
                           "and are truncated to it")
    return out
