"""One RNN vjp with NaN in padding, compared with the float64 reference: the check the fast-strategy tests share."""
from __future__ import annotations

import numpy as np

import adapters
from adapters.spec import init_params, map_params, valid_mask
from harness.data import cotangents, padded
from harness.families.rnn import compare_rnn
from harness.tolerances import tolerance


def against_reference(fw, spec, lengths, T, *, side="right", dtype="float64", seed=0, strategy=None, run=None,
                      tweak=None, errors: dict | None = None, device: str = "cpu"):
    """(the quantities that differ from the reference, with their errors; the result) of `fw.rnn_vjp` with
    `strategy` on `device` (compared within that device's tolerance), or of `run(params, x, cotangents)` in its
    place (e.g. an entry point past a precondition); `tweak(params)` changes the initial weights first (in place);
    `errors`, if given, receives every quantity's error."""
    x = padded(lengths, T, (spec.input_size,), side=side, seed=seed, dtype=dtype, fill=np.nan)
    params = init_params(spec, seed=seed, dtype=dtype)
    if tweak is not None:
        tweak(params)
    cot = cotangents(spec, lengths.size, T, seed=seed, dtype=dtype)
    up = lambda a: np.asarray(a).astype("float64")  # noqa: E731
    want_out, want_grads = adapters.get("numpy").rnn_vjp(spec, map_params(up, params), up(x), lengths,
                                                         {k: up(v) for k, v in cot.items()}, side=side)
    if run is None:
        out, grads = fw.rnn_vjp(spec, params, fw.asarray(x, device), lengths, cot, side=side, strategy=strategy,
                                device=device)
    else:
        out, grads = run(params, x, cot)
    res = compare_rnn(fw, out, grads, want_out, want_grads, valid_mask(lengths, T, side), tolerance(dtype, device))
    if errors is not None:
        errors.update({q: err for q, (ok, err) in res.items()})
    return {q: err for q, (ok, err) in res.items() if not ok}, out
