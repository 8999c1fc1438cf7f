"""Many machines: `--shard K/N` partitions a sweep identically everywhere, and `--cluster` runs it on Dask (a
`LocalCluster` here) with the records streamed back, devices placed by worker resources, a device no worker has
and a lost worker recorded as failed. NumPy-adapter cases: no framework needed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import axes, bench, cli, cluster, records, results
from tests.conftest import REQUIRE_ALL, require
from tests.test_sweep import case

ROOT = Path(__file__).resolve().parent.parent


def _bench(path) -> list[dict]:
    return [r for r in results.read([path]) if r["source"] == "bench"]


# -- shards ----------------------------------------------------------------------------------------------------
def test_shards_partition_the_cases_and_agree_across_processes():
    cases = [case(op, b, max_len=T) for op in ("mask", "pad") for b in (1, 2, 4, 8) for T in (8, 16, 32)]
    one, two = bench.shard(cases, 1, 2), bench.shard(cases, 2, 2)
    keys = lambda cs: [axes.case_key(c) for c in cs]
    assert set(keys(one)).isdisjoint(keys(two)) and sorted(keys(one) + keys(two)) == sorted(keys(cases))
    assert one and two and bench.shard(cases, 1, 1) == cases
    # the split must not depend on the process (Python's str hash is salted per process): recompute elsewhere
    code = ("from harness import bench; from tests.test_sweep import case; print(len(bench.shard([case(op, b, "
            "max_len=T) for op in ('mask', 'pad') for b in (1, 2, 4, 8) for T in (8, 16, 32)], 1, 2)))")
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == str(len(one)), other.stderr


@pytest.mark.parametrize("value, why", [("0/2", "K must be at least 1"), ("3/2", "K=3 exceeds N=2"), ("x", "K/N"),
                                        ("1/0", "N must be at least 1"), ("1/2/3", "K/N")])
def test_bad_shard_is_a_usage_error(tmp_path, value, why):
    out = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--shard", value, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--shard" in proc.stderr and why in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_cluster_without_distributed_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(cluster, "available", lambda: False)
    assert cli.main(["bench", "--cluster", "tcp://127.0.0.1:8786", "--op", "mask"]) == 2
    assert "pip install 'varlen[cluster]'" in capsys.readouterr().err


def test_an_unreachable_scheduler_is_a_usage_error(tmp_path, monkeypatch, capsys):
    _require_distributed()
    require("torch")
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1.0)
    out = tmp_path / "r.jsonl"
    args = ["bench", "--framework", "torch", "--op", "mask", "--batch", "4", "--max-len", "32", "--profile", "equal",
            "--cluster", "tcp://127.0.0.1:9", "--out", str(out)]
    assert cli.main(args) == 2
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in capsys.readouterr().err and not out.exists()


# -- the Dask cluster --------------------------------------------------------------------------------------------
def _require_distributed() -> None:
    if cluster.available():
        return
    msg = "Dask's distributed is not installed: pip install 'varlen[cluster]'"
    if REQUIRE_ALL:
        pytest.fail(msg + " (VARLEN_REQUIRE_ALL=1: none may be skipped)")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """One node with one CPU: a worker process advertising {"node": 1, "cpu": 1}, as the README tells nodes to.
    Its temporary files go under pytest's tmp dir: the node killed below cannot remove its own."""
    _require_distributed()
    from distributed import Client, LocalCluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(tmp_path_factory.mktemp("node")))
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, resources={"node": 1, "cpu": 1},
                          dashboard_address=":0", silence_logs=50) as lc, \
                Client(lc, set_as_default=False) as client:
            yield client


def test_cluster_records_equal_the_local_sweep(tmp_path, local_cluster):
    cases = [case("mask", 4), case("pad", 8), case("mask", 2, max_len=16)]
    local, remote = tmp_path / "local.jsonl", tmp_path / "cluster.jsonl"
    bench.sweep(cases, str(local), quiet=True)
    mine = bench.sweep(cases, str(remote), quiet=True, cluster_sweep=cluster.runner(local_cluster))
    want = {r["key"]: r["status"] for r in _bench(local)}
    assert want == {axes.case_key(c): "ok" for c in cases}
    assert {r["key"]: r["status"] for r in _bench(remote)} == want == {r["key"]: r["status"] for r in mine}
    assert {r["run_id"] for r in _bench(remote)} == {records.run_id()}, "the driver's run id, stamped on the node"
    assert [r for r in results.read([remote]) if r["source"] == "floors"], "the node's floors come back too"
    assert not results.load([remote]).problems


def test_a_device_no_worker_advertises_is_recorded_failed_not_left_pending(tmp_path, local_cluster):
    out = tmp_path / "r.jsonl"
    cases = [case("mask", 4, device="gpu"), case("pad", 4)]
    cluster.sweep(cases, str(out), local_cluster, timeout=60)
    by_key = {r["key"]: r for r in _bench(out)}
    gpu, cpu = by_key[axes.case_key(cases[0])], by_key[axes.case_key(cases[1])]
    assert cpu["status"] == "ok"
    assert gpu["status"] == "failed" and "advertises the resource 'gpu'" in gpu["error"]
    assert axes.case_key(cases[0]) not in bench.done_keys(str(out)), "--resume must retry it"


def test_a_rerun_of_a_task_whose_worker_was_lost_is_refused(local_cluster):
    """Dask reruns a lost worker's task elsewhere; that rerun would measure the finished cases again."""
    local_cluster.set_metadata("varlen-test-topic/0", "tcp://10.0.0.1:1234")
    f = local_cluster.submit(cluster.run_group, "numpy", [case("mask", 4)], run=records.run_id(),
                             topic="varlen-test-topic", tid=0, timeout=60, resources={"node": 1, "cpu": 1})
    with pytest.raises(cluster.Lost, match="worker tcp://10.0.0.1:1234 was lost"):
        f.result(timeout=60)


def test_a_lost_worker_fails_its_remaining_cases(tmp_path, local_cluster):
    """The node dies after its first record came back: that record is kept (it was streamed, not returned at the
    end), the case in flight and the one after it are failed naming the worker, and a rerun is refused."""
    out = tmp_path / "r.jsonl"
    # the NumPy reference RNN's backward pass over 64 x 512 steps is still running when the node is killed
    cases = [case("mask", 4), case("rnn_forward_backward", 64, max_len=512), case("pad", 4)]
    (address, pid), = local_cluster.run(os.getpid).items()

    killed: list[int] = []

    def kill_on_first(_record):
        if not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    cluster.sweep(cases, str(out), local_cluster, timeout=120, progress=kill_on_first)
    by_key = {r["key"]: r for r in _bench(out)}
    assert [by_key[axes.case_key(c)]["status"] for c in cases] == ["ok", "failed", "failed"]
    for c in cases[1:]:
        assert address in by_key[axes.case_key(c)]["error"] and "lost" in by_key[axes.case_key(c)]["error"]
    assert bench.done_keys(str(out)) == {axes.case_key(cases[0])}
