"""`varlen check`'s workers: several frameworks at once on the CPU, one at a time on a GPU, none left behind."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import check as chk
from harness import results

ROOT = Path(__file__).resolve().parent.parent

# a stand-in check worker: logs when it starts and ends, sleeps, reports one family done; "noisy" writes 1 MB of
# warnings to stderr first, and "crash" exits 3 after its last words there
WORKER = """
import sys, time
log, name, sleep = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(log, "a") as f:
    f.write(f"start {name} {time.time()}\\n")
if name == "noisy":
    sys.stderr.write("W: a framework's warning\\n" * 40000)
time.sleep(sleep)
if name == "crash":
    sys.stderr.write("Traceback ...\\nRuntimeError: the last words\\n")
    sys.exit(3)
print("DONE ops 1", flush=True)
with open(log, "a") as f:
    f.write(f"end {name} {time.time()}\\n")
"""


def _fake_workers(monkeypatch, log, sleeps: dict[str, float]) -> list[subprocess.Popen]:
    procs = []

    def spawn(module, name, device, out, families, **kw):
        assert module == "harness.check"
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(log), name, str(sleeps[name])],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return procs[-1]

    monkeypatch.setattr(chk, "spawn", spawn)
    return procs


def _spans(log) -> dict[str, tuple[float, float]]:
    seen: dict[str, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        what, name, t = line.split()
        seen.setdefault(name, {})[what] = float(t)
    return {name: (s["start"], s["end"]) for name, s in seen.items()}


@pytest.mark.parametrize("device, jobs, together", [("cpu", 2, True), ("cpu", 1, False), ("gpu", 3, False)])
def test_cpu_workers_run_side_by_side_and_a_gpus_one_at_a_time(tmp_path, monkeypatch, device, jobs, together):
    # `make demo`'s check took ~370 s with its three frameworks one after another on 2 cores, each worker mostly
    # single-threaded Python and tracing; a GPU's workers must not share it (JAX takes 75% of its memory)
    log = tmp_path / "log"
    _fake_workers(monkeypatch, log, {"a": 1.0, "b": 1.0, "c": 0.2})
    seen = []
    chk.run(["a", "b", "c"], [device], str(tmp_path / "check.jsonl"), families=["ops"], jobs=jobs,
            progress=lambda fw, dev, fam: seen.append((fw, dev, fam)))
    spans = _spans(log)
    assert sorted(seen) == [("a", device, "ops"), ("b", device, "ops"), ("c", device, "ops")]
    overlap = spans["a"][1] > spans["b"][0] and spans["b"][1] > spans["a"][0]
    assert overlap == together, spans
    if not together:
        order = sorted(spans, key=lambda n: spans[n][0])
        assert order == ["a", "b", "c"], "one at a time, in the order given"
        assert all(spans[x][1] <= spans[y][0] for x, y in zip(order, order[1:])), spans


def test_on_the_cpu_each_frameworks_rnn_family_gets_a_worker_of_its_own_the_slowest_first(monkeypatch):
    """`make demo`'s check on 2 cores took 423 s with one worker per framework: TF's ended at 277 s, and JAX's (its
    RNN family alone 303 s) ran on alone. Each framework's RNN family now runs in a worker of its own, JAX's and
    TF's first; a GPU keeps one worker per framework, one at a time."""
    assert chk.units(["torch", "tensorflow", "jax"], None, split=True) == [
        ("jax", ["rnn"]), ("tensorflow", ["rnn"]), ("torch", ["rnn"]),
        *[(fw, [f for f in chk.FAMILIES if f != "rnn"]) for fw in ("jax", "tensorflow", "torch")]]
    assert chk.units(["torch", "jax"], ["ops", "loss"], split=True) == [("torch", ["ops", "loss"]),
                                                                        ("jax", ["ops", "loss"])]
    assert chk.units(["torch", "jax"], ["rnn"], split=True) == [("torch", ["rnn"]), ("jax", ["rnn"])]
    assert chk.units(["torch", "jax"], None, split=False) == [("torch", []), ("jax", [])]
    spawned = []

    class Done:
        stdout, returncode = iter(()), 0

        def wait(self):
            return 0

        def poll(self):
            return 0

        def kill(self):
            pass

    def spawn(module, name, device, out, families, **kw):
        spawned.append((name, device, families))
        return Done()

    monkeypatch.setattr(chk, "spawn", spawn)
    monkeypatch.setattr(chk, "stderr_tail", lambda proc: lambda: "")
    chk.run(["torch", "jax"], ["cpu", "gpu"], "/dev/null", families=["ops", "rnn"], jobs=1)
    assert spawned == [("torch", "cpu", "ops,rnn"), ("jax", "cpu", "ops,rnn"), ("torch", "gpu", "ops,rnn"),
                       ("jax", "gpu", "ops,rnn")], "one worker per framework with one job, and on a GPU"
    spawned.clear()
    chk.run(["torch", "jax"], ["cpu", "gpu"], "/dev/null", families=["ops", "rnn"], jobs=2)
    assert sorted(spawned[:4]) == [("jax", "cpu", "ops"), ("jax", "cpu", "rnn"), ("torch", "cpu", "ops"),
                                   ("torch", "cpu", "rnn")], spawned
    assert spawned[4:] == [("torch", "gpu", "ops,rnn"), ("jax", "gpu", "ops,rnn")], spawned


