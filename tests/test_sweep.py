"""The sweep runner: one record per case as soon as it is measured, a hanging case recorded as failed while the
sweep goes on in a fresh worker, and --resume skipping what is done. Uses the NumPy adapter (no framework needed)."""
from __future__ import annotations

from harness import axes, bench, records, results


def case(op, batch, **kw):
    base = dict(op=op, framework="numpy", strategy=op, device="cpu", dtype="float32", batch=batch, max_len=32,
                profile="lognormal", seed=0, features=8)
    if op.startswith("rnn"):
        base.update(strategy="reference", cell="lstm", hidden=64, input_size=64, num_layers=2, bidirectional=True)
    return {**base, **kw}


def test_hanging_case_is_recorded_failed_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "r.jsonl"
    # the NumPy reference RNN's backward pass over 64 x 512 steps takes far longer than the 2 s timeout
    cases = [case("masked_mean", 4), case("rnn_forward_backward", 64, max_len=512), case("mask", 8)]
    bench.sweep(cases, str(out), timeout=2, quiet=True)
    recs = [r for r in results.read([out]) if r.get("source") == "bench"]
    by_key = {r["key"]: r for r in recs}
    assert len(recs) == 3 and set(by_key) == {axes.case_key(c) for c in cases}
    assert by_key[axes.case_key(cases[0])]["status"] == "ok"
    hung = by_key[axes.case_key(cases[1])]
    assert hung["status"] == "failed" and "timed out" in hung["error"]
    last = by_key[axes.case_key(cases[2])]
    assert last["status"] == "ok" and last["valid_tokens_per_s"] > 0 and last["floor"] == "copy"
    assert [r for r in results.read([out]) if r.get("source") == "floors"], "floors must be recorded"

    # --resume: only the failed case runs again (it fails again the same way), nothing done is repeated
    bench.sweep(cases, str(out), timeout=2, quiet=True, resume=True)
    recs = [r for r in results.read([out]) if r.get("source") == "bench"]
    assert len(recs) == 4 and recs[-1]["key"] == axes.case_key(cases[1])


def test_a_failing_case_is_a_record_not_a_lost_run(tmp_path):
    out = tmp_path / "r.jsonl"
    cases = [case("mask", 4, device="gpu"), case("pad", 4)]  # the NumPy adapter has no GPU
    bench.sweep(cases, str(out), quiet=True)
    recs = [r for r in results.read([out]) if r.get("source") == "bench"]
    assert [r["status"] for r in recs] == ["failed", "ok"]
    assert "device 'gpu' is not available to numpy" in recs[0]["error"]


def test_reruns_append_and_never_lose_a_record(tmp_path, monkeypatch):
    """Three runs on one --out (the issue's reproducer rotated the file and lost the first run): all kept."""
    out = tmp_path / "r.jsonl"
    for batch in (4, 8, 16):
        monkeypatch.setenv(records.RUN_ENV, records.new_run_id())
        bench.sweep([case("mask", batch)], str(out), quiet=True)
    recs = [r for r in results.read([out]) if r["source"] == "bench"]
    assert [r["batch"] for r in recs] == [4, 8, 16] and len({r["run_id"] for r in recs}) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"], "a run must leave no other file behind"


def test_workers_run_with_the_malloc_tunables_unless_the_user_set_their_own(tmp_path, monkeypatch):
    """Bench workers reuse freed heap pages (glibc tunables, `harness.proc`): their records say so; a user's own
    GLIBC_TUNABLES is kept and recorded instead."""
    from harness.proc import MALLOC_TUNABLES

    out = tmp_path / "r.jsonl"
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    bench.sweep([case("pad", 4)], str(out), quiet=True)
    mine = "glibc.malloc.trim_threshold=0"
    monkeypatch.setenv("GLIBC_TUNABLES", mine)
    bench.sweep([case("pad", 8)], str(out), quiet=True)
    recs = [r for r in results.read([out]) if r["source"] == "bench"]
    assert [(r["batch"], r["malloc"]) for r in recs] == [(4, MALLOC_TUNABLES), (8, mine)]


