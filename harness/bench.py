"""`varlen bench`: sweeps over the axes of `suites.axes`, one tidy record per measurement.

The parent process never imports a framework: it measures the floors, then runs each framework's cases in a worker
process (`python -m harness.bench worker ...`) that appends each record to the results file as soon as it is
measured. The worker announces each case before starting it; a case that crashes the worker, or outlasts its
timeout, is recorded as failed with the reason, and a fresh worker goes on with the rest.
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import floors, memory, results, timing
from harness.data import cotangents, padded, ragged
from harness.profiles import lengths_for, padding_fraction
from harness.spec import RnnSpec, init_params, map_params
from suites.axes import RNN_OPS, case_key

ELEMENT_BYTES = {"float32": 4, "float64": 8}


@dataclass
class Prepared:
    """A ready-to-time callable for one case (inputs already on the device, compiled on first call)."""

    call: object
    valid_tokens: int
    padded_tokens: int
    padding_fraction: float
    work: float          # bytes (memory-bound ops) or FLOPs (RNNs) of the ideal implementation
    floor: str           # "copy" or "gemm"
    kernel: str = ""
    first_call_s: float = 0.0  # the first call, tracing/compilation included (done here, in setup)


def prepare(adapter, case: dict) -> Prepared:
    """Build the inputs of `case` for `adapter` and return the callable every entry point times."""
    op, device, dtype = case["op"], case["device"], case["dtype"]
    B, T = case["batch"], case["max_len"]
    L = lengths_for(case["profile"], B, T, case.get("seed", 0))
    n_valid, item = int(L.sum()), ELEMENT_BYTES[dtype]
    sync = adapter.sync
    if op in RNN_OPS:
        spec = RnnSpec(case["cell"], case["input_size"], case["hidden"], case["num_layers"], case["bidirectional"])
        x = adapter.asarray(padded(L, T, (spec.input_size,), seed=case.get("seed", 0), dtype=dtype), device)
        params = map_params(lambda a: adapter.asarray(a, device), init_params(spec, seed=0, dtype=dtype))
        kw = dict(strategy=case["strategy"], device=device)
        if op == "rnn_forward":
            def run():
                return adapter.rnn(spec, params, x, L, **kw)
        else:
            cot = {k: adapter.asarray(v, device) for k, v in cotangents(spec, B, T, dtype=dtype).items()}

            def run():
                return adapter.rnn_vjp(spec, params, x, L, cot, **kw)[0]
        work = floors.rnn_flops(spec.cell, spec.input_size, spec.hidden_size, spec.num_layers, spec.num_directions,
                                n_valid, backward=op != "rnn_forward")
        prepared = Prepared(None, n_valid, B * T, padding_fraction(L, T), work, "gemm")
    else:
        F = case.get("features", 64)
        x = adapter.asarray(padded(L, T, (F,), seed=case.get("seed", 0), dtype=dtype), device)
        if op == "pad":
            seqs = [adapter.asarray(s, device) for s in ragged(L, (F,), dtype=dtype)]
            run = lambda: adapter.pad(seqs, maxlen=T, device=device)
            work = (n_valid + B * T) * F * item
        elif op == "mask":
            run = lambda: adapter.mask(L, T, device=device)
            work = B * T + B * 8
        elif op == "pack_unpack":
            run = lambda: adapter.unpack(adapter.pack(x, L), total_length=T)
            work = (3 * n_valid + B * T) * F * item
        elif op == "masked_mean":
            run = lambda: adapter.masked_mean(x, L)
            work = (n_valid + B) * F * item
        else:
            raise ValueError(f"unknown op {op!r}")
        prepared = Prepared(None, n_valid, B * T, padding_fraction(L, T), work, "copy")

    def call():
        out = run()
        sync(device)
        return out

    t = time.perf_counter()
    first = call()
    prepared.first_call_s = time.perf_counter() - t
    prepared.kernel = getattr(first, "kernel", "")
    prepared.call = call
    return prepared


def measure_case(adapter, case: dict, floor_rates: dict) -> dict:
    """Time, compile time, memory and floor fraction of one case, as one flat record."""
    adapter.reset_peak_memory(case["device"])
    c0 = adapter.compile_count()
    t0 = time.perf_counter()
    p = prepare(adapter, case)
    setup_s = time.perf_counter() - t0
    compiles = adapter.compile_count() - c0
    t = timing.measure(p.call, compile_count=adapter.compile_count)
    device_peak = adapter.peak_memory(case["device"])
    rss_peak = memory.peak_rss_above_baseline(p.call) if case["device"] == "cpu" else None
    rate = floor_rates.get("copy_bytes_per_s" if p.floor == "copy" else "gemm_flop_per_s")
    floor_s = p.work / rate if rate else None
    med = t.median_s
    return {
        **case, **asdict(t), "status": "ok", "kernel": p.kernel or case["strategy"],
        "setup_s": setup_s, "compiles_in_setup": compiles, "first_call_s": p.first_call_s,
        # compile time exists only where this case compiled; a shape compiled by an earlier case of the same
        # worker has none (None, not 0). Eager frameworks never compile: theirs is first-call overhead.
        "compile_s": max(p.first_call_s - med, 0.0) if compiles or adapter.compile_count() == 0 else None,
        "valid_tokens": p.valid_tokens, "padded_tokens": p.padded_tokens, "padding_fraction": p.padding_fraction,
        "valid_tokens_per_s": p.valid_tokens / med, "padded_tokens_per_s": p.padded_tokens / med,
        "sec_per_M_valid_tokens": med / p.valid_tokens * 1e6,
        "floor": p.floor, "work": p.work, "floor_s": floor_s, "fraction_of_floor": floor_s / med if floor_s else None,
        "device_peak_bytes": device_peak, "peak_rss_bytes": rss_peak,
        "peak_bytes": device_peak if case["device"] != "cpu" else rss_peak,
    }


# -- worker (one framework, in its own process) ---------------------------------------------------------------
def worker(framework: str, cases_path: str, out: str, floors_json: str) -> None:
    import adapters

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    adapter = adapters.get(framework)
    floor_rates = json.loads(floors_json)
    meta = {**results.machine(), "framework": framework, "version": adapter.version, "source": "bench",
            **{f"floor_{k}": v for k, v in floor_rates.items()}}
    for i, case in enumerate(json.loads(Path(cases_path).read_text())):
        print(f"START {i}", flush=True)
        try:
            rec = measure_case(adapter, case, floor_rates)
        except Exception as e:  # noqa: BLE001 - one failing case is a record, not a lost sweep
            rec = {**case, "status": "failed", "error": f"{type(e).__name__}: {e}"[:500]}
        results.append(out, {**rec, **meta, "key": case_key(case), "time": time.time()})
        print(f"DONE {i}", flush=True)


def _run_worker(framework: str, cases: list[dict], out: str, floor_rates: dict, timeout: float, progress) -> None:
    """Run `cases` in workers, restarting after a crash or a timeout; each lost case becomes a failed record."""
    remaining = list(cases)
    while remaining:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(remaining, f)
        cmd = [sys.executable, "-m", "harness.bench", "worker", framework, f.name, out, json.dumps(floor_rates)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                                     "TF_FORCE_GPU_ALLOW_GROWTH": "true"})
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, done, why = None, 0, ""
        deadline = time.monotonic() + timeout + 120  # the first case also pays the framework's import
        while True:
            if not sel.select(timeout=max(deadline - time.monotonic(), 0)):
                proc.kill()
                why = f"timed out after {timeout:.0f} s"
                break
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("START"):
                current, deadline = int(line.split()[1]), time.monotonic() + timeout
            elif line.startswith("DONE"):
                done, current = int(line.split()[1]) + 1, None
                progress(remaining[done - 1])
        proc.wait()
        os.unlink(f.name)
        if current is None and done == len(remaining):
            return
        lost = current if current is not None else done
        why = why or f"worker exited with code {proc.returncode}: {proc.stderr.read()[-400:]}"
        results.append(out, {**remaining[lost], **results.machine(), "framework": framework, "status": "failed",
                             "error": why, "source": "bench", "key": case_key(remaining[lost]), "time": time.time()})
        progress(remaining[lost])
        remaining = remaining[lost + 1:]


def sweep(cases: list[dict], out: str, *, resume: bool = False, timeout: float = 600, quiet: bool = False,
          overhead: tuple[str, ...] = ()) -> dict:
    """Run `cases` (grouped by framework, each in its own process), appending to `out`; then, for each framework
    in `overhead`, the adapter-vs-raw overhead ratio (`harness.overhead`). Returns the floors."""
    out_path = Path(out)
    if resume:
        done = {r.get("key") for r in results.read([out_path]) if r.get("status") == "ok"}
        cases = [c for c in cases if case_key(c) not in done]
    elif out_path.exists():
        out_path.replace(out_path.with_suffix(out_path.suffix + ".prev"))  # keep the last run's results
    floor_rates = floors.measure()
    results.append(out, {"source": "floors", **floor_rates, **results.machine(), "time": time.time()})
    if not quiet:
        print(f"floors: copy {floor_rates['copy_bytes_per_s'] / 1e9:.1f} GB/s, "
              f"GEMM {floor_rates['gemm_flop_per_s'] / 1e9:.0f} GFLOP/s (float32, NumPy)")
    from rich.progress import Progress

    with Progress(disable=quiet) as bar:
        task = bar.add_task("varlen bench", total=len(cases))
        advance = lambda case: bar.update(task, advance=1, description=f"{case['framework']} {case['op']}")
        for fw in dict.fromkeys(c["framework"] for c in cases):
            _run_worker(fw, [c for c in cases if c["framework"] == fw], out, floor_rates, timeout, advance)
    for fw in overhead:
        proc = subprocess.run([sys.executable, "-m", "harness.overhead", fw, out], capture_output=True, text=True,
                              timeout=timeout)
        if not quiet:
            print((proc.stdout or proc.stderr[-500:]).strip())
    return floor_rates


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(*sys.argv[2:6])
