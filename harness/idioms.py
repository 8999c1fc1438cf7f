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
from harness.data import cotangents, padded, rng_for

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
    "sort_without_unsort": "sorts the batch by length (descending), packs it with enforce_sorted=True and runs the "
                           "RNN, but never restores the original order (seed 001, example 3): outputs and h_n come "
                           "back in sorted row order and are read against the unsorted targets.",
}
#: recipe -> what to use instead
IDIOM_FIXES = {
    "mask_inputs": "run the RNN with the true lengths (packing, or varlen's exact RNN strategies)",
    "mask_outputs": "run the RNN with the true lengths (packing, or varlen's exact RNN strategies)",
    "last_step": "the length-aware RNN's h_n (for a forward direction also outputs at each row's last valid step)",
    "reset_loop": "a loop that freezes the state at padding (varlen's masked loop), or packing",
    "mask_from_value": "lengths from the data pipeline, never from the values",
    "sort_without_unsort": "index outputs[unsort] and h_n[:, unsort] with the inverse permutation, or pack with "
                           "enforce_sorted=False, which restores the order itself",
}
#: recipe -> what its batch's padding holds: "garbage" (finite non-zero values, as a collate function's pad value
#: or a reused buffer leaves them; a recipe that zeroes padding and one that does not then differ) unless the
#: recipe's premise is zero padding ("zero": `mask_from_value` reads padding as all-zero steps).
IDIOM_PADDING = {"mask_from_value": "zero"}


def padding_for(name: str) -> str:
    """What padding recipe `name` is judged on ("garbage" or "zero", see `IDIOM_PADDING`)."""
    return IDIOM_PADDING.get(name, "garbage")


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
    if name == "sort_without_unsort":
        return _sort_without_unsort(a, spec, params, x, lengths, side, cot, device)
    raise ValueError(f"unknown idiom {name!r}; expected one of {list(IDIOMS)}")


def _sort_without_unsort(a, spec, params, x, lengths, side, cot, device) -> dict:
    """The sorted batch packs (enforce_sorted=True accepts it) and runs with its lengths; the user's loss pairs
    sorted row i with original row i's targets (the cotangents in original order, masked by the lengths the user
    passed); autodiff routes the input gradient back through the sort, so grads["x"] is in original order."""
    order = np.argsort(-lengths, kind="stable")
    xs, Ls = x[order], lengths[order]
    a.pack(a.asarray(xs, device), Ls, side=side, enforce_sorted=True)  # the recipe's premise holds: no error
    cot_in = _cot_zero_padding(cot, valid_mask(Ls, x.shape[1], side))
    out, grads = a.rnn_vjp(spec, params, a.asarray(xs, device), Ls, cot_in, side=side, device=device)
    g = _grads_np(a, grads)
    gx = np.empty_like(g["x"])
    gx[order] = g["x"]
    return {"outputs": a.to_numpy(out.outputs), "h_n": a.to_numpy(out.h_n), "grads": {**g, "x": gx},
            "kernel": out.kernel}


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


def idiom_case(spec: RnnSpec, side: str, *, seed: int = 0, dtype: str = "float64", padding: str = "garbage"):
    """A batch where every recipe has something to get wrong: ragged unsorted lengths and one real all-zero step.

    Padding holds finite values, never NaN (the recipes are judged on data a user has, where their failures are
    subtle): with padding="garbage" non-zero values (standard normal: what a collate function's pad value or a
    reused buffer leaves there), with padding="zero" zeros (the premise of `mask_from_value`; see `padding_for`).
    """
    if padding not in ("garbage", "zero"):
        raise ValueError(f"unknown padding {padding!r}; expected 'garbage' or 'zero'")
    lengths = np.array([6, 3, 1, 4], dtype=np.int64)
    T = 6
    x = padded(lengths, T, (spec.input_size,), side=side, seed=seed, dtype=dtype)
    if padding == "garbage":
        pad = ~valid_mask(lengths, T, side)
        x[pad] = rng_for(seed, 9).standard_normal((int(pad.sum()), spec.input_size)).astype(dtype)
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