def test_a_frameworks_own_tunables_reach_its_workers_only(tmp_path, monkeypatch):
    """JAX's workers run glibc with one arena (`harness.proc.FRAMEWORK_TUNABLES`: XLA allocates on its own threads,
    whose arenas unmap big buffers when freed); the others keep the common tunables; a user's own win over both."""
    from harness import proc

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert proc.worker_env("jax")["GLIBC_TUNABLES"] == proc.MALLOC_TUNABLES + ":glibc.malloc.arena_max=1"
    for fw in ("torch", "tensorflow", "numpy", None):
        assert proc.worker_env(fw)["GLIBC_TUNABLES"] == proc.MALLOC_TUNABLES, fw
    monkeypatch.setitem(proc.FRAMEWORK_TUNABLES, "numpy", "glibc.malloc.arena_max=2")  # the sweep's own workers
    out = tmp_path / "r.jsonl"
    bench.sweep([case("pad", 4)], str(out), quiet=True)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert proc.worker_env("jax")["GLIBC_TUNABLES"] == "glibc.malloc.trim_threshold=0"
    recs = [r for r in results.read([out]) if r["source"] == "bench"]
    assert [r["malloc"] for r in recs] == [proc.MALLOC_TUNABLES + ":glibc.malloc.arena_max=2"]


#: run in a fresh process (`argv[1]`: the framework whose settings to adopt, "" for none, "-" not to call it):
#: hold a 100 MiB block, free it, allocate it again, then let four threads allocate at once; prints what glibc did
MALLOC_PROBE = """
import ctypes, json, resource, sys, threading
from harness import proc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                               "fordblks keepcost").split()]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.mallinfo2.restype = Mallinfo2
adopted = "not called" if sys.argv[1] == "-" else proc.adopt_malloc_tunables(sys.argv[1] or None)
n = 100 << 20
block = libc.malloc(n)
libc.memset(block, 1, n)
mmapped = libc.mallinfo2().hblkhd
libc.free(block)
kept = libc.mallinfo2().arena
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(n)
libc.memset(block, 1, n)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
libc.free(block)
together = threading.Barrier(4)
def allocate():
    p = libc.malloc(1000)
    together.wait()
    libc.free(p)
threads = [threading.Thread(target=allocate) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
sys.stdout.flush()
libc.malloc_stats()  # on stderr: one "Arena N:" block per arena
print(json.dumps(dict(adopted=adopted, mmapped=mmapped, kept=kept, faulted=faults * resource.getpagesize())))
"""


def test_a_process_varlen_did_not_start_adopts_a_workers_malloc_settings(monkeypatch):
    """asv runs every benchmark in a process of its own with one environment for all frameworks, and glibc reads
    GLIBC_TUNABLES only at start: `adopt_malloc_tunables` sets a worker's settings with mallopt(3) (a 100 MiB block
    comes from the heap and stays mapped when freed, so it is not faulted in again; JAX's threads share one arena),
    and leaves a user's own GLIBC_TUNABLES alone."""
    import json
    import subprocess
    import sys

    from harness import proc

    def probe(framework: str, tunables: str | None = None) -> dict:
        env = {k: v for k, v in proc.worker_env().items() if k != "GLIBC_TUNABLES"}
        env.update({"GLIBC_TUNABLES": tunables} if tunables else {})
        done = subprocess.run([sys.executable, "-c", MALLOC_PROBE, framework], capture_output=True, text=True,
                              env=env, timeout=60, check=True)
        return {**json.loads(done.stdout), "arenas": done.stderr.count("Arena ")}

    mib = 1 << 20
    untouched = probe("-")  # glibc's defaults: mmapped, unmapped when freed, faulted in anew; an arena per thread
    assert untouched["mmapped"] >= 100 * mib and untouched["kept"] < 100 * mib and untouched["arenas"] >= 3
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for framework, arenas in (("", untouched["arenas"]), ("torch", untouched["arenas"]), ("jax", 1)):
        got = probe(framework)
        assert got["adopted"] == proc.malloc_tunables(framework or None), got
        assert got["mmapped"] < mib and got["kept"] >= 100 * mib and got["faulted"] < 10 * mib, (framework, got)
        assert got["arenas"] == arenas, (framework, got)
    mine = probe("jax", "glibc.malloc.arena_max=2")
    assert mine["adopted"] is None and mine["mmapped"] >= 100 * mib and mine["arenas"] == 2, mine


