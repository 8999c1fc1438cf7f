"""The CLI and the results store keep their promises (issue reproducers): bad usage exits 2 before any work and
never touches a results file; runs append and never lose a record; concurrent writers interleave whole lines; a
killed `varlen bench` leaves no worker behind; the report says what it could not read and exits 1 on nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import adapters
from harness import axes, cli, records, report, results

ROOT = Path(__file__).resolve().parent.parent


def varlen(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args", [
    ["check", "--framework", "tensorflw"],
    ["check", "--framework", "numpy"],
    ["check", "--family", "rnns"],
    ["check", "--jobs", "0"],
    ["check", "--jobs", "two"],
    ["check", "--strategy", "bogus"],
    ["check", "--framework", "torch", "--strategy", "cudnn_lstm"],
    ["check", "--family", "ops", "--strategy", "packed"],
    ["bench", "--framework", "torch", "--op", "mask", "--profile", "gaussian"],
    ["bench", "--op", "foo"],
    ["bench", "--batch", "0"],
    ["bench", "--max-len", "0"],
    ["bench", "--cell", "LSTM"],
    ["bench", "--hidden", "0"],
    ["bench", "--dtype", "float16"],
    ["bench", "--strategy", "bogus", "--framework", "torch"],
    ["bench", "--framework", "torch", "--op", "mask", "--timeout", "-5"],
    ["bench", "--framework", "torch", "--op", "mask", "--timeout", "nan"],
    ["bench", "--framework", "torch", "--op", "mask", "--timeout", "inf"],
    ["bench", "--framework", "torch", "--op", "mask", "--timeout", "0"],
    ["bench", "--framework", "torch", "--op", "mask", "--budget", "0"],
    ["bench", "--framework", "torch", "--op", "mask", "--budget", "nan"],
], ids=lambda a: " ".join(a))
def test_bad_usage_exits_2_and_leaves_the_results_file_alone(tmp_path, args):
    out = tmp_path / "r.jsonl"
    out.write_text("precious\n")
    proc = varlen(*args, "--out", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error" in proc.stderr and out.read_text() == "precious\n"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("value", ["three", "-1", ""])
def test_a_bad_fresh_batch_count_is_a_usage_error_naming_the_variable(tmp_path, value):
    out = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--framework", "torch", "--op", "mask",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VARLEN_STREAM_BATCHES": value})
    assert proc.returncode == 2 and f"VARLEN_STREAM_BATCHES={value!r}" in proc.stderr, proc.stderr
    assert not out.exists(), "no work may start on a usage error"


def test_device_gpu_without_a_gpu_is_a_usage_error_naming_what_each_framework_sees(tmp_path):
    import adapters

    if any("gpu" in adapters.get(f).devices() for f in ("torch",) if f in adapters.available()):
        pytest.skip("a GPU is visible here")
    out = tmp_path / "r.jsonl"
    proc = varlen("bench", "--framework", "torch", "--op", "mask", "--device", "gpu", "--out", str(out), timeout=300)
    assert proc.returncode == 2 and "no GPU is visible" in proc.stderr and "torch" in proc.stderr, proc.stderr
    assert not out.exists(), "no work may start on a usage error"


@pytest.mark.parametrize("command", [["check", "--framework", "torch", "--family", "ops"],
                                     ["bench", "--framework", "torch", "--op", "mask", "--profile", "equal"]],
                         ids=lambda c: c[0])
def test_a_results_file_that_cannot_be_written_is_a_usage_error_before_any_work(tmp_path, command):
    """check's records went nowhere and it said "no check records" with exit 0; bench crashed with a traceback
    after its first case. Both now stop before any work, naming why (a file where a folder should be; a folder
    nobody can write in, which root's permission checks do not show: /proc)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("precious\n")
    places = [(a_file / "r.jsonl", f"{a_file} is not a folder")]
    if Path("/proc/self").is_dir():
        places.append((Path("/proc/varlen-r.jsonl"), "cannot write in /proc"))
    for out, why in places:
        start = time.monotonic()
        proc = varlen(*command, "--out", str(out))
        assert proc.returncode == 2 and why in proc.stderr, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and time.monotonic() - start < 30, "no work may start"
    assert a_file.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_lengths_column_without_a_table_to_take_it_from_is_a_usage_error(tmp_path):
    """--lengths-column with no --lengths, or only with files that have no columns, was silently ignored."""
    lines = tmp_path / "l.txt"
    lines.write_text("3\n2\n")
    for files in ([], ["--lengths-from-text", str(lines)], ["--lengths", str(lines)]):
        proc = varlen("bench", "--framework", "torch", "--op", "mask", "--lengths-column", "n", *files,
                      "--out", str(tmp_path / "r.jsonl"))
        assert proc.returncode == 2 and "--lengths-column 'n' names a column of a --lengths CSV/Parquet" in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_report_misuse_is_a_usage_error_before_any_work(tmp_path):
    """--out a file, --out under a file, --run of a run no file holds: exit 2 naming it (the last two ended in a
    traceback, or in a page saying there was nothing to report)."""
    rec = tmp_path / "r.jsonl"
    results.append(rec, _bench_record(status="failed", error="x", run_id="20261205T000000-aaaaaaaa"))
    a_file = tmp_path / "a-file"
    a_file.write_text("precious\n")
    for extra, why in ((["--out", str(a_file)], f"--out {a_file} is a file"),
                       (["--out", str(a_file / "rep")], f"{a_file} is not a folder"),
                       (["--run", "20261205T000000-bbbbbbbb", "--out", str(tmp_path / "rep")],
                        "no record of that run in 1 results file(s); the latest runs: 20261205T000000-aaaaaaaa")):
        proc = varlen("report", str(rec), *extra)
        assert proc.returncode == 2 and why in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert a_file.read_text() == "precious\n" and not (tmp_path / "rep").exists()
    known = varlen("report", str(rec), "--run", "20261205T000000-aaaaaaaa", "--out", str(tmp_path / "rep"))
    assert known.returncode == 1 and "nothing to report" in known.stderr, known.stderr  # built: its one case failed
    assert (tmp_path / "rep" / "index.html").is_file()


def test_report_reads_every_results_file_in_a_folder_it_is_given(tmp_path):
    """`varlen report results/gpu` skipped the folder ("is a directory") and built an empty page; a folder stands
    for every *.jsonl under it (a report's own folder left out), one without any is a usage error."""
    here, there = tmp_path / "runs" / "a.jsonl", tmp_path / "runs" / "deeper" / "b.jsonl"
    for path, key in ((here, "k1"), (there, "k2")):
        results.append(path, _bench_record(key=key, status="failed", error="x"))
    (tmp_path / "runs" / "report").mkdir()
    (tmp_path / "runs" / "report" / "old.jsonl").write_text("not a record\n")
    proc = varlen("report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"))
    assert "from 2 result file(s), 2 records" in proc.stdout and "skipped" not in proc.stderr, proc.stdout + proc.stderr
    (tmp_path / "none").mkdir()
    proc = varlen("report", str(tmp_path / "none"), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 2 and "holds no results file" in proc.stderr, proc.stderr


def test_report_of_a_missing_path_is_a_usage_error(tmp_path):
    proc = varlen("report", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 2 and "no such results file" in proc.stderr


def _bench_record(**kw) -> dict:
    base = dict(key="k1", framework="torch", op="mask", strategy="mask", device="cpu", dtype="float32", batch=8,
                max_len=32, profile="equal")
    return records.make("bench", **{**base, **kw})


def test_report_reports_bad_lines_and_exits_1_on_all_failed(tmp_path):
    path = tmp_path / "r.jsonl"
    results.append(path, _bench_record(status="failed", error="KeyError: boom"))
    with open(path, "a") as f:
        f.write("null\n[1, 2]\n{\"a\": 1}\ngarbage\n{\"source\": \"bench\", \"k")  # not records, a cut line
    loaded = results.load([path])
    assert len(loaded.records) == 1 and [p.line for p in loaded.problems] == [2, 3, 4, 5, 6]
    assert all(p.why for p in loaded.problems)
    code = cli.main(["report", str(path), "--out", str(tmp_path / "rep")])
    page = (tmp_path / "rep" / "index.html").read_text()
    assert code == 1 and "Nothing to report" in page and "Records that could not be read" in page
    assert "KeyError: boom" in page


def test_records_of_a_newer_schema_or_an_unknown_device_are_reported_not_read(tmp_path):
    """`"schema": 99` and `"device": "tpu"` were read as if valid: a newer schema's fields may mean something
    else, and a device varlen does not know has no place on the page. Both are listed, by line, with the reason."""
    path = tmp_path / "r.jsonl"
    good = _bench_record(status="failed", error="KeyError: boom")
    with open(path, "w") as f:
        for rec in (good, {**good, "schema": 99}, {**good, "device": "tpu"}, {**good, "schema": 1}):
            f.write(json.dumps(rec) + "\n")
    loaded = results.load([path])
    assert len(loaded.records) == 2 and [p.line for p in loaded.problems] == [2, 3]
    assert "schema 99 is newer than this varlen's (2)" in loaded.problems[0].why
    assert "device 'tpu' is not one of ['cpu', 'gpu']" in loaded.problems[1].why


def test_report_of_a_directory_is_reported_not_a_crash(tmp_path):
    loaded = results.load([tmp_path])
    assert loaded.records == [] and "is a directory" in loaded.problems[0].why


def test_unchecked_frameworks_are_never_recommended(tmp_path):
    recs = [_bench_record(key=f"k{p}", op="rnn_forward", strategy="packed", profile=p, status="ok", median_s=0.01,
                          p25_s=0.009, p75_s=0.011, valid_tokens=100, padded_tokens=256, padding_fraction=0.6,
                          valid_tokens_per_s=1e4, kernel="aten-cpu", ideal_share=0.4, cell="lstm")
            for p in ("equal", "lognormal")]
    t = report.recommendation_table(report.bench_frame(recs), report.frame(recs, "check"))
    assert list(t["fastest exact strategy"]) == ["unchecked on this device (no check records), never recommended: "
                                                 "packed"]
    page, _ = report.build(recs, tmp_path)
    assert "unchecked" in page.read_text()


def test_concurrent_appends_interleave_whole_records(tmp_path):
    path = tmp_path / "r.jsonl"
    code = ("import sys; from harness import records, results\n"
            "for i in range(200):\n"
            "    results.append(sys.argv[1], records.make('floors', device='cpu', copy_bytes_per_s=float(i),"
            " gemm_flop_per_s=1.0, framework='x' * 3000))\n")
    env = {k: v for k, v in os.environ.items() if k != records.RUN_ENV}  # each writer starts its own run
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    loaded = results.load([path])
    assert not loaded.problems and len(loaded.records) == 800
    assert len({r["run_id"] for r in loaded.records}) == 4, "each process is its own run"


def test_killing_bench_kills_its_worker_and_leaves_no_file_behind(tmp_path):
    """SIGKILL of `varlen bench` (the issue's reproducer orphaned the worker): the worker dies with it."""
    out = tmp_path / "r.jsonl"
    cases = [dict(op="rnn_forward_backward", framework="numpy", strategy="reference", device="cpu",
                  dtype="float32", batch=64, max_len=512, profile="lognormal", seed=0, cell="lstm", hidden=64,
                  input_size=64, num_layers=2, bidirectional=True)]
    code = ("import json, sys; from harness import bench\n"
            f"bench.sweep(json.loads(sys.argv[1]), {str(out)!r}, quiet=True, timeout=600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, json.dumps(cases)], cwd=ROOT)
    worker = None
    for _ in range(200):
        time.sleep(0.1)
        kids = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
        if kids:
            worker = int(kids[0])
            break
    assert worker, "the sweep never started its worker"
    time.sleep(3)  # let the worker import and start the long case
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent")
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["r.jsonl"])


def test_select_takes_the_latest_record_per_case_and_a_run_by_id():
    a = _bench_record(status="ok", median_s=1.0, p25_s=1.0, p75_s=1.0, valid_tokens=1, padded_tokens=1,
                      padding_fraction=0.0, valid_tokens_per_s=1.0, kernel="k", run_id="run-a", time=1.0)
    b = _bench_record(status="failed", error="boom", run_id="run-b", time=2.0)
    c = _bench_record(status="ok", median_s=2.0, p25_s=2.0, p75_s=2.0, valid_tokens=1, padded_tokens=1,
                      padding_fraction=0.0, valid_tokens_per_s=0.5, kernel="k", run_id="run-c", time=3.0)
    assert results.select([a, b]) == [a], "a later failure does not hide an earlier measurement"
    assert results.select([a, b, c]) == [c]
    assert results.select([a, b, c], run="run-b") == [b] and results.select([a, b, c], run="latest") == [c]


def test_ctrl_c_finishes_the_case_in_flight_exits_130_and_resume_completes(tmp_path):
    out = tmp_path / "r.jsonl"
    # 36 small cases, ~75 ms each here: the signal lands well before the sweep could end
    grid = [("--profile", p) for p in ("equal", "zipf", "lognormal")]
    grid += [("--batch", b) for b in ("8", "16", "32", "64")] + [("--max-len", t) for t in ("16", "32", "48")]
    args = ["bench", "--framework", "torch", "--op", "mask", *[a for pair in grid for a in pair], "--out", str(out)]
    # started as from a terminal: SIGINT at its default even where this test runs with it ignored (a background
    # job of a non-interactive shell, as CI may start `make test`: the child would inherit SIG_IGN and never stop)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for _ in range(3000):
        time.sleep(0.02)
        if [r for r in results.read([out]) if r["source"] == "bench"]:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    first = [r for r in results.load([out]).records if r["source"] == "bench"]
    assert 1 <= len(first) < 36 and not results.load([out]).problems
    assert all(r["status"] == "ok" for r in first), "the case in flight is finished, not recorded as failed"
    assert cli.main([*args, "--resume"]) == 0
    recs = [r for r in results.read([out]) if r["source"] == "bench"]
    assert len({r["key"] for r in recs}) == 36 and len(recs) == 36, "resume ran each remaining case exactly once"


def test_a_given_asv_dashboard_must_exist_the_default_may_not(tmp_path, capsys, monkeypatch):
    """`--asv-html /nonexistent` built a page saying "Not published yet: run `make asv`", ignoring the path given.
    A given path must be a dashboard `asv publish` wrote (exit 2 naming it, before any work); with no flag, a
    missing default folder still gives that page."""
    rec = tmp_path / "r.jsonl"
    results.append(rec, _bench_record(status="failed", error="x"))
    (tmp_path / "empty").mkdir()
    for path, why in ((tmp_path / "nope", "no such folder"), (tmp_path / "empty", "holds no index.html"),
                      (rec, "is a file")):
        assert cli.main(["report", str(rec), "--asv-html", str(path), "--out", str(tmp_path / "rep")]) == 2
        assert f"--asv-html {path}: {why}" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()
    (tmp_path / "asv").mkdir()
    (tmp_path / "asv" / "index.html").write_text("<html></html>")
    assert cli.main(["report", str(rec), "--asv-html", str(tmp_path / "asv"), "--out", str(tmp_path / "rep")]) == 1
    assert "Open the asv dashboard" in (tmp_path / "rep" / "index.html").read_text()
    monkeypatch.setattr(cli, "RESULTS", tmp_path / "results")  # the default dashboard folder: missing
    assert cli.main(["report", str(rec), "--out", str(tmp_path / "default")]) == 1
    assert "Not published yet" in (tmp_path / "default" / "index.html").read_text()


def _no_work(*args, **kwargs):
    pytest.fail("a usage error must stop before any work")


@pytest.mark.parametrize("args,why", [
    (["--op", "pad", "--strategy", "packed"], "--strategy packed applies to none of the selected ops (pad): only to "
                                              "rnn_forward, rnn_forward_backward, embed_forward_backward, rnn_epoch"),
    (["--op", "pad", "--op", "mask", "--cell", "lstm"], "--cell lstm applies to none of the selected ops (pad, mask)"),
    (["--op", "pad", "--hidden", "8"], "--hidden 8 applies to none of the selected ops (pad)"),
    (["--op", "rnn_forward", "--op", "pad", "--strategy", "cross_entropy"],
     "--strategy cross_entropy applies to none of the selected ops (rnn_forward, pad): only to loss_softmax_ce"),
    (["--op", "loss_softmax_ce", "--op", "pad", "--strategy", "bce_with_logits"],
     "--strategy bce_with_logits applies to none of the selected ops (loss_softmax_ce, pad): only to loss_sigmoid_bce"),
    (["--op", "rnn_forward", "--op", "loss_softmax_ce", "--strategy", "cross_entropy"],
     "--op rnn_forward selects no case: none of its strategies (bucketed, concat_rows"),
    (["--op", "rnn_epoch", "--cell", "lstm", "--cell", "gru"],
     "--cell gru selects no case of the selected ops (rnn_epoch): those that take it run lstm only"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_an_option_that_applies_to_none_of_the_selected_ops_is_a_usage_error(tmp_path, capsys, monkeypatch, args, why):
    """`--op pad --strategy packed` ran pad and exited 0; `--op pad --cell lstm --hidden 8` was accepted silently.
    An option value that fits none of the selected ops, or an --op the options leave with no case, is misuse."""
    from harness import bench

    monkeypatch.setattr(bench, "sweep", _no_work)
    out = tmp_path / "r.jsonl"
    assert cli.main(["bench", "--framework", "torch", *args, "--batch", "2", "--max-len", "4", "--out", str(out)]) == 2
    assert why in capsys.readouterr().err
    assert not out.exists()


def test_an_option_applies_to_the_selected_ops_it_fits(tmp_path, capsys, monkeypatch):
    """With a mix of ops, --strategy, --cell and --hidden apply to those they fit; the others run as they are."""
    from harness import bench

    ran = []
    monkeypatch.setattr(bench, "sweep", lambda cases, out, **kw: ran.extend(cases) or [])
    assert cli.main(["bench", "--framework", "torch", "--op", "pad", "--op", "rnn_forward", "--strategy", "packed",
                     "--cell", "gru", "--hidden", "8", "--batch", "2", "--max-len", "4", "--profile", "equal",
                     "--out", str(tmp_path / "r.jsonl")]) == 0
    assert sorted((c["op"], c["strategy"], c.get("cell"), c.get("hidden")) for c in ran) == [
        ("pad", "pad", None, None), ("rnn_forward", "packed", "gru", 8)]


def test_resume_says_what_it_skipped_and_skips_unsupported_records_of_the_same_code(tmp_path, capsys, monkeypatch):
    """A rerun printed "0 measured, 0 failed, 6 not supported" without the 8 it skipped, and appended the 6 records
    saying "unsupported" again on every resume. Those written by this same commit (clean) and framework version on
    this host are finished: skipped and counted; by uncommitted code (which changes is not recorded) or another
    framework version they run again."""
    from harness import bench

    ran = []
    monkeypatch.setattr(bench, "sweep", lambda cases, out, **kw: ran.extend(cases) or [])
    out = tmp_path / "r.jsonl"
    args = ["bench", "--framework", "torch", "--op", "rnn_forward", "--cell", "rnn", "--strategy", "packed",
            "--strategy", "saturated_gate", "--batch", "2", "--max-len", "4", "--profile", "equal", "--out", str(out)]
    assert cli.main(args) == 0 and [c["strategy"] for c in ran] == ["packed", "saturated_gate"]
    packed, gate = ran
    ok = dict(median_s=1.0, p25_s=1.0, p75_s=1.0, valid_tokens=8, padded_tokens=8, padding_fraction=0.0,
              valid_tokens_per_s=8.0, kernel="aten-cpu")
    real, installed = records.machine(), bench.installed_version("torch")
    assert installed and installed.split("+")[0] in __import__("torch").__version__
    for commit, version, host, skipped in (
            ("abc1234", installed, real["host"], "skipped 2 already recorded (1 measured, 1 not supported)"),
            ("abc1234+dirty", installed, real["host"], "skipped 1 already recorded (1 measured)"),
            ("abc1234", "0.1", real["host"], "skipped 1 already recorded (1 measured)"),
            ("abc1234", installed + "1", real["host"], "skipped 1 already recorded (1 measured)"),  # 2.1 in 2.10
            ("abc1234", installed, "elsewhere", "skipped 1 already recorded (1 measured)")):
        monkeypatch.setattr(records, "machine", lambda commit=commit: {**real, "commit": commit})
        out.unlink(missing_ok=True)
        results.append(out, records.make("bench", **packed, key=axes.case_key(packed), status="ok", **ok))
        results.append(out, records.make("bench", **gate, key=axes.case_key(gate), status="unsupported",
                                         version=version, error="saturated_gate needs an LSTM or GRU cell",
                                         host=host))
        before, ran[:] = out.read_text(), []
        capsys.readouterr()
        assert cli.main([*args, "--resume"]) == 0
        printed = capsys.readouterr().out
        assert f"--resume: {skipped}" in printed and f"{skipped.split()[1]} skipped as already recorded" in printed
        again = "1 case(s) whose latest record says not supported run again" in printed
        assert [c["strategy"] for c in ran] == ([] if "not supported" in skipped else ["saturated_gate"]) and (
            again == ("not supported" not in skipped)), printed
        assert out.read_text() == before


@pytest.mark.parametrize("framework", ["torch", "jax", "tensorflow"])
def test_the_version_resume_compares_is_the_one_the_adapter_records(framework):
    """--resume reads the installed version from package metadata (no framework import) and compares it whole with
    the records' `version`: it must be the very string the adapter writes there."""
    import adapters
    from harness import bench

    if framework not in adapters.available():
        pytest.skip(f"{framework} is not installed")
    assert bench.installed_version(framework) == adapters.get(framework).version


def test_quick_resume_leaves_out_the_overhead_ratios_already_recorded(tmp_path, capsys, monkeypatch):
    """`bench --quick --resume` timed the adapter-vs-raw overhead ratios again on every resume (two records more
    per framework and device each time). A (framework, device) whose two overhead records (forward, forward +
    backward) are in the file is left out and named; one with only the first (a run cut off between them) runs."""
    from harness import bench

    timed = []
    monkeypatch.setattr(bench, "sweep", lambda cases, out, **kw: timed.append(kw["overhead"]) or [])
    out = tmp_path / "r.jsonl"
    args = ["bench", "--quick", "--framework", "torch", "--framework", "jax", "--op", "pad", "--batch", "2",
            "--max-len", "4", "--profile", "equal", "--out", str(out)]
    assert cli.main(args) == 0 and timed == [(("torch", "cpu"), ("jax", "cpu"))]

    def overhead(fw, op):
        return records.make("overhead", framework=fw, version="1", device="cpu", strategy="s", kernel="k", op=op,
                            batch=64, max_len=128, hidden=128, cell="lstm", profile="lognormal", raw_median_s=1.0,
                            adapter_median_s=1.0, overhead_ratio=1.0, repeats=2)

    results.append(out, overhead("torch", "rnn_forward"))
    results.append(out, overhead("torch", "rnn_forward_backward"))
    results.append(out, overhead("jax", "rnn_forward"))
    capsys.readouterr()
    assert cli.main([*args, "--resume"]) == 0
    assert timed[-1] == (("jax", "cpu"),)
    assert "overhead ratios already recorded for torch (cpu): not timed again" in capsys.readouterr().out
    assert cli.main(args) == 0 and timed[-1] == (("torch", "cpu"), ("jax", "cpu")), "without --resume: all again"


def test_every_case_is_timed_for_its_budget_and_its_record_says_so(tmp_path, monkeypatch):
    """--budget S (default 1.5 s, --quick 0.75 s: `make demo`) reaches every case; how long a case is timed is not
    part of its key (a --quick record and a full sweep's of the same case are the same case)."""
    from harness import bench, timing

    swept = []
    monkeypatch.setattr(bench, "sweep", lambda cases, out, **kw: swept.append(cases) or [])
    out = tmp_path / "r.jsonl"
    args = ["bench", "--framework", "torch", "--op", "pad", "--batch", "2", "--max-len", "4", "--profile", "equal",
            "--out", str(out)]
    for extra, want in (([], timing.BUDGET_S), (["--quick"], timing.QUICK_BUDGET_S),
                        (["--quick", "--budget", "0.2"], 0.2)):
        assert cli.main([*args, *extra]) == 0
        assert swept[-1] and {c["budget_s"] for c in swept[-1]} == {want}, (extra, swept[-1])
    one = swept[-1][0]
    assert axes.case_key(one) == axes.case_key({k: v for k, v in one.items() if k != "budget_s"})
    assert (timing.BUDGET_S, timing.QUICK_BUDGET_S) == (1.5, 0.75)


def test_a_case_is_timed_for_its_budget(monkeypatch):
    """The worker times a case for the budget it carries: at least 5 samples, more while the budget lasts."""
    from harness import bench, timing
    from tests.conftest import require

    require("torch")
    seen = []
    real = timing.measure
    monkeypatch.setattr(timing, "measure", lambda call, **kw: seen.append(kw["budget_s"]) or real(call, **kw))
    case = {"op": "pad", "framework": "torch", "strategy": "pad", "device": "cpu", "dtype": "float32", "batch": 2,
            "max_len": 4, "seed": 0, "profile": "equal", "features": 3}
    for budget in (0.05, 0.3):
        rec = bench.measure_case(adapters.get("torch"), {**case, "budget_s": budget}, {})
        assert rec["budget_s"] == budget and rec["repeats"] >= 5
    assert seen == [0.05, 0.3]
    assert bench.measure_case(adapters.get("torch"), case, {})["repeats"] >= 5 and seen[-1] == timing.BUDGET_S
    naps = [timing.measure(lambda: time.sleep(0.02), budget_s=b).repeats for b in (0.05, 0.4)]
    assert naps[0] == 5 and naps[1] > 5, naps


def test_check_json_prints_strict_json_lines_only_and_says_its_run_on_stderr(tmp_path):
    """`check --json | jq` broke: the progress bar came first on stdout, and a failed cell's max_abs_err was the
    token Infinity, which strict JSON has not. stdout now holds the records only, each a strict JSON object (a
    non-finite number as a string); the progress and the run id go to stderr."""
    out = tmp_path / "c.jsonl"
    proc = varlen("check", "--framework", "torch", "--family", "loss", "--json", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    lines = proc.stdout.splitlines()
    recs = [json.loads(line, parse_constant=refuse) for line in lines]
    assert recs and all(isinstance(r, dict) and r["source"] == "check" for r in recs)
    assert len(recs) == len(results.load([out]).records), "every record of the run, nothing else"
    assert "inf" in {r["max_abs_err"] for r in recs}, "the loss recipes' infinite errors, as strings"
    run = recs[0]["run_id"]
    assert f"varlen check: torch on cpu, families loss -> {out} (run {run})" in proc.stderr


def test_env_lists_every_declared_strategy_those_a_device_cannot_run_with_their_reason():
    """`varlen env` listed only the strategies usable here, so torch's graph_loop, flex and varlen_flash and JAX's
    cudnn_lstm did not exist for a CPU user; and TensorFlow's native log filled stderr."""
    proc = varlen("env", timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    torch = lines[next(i for i, line in enumerate(lines) if line.startswith("torch ")):]
    assert any(line.split() == ["devices:", "cpu"] for line in torch[:2]), torch[:2]
    rnn = next(line for line in torch if line.strip().startswith("rnn (cpu): "))
    assert rnn.split(": ", 1)[1].split(", ")[:2] == ["packed", "masked_loop"], "default first"
    assert any(line.strip().startswith("not on cpu: graph_loop (") and "GPU only" in line for line in torch)
    assert any(line.strip().startswith("not on cpu: cudnn_lstm (") for line in lines)


def test_env_names_the_gpu_model_beside_the_device(capsys, monkeypatch):
    """Two lent machines are both "vm": `varlen env` names the GPU each framework sees (`device_name`)."""
    import adapters

    a = adapters.get("numpy")
    monkeypatch.setattr(a, "devices", lambda: ["cpu", "gpu"])
    monkeypatch.setattr(a, "device_name", lambda device: "Fake GPU 9000" if device == "gpu" else "a CPU")
    monkeypatch.delitem(a.__dict__, "_device_names", raising=False)  # what earlier tests' records asked is kept
    monkeypatch.setattr(adapters, "available", lambda: ["numpy"])
    monkeypatch.setattr(adapters, "get", lambda name: a)
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out.splitlines()
    numpy = out[next(i for i, line in enumerate(out) if line.startswith("numpy "))]
    assert out[out.index(numpy) + 1].split() == ["devices:", "cpu,", "gpu", "(Fake", "GPU", "9000)"], out


def test_an_interrupted_check_says_how_to_finish_it_not_to_resume(tmp_path, capsys, monkeypatch):
    """`check` has no --resume; its Ctrl-C message said "Resume with the same command" (which checks it all
    again) like bench's. It now says what to run."""
    from harness import check

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "run", interrupted)
    assert cli.main(["check", "--framework", "torch", "--family", "ops", "--out", str(tmp_path / "c.jsonl")]) == 130
    err = capsys.readouterr().err
    assert "varlen check: interrupted; every finished record is in the results file" in err
    assert "Run it again (`--family` for only the families it did not finish" in err and "--resume" not in err


def test_report_in_a_folder_without_results_says_where_it_looked(tmp_path):
    """Run elsewhere, `varlen report` said "from 0 result file(s)" without saying it looked in ./results."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "report", "--out", str(tmp_path / "rep")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"no results file (*.jsonl) under {tmp_path / 'results'}, the default (results/ of the current folder)" \
        in proc.stderr, proc.stderr


def test_an_empty_cluster_address_is_a_usage_error_not_a_local_run(tmp_path):
    """`--cluster "$SCHED"` with SCHED unset ran the sweep on the driver, exit 0."""
    out = tmp_path / "r.jsonl"
    proc = varlen("bench", "--framework", "torch", "--op", "pad", "--profile", "equal", "--batch", "2", "--max-len",
                  "4", "--cluster", "", "--out", str(out))
    assert proc.returncode == 2 and "--cluster was given an empty address" in proc.stderr, proc.stderr
    assert not out.exists()


def test_bench_warns_when_a_lengths_file_is_truncated_and_takes_an_upper_case_csv(tmp_path, capsys, monkeypatch):
    """Lengths above --max-len are truncated to it, which nothing said; `L.CSV --lengths-column n` was refused as
    if no table had been given."""
    from harness import bench

    monkeypatch.setattr(bench, "sweep", lambda cases, out, **kw: [])
    txt, csv = tmp_path / "over.txt", tmp_path / "L.CSV"
    txt.write_text("5\n100\n200\n3\n")
    csv.write_text("id,n\na,3\nb,40\n")
    common = ["bench", "--framework", "torch", "--op", "pad", "--profile", "equal", "--batch", "2",
              "--max-len", "16", "--out", str(tmp_path / "r.jsonl")]
    assert cli.main([*common, "--lengths", str(txt)]) == 0
    err = capsys.readouterr().err
    assert f"varlen bench: {txt}: 2 of 4 lengths (50%) exceed --max-len 16 and are truncated to it" in err, err
    assert cli.main([*common, "--lengths", str(csv), "--lengths-column", "n"]) == 0
    assert f"{csv}: 1 of 2 lengths (50%) exceed --max-len 16" in capsys.readouterr().err
