"""PyTorch masked losses: the library's loss primitives with the padding and the reduction done right.

Strategies (all exact; the default for a kind is the first that supports it):
- "cross_entropy" (softmax_ce): `F.cross_entropy(..., ignore_index=-100, reduction="none")` on the padded batch.
- "bce_with_logits" (sigmoid_bce): `F.binary_cross_entropy_with_logits(..., reduction="none")` on the padded batch.
- "valid_only" (both): the valid steps' rows gathered first (host positions, `adapters.torch.rnn.row_gather`) and
  the same primitive run on them only: no work on padding; the gather's backward is the inverse gather, padded steps
  exactly 0. Boolean indexing (`x[valid]`) did the same at twice the time (its backward an accumulating index_put):
  lognormal CE 16.2 vs 7.6 ms here, padded 12.0. A batch without padding runs ungathered.
Padded logits and targets are replaced with `torch.where` *before* the primitive, so NaN/inf there never reaches a
product whose result is later masked (which would poison the gradient: 0 * NaN = NaN). A batch without padding
has nothing to replace: the primitive runs on the logits as they are (the `where` over [B, T, C] and its backward
cost 1.7x the plain CE forward + backward here, C=1024), which is also what the padded baseline measures. The
reduction is one weighted sum with host-built weights (`adapters.base.loss_weights`: 1, 1/N or 1/(n_b * rows), 0
at padding), so an empty batch gives exactly 0 and never 0/0.

Native behaviours (`NATIVES`): the primitives called the obvious way, judged by the harness.
"""
from __future__ import annotations

import numpy as np

from adapters.base import loss_weights, valid_only_kernels
from adapters.spec import Strategy, computes_only, kernel_fields, strategy_table, valid_mask
from adapters.torch.rnn import gather_plans, row_gather

IGNORE = -100  # PyTorch's default ignore_index




class TorchLoss:
    """The masked-loss machinery of the torch adapter (mixed into `TorchAdapter`)."""

    def _loss_inputs(self, logits, targets, lengths, kind, reduction, side, device):
        """Native (logits, targets with padding sanitised, valid mask, weights) and the valid mask on the host;
        logits untouched."""
        torch = self.torch
        x = self.asarray(logits, device)
        valid_np = valid_mask(lengths, x.shape[1], side)
        valid = torch.as_tensor(valid_np, device=x.device)
        z = self.asarray(targets, device)
        z = torch.where(valid, z.long(), IGNORE) if kind == "softmax_ce" else \
            torch.where(valid.view(*valid.shape, *([1] * (z.ndim - 2))), z.to(x.dtype), 0)
        w = torch.as_tensor(loss_weights(lengths, x.shape[1], side, reduction), device=x.device).to(x.dtype)
        return x, z, valid, w, valid_np

    def _per_step(self, kind, x, z, label_axis: bool):
        """Per-step loss of (already sanitised) logits: CE per step, or BCE summed over a step's C labels."""
        F = self.torch.nn.functional
        if kind == "softmax_ce":
            return F.cross_entropy(x.reshape(-1, x.shape[-1]), z.reshape(-1), ignore_index=IGNORE,
                                   reduction="none").view(z.shape)
        loss = F.binary_cross_entropy_with_logits(x, z, reduction="none")
        return loss.sum(-1) if label_axis else loss

    def _padded_loss(self, x, z, valid, w, kind, host_valid=None):
        if host_valid is not None and host_valid.size and host_valid.all():  # no padding: nothing to mask
            return (self._per_step(kind, x, z, x.ndim == 3) * w).sum()
        keep = valid.view(*valid.shape, *([1] * (x.ndim - 2)))
        return (self._per_step(kind, self.torch.where(keep, x, 0), z, x.ndim == 3) * w).sum()

    def _valid_only_loss(self, x, z, valid, w, kind, host_valid):
        mask = host_valid.reshape(-1)  # the host's own mask: no read-back (a GPU sync) of the device's
        if mask.all():  # no padding: nothing to skip, and gathering every row costs (CE: 1.4x here)
            return self._padded_loss(x, z, valid, w, kind, host_valid)
        at = np.flatnonzero(mask)
        index = self.torch.as_tensor(at, device=x.device)
        rows = row_gather(self.torch)(x.reshape(mask.size, -1), *gather_plans(self.torch, at, mask.size, x.device))
        take = lambda a: a.reshape(mask.size, *a.shape[2:]).index_select(0, index)  # noqa: E731
        return (self._per_step(kind, rows.reshape(at.size, *x.shape[2:]), take(z), x.ndim == 3) * take(w)).sum()

    def _loss_run(self, how, logits, targets, lengths, kind, reduction, side, device, grad: bool):
        x, z, valid, w, host_valid = self._loss_inputs(logits, targets, lengths, kind, reduction, side, device)
        if not grad:
            with self.torch.no_grad():
                return how(self, x, z, valid, w, kind, host_valid)
        x = x.detach().requires_grad_(True)
        loss = how(self, x, z, valid, w, kind, host_valid)
        (g,) = self.torch.autograd.grad(loss, [x])
        return loss.detach(), g