def test_make_bench_reads_a_frameworks_worker_settings_from_the_command_line(monkeypatch):
    """`python -m harness.proc FRAMEWORK` prints the GLIBC_TUNABLES `make bench` starts that framework's pytest
    with: its workers' own, or the user's."""
    import subprocess
    import sys

    from harness import proc

    run = lambda *a: subprocess.run([sys.executable, "-m", "harness.proc", *a], capture_output=True, text=True,  # noqa: E731
                                    check=True).stdout.strip()
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert run("jax") == proc.MALLOC_TUNABLES + ":glibc.malloc.arena_max=1" and run("torch") == proc.MALLOC_TUNABLES
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert run("jax") == "glibc.malloc.trim_threshold=0"


def test_jax_gpu_cases_get_a_fresh_worker_each_unless_shared():
    # JAX cannot reset its allocator's peak: by default each of its GPU cases runs alone (its peak is its own);
    # --shared-worker puts them in one worker. CPU cases and torch's (resettable) always share.
    cases = [case("mask", 4, framework="jax", device="gpu"), case("pad", 4, framework="jax", device="gpu"),
             case("mask", 4, framework="jax"), case("mask", 4, framework="torch", device="gpu"),
             case("pad", 4, framework="torch", device="gpu")]
    sizes = lambda groups: sorted((fw, len(g)) for fw, g in groups)
    assert sizes(bench._groups(cases)) == [("jax", 1), ("jax", 1), ("jax", 1), ("torch", 2)]
    assert sizes(bench._groups(cases, shared=True)) == [("jax", 3), ("torch", 2)]
    # torch's group first: its list of cases once took the name of the `shared` flag, which then read true for
    # every framework after it (JAX's GPU cases all in one worker, no peak recorded)
    torch_first = cases[3:] + cases[:3]
    assert sizes(bench._groups(torch_first)) == [("jax", 1), ("jax", 1), ("jax", 1), ("torch", 2)]


def test_a_shared_worker_records_no_peak_it_cannot_reset(monkeypatch):
    class Adapter:  # a GPU adapter whose allocator peak cannot be reset (as JAX's)
        peak_resettable = False
        name = "fake"

        def reset_peak_memory(self, device):
            pass

        def compile_count(self):
            return 0

        def call_peak(self, call, device):
            return 4096

    class Ready:
        valid_tokens, padded_tokens, padding_fraction, ideal_share = 10, 20, 0.5, 0.5
        floor, work, extra, kernel, first_call_s = "copy", 1e6, {}, "k", 0.01

        def call(self):
            return None

    monkeypatch.setattr(bench, "prepare", lambda adapter, c: Ready())
    c = case("mask", 4, device="gpu")
    own = bench.measure_case(Adapter(), c, {"copy_bytes_per_s": 1e9})
    assert own["device_peak_bytes"] == own["peak_bytes"] == 4096
    assert own["memory_method"] == ("allocator peak since the process started above what it held before one call "
                                    "(fresh process per case)")
    shared = bench.measure_case(Adapter(), c, {"copy_bytes_per_s": 1e9}, own_peak=False)
    assert shared["device_peak_bytes"] is None and shared["peak_bytes"] is None
    assert shared["memory_method"].startswith("not recorded")


