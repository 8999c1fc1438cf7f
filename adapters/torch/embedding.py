"""PyTorch embeddings: `F.embedding` with a valid mask or on the packed valid ids, `F.embedding_bag` over them.

Strategies (all exact; padded ids are replaced by 0 before any lookup, so a negative or out-of-range id in padding
never reaches an index kernel, which would raise on CPU and trip a device-side assert on CUDA):
- "embedding" (default; embed and embedding_bag): `F.embedding(where(valid, ids, 0), table)`, padded steps
  selected to exactly 0 with `torch.where` (a select, not a product, so its gradient there is 0 whatever the
  cotangent holds); bags reduce over time with the mask (max: `amax` over `where(valid, e, -inf)`, an empty row
  selected to 0).
- "embedding_bag" (embedding_bag only): `F.embedding_bag(ids, table, offsets, mode=...)` on the valid ids packed
  row after row (their flat positions and the offsets come from the host lengths, so no device sync). PyTorch
  documents (and the gate checks) that empty bags give 0 in every mode, max included, with no gradient. Its max
  backward sends each entry's gradient to the first position attaining it; ties of the same token give that row
  the same total as the reference's even split.
- "packed" (embed only): only the valid ids are looked up (`F.embedding` of the packed valid ids, their flat
  positions from the host lengths), copied into a zero [B*T, E] output with `index_copy` (whose backward reads the
  valid rows of the cotangent only): no mask, no lookup and no gradient row for a padded step. Against the
  plain lookup of a batch without padding: 1.11x (lognormal) / 1.51x (zipf) here, where masking runs 0.79x / 0.86x.
A batch without padding needs no mask: "embedding" and "packed" then look the ids up as they are (and reduce over
time plainly; masking every step cost 1.5x the plain lookup here); "embedding_bag" packs its offsets either way.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from adapters.spec import Strategy, no_padding, strategy_table, valid_mask


class TorchEmbedding:
    """The embedding machinery of the torch adapter (mixed into `TorchAdapter`)."""

    def _emb_inputs(self, tokens, table, lengths, side, device, grad: bool):
        """(ids, table, valid [B, T], lengths tensor) on `device`; the table a fresh leaf when grads are wanted."""
        ids = self.asarray(tokens, device)
        table = self.asarray(table, device)
        if grad:
            table = table.detach().requires_grad_(True)
        n = self._native_lengths(lengths, ids)
        return ids, table, self.valid(n, ids.shape[1], side), n

    def _emb_run(self, impl, op, tokens, table, lengths, side, mode, device, cot=None):
        torch = self.torch
        grad = cot is not None
        ids, leaf, valid, n = self._emb_inputs(tokens, table, lengths, side, device, grad)
        with torch.set_grad_enabled(grad):
            out = impl(self, op, ids, leaf, valid, n, lengths, side, mode)
        if not grad:
            return out
        cot = self.asarray(cot, device).to(leaf.dtype)
        (g,) = torch.autograd.grad(out, leaf, cot, allow_unused=True) if out.requires_grad else (None,)
        return out.detach(), torch.zeros_like(leaf) if g is None else g

    def _emb_reduce(self, e, valid, n, mode: str):
        """sum / mean / max over each row's valid steps of e [B, T, E] (every step where `valid` is None); an empty
        row gives 0."""
        torch = self.torch
        if valid is None:  # no padding (and T >= 1): a plain reduction over time
            return e.amax(dim=1) if mode == "max" else e.sum(dim=1) / e.shape[1] if mode == "mean" else e.sum(dim=1)
        m = valid[..., None]
        if mode == "max":
            if e.shape[1] == 0:
                return e.new_zeros((e.shape[0], e.shape[2]))
            top = torch.where(m, e, float("-inf")).amax(dim=1)
            return torch.where(n[:, None] > 0, top, 0.0)
        total = torch.where(m, e, 0.0).sum(dim=1)
        return total / n.clamp(min=1)[:, None].to(e.dtype) if mode == "mean" else total


def _plain(a, op, ids, table, n, mode):
    """A batch without padding: the ids looked up as they are, bags reduced plainly (no mask to apply)."""
    e = a.torch.nn.functional.embedding(ids, table)
    return e if op == "embed" else a._emb_reduce(e, None, n, mode)


def _lookup(a, op, ids, table, valid, n, lengths, side, mode):
    if no_padding(lengths, ids.shape[1]):
        return _plain(a, op, ids, table, n, mode)
    e = a.torch.nn.functional.embedding(a.torch.where(valid, ids, 0), table)
    return a.torch.where(valid[..., None], e, 0.0) if op == "embed" else a._emb_reduce(e, valid, n, mode)


def _bag(a, op, ids, table, valid, n, lengths, side, mode):
    torch = a.torch
    flat = torch.as_tensor(np.flatnonzero(valid_mask(lengths, ids.shape[1], side)), device=ids.device)
    offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(lengths)[:-1]]), device=ids.device)
    packed = ids.reshape(-1)[flat].long()
    return torch.nn.functional.embedding_bag(packed, table, offsets, mode=mode)


def _packed(a, op, ids, table, valid, n, lengths, side, mode):
    if no_padding(lengths, ids.shape[1]):
        return _plain(a, op, ids, table, n, mode)
    B, T = ids.shape
    flat = a.torch.as_tensor(np.flatnonzero(valid_mask(lengths, T, side)), device=ids.device)
    e = a.torch.nn.functional.embedding(ids.reshape(-1)[flat], table)
    return e.new_zeros(B * T, table.shape[1]).index_copy(0, flat, e).view(B, T, table.shape[1])


def _embed_only(adapter: Any = None, op: str | None = None, **spec: Any) -> str | None:
    """The "packed" strategy writes per-step outputs; bags are F.embedding_bag's (static: reads no adapter)."""
    return None if op in (None, "embed") else "packed looks up per-step outputs; F.embedding_bag does the bags"


