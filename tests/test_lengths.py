"""Length distributions from the user's data: every format, clear errors naming file and line, deterministic
sampling, the CLI's usage errors, a sweep whose records are named after the file, and the shipped real one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness import bench, cli, lengths, results
from harness.profiles import case_lengths
from tests.conftest import REQUIRE_ALL

ROOT = Path(__file__).resolve().parent.parent
KJV = ROOT / "results" / "data" / "kjv-verses.txt"


def test_every_format_gives_the_same_lengths(tmp_path):
    want = np.array([3, 0, 7, 12, 1])
    np.save(tmp_path / "a.npy", want)
    (tmp_path / "b.txt").write_text("3\n0\n\n7\n12\n1\n")
    (tmp_path / "c.csv").write_text("id,n\n1,3\n2,0\n3,7\n4,12\n5,1\n")
    (tmp_path / "d.txt").write_text("a b c\n\n\nd e f g h i j\nk l m n o p q r s t u v\nw\n")
    assert lengths.load(str(tmp_path / "a.npy")).tolist() == want.tolist()
    assert lengths.load(str(tmp_path / "b.txt")).tolist() == want.tolist()
    assert lengths.load(str(tmp_path / "c.csv"), "n").tolist() == want.tolist()
    assert lengths.load(str(tmp_path / "d.txt"), None, "text").tolist() == [3, 7, 12, 1]  # blank lines skipped


@pytest.mark.parametrize("name,content,column,fragment", [
    ("empty.txt", "", None, "no lengths in the file"),
    ("neg.txt", "3\n-2\n", None, "neg.txt:2: negative length -2"),
    ("frac.txt", "3\n2.5\n", None, "frac.txt:2: length '2.5' is not an integer"),
    ("word.txt", "3\nten\n", None, "word.txt:2: length 'ten' is not an integer"),
    ("two.csv", "a,b\n1,2\n", None, "say which with --lengths-column"),
    ("col.csv", "a,b\n1,2\n", "c", "no column 'c'"),
    ("bad.csv", "n\n4\n-1\n", None, "bad.csv:3: negative length -1"),
], ids=lambda v: v if isinstance(v, str) and v.endswith(("txt", "csv")) else "")
def test_bad_files_name_the_file_and_line(tmp_path, name, content, column, fragment):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError) as err:  # the message is checked below, fragment and file name
        lengths.load(str(tmp_path / name), column)
    assert fragment in str(err.value) and name in str(err.value)


def test_missing_file_and_bad_array(tmp_path):
    with pytest.raises(lengths.LengthsError, match="no such file"):
        lengths.load(str(tmp_path / "nope.npy"))
    np.save(tmp_path / "m.npy", np.ones((2, 2), dtype=int))
    with pytest.raises(lengths.LengthsError, match="1-D"):
        lengths.load(str(tmp_path / "m.npy"))


def test_sampling_is_deterministic_and_truncates_to_max_len(tmp_path):
    np.save(tmp_path / "x.npy", np.array([1, 5, 50, 500]))
    case = lengths.source_fields(tmp_path / "x.npy")
    assert case["profile"] == "file:x"
    a, b = case_lengths(case, 64, 100), case_lengths(case, 64, 100)
    assert np.array_equal(a, b) and a.max() == 100 and set(a.tolist()) <= {1, 5, 50, 100}
    assert not np.array_equal(a, case_lengths({**case, "seed": 1}, 64, 100))


def test_cli_bad_lengths_file_is_a_usage_error(tmp_path):
    (tmp_path / "neg.txt").write_text("3\n-2\n")
    out = tmp_path / "r.jsonl"
    assert cli.main(["bench", "--framework", "torch", "--op", "mask", "--lengths", str(tmp_path / "neg.txt"),
                     "--out", str(out)]) == 2
    assert not out.exists()


def test_a_sweep_over_a_file_profile_names_the_file(tmp_path):
    (tmp_path / "mine.txt").write_text("4\n9\n30\n2\n")
    src = lengths.source_fields(tmp_path / "mine.txt")
    case = dict(op="masked_mean", framework="numpy", strategy="masked_mean", device="cpu", dtype="float32",
                batch=8, max_len=16, seed=0, features=4, **src)
    recs = bench.sweep([case], str(tmp_path / "r.jsonl"), quiet=True)
    assert [r["profile"] for r in recs] == ["file:mine"] and recs[0]["status"] == "ok"
    assert recs[0]["valid_tokens"] == int(case_lengths(case, 8, 16).sum())
    assert [r["lengths_kind"] for r in results.read([tmp_path / "r.jsonl"]) if r["source"] == "bench"] == ["values"]
    # the record says how many of the file's lengths max_len truncates (30 > 16) and which lengths they were
    (rec,) = [r for r in results.read([tmp_path / "r.jsonl"]) if r["source"] == "bench"]
    assert (rec["lengths_over_max_len"], rec["lengths_count"]) == (1, 4)
    assert rec["lengths_digest"] == src["lengths_digest"] and len(rec["lengths_digest"]) == 12


def test_the_shipped_real_distribution():
    """The King James Bible's verse lengths in tokens (Debian's bible-kjv, public domain), made by `make data`."""
    if not KJV.exists():
        if REQUIRE_ALL:
            pytest.fail(f"{KJV} is missing: `make data` builds it (needs Debian's bible-kjv)")
        pytest.skip(f"{KJV} is missing: run `make data`")
    L = lengths.load(str(KJV), None, "text")
    assert L.size == 31102 and 2 <= L.min() and L.max() <= 100 and 20 < L.mean() < 35


def test_a_directory_or_a_file_that_is_not_npy_says_what_it_is(tmp_path, capsys):
    """A folder said "no such file"; a text file named .npy gave NumPy's message about pickled data and
    allow_pickle. Each now says what the path is, and the CLI exits 2 with it before any work."""
    (tmp_path / "x.npy").write_text("3\n4\n")
    np.save(tmp_path / "obj.npy", np.array([3, "a"], dtype=object))
    for path, fragment in ((tmp_path, "is a directory"), (tmp_path / "x.npy", "not a NumPy .npy file"),
                           (tmp_path / "obj.npy", "could not be read as a NumPy .npy array of lengths: it holds "
                                                  "Python objects, not an integer array")):
        with pytest.raises(lengths.LengthsError) as err:
            lengths.load(str(path))
        assert f"{path}: {fragment}" in str(err.value) and "allow_pickle" not in str(err.value)
        out = tmp_path / "r.jsonl"
        assert cli.main(["bench", "--framework", "torch", "--op", "mask", "--lengths", str(path),
                         "--out", str(out)]) == 2
        assert fragment in capsys.readouterr().err and not out.exists()


def test_two_lengths_files_of_one_name_are_a_usage_error_naming_both(tmp_path, capsys, monkeypatch):
    """s1/d.txt and s2/d.txt are both profile 'file:d' (records and reports name a file profile by its stem): the
    second silently replaced the first. Now a usage error naming both, with --lengths-from-text too; the same file
    given twice stays one profile."""
    monkeypatch.setattr(bench, "sweep", lambda *a, **k: pytest.fail("a usage error must stop before any work"))
    for folder, values in (("s1", "3\n4\n"), ("s2", "1\n2\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "d.txt").write_text(values)
    one, two = str(tmp_path / "s1" / "d.txt"), str(tmp_path / "s2" / "d.txt")
    out = tmp_path / "r.jsonl"
    for a, b in (("--lengths", "--lengths"), ("--lengths", "--lengths-from-text"),
                 ("--lengths-from-text", "--lengths-from-text")):
        assert cli.main(["bench", "--framework", "torch", "--op", "mask", a, one, b, two, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{a} {one} and {b} {two} would both be profile 'file:d'" in err, err
    assert not out.exists()
    same = cli._file_profiles(cli.build_parser().parse_args(["bench", "--lengths", one, "--lengths", one]))
    assert [s["lengths_file"] for s in same] == [one, one]


# -- the audit's defects: each test below failed before its fix ----------------------------------------------------

BIG = 2**63 - 1  # the int64 maximum: a length above it is read as it, and any max_len truncates it


def test_huge_integers_are_kept_huge_and_truncated_not_negative(tmp_path):
    """99999999999999999999999 or 2**63 - 1 in a text file, 2**63 + 10 in a uint64 .npy: they passed validation
    and came out negative through a float64 round trip. Read exactly, above 2**63 - 1 as 2**63 - 1, and sampled
    truncated to max_len like any long length."""
    (tmp_path / "huge.txt").write_text("5\n99999999999999999999999\n9223372036854775807\n9223372036854775806\n"
                                       "9007199254740993\n" + "7" * 5000 + "\n")
    np.save(tmp_path / "u64.npy", np.array([3, 2**63 + 10], dtype=np.uint64))
    (tmp_path / "big.csv").write_text("n\n4\n9223372036854775808\n")  # pandas: a uint64 column
    (tmp_path / "bigger.csv").write_text("n\n4\n99999999999999999999999\n")  # pandas: Python ints
    assert lengths.load(str(tmp_path / "huge.txt")).tolist() == [5, BIG, BIG, BIG - 1, 9007199254740993, BIG]
    assert lengths.load(str(tmp_path / "u64.npy")).tolist() == [3, BIG]
    assert lengths.load(str(tmp_path / "big.csv")).tolist() == [4, BIG]
    assert lengths.load(str(tmp_path / "bigger.csv")).tolist() == [4, BIG]
    case = lengths.source_fields(tmp_path / "huge.txt")
    drawn = case_lengths(case, 64, 16)
    assert set(drawn.tolist()) == {5, 16}


@pytest.mark.parametrize("text", ["inf", "-inf", "1e400", "nan", "Infinity"])
def test_infinite_lengths_are_the_clean_error_nan_gets(tmp_path, text):
    """`inf` (or `1e400`, which a float reads as inf) raised OverflowError with a traceback."""
    (tmp_path / "inf.txt").write_text(f"5\n{text}\n")
    with pytest.raises(lengths.LengthsError) as err:
        lengths.load(str(tmp_path / "inf.txt"))
    assert str(err.value) == f"{tmp_path / 'inf.txt'}:2: length '{text}' is not an integer"


def test_infinite_lengths_in_arrays_and_csv_are_the_clean_error(tmp_path):
    np.save(tmp_path / "f.npy", np.array([3.0, np.inf]))
    (tmp_path / "f.csv").write_text("n\n3\n1e400\n")
    for name, where in (("f.npy", "index 1"), ("f.csv", "3")):
        with pytest.raises(lengths.LengthsError) as err:
            lengths.load(str(tmp_path / name))
        assert str(err.value) == f"{tmp_path / name}:{where}: length inf is not an integer"


def test_a_csv_without_a_header_is_refused_not_read_short(tmp_path, capsys):
    """pandas took a headerless CSV's first value for the header: 5, 12, 3, 7 gave [12, 3, 7]. A first line that
    is all numbers is now refused (a CSV needs a header); one with a header reads every value."""
    (tmp_path / "nohdr.csv").write_text("5\n12\n3\n7\n")
    (tmp_path / "two.csv").write_text("\n1,5\n2,7\n")
    (tmp_path / "hdr.csv").write_text("length\n5\n12\n3\n7\n")
    for name, line, first in (("nohdr.csv", 1, "5"), ("two.csv", 2, "1,5")):
        with pytest.raises(lengths.LengthsError) as err:
            lengths.load(str(tmp_path / name))
        assert str(err.value).startswith(f"{tmp_path / name}:{line}: the first line {first!r} is a number, not a "
                                         "header: a CSV of lengths needs a header line"), err.value
    assert lengths.load(str(tmp_path / "hdr.csv")).tolist() == [5, 12, 3, 7]
    out = tmp_path / "r.jsonl"
    assert cli.main(["bench", "--framework", "torch", "--op", "mask", "--lengths", str(tmp_path / "nohdr.csv"),
                     "--out", str(out)]) == 2
    assert "is a number, not a header" in capsys.readouterr().err and not out.exists()


def test_a_byte_order_mark_is_not_part_of_the_first_length(tmp_path):
    """A plain-text lengths file saved with a UTF-8 BOM said "length '\\ufeff5' is not an integer"; a text corpus
    whose BOM stood on a line of its own counted that line as a one-token sequence."""
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf5\n7\n")
    (tmp_path / "corpus.txt").write_bytes(b"\xef\xbb\xbf\na b c\n")
    assert lengths.load(str(tmp_path / "bom.txt")).tolist() == [5, 7]
    assert lengths.load(str(tmp_path / "corpus.txt"), None, "text").tolist() == [3]


@pytest.mark.parametrize("content,line,fragment", [
    ("len\n5\n\n7\n3.5\n", 5, "length 3.5 is not an integer"),
    ("\n\nlen\n5\n  \n\n-2\n", 7, "negative length -2"),
    ("len\n5\n\n\nten\n", 5, "length 'ten' is not an integer"),
])
def test_csv_errors_name_the_files_own_line_past_blank_lines(tmp_path, content, line, fragment):
    """pandas skips blank lines, so the error named the row's position among the non-blank ones (line 4 for a
    value on line 5)."""
    (tmp_path / "b.csv").write_text(content)
    with pytest.raises(lengths.LengthsError) as err:
        lengths.load(str(tmp_path / "b.csv"))
    assert str(err.value) == f"{tmp_path / 'b.csv'}:{line}: {fragment}"


def test_suffixes_are_matched_in_any_case(tmp_path):
    """upper.CSV was read as one length per line ("length 'len' is not an integer")."""
    (tmp_path / "upper.CSV").write_text("len\n5\n7\n")
    np.save(tmp_path / "x.npy", np.array([4, 2]))
    (tmp_path / "x.npy").rename(tmp_path / "UP.NPY")
    assert lengths.load(str(tmp_path / "upper.CSV")).tolist() == [5, 7]
    assert lengths.load(str(tmp_path / "UP.NPY")).tolist() == [4, 2]
    assert lengths.source_fields(tmp_path / "upper.CSV", "len")["lengths_column"] == "len"
    assert lengths.is_table("a.Parquet") and lengths.is_table("a.CSV") and not lengths.is_table("a.txt")


def test_only_a_table_carries_the_lengths_column(tmp_path):
    """--lengths-column went into the case (and its key) of .txt/.npy files too, where it means nothing."""
    (tmp_path / "a.txt").write_text("3\n4\n")
    (tmp_path / "t.csv").write_text("id,n\n1,3\n2,4\n")
    assert lengths.source_fields(tmp_path / "a.txt", "n")["lengths_column"] is None
    assert lengths.source_fields(tmp_path / "a.txt", "n") == lengths.source_fields(tmp_path / "a.txt")
    assert lengths.source_fields(tmp_path / "t.csv", "n")["lengths_column"] == "n"
    assert lengths.source_fields(tmp_path / "t.csv", "n", "text")["lengths_column"] is None  # a text corpus


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    """Without pyarrow (in no extra of the project) pandas' ImportError, several lines long, was the message."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pyarrow", "fastparquet") else real(name, *a))
    (tmp_path / "x.PARQUET").write_bytes(b"PAR1")
    with pytest.raises(lengths.LengthsError) as err:
        lengths.load(str(tmp_path / "x.PARQUET"))
    assert str(err.value) == f"{tmp_path / 'x.PARQUET'}: reading Parquet needs pyarrow: pip install pyarrow"


