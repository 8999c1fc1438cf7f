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
