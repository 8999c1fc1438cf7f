"""The epoch family: a whole dataset cut into batches by a batching policy (`harness.policies`), every batch run
forward + backward through one exact RNN strategy, the parameter gradients summed over the epoch.

A policy only reorders work, so the epoch's summed gradients (and loss) must equal the reference's on the whole
dataset whatever the policy: that is the gate (`check_records`). The benchmark (`prepare`) records the epoch time
(the first call includes every compile a new batch shape triggers; the median is a warm epoch), valid tokens/s, the
realised padding, the number of distinct batch shapes (what jit-compiling frameworks recompile for) and memory.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from adapters.spec import RnnSpec, init_params, map_params
from harness import policies
from harness.compare import close, flat_grads
from harness.data import padded, rng_for
from harness.families.base import Prepared, record
from harness.floors import rnn_flops
from harness.profiles import case_lengths
from harness.tolerances import tolerance

NAME = "epoch"
STRATEGY_FAMILY = "rnn"
OPS = {"rnn_epoch": "RNN epoch (fwd+bwd over a policy's batches)"}
DATASET = 512  # sequences per epoch in benchmarks
RECOMMEND = False  # ranked in its own section (policy x strategy), not in the per-batch recommendation


def expand(base: dict, grid: dict, strategies: list[str]) -> list[dict]:
    """One case per policy with the framework's default strategy (or every strategy when the grid asks)."""
    chosen = strategies if grid.get("epoch_all_strategies") else strategies[:1]
    return [{**base, "strategy": s, "policy": pol, "dataset": grid.get("dataset", DATASET),
             "cell": grid["cells"][0], "hidden": grid["hidden"][0], "input_size": grid["hidden"][0], "num_layers": 1,
             "bidirectional": False} for pol, s in itertools.product(policies.POLICIES, chosen)]


class Epoch:
    """A dataset, its policy's batches on the device, and the per-sequence cotangents of the summed loss
    sum(outputs * cot_outputs) + sum(h_n * cot_h_n) [+ sum(c_n * cot_c_n)]."""

    def __init__(self, adapter, spec: RnnSpec, lengths: np.ndarray, maxlen: int, policy: str, batch_size: int, *,
                 dtype: str, device: str, seed: int = 0) -> None:
        self.a, self.spec, self.device = adapter, spec, device
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.index = policies.batches(policy, self.lengths, batch_size=batch_size, seed=seed,
                                      budget=batch_size * maxlen)
        x = padded(self.lengths, maxlen, (spec.input_size,), seed=seed, dtype=dtype, fill=np.nan)
        D, H, NL = spec.num_directions, spec.hidden_size, spec.num_layers
        rng = rng_for(seed, 7)
        self.cot = {"outputs": rng.standard_normal((len(lengths), maxlen, D * H)).astype(dtype),
                    "h_n": rng.standard_normal((NL * D, len(lengths), H)).astype(dtype)}
        if spec.cell == "lstm":
            self.cot["c_n"] = rng.standard_normal((NL * D, len(lengths), H)).astype(dtype)
        self.x = x
        self.batches = [self._batch(b) for b in self.index]

    def _batch(self, b: np.ndarray):
        T = max(int(self.lengths[b].max(initial=0)), 1)
        cot = {k: v[:, b] if k != "outputs" else v[b, :T] for k, v in self.cot.items()}
        a, dev = self.a, self.device
        return (a.asarray(self.x[b, :T], dev), self.lengths[b], {k: a.asarray(v, dev) for k, v in cot.items()})

    def run(self, params, strategy: str):
        """Every batch forward + backward; the summed parameter gradients (native arrays) and the outputs."""
        total, outs = None, []
        for x, L, cot in self.batches:
            out, grads = self.a.rnn_vjp(self.spec, params, x, L, cot, strategy=strategy, device=self.device)
            g = grads["params"]
            total = g if total is None else [[{k: t[k] + d[k] for k in d} for t, d in zip(tl, gl, strict=True)]
                                             for tl, gl in zip(total, g, strict=True)]
            outs.append(out)
        return total, outs

    def loss(self, outs) -> float:
        """The epoch's summed loss, on the host (for the gate; never in a timed region)."""
        n, total = self.a.to_numpy, 0.0
        for (_x, _L, cot), out in zip(self.batches, outs, strict=True):
            total += float((n(out.outputs) * n(cot["outputs"])).sum() + (n(out.h_n) * n(cot["h_n"])).sum())
            if out.c_n is not None:
                total += float((n(out.c_n) * n(cot["c_n"])).sum())
        return total