def _unit(name, how, supports, kernel, doc):
    fwd = lambda fw, *a: fw._loss_run(how, *a, grad=False)
    vjp = lambda fw, *a: fw._loss_run(how, *a, grad=True)
    return Strategy(name, fwd, vjp, supports=supports, doc=doc, **kernel_fields(kernel))


STRATEGIES = strategy_table(
    _unit("cross_entropy", TorchLoss._padded_loss, computes_only("softmax_ce"), "F.cross_entropy",
          "F.cross_entropy(ignore_index, reduction='none') on the padded batch, weighted sum"),
    _unit("bce_with_logits", TorchLoss._padded_loss, computes_only("sigmoid_bce"), "F.binary_cross_entropy_with_logits",
          "F.binary_cross_entropy_with_logits(reduction='none') on the padded batch, weighted sum"),
    _unit("valid_only", TorchLoss._valid_only_loss, lambda fw, **spec: None,
          valid_only_kernels("F.cross_entropy", "F.binary_cross_entropy_with_logits"),
          "the valid steps' rows gathered, the primitive on them only, the gather's gradient the inverse gather, "
          "weighted sum"),
)


# -- native behaviours: the obvious PyTorch code, no varlen fixes ---------------------------------------------------
def _native_ce_ignore_index(fw, logits, targets, lengths, side="right", device="cpu"):
    """`nn.CrossEntropyLoss(ignore_index=-100)` (reduction "mean") with padded targets set to -100: the intended
    token mean, but 0/0 = NaN when every target is ignored, and NaN in padded logits reaches the gradient."""
    torch = fw.torch
    x = fw.asarray(logits, device).detach().requires_grad_(True)
    valid = torch.as_tensor(valid_mask(lengths, x.shape[1], side), device=x.device)
    z = torch.where(valid, fw.asarray(targets, device).long(), IGNORE)
    loss = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)(x.reshape(-1, x.shape[-1]), z.reshape(-1))
    return loss.detach(), torch.autograd.grad(loss, [x])[0]


def _native_bce_weight_mask(fw, logits, targets, lengths, side="right", device="cpu"):
    """`nn.BCEWithLogitsLoss(weight=mask)` (reduction "mean"): divides by every element, padding included, and a
    NaN label or logit in padding makes the loss NaN (0 * NaN)."""
    torch = fw.torch
    x = fw.asarray(logits, device).detach().requires_grad_(True)
    mask = torch.as_tensor(valid_mask(lengths, x.shape[1], side), device=x.device).to(x.dtype)
    mask = mask.view(*mask.shape, *([1] * (x.ndim - 2))).expand_as(x)
    z = fw.asarray(targets, device).to(x.dtype)
    loss = torch.nn.BCEWithLogitsLoss(weight=mask)(x, z)
    return loss.detach(), torch.autograd.grad(loss, [x])[0]


_native_bce_weight_mask.kind = "sigmoid_bce"  # which inputs the harness gives it (default softmax_ce)

NATIVES = {
    "CrossEntropyLoss(ignore_index)": _native_ce_ignore_index,
    "BCEWithLogitsLoss(weight=mask)": _native_bce_weight_mask,
}
