"""asv's view of the suites: benchmarks discovered and well-formed, every axis from `harness.axes`/the registry."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import adapters
from harness import axes
from suites import bench_ops, bench_rnn, common

ROOT = Path(__file__).resolve().parent.parent


def test_asv_check_finds_no_problems(tmp_path):
    asv = shutil.which("asv") or str(Path(sys.executable).parent / "asv")
    proc = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"HOME": str(tmp_path), "PATH": str(Path(sys.executable).parent)})
    assert proc.returncode == 0 and "No problems found" in proc.stdout, proc.stdout + proc.stderr


def test_asv_axes_cover_every_declared_strategy():
    declared = {f"{fw}:{s}" for fw in axes.FRAMEWORKS for s in adapters.declared_strategies(fw, "rnn")}
    assert set(bench_rnn.Rnn.params[0]) == declared
    assert set(bench_ops.Ops.params[0]) == {"torch", "tensorflow", "jax"}


def test_tracks_skip_unmeasured_cases_instead_of_failing():
    case = bench_rnn.RnnTracks.case("torch:packed", "gpu", "equal")
    failed = {common.axes.case_key(case): {"status": "failed", "error": "no GPU"}}
    for cache in ({}, failed):
        try:
            common.setup_measured(bench_rnn.RnnTracks(), cache, "torch:packed", "gpu", "equal")
        except NotImplementedError:
            continue
        raise AssertionError(f"an unmeasured case must raise NotImplementedError (asv: skipped), cache={cache}")
    ok = {common.axes.case_key(case): {"status": "ok", "sec_per_M_valid_tokens": 2.0, "fraction_of_floor": 0.25}}
    t = bench_rnn.RnnTracks()
    assert t.track_sec_per_M_valid_tokens(ok, "torch:packed", "gpu", "equal") == 2.0
    assert t.track_times_floor(ok, "torch:packed", "gpu", "equal") == 4.0


def test_a_benchmark_process_compiles_afresh_whatever_compilation_cache_the_environment_names(tmp_path):
    """A user's JAX_COMPILATION_CACHE_DIR (or `make test`'s) reaches the processes asv starts; `setup_case` turns
    the cache off there as in `varlen bench`'s timing workers, so peakmem_* includes the compile's memory and nothing
    is read from (or written to) the cache."""
    from tests.conftest import require

    require("jax")
    cache = tmp_path / "jax-cache"
    probe = ("from suites import common\n"
             "_, ready = common.setup_case('jax:scan', op='rnn_forward_backward', device='cpu', profile='lognormal',"
             " batch=4, max_len=8, cell='gru', hidden=8, input_size=8, num_layers=1, bidirectional=False)\n"
             "ready.call()\n")
    env = {**common.proc.worker_env(), "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
                   check=True)
    assert not cache.exists() or not list(cache.iterdir()), "a benchmark process used the compilation cache"


def test_a_benchmark_process_times_with_the_malloc_settings_of_varlen_bench(monkeypatch):
    """asv starts each benchmark's process itself, with one environment for every framework: `setup_case` gives it
    the malloc settings of a `varlen bench` worker of that framework before the framework starts a thread (JAX's:
    one arena for XLA's threads, whose own arenas unmapped a padded call's buffers after every call). Without
    them, here, a JAX LSTM case's threads spread over 16 arenas."""
    from tests.conftest import require

    require("jax")
    probe = ("import ctypes, sys\nfrom suites import common\n"
             "_, ready = common.setup_case('jax:scan', op='rnn_forward_backward', device='cpu', profile='lognormal',"
             " batch=8, max_len=16, cell='lstm', hidden=16, input_size=16, num_layers=1, bidirectional=False)\n"
             "ready.call(); ready.call(); sys.stdout.flush()\n"
             "ctypes.CDLL('libc.so.6').malloc_stats()  # on stderr: one 'Arena N:' block per arena\n")
    env = {k: v for k, v in common.proc.worker_env().items() if k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300,
                          cwd=ROOT, check=True)
    assert done.stderr.count("Arena ") == 1, done.stderr[-2000:]