def check_records(fw, ref, device: str = "cpu") -> Iterator[dict]:
    """Every policy's epoch (the default strategy of each cell) against the reference on the whole dataset."""
    L = np.array([5, 0, 3, 7, 1, 7, 2, 6, 4, 3, 7, 1, 5, 2])
    T = 7
    for cell in ("lstm",):  # the cell does not matter to a policy; one keeps the gate fast (compiles per shape)
        spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=1, bidirectional=True)
        params = init_params(spec, seed=5, dtype="float64")
        want = Epoch(ref, spec, L, T, "random", len(L), dtype="float64", device="cpu")
        want_g, want_outs = want.run(params, "reference")
        strategy = fw.strategies("rnn", cell=cell, device=device, dtype="float64")[0]
        for policy in policies.POLICIES:
            ep = Epoch(fw, spec, L, T, policy, 4, dtype="float64", device=device)
            g, outs = ep.run(map_params(lambda v: fw.asarray(v, device), params), strategy)
            tol = tolerance("float64", device)
            res = {"epoch_loss": close(np.float64(ep.loss(outs)), np.float64(want.loss(want_outs)), tol),
                   "epoch_grad_params": close(flat_grads(g, fw.to_numpy), flat_grads(want_g, np.asarray), tol)}
            shapes = len(policies.shapes(L, ep.index))
            for quantity, (ok, err) in res.items():
                yield record(fw, device, kind="strategy", op="epoch", name=strategy,
                             case=f"policy {policy}: {len(L)} sequences, batch 4", cell=cell, dtype="float64",
                             quantity=quantity,
                             equivalent=ok, max_abs_err=err, kernel=outs[0].kernel if outs else "",
                             detail=f"{len(ep.index)} batches, {shapes} distinct shapes")


def prepare(adapter, case: dict) -> Prepared:
    if case["op"] not in OPS:
        raise ValueError(f"unknown op {case['op']!r} in family {NAME}; expected one of {list(OPS)}")
    B, T, N = case["batch"], case["max_len"], case.get("dataset", DATASET)
    L = case_lengths(case, N, T)
    spec = RnnSpec(case["cell"], case["input_size"], case["hidden"], case["num_layers"], case["bidirectional"])
    ep = Epoch(adapter, spec, L, T, case["policy"], B, dtype=case["dtype"], device=case["device"],
               seed=case.get("seed", 0))
    params = map_params(lambda v: adapter.asarray(v, case["device"]), init_params(spec, dtype=case["dtype"]))
    adapter.clear_compiled()  # the first epoch pays every compile its batch shapes need, as in a fresh process

    class Out:  # the last batch's result names the kernel
        kernel = ""

    def run():
        _, outs = ep.run(params, case["strategy"])
        Out.kernel = outs[-1].kernel if outs else ""
        return outs[-1] if outs else Out

    padded_tokens = sum(len(b) * int(L[b].max(initial=0)) for b in ep.index)
    work = rnn_flops(spec.cell, spec.input_size, spec.hidden_size, spec.num_layers, spec.num_directions,
                     int(L.sum()), backward=True)
    extra = {"policy": case["policy"], "epoch_batches": len(ep.index),
             "distinct_shapes": len(policies.shapes(L, ep.index)),
             "realised_padding": policies.realised_padding(L, ep.index)}
    return Prepared(run, int(L.sum()), padded_tokens, extra["realised_padding"], work, "gemm",
                    float(L.sum()) / max(padded_tokens, 1), extra)


def report_sections(check, bench, out) -> list:
    """Policy x framework per length distribution and device: epoch time with compiles, warm epoch time, valid
    tokens/s, realised padding, distinct shapes; the best (policy, strategy) pair."""
    from harness.report.render import Section

    s = Section("Batching policies (epochs)")
    ep = bench[(bench["op"] == "rnn_epoch") & (bench["status"] == "ok")] if not bench.empty else bench
    if ep.empty:
        return [s.p("No epoch benchmarks (they run with `varlen bench --quick`).")]
    s.p("A dataset of sequences cut into batches by each policy, every batch run forward + backward through one "
        "exact strategy (the epoch's summed gradients equal the reference's for every policy: a `varlen check` "
        "gate). 'first epoch s' includes every compile a new batch shape triggers; 'warm epoch s' is the median of "
        "later epochs. Best pair per distribution and device in bold in the last column.")
    rows = []
    for (device, profile), g in ep.groupby(["device", "profile"]):
        best = g.loc[g["first_call_s"].idxmin()]
        for _, r in g.sort_values(["framework", "policy"]).iterrows():
            rows.append({"device": device, "lengths": profile, "framework": r["framework"], "strategy": r["strategy"],
                         "policy": r["policy"], "first epoch s": round(r["first_call_s"], 3),
                         "warm epoch s": round(r["median_s"], 3),
                         "valid Mtok/s (warm)": round(r["valid_tokens_per_s"] / 1e6, 3),
                         "realised padding": round(r["realised_padding"], 3),
                         "distinct shapes": int(r["distinct_shapes"]), "batches": int(r["epoch_batches"]),
                         "best pair": "BEST" if r.name == best.name else ""})
    import pandas as pd

    return [s.table(pd.DataFrame(rows))]
