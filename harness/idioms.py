"""The recipes practitioners copy for ragged batches, run for real through any adapter and judged.

None of these is a strategy: each one is evaluated against the reference and reported with a verdict per
quantity. Each recipe is built only from the contract's ops (an unmasked run is `rnn` with every length = T), so
the verdicts come from running the framework's own RNN, not from a table.

Quantities compared (reference = the masked RNN with the true lengths):
- outputs: the outputs at valid steps (what the recipe's user reads there);
- h_n: what the recipe's user takes as the final state / summary ([num_layers*D, B, H], or for `last_step` the
  last layer's summary [B, D*H]);
- grads: gradients w.r.t. x and every weight of the recipe's loss (valid outputs and the summary weighted by
  the same cotangents as the reference).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from adapters.spec import RnnSpec, map_params, valid_mask
from harness.compare import close, flat_grads
from harness.data import cotangents, padded

IDIOMS = {
    "mask_inputs": "multiplies padded inputs by the mask, runs the plain RNN over the padded batch and trusts its "
                   "final state: zeros are still inputs, so the state keeps moving through padding (biases), and the "
                   "backward direction starts in the padding.",
    "mask_outputs": "runs the plain RNN over the padded batch and multiplies outputs by the mask: valid outputs of a "
                    "right-padded forward RNN are causal and so correct, but the final state has run through the "
                    "padding, and a backward direction or left padding corrupts the outputs too.",
    "last_step": "takes outputs[:, -1] as each sequence's summary: for right padding that is a padded step (zero or "
                 "garbage) for every shorter sequence, and for a backward direction it is the state after one step.",
    "reset_loop": "resets the state to zero at padding tokens after the RNN has already run: the outputs at padding "
                  "become zero, but the state that produced the valid steps already saw the padding (left padding), "
                  "and the 'final' state of a right-padded sequence is reset to zero.",
    "mask_from_value": "derives the mask from x != 0: a real step whose features are all zero is taken for padding, "
                       "so that sequence is cut short.",
}


class Verdict(NamedTuple):
    quantity: str
    equivalent: bool
    max_abs_err: float


def _lengths_full(B: int, T: int) -> np.ndarray:
    return np.full(B, T, dtype=np.int64)


def _grads_np(adapter, grads) -> dict:
    return {"x": adapter.to_numpy(grads["x"]), "params": map_params(adapter.to_numpy, grads["params"])}


def _cot_zero_padding(cot: dict, valid: np.ndarray) -> dict:
    return {**cot, "outputs": np.where(valid[..., None], cot["outputs"], 0).astype(cot["outputs"].dtype)}


def run_idiom(adapter, name: str, spec: RnnSpec, params, x: np.ndarray, lengths: np.ndarray, side: str,
              cot: dict, device: str = "cpu") -> dict:
    """Run recipe `name` through `adapter`: {"outputs", "h_n", "grads"} as NumPy (grads: {"x", "params"}), and
    "kernel", the one the adapter ran."""
    B, T = x.shape[:2]
    valid = valid_mask(lengths, T, side)
    a, full = adapter, _lengths_full(B, T)
    xa = a.asarray(x, device)
    if name in ("mask_inputs", "mask_outputs", "reset_loop"):
        x_in = x * valid[..., None] if name == "mask_inputs" else x
        cot_in = _cot_zero_padding(cot, valid)
        if name == "reset_loop":
            # the recipe's "final state" is the state at the last time step, reset to 0 if that step is padding
            last_valid = valid[:, -1]
            cot_in = {k: (np.where(last_valid[None, :, None], v, 0).astype(v.dtype) if k != "outputs" else v)
                      for k, v in cot_in.items()}
        out, grads = a.rnn_vjp(spec, params, a.asarray(x_in, device), full, cot_in, side=side, device=device)
        h_n = a.to_numpy(out.h_n)
        if name == "reset_loop":
            h_n = np.where(valid[None, :, -1:], h_n, 0)
        g = _grads_np(a, grads)
        if name == "mask_inputs":
            g["x"] = g["x"] * valid[..., None]
        return {"outputs": a.to_numpy(out.outputs), "h_n": h_n, "grads": g, "kernel": out.kernel}
    if name == "last_step":
        D = spec.num_directions
        summary_cot = np.concatenate(list(cot["h_n"][-D:]), axis=-1)  # [B, D*H], last layer's directions
        cot_out = np.zeros_like(cot["outputs"])
        cot_out[:, -1] = summary_cot
        cot_in = {k: (cot_out if k == "outputs" else np.zeros_like(v)) for k, v in cot.items()}
        out, grads = a.rnn_vjp(spec, params, xa, lengths, cot_in, side=side, device=device)
        return {"outputs": a.to_numpy(out.outputs), "h_n": a.to_numpy(out.outputs)[:, -1],
                "grads": _grads_np(a, grads), "kernel": out.kernel}
    if name == "mask_from_value":
        derived = (x != 0).any(axis=-1).sum(axis=1).astype(np.int64)  # the recipe: padding is "all features zero"
        out, grads = a.rnn_vjp(spec, params, xa, derived, cot, side=side, device=device)
        return {"outputs": a.to_numpy(out.outputs), "h_n": a.to_numpy(out.h_n), "grads": _grads_np(a, grads),
                "kernel": out.kernel}
    raise ValueError(f"unknown idiom {name!r}; expected one of {list(IDIOMS)}")


def reference_for(ref, name: str, spec: RnnSpec, params, x: np.ndarray, lengths: np.ndarray, side: str,
                  cot: dict) -> dict:
    """What the recipe should have produced: the masked RNN's quantities, with the same loss."""
    B, T = x.shape[:2]
    valid = valid_mask(lengths, T, side)
    if name == "last_step":
        D = spec.num_directions
        cot_in = {k: np.zeros_like(v) for k, v in cot.items()}
        cot_in["h_n"][-D:] = cot["h_n"][-D:]
        out, grads = ref.rnn_vjp(spec, params, x, lengths, cot_in, side=side)
        summary = np.concatenate(list(np.asarray(out.h_n)[-D:]), axis=-1)
        return {"outputs": np.asarray(out.outputs), "h_n": summary, "grads": _grads_np(ref, grads)}
    out, grads = ref.rnn_vjp(spec, params, x, lengths, _cot_zero_padding(cot, valid), side=side)
    return {"outputs": np.asarray(out.outputs), "h_n": np.asarray(out.h_n), "grads": _grads_np(ref, grads)}


