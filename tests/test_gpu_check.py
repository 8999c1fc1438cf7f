"""scripts/gpu-check.sh, the prepared run for a lent GPU machine, on a fake Python that only records its command
line: phases run in the order named (the issue's benchmarks first by default), each under its limit cut to what is
left of the run's budget, none started with under 30 s left, and an unknown phase stops the run before any work."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import adapters

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.sh"


def gpu_check(tmp_path: Path, *phases: str, budget: int = 540, sleep: float = 0.0):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"ARGV $*\"\nsleep {sleep}\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(fake), "VARLEN_GPU_CHECK_BUDGET_S": str(budget)}
    env.pop("VARLEN_GPU_CHECK_DEVICE", None)
    proc = subprocess.run(["bash", str(SCRIPT), str(out), *phases], capture_output=True, text=True, env=env,
                          timeout=60)
    return proc, out


def test_default_phases_run_the_benchmarks_first(tmp_path):
    proc, out = gpu_check(tmp_path)
    assert proc.returncode == 0, proc.stderr
    ran = [line.split()[1].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("== ")]
    assert ran == ["rnn-jax", "check", "rnn", "attention", "env", "gates", "rnn-jax-rest"], proc.stdout
    rnn = (out / "rnn.log").read_text()  # the RNN sweeps, JAX's goal's, torch's, JAX's rest, in one worker each
    jax, torch = rnn.split("### rnn:")
    torch, rest = torch.split("### rnn-jax-rest:")
    goal = ("--strategy cudnn_lstm --strategy scan_unroll8 --strategy scan_graph --strategy concat_rows "
            "--strategy concat_pallas")
    assert goal in jax and "--strategy scan " not in jax, jax
    assert "--no-side-by-side --framework jax" in rest and "--strategy scan --strategy scan_flip --strategy bucketed" \
        " --strategy time_sliced" in rest, rest
    bench = "-m harness.cli bench --device gpu --shared-worker --timeout 120 --out"
    assert f"{bench}" in torch and "--framework torch --op rnn_forward_backward --cell lstm --cell gru" in torch, rnn
    assert f"{bench}" in jax and "--framework jax --op rnn_forward_backward --cell lstm --batch 64" in jax, rnn
    assert "--batch 64 --max-len 128 --profile equal --profile lognormal --profile zipf" in torch, rnn
    assert re.search(r"== rnn: exit 0 after [012] s \(limit 200 s\)", proc.stdout), proc.stdout
    att = (out / "attention.log").read_text()
    assert "--framework torch --framework jax --op attention_forward_backward --batch 32 --max-len 512" in att
    check = (out / "check.log").read_text()  # JAX's families (its RNN one per strategy) and torch's side by side
    assert "ARGV -m harness.cli check --device gpu --framework torch --out" in check, check
    jax = re.findall(r"ARGV -m harness.cli check --device gpu --framework jax --family (\w+) --out", check)
    assert sorted(jax) == ["attention", "embedding", "epoch", "loss", "ops"], check
    # JAX's RNN family one process per strategy, every one of them
    per = re.findall(r"ARGV -m harness.cli check --device gpu --framework jax --family rnn --strategy (\w+) --out",
                     check)
    assert sorted(per) == sorted(adapters.declared_strategies("jax", "rnn")), check
    assert len(list(out.iterdir())) <= 8, "a device call brings back 8 files at most"


def test_the_budget_cuts_the_limit_and_skips_what_cannot_start(tmp_path):
    proc, out = gpu_check(tmp_path, "env", "check", budget=32, sleep=3)
    assert proc.returncode == 0, proc.stderr
    # bash's SECONDS counts whole seconds of the wall clock: a second boundary may pass before the first phase
    # (limit 31, not 32) and 3 s of sleep read as 3 or 4 (5 on a loaded machine); either way < 30 s are left
    env = re.search(r"== env: exit 0 after ([345]) s \(limit (3[12]) s\)", proc.stdout)
    assert env, proc.stdout
    left = re.search(r"== check: not started, (\d+) s of the 32 s budget left \(a phase needs 30 s\)", proc.stdout)
    limit, took = int(env[2]), int(env[1])  # what is left after env: its limit less its time (a tick more at most)
    assert left and limit - took - 1 <= int(left[1]) <= limit - took < 30, proc.stdout
    assert not (out / "check.log").exists()


def test_an_unknown_phase_stops_before_any_work(tmp_path):
    proc, out = gpu_check(tmp_path, "env", "bench")
    assert proc.returncode == 2
    assert "unknown phase 'bench' (env, check, gates, rnn, rnn-jax, rnn-jax-rest, attention)" in proc.stderr
    assert not out.exists(), "nothing ran, not even nvidia-smi"