def test_a_worker_that_writes_much_to_stderr_is_not_blocked_by_it(tmp_path, monkeypatch):
    """PYTHONVERBOSE=1 logs every import to stderr: ~95 KB before a worker measures anything, more than a pipe
    holds (64 KiB). Unread until the worker exited, it blocked there until the watchdog killed it (185 s here); the
    parent now reads it as it comes (`harness.proc.stderr_tail`), in the sweep and in the side-by-side runoff."""
    import time

    from harness import paired

    monkeypatch.setenv("PYTHONVERBOSE", "1")
    out = tmp_path / "r.jsonl"
    t = time.monotonic()
    bench.sweep([case("mask", 4), case("mask", 4, profile="equal")], str(out), timeout=5, quiet=True)
    recs = [r for r in results.read([out]) if r.get("source") == "bench"]
    assert [r["status"] for r in recs] == ["ok", "ok"], recs
    base, best = ({**r, "key": r["key"]} for r in sorted(recs, key=lambda r: r["profile"] != "equal"))
    got = paired.run([(base, best)], str(out), timeout=5, quiet=True)
    assert len(got) == 1 and got[0]["ratio"] > 0, got
    assert time.monotonic() - t < 120, "a worker sat blocked on its stderr"


def test_the_overhead_lines_name_the_kernel_the_adapter_ran(monkeypatch):
    """`overhead torch packed rnn_forward (cpu): adapter 15.27 ms ...` said no kernel; every figure names the kernel
    that ran (as the sweep's `packed [cudnn]`): its record carries it, its line prints it."""
    import adapters
    from adapters.spec import RnnOut
    from harness import overhead

    class Fake:  # an adapter whose default strategy reports the kernel "fused-k"
        version = "0"

        def asarray(self, v, device="cpu"):
            return v

        def sync(self, device="cpu"):
            pass

        def rnn_strategies(self, cell):
            return ["packed"]

        def raw_rnn(self, *args, **kw):
            return lambda: None

        def rnn(self, *args, **kw):
            return RnnOut(None, None, None, "fused-k")

        def rnn_vjp(self, *args, **kw):
            return RnnOut(None, None, None, "fused-k"), {}

        def device_fields(self, device):
            return {}

    monkeypatch.setattr(adapters, "get", lambda name: Fake())
    for backward, op in ((False, "rnn_forward"), (True, "rnn_forward_backward")):
        rec = overhead.measure("fake", backward=backward, repeats=2)
        assert rec["kernel"] == "fused-k" and not records.problems(rec)
        assert overhead.line(rec).startswith(f"overhead fake packed [fused-k] {op} (cpu): adapter "), overhead.line(rec)


#: floors the fake worker is given as known (it measures none)
FLOORS = '{"fake:cpu": {"copy_bytes_per_s": 1e9}, "fake:gpu": {"copy_bytes_per_s": 1e9}}'


def _fake_worker_adapter(monkeypatch, declined: str):
    """A worker's adapter that sees a GPU named "Fake GPU 9000" and declares strategies [declined, "b"] per family
    (`declined`'s precondition refuses the warm-up's tiny case); `prepare` and `measure_case` only log."""
    import io
    import json

    import adapters
    from adapters.spec import Unsupported

    log = []

    class Adapter:
        name, version, peak_resettable = "fake", "0", True

        def devices(self):
            return ["cpu", "gpu"]

        def device_name(self, device):
            return "Fake GPU 9000" if device == "gpu" else "not asked on the CPU"

        device_fields = adapters.base.Adapter.device_fields

        def warmup(self, device):
            log.append(("warmup", device))

        def strategies(self, family):
            return [declined, "b"]

    def prepare(adapter, c):
        log.append(("warm", c["op"], c["device"], c["strategy"], c["batch"], c["max_len"], c["profile"]))
        if c["strategy"] == declined:
            raise Unsupported("declined here")

    def measure(adapter, c, rates, own_peak=True):
        log.append(("case", c["op"], c["device"], c["batch"]))
        return {**c, "status": "unsupported", "error": "only logged"}  # a valid record without timings

    monkeypatch.setattr(adapters, "get", lambda name: Adapter())
    monkeypatch.setattr(bench, "prepare", prepare)
    monkeypatch.setattr(bench, "measure_case", measure)
    return log, lambda cases: monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(cases)))