# `varlen check` interrupted while two stand-in workers run (a real SIGINT to a process of its own: pytest-xdist's
# workers ignore SIGINT); it prints the workers' pids and exits 130 as the CLI does
INTERRUPTED = """
import json, signal, subprocess, sys, time
from harness import check as chk
signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the test runner left to its children
log, out, worker = sys.argv[1], sys.argv[2], sys.argv[3]
procs = []
def spawn(module, name, device, out, families, **kw):
    procs.append(subprocess.Popen([sys.executable, "-c", worker, log, name, {"quick": "0.2", "slow": "60"}[name]],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs[-1]
chk.spawn = spawn
try:
    chk.run(["quick", "slow"], ["cpu"], out, families=["ops"], jobs=2,
            progress=lambda fw, dev, fam: print("PROGRESS", flush=True))
except KeyboardInterrupt:
    time.sleep(0.5)  # the threads that followed the workers see them die meanwhile
    print(json.dumps([p.pid for p in procs]), flush=True)
    sys.exit(130)
"""


def test_ctrl_c_stops_every_check_worker_and_records_none_as_failed(tmp_path):
    # Ctrl-C while two workers run: both are killed (none outlives the command), and the one killed mid-family
    # is not recorded as a failed or timed-out worker (its family has no "done" marker: it stays unchecked)
    log, out = tmp_path / "log", tmp_path / "check.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(log), str(out), WORKER], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "PROGRESS", proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    pids = json.loads(stdout.strip().splitlines()[-1])
    assert len(pids) == 2, pids
    deadline = time.time() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "a worker outlived the command"
    assert "end slow" not in log.read_text(), "the slow worker was killed, not left to finish"
    assert not out.exists() or not [r for r in results.read([out]) if r.get("kind") == "error"]


def test_a_worker_that_dies_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    log, out = tmp_path / "log", tmp_path / "check.jsonl"
    procs = _fake_workers(monkeypatch, log, {"a": 0.3, "b": 0.3})
    real_spawn = chk.spawn

    def spawn(module, name, *args, **kw):
        proc = real_spawn(module, name, *args, **kw)
        if name == "a":
            proc.kill()  # a crash: SIGKILL, as the timeout's own kill reads
        return proc

    monkeypatch.setattr(chk, "spawn", spawn)
    chk.run(["a", "b"], ["cpu"], str(out), families=["ops"], jobs=2)
    errors = [r for r in results.read([out]) if r.get("kind") == "error"]
    assert [(r["framework"], r["equivalent"]) for r in errors] == [("a", False)], errors
    assert "b" in _spans(log) and len(procs) == 2


def test_a_worker_that_writes_much_to_stderr_finishes_and_one_that_crashes_leaves_its_last_words(tmp_path, monkeypatch):
    # a pipe holds 64 KiB: a worker whose stderr nobody read until it exited would block on its warnings until the
    # timeout killed it, and be recorded as timed out
    log, out = tmp_path / "log", tmp_path / "check.jsonl"
    _fake_workers(monkeypatch, log, {"noisy": 0.1, "crash": 0.1})
    t = time.time()
    chk.run(["noisy", "crash"], ["cpu"], str(out), jobs=1, timeout=20)
    assert time.time() - t < 15, "the noisy worker blocked on its stderr"
    assert "end noisy" in log.read_text()
    errors = [r for r in results.read([out]) if r.get("kind") == "error"]
    assert [r["framework"] for r in errors] == ["crash"], errors
    assert "exited with code 3" in errors[0]["error"] and "RuntimeError: the last words" in errors[0]["error"]