def idiom_case(spec: RnnSpec, side: str, *, seed: int = 0, dtype: str = "float64"):
    """A batch where every recipe has something to get wrong: ragged lengths and one real all-zero step.

    Padding holds zeros (not NaN): the recipes are judged on clean data, where their failures are subtle.
    """
    lengths = np.array([6, 3, 1, 4], dtype=np.int64)
    T = 6
    x = padded(lengths, T, (spec.input_size,), side=side, seed=seed, dtype=dtype)
    row = 3  # a real step of all zeros: row 3's last valid step (right) / first valid step (left)
    x[row, lengths[row] - 1 if side == "right" else T - lengths[row]] = 0
    return x, lengths, cotangents(spec, lengths.size, T, seed=seed, dtype=dtype)


def verdicts(actual: dict, expected: dict, valid: np.ndarray, tol) -> list[Verdict]:
    """Per-quantity verdicts; outputs are compared at valid steps only (where the recipe's user reads them)."""
    out = []
    a = np.where(valid[..., None], actual["outputs"], 0)
    e = np.where(valid[..., None], expected["outputs"], 0)
    out.append(Verdict("outputs", *close(a, e, tol)))
    out.append(Verdict("h_n", *close(actual["h_n"], expected["h_n"], tol)))
    flat = lambda g: np.concatenate([g["x"].ravel(), flat_grads(g["params"], np.asarray)])
    out.append(Verdict("grads", *close(flat(actual["grads"]), flat(expected["grads"]), tol)))
    return out