def test_the_case_carries_a_digest_of_the_files_lengths(tmp_path):
    """Two files of one name, or a file edited in place, gave the same case key: --resume took the old records
    for the new lengths. The case now carries 12 hex digits of SHA-256 over the lengths (little-endian int64)."""
    import hashlib
    import struct

    from harness.axes import case_key

    for folder, values in (("s1", (4, 9, 30, 2)), ("s2", (1, 2))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "d.txt").write_text("".join(f"{v}\n" for v in values))
    one, two = lengths.source_fields(tmp_path / "s1" / "d.txt"), lengths.source_fields(tmp_path / "s2" / "d.txt")
    assert one["lengths_digest"] == hashlib.sha256(struct.pack("<4q", 4, 9, 30, 2)).hexdigest()[:12]
    base = dict(op="mask", framework="torch", strategy="s", device="cpu", dtype="float32", batch=8, max_len=16)
    assert one["profile"] == two["profile"] == "file:d"
    assert case_key({**base, **one}) != case_key({**base, **two})
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "d.txt").write_text("4\n\n9\n30\n2\n")  # another file, the same lengths: the same case
    assert case_key({**base, **one}) == case_key({**base, **lengths.source_fields(tmp_path / "s3" / "d.txt")})
    (tmp_path / "s1" / "d.txt").write_text("4\n9\n31\n2\n5\n")  # edited in place: read again, another case
    edited = lengths.source_fields(tmp_path / "s1" / "d.txt")
    assert edited["lengths_digest"] == hashlib.sha256(struct.pack("<5q", 4, 9, 31, 2, 5)).hexdigest()[:12]
    assert lengths.load(one["lengths_file"]).tolist() == [4, 9, 31, 2, 5]
    with pytest.raises(lengths.LengthsError, match="changed since the sweep read it"):  # a worker of the old case
        case_lengths({**base, **one}, 8, 16)


def test_truncation_is_counted_and_warned_about(tmp_path):
    """Lengths above --max-len were truncated without a word."""
    (tmp_path / "l.txt").write_text("4\n9\n30\n2\n")
    src = lengths.source_fields(tmp_path / "l.txt")
    assert lengths.truncated({**src, "max_len": 8}) == {"lengths_over_max_len": 2, "lengths_count": 4}
    assert lengths.truncated({"profile": "lognormal", "max_len": 8}) == {}
    assert lengths.truncation_warnings([src], [30, 8, 3, 8]) == [
        f"{src['lengths_file']}: 3 of 4 lengths (75%) exceed --max-len 3 and are truncated to it",
        f"{src['lengths_file']}: 2 of 4 lengths (50%) exceed --max-len 8 and are truncated to it"]