def test_a_worker_warms_each_strategy_family_once_per_device_before_its_first_case(tmp_path, monkeypatch):
    """The first case of each (strategy family, device) in a worker follows one untimed tiny call of that family's
    first strategy whose precondition holds (here the second declared), so the libraries its kernels load on
    first use start outside any measured case; ops without strategies and epochs are not warmed."""
    log, stdin = _fake_worker_adapter(monkeypatch, declined="a")
    rnn = case("rnn_forward_backward", 64)
    stdin([{**rnn, "op": "rnn_epoch", "policy": "sorted", "dataset": 256}, rnn, {**rnn, "batch": 8},
           case("loss_softmax_ce", 64, strategy="b"), {**rnn, "device": "gpu"}, case("pad", 64)])
    bench.worker("fake", str(tmp_path / "r.jsonl"), FLOORS)
    warm = lambda op, dev: [("warm", op, dev, s, bench.WARM_BATCH, bench.WARM_LEN, "equal") for s in "ab"]  # noqa: E731
    assert [e for e in log if e[0] != "warmup"] == [
        ("case", "rnn_epoch", "cpu", 64),
        *warm("rnn_forward_backward", "cpu"), ("case", "rnn_forward_backward", "cpu", 64),
        ("case", "rnn_forward_backward", "cpu", 8),
        *warm("loss_softmax_ce", "cpu"), ("case", "loss_softmax_ce", "cpu", 64),
        *warm("rnn_forward_backward", "gpu"), ("case", "rnn_forward_backward", "gpu", 64),
        ("case", "pad", "cpu", 64)]


def test_records_of_work_on_a_gpu_name_its_model(tmp_path, monkeypatch):
    """Two lent machines are both host "vm" with one CPU model: a record of GPU work names the GPU
    (`device_name`), a CPU record names none (its `cpu` field does)."""
    _, stdin = _fake_worker_adapter(monkeypatch, declined="a")
    stdin([case("mask", 8), case("mask", 8, device="gpu")])
    bench.worker("fake", str(tmp_path / "r.jsonl"), FLOORS)
    recs = [r for r in results.read([tmp_path / "r.jsonl"]) if r["source"] == "bench"]
    assert [(r["device"], r.get("device_name")) for r in recs] == [("cpu", None), ("gpu", "Fake GPU 9000")]
    assert not records.problems(recs[1])


def test_timing_workers_compile_afresh_whatever_compilation_cache_the_environment_names(tmp_path, monkeypatch):
    """`make test` and `varlen check` run with JAX's persistent compilation cache (the Makefile's JAX_CACHE); a
    bench worker inheriting it would read its compiles from disk and record compile figures no fresh process pays.
    Timing workers turn it off: nothing is written to (or read from) the cache; a worker that times nothing keeps
    it. They also compile with XLA's defaults, not the gates' fast-compile options (VARLEN_XLA_FAST_COMPILE=1 in
    this process, tests/conftest.py)."""
    from harness import proc
    from tests.conftest import require

    require("jax")
    cache = tmp_path / "jax-cache"
    for k, v in (("JAX_COMPILATION_CACHE_DIR", str(cache)), ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
                 ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")):
        monkeypatch.setenv(k, v)
    out = tmp_path / "r.jsonl"
    jax_case = axes.cases(ops=("masked_mean",), frameworks=("jax",), strategies={}, batches=(4,), max_lens=(8,),
                          profiles=("lognormal",))
    bench.sweep(jax_case, str(out), quiet=True)
    recs = [r for r in results.read([out]) if r["source"] == "bench"]
    assert [r["status"] for r in recs] == ["ok"] and recs[0]["compile_s"] > 0, recs
    assert not cache.exists() or not list(cache.iterdir()), "a timing worker used the compilation cache"
    assert "xla_options" not in recs[0], "a timing worker compiled with the gates' fast-compile options"
    assert "JAX_ENABLE_COMPILATION_CACHE" not in proc.worker_env(None), "the check's workers keep the cache"
    assert proc.worker_env(None)["JAX_COMPILATION_CACHE_DIR"] == str(cache)
