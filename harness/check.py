"""`varlen check`: the equivalence matrix (framework x op/strategy x case) and the recipes' verdicts.

Each framework runs in its own worker process (`python -m harness.check FRAMEWORK OUT`), which appends one
record per result as soon as it has it; a framework that crashes is recorded as failed and the others go on.
"""
from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

from harness import results
from harness.compare import close, exactly_equal
from harness.data import EDGE_CASES, cotangents, padded, ragged
from harness.idioms import IDIOMS, idiom_case, reference_for, run_idiom, verdicts
from harness.spec import CELLS, SIDES, RnnSpec, init_params, map_params, valid_mask
from harness.tolerances import tolerance

PARAM_KEYS = ("w_ih", "w_hh", "b_ih", "b_hh")
RNN_LENGTHS = (5, 0, 1, 3, 5)  # unsorted, a zero-length row, every row padded
RNN_T = 6


def _rec(fw, **kw) -> dict:
    return {"framework": fw.name, "version": fw.version, "device": "cpu", "kernel": "", **kw}


def op_records(fw, ref) -> Iterator[dict]:
    """pad / mask / pack / unpack / masked_mean on every edge case and side."""
    for case, side in itertools.product(sorted(EDGE_CASES), SIDES):
        lengths, T = EDGE_CASES[case]
        L = np.array(lengths)
        seqs = ragged(L, (2,), seed=1)
        x = padded(L, T, (2,), side=side, seed=2, fill=np.nan)
        base = dict(kind="op", case=case, side=side, dtype="float32")
        got = fw.pad([fw.asarray(s) for s in seqs], side=side, maxlen=T)
        yield _rec(fw, op="pad", name="pad", quantity="padded",
                   **_exact(fw.to_numpy(got), ref.pad(seqs, side=side, maxlen=T)), **base)
        yield _rec(fw, op="mask", name="mask", quantity="mask",
                   **_exact(fw.to_numpy(fw.mask(L, T, side=side)), ref.mask(L, T, side=side)), **base)
        p, q = fw.pack(fw.asarray(x), L, side=side), ref.pack(x, L, side=side)
        ok = all(exactly_equal(fw.to_numpy(getattr(p, f)), getattr(q, f))[0] for f in q._fields)
        yield _rec(fw, op="pack", name="pack", quantity="packed", equivalent=ok, max_abs_err=0.0 if ok else np.inf,
                   **base)
        yield _rec(fw, op="unpack", name="unpack", quantity="padded",
                   **_exact(fw.to_numpy(fw.unpack(p, total_length=T, side=side)[0]),
                            ref.unpack(q, total_length=T, side=side)[0]), **base)
        ok, err = close(fw.to_numpy(fw.masked_mean(fw.asarray(x), L, side=side)),
                        ref.masked_mean(x.astype("float64"), L, side=side), tolerance("float32"))
        yield _rec(fw, op="masked_mean", name="masked_mean", quantity="mean", equivalent=ok, max_abs_err=err, **base)


def _exact(a, b) -> dict:
    ok = a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return {"equivalent": bool(ok), "max_abs_err": 0.0 if ok else float("inf")}


def flat_grads(g: dict, to_numpy) -> np.ndarray:
    """Every parameter gradient in one vector (fixed order), for one max-error figure."""
    return np.concatenate([to_numpy(d[k]).ravel() for layer in g for d in layer for k in PARAM_KEYS])


def rnn_case(spec: RnnSpec, side: str, dtype: str, seed: int = 0):
    """x (NaN in padding), lengths, params and cotangents of the standard RNN gate case."""
    L = np.array(RNN_LENGTHS)
    x = padded(L, RNN_T, (spec.input_size,), side=side, seed=seed, dtype=dtype, fill=np.nan)
    return x, L, init_params(spec, seed=seed, dtype=dtype), cotangents(spec, L.size, RNN_T, seed=seed, dtype=dtype)