def test_a_check_whose_families_were_not_recorded_to_their_end_fails(tmp_path, monkeypatch, capsys):
    """A worker that exits 0 without recording its families (here a stand-in that only prints its progress; for
    real, one whose results file went away) left `varlen check` printing "no check records" and exiting 0."""
    from harness import cli

    _fake_workers(monkeypatch, tmp_path / "log", {"torch": 0.0, "jax": 0.0})
    out = tmp_path / "r.jsonl"
    assert cli.main(["check", "--framework", "torch", "--framework", "jax", "--family", "ops", "--family", "loss",
                     "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert ("4 of 4 framework/device/family checks not recorded to their end" in err
            and "torch/cpu/ops, torch/cpu/loss, jax/cpu/ops, jax/cpu/loss" in err), err
    got = chk.unfinished([{"kind": "done", "framework": "jax", "device": "cpu", "op": "loss"},
                          {"kind": "strategy", "framework": "jax", "device": "cpu", "op": "ops"}],
                         ["jax"], ["cpu"], ["ops", "loss"])
    assert got == ["jax/cpu/ops"]



def test_the_rnn_checks_skewed_case_gets_split_by_every_planner_on_the_cpu():
    """`varlen check` proves a strategy exact on the plans real batches get: its skewed RNN case must make every
    planner of the CPU split it (several buckets, several segments, several sequences per concat_rows row), or a
    multi-bucket path could be wrong while the check saw only one-bucket plans (the standard 5 x 6 case gives
    one everywhere)."""
    import numpy as np

    from adapters.jax import rnn as jr
    from adapters.spec import ladder_segments, pack_rows, plan_buckets
    from adapters.tensorflow import rnn as tfr
    from adapters.torch import rnn as tr
    from harness.families.rnn import RNN_LENGTHS, RNN_T, SKEW_LENGTHS, SKEW_T

    def splits(L, T):
        n = {"torch time_sliced": len(tr._slice_plan(L, "lstm", False)),
             "torch bucketed": len(tr._bucket_plan(L, "lstm", False)),
             "jax bucketed": len(plan_buckets(L, T, step_cost=jr.STEP_COST, call_cost=jr.CALL_COST)),
             "jax time_sliced": len(ladder_segments(L, T, jr.SLICE_MAX_SEGMENTS, jr.SLICE_STEP_COST,
                                                    jr.SLICE_CALL_COST)),
             "tf bucketed": len(plan_buckets(L, T, step_cost=tfr.STEP_COST, call_cost=tfr.CALL_COST)),
             "tf time_sliced": len(ladder_segments(L, T, tfr.MAX_SEGMENTS, tfr.STEP_COST, tfr.SLICE_CALL_COST))}
        pack = pack_rows(L, T, gap=0)
        n["concat_rows sequences per row"] = np.count_nonzero(L) / pack.rows
        return n

    import adapters
    from harness.families.rnn import PLANNED

    for name in ("torch", "tensorflow", "jax"):  # the names the skewed case checks exist (a rename skips none)
        assert set(PLANNED) <= set(adapters.declared_strategies(name, "rnn")), name
    skewed = splits(np.array(SKEW_LENGTHS), SKEW_T)
    assert all(v > 1 for v in skewed.values()), skewed
    # and the standard case alone would not have: what the skewed case adds
    assert splits(np.array(RNN_LENGTHS), RNN_T)["jax bucketed"] == 1


def test_a_check_of_chosen_strategies_runs_their_cells_only_and_marks_their_families_done(tmp_path):
    """`varlen check --strategy`: a lent GPU's minutes cannot compile JAX's whole RNN matrix (every strategy, cell,
    side, direction and dtype) and time it too, so a run may check the strategies at stake: all of their cells, in
    every family that has strategies, no recipe or native verdict, each family done and naming them."""
    full, only = tmp_path / "full.jsonl", tmp_path / "only.jsonl"
    chk.worker("torch", "cpu", str(full), "rnn")
    chk.worker("torch", "cpu", str(only), "ops,rnn,loss,embedding,attention,epoch", "time_sliced,concat_rows")
    recs = results.read([only])
    cells = [r for r in recs if r["kind"] not in ("started", "done")]
    assert {r["kind"] for r in cells} == {"strategy"} and {r["name"] for r in cells} == {"time_sliced", "concat_rows"}
    key = lambda r: (r["name"], r["case"], r["cell"], r["side"], r["bidirectional"], r["dtype"], r["quantity"])
    want = sorted(key(r) for r in results.read([full]) if r["kind"] == "strategy"
                  and r["name"] in ("time_sliced", "concat_rows"))
    assert sorted(key(r) for r in cells) == want, "every cell of theirs that the whole family's check has"
    done = {r["op"]: r for r in recs if r["kind"] == "done"}
    assert sorted(done) == ["attention", "embedding", "loss", "rnn"], "those without strategies (ops, epoch): not run"
    assert done["rnn"]["cells"] == len(cells) and done["loss"]["cells"] == done["attention"]["cells"] == 0
    assert {r["strategies"] for r in done.values()} == {"concat_rows,time_sliced"}


def test_a_check_of_a_strategy_that_no_cell_can_run_here_fails_by_name(tmp_path, capsys):
    """`varlen check --strategy graph_loop` on the CPU (graph_loop captures CUDA kernels: GPU only) checked nothing,
    printed an empty table and exited 0, as if it had passed; beside a strategy that runs, it still fails, by name."""
    from harness import cli

    out = tmp_path / "r.jsonl"
    args = ["check", "--framework", "torch", "--family", "rnn", "--out", str(out)]
    assert cli.main([*args, "--strategy", "graph_loop"]) == 1
    err = capsys.readouterr().err
    assert "--strategy graph_loop: no cell checked on cpu" in err, err
    assert cli.main([*args, "--strategy", "graph_loop", "--strategy", "time_sliced"]) == 1
    err = capsys.readouterr().err
    assert "--strategy graph_loop: no cell checked on cpu" in err and "time_sliced" not in err, err
    assert {r["name"] for r in results.read([out]) if r["kind"] == "strategy"} == {"time_sliced"}
    assert cli.main([*args, "--strategy", "time_sliced"]) == 0
    assert "no cell checked" not in capsys.readouterr().err