def _bag_only(adapter: Any = None, op: str | None = None, **spec: Any) -> str | None:
    """F.embedding_bag reduces each bag: it has no per-step output (reads no adapter: a static precondition)."""
    return None if op in (None, "embedding_bag") else "F.embedding_bag returns one vector per bag, not per step"


def _unit(name: str, impl, kernel: str, doc: str, supports=None) -> Strategy:
    extra = {"supports": supports} if supports else {}
    return Strategy(name, lambda a, *args: a._emb_run(impl, *args), lambda a, op, t, w, n, cot, *rest:
                    a._emb_run(impl, op, t, w, n, *rest, cot=cot), doc=doc, kernel=kernel, **extra)


STRATEGIES = strategy_table(
    _unit("embedding", _lookup, "F.embedding", "F.embedding on where(valid, ids, 0), padded steps selected to 0"),
    _unit("embedding_bag", _bag, "F.embedding_bag", "F.embedding_bag with offsets over the packed valid ids",
          supports=_bag_only),
    _unit("packed", _packed, "F.embedding of the valid ids (+ index_copy where padded)",
          "F.embedding of the valid ids only, copied into a zero [B*T, E] (index_copy)", supports=_embed_only),
)


# -- native behaviours: PyTorch's primitives called the obvious way on a 0-padded batch ---------------------------
def _leaf(a, table, device):
    return a.asarray(table, device).detach().requires_grad_(True)


def _padding_idx(a, *, tokens, table, lengths, cot_embed, cot_bag, device="cpu"):
    """F.embedding(padding_idx=0) times the mask: a real token 0 gets no gradient, so row 0 never learns."""
    torch = a.torch
    w = _leaf(a, table, device)
    ids = a.asarray(tokens, device)
    mask = a.valid(a._native_lengths(lengths, ids), ids.shape[1])[..., None]
    out = torch.nn.functional.embedding(ids, w, padding_idx=0) * mask
    (g,) = torch.autograd.grad(out, w, a.asarray(cot_embed, device).to(w.dtype))
    return {"op": "embed", "mode": None, "outputs": out.detach(), "grad_table": g}


def _bag_padding_idx(a, *, tokens, table, lengths, cot_embed, cot_bag, device="cpu"):
    """F.embedding_bag(mode="mean", padding_idx=0) on the padded 2-D batch: a real token 0 is left out of its bag."""
    torch = a.torch
    w = _leaf(a, table, device)
    out = torch.nn.functional.embedding_bag(a.asarray(tokens, device), w, mode="mean", padding_idx=0)
    (g,) = torch.autograd.grad(out, w, a.asarray(cot_bag, device).to(w.dtype))
    return {"op": "embedding_bag", "mode": "mean", "outputs": out.detach(), "grad_table": g}


NATIVES = {"padding_idx_0": _padding_idx, "embedding_bag_padding_idx_0": _bag_padding_idx}