def compare_rnn(fw, out, grads, want_out, want_grads, valid, tol) -> dict[str, tuple[bool, float]]:
    """quantity -> (equivalent, max_abs_err) for one rnn_vjp result against the reference's."""
    n = fw.to_numpy
    res = {"outputs": close(n(out.outputs), want_out.outputs, tol), "h_n": close(n(out.h_n), want_out.h_n, tol)}
    if want_out.c_n is not None:
        res["c_n"] = close(n(out.c_n), want_out.c_n, tol)
    res["grad_x"] = close(n(grads["x"]), want_grads["x"], tol)
    res["grad_params"] = close(flat_grads(grads["params"], n), flat_grads(want_grads["params"], np.asarray), tol)
    pad = ~valid
    stray = max(np.abs(n(out.outputs)[pad]).max(initial=0), np.abs(n(grads["x"])[pad]).max(initial=0))
    res["padding_zero"] = (bool(stray == 0), float(stray))
    return res


def rnn_records(fw, ref, dtypes=("float32", "float64")) -> Iterator[dict]:
    """Every strategy x cell x side x direction x dtype on a 2-layer net, NaN in padding."""
    for cell, side, bi, dtype in itertools.product(CELLS, SIDES, (False, True), dtypes):
        spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=bi)
        x, L, params, cot = rnn_case(spec, side, dtype)
        up = lambda a: a.astype("float64")
        want_out, want_grads = ref.rnn_vjp(spec, map_params(up, params), up(x), L,
                                           {k: up(v) for k, v in cot.items()}, side=side)
        valid = valid_mask(L, RNN_T, side)
        for strategy in fw.rnn_strategies(cell):
            base = dict(kind="strategy", op="rnn", name=strategy, case="zero_length_nan_padding", cell=cell,
                        side=side, bidirectional=bi, dtype=dtype, num_layers=2)
            try:
                out, grads = fw.rnn_vjp(spec, params, fw.asarray(x), L, cot, side=side, strategy=strategy)
                res = compare_rnn(fw, out, grads, want_out, want_grads, valid, tolerance(dtype))
                kernel = out.kernel
            except Exception as e:  # noqa: BLE001 - a crash is a failed cell, reported, not a lost run
                res, kernel = {"error": (False, float("inf"))}, f"error: {type(e).__name__}: {e}"[:300]
            for quantity, (ok, err) in res.items():
                yield _rec(fw, quantity=quantity, equivalent=ok, max_abs_err=err, **{**base, "kernel": kernel})


def idiom_records(fw, ref) -> Iterator[dict]:
    """Each recipe of `harness.idioms` through the framework's default strategy, with a verdict per quantity."""
    for cell, side, bi, name in itertools.product(("lstm", "gru"), SIDES, (False, True), IDIOMS):
        spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=1, bidirectional=bi)
        x, L, cot = idiom_case(spec, side)
        params = init_params(spec, seed=1, dtype="float64")
        got = run_idiom(fw, name, spec, params, x, L, side, cot)
        want = reference_for(ref, name, spec, params, x, L, side, cot)
        for v in verdicts(got, want, valid_mask(L, x.shape[1], side), tolerance("float64")):
            yield _rec(fw, kind="idiom", op="rnn", name=name, case="idiom_batch", cell=cell, side=side,
                       bidirectional=bi, dtype="float64", quantity=v.quantity, equivalent=v.equivalent,
                       max_abs_err=v.max_abs_err, kernel=fw.rnn_strategies(cell)[0])


def worker(framework: str, out: str) -> None:
    """Check one framework, appending each record to `out` as soon as it exists."""
    import adapters

    fw, ref = adapters.get(framework), adapters.get("numpy")
    meta = results.machine()
    for gen in (op_records, rnn_records, idiom_records):
        for rec in gen(fw, ref):
            results.append(out, {**rec, **meta, "source": "check", "time": time.time()})


def run(frameworks: list[str], out: str, *, timeout: float = 1800) -> list[dict]:
    """Check each framework in its own process; a crash or timeout becomes a failed record."""
    for name in frameworks:
        try:
            proc = subprocess.run([sys.executable, "-m", "harness.check", name, out], capture_output=True,
                                  text=True, timeout=timeout)
            failed, why = proc.returncode != 0, proc.stderr[-2000:]
        except subprocess.TimeoutExpired:
            failed, why = True, f"timed out after {timeout:.0f} s"
        if failed:
            results.append(out, {"framework": name, "kind": "error", "op": "check", "name": "worker",
                                 "case": "", "quantity": "run", "equivalent": False,
                                 "max_abs_err": float("inf"), "error": why, "source": "check"})
    return results.read([out])


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
