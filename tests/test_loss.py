"""Masked losses: every strategy of every framework against the NumPy float64 reference, bad input, the native
behaviours and recipes with their expected verdicts, and pairwise agreement between frameworks.

The strategy cells (`harness.families.loss.strategy_cell`): loss and gradient vs the reference (float64 tight,
float32 by the tolerance table), gradient exactly 0 at padded steps, NaN/inf logits and out-of-range / NaN targets in
padding bit-identical to clean padding, the forward-only path, and an all-empty batch giving exactly 0.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import assume, example, given, settings

import adapters
from adapters.base import LOSS_REDUCTIONS
from adapters.spec import valid_mask
from harness.compare import close
from harness.families import loss as fam
from harness.tolerances import tolerance
from tests.conftest import framework_params, on_device, require, strategy_params
from tests.strategies import loss_batches


@pytest.mark.parametrize("name,strategy", strategy_params("loss"))
@pytest.mark.parametrize("kind,label_axis", fam.KINDS, ids=["ce", "bce_btc", "bce_bt"])
@pytest.mark.parametrize("reduction", LOSS_REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_strategy_matches_reference(name, strategy, kind, label_axis, reduction, dtype, side, device, ref):
    fw = on_device(adapters.get(name), device)
    why = fw.why_not("loss", strategy, kind=kind, reduction=reduction, device=device, dtype=dtype)
    if why is not None:
        pytest.skip(f"{name}/{strategy} does not compute {kind}: {why}")
    res = fam.strategy_cell(fw, ref, strategy, kind, label_axis, reduction, dtype, side, device)
    bad = {q: err for q, (ok, err) in res.items() if not ok}
    assert not bad, f"{name}/{strategy} {kind} label_axis={label_axis} {reduction} {dtype} side={side}: {bad}"


@pytest.mark.parametrize("name,strategy", strategy_params("loss"))
def test_strategy_on_random_batches(name, strategy, device, ref):
    """Hypothesis' random batches (zero-length rows, one class, every kind and reduction), float64, dirty padding,
    against the reference."""
    fw = on_device(adapters.get(name), device)

    @given(batch=loss_batches())
    # Keras's loss wrapper squeezed one class's logits to the labels' rank, then refused them (before the "keras"
    # strategy gave its labels a trailing axis)
    @example(batch=((2, 0, 1), 3, 1, "right", "token_mean", "softmax_ce", True, 0))
    @settings(max_examples=12, deadline=None)
    def run(batch):
        lengths, T, C, side, reduction, kind, label_axis, seed = batch
        assume(fw.why_not("loss", strategy, kind=kind, reduction=reduction, device=device, dtype="float64") is None)
        x, z, L = fam.loss_case(kind, side, "float64", lengths=lengths, maxlen=T, classes=C, label_axis=label_axis,
                                seed=seed)
        want = ref.masked_loss_vjp(x, z, L, kind=kind, reduction=reduction, side=side)
        got = fw.masked_loss_vjp(fw.asarray(x, device), fw.asarray(z, device), L, kind=kind, reduction=reduction,
                                 side=side, strategy=strategy, device=device)
        for what, g, w in zip(("loss", "grad"), got, want, strict=True):
            ok, err = close(fw.to_numpy(g), w, tolerance("float64", device))
            assert ok, f"{name}/{strategy} {batch}: {what} off by {err}"

    run()


@pytest.mark.parametrize("name,strategy", strategy_params("loss"))
def test_dtype_and_kernel(name, strategy, device):
    fw = on_device(adapters.get(name), device)
    kind = "softmax_ce" if fw.why_not("loss", strategy, kind="softmax_ce") is None else "sigmoid_bce"
    x, z, L = fam.loss_case(kind, "right", "float32")
    loss, grad = fw.masked_loss_vjp(fw.asarray(x, device), fw.asarray(z, device), L, kind=kind, strategy=strategy,
                                    device=device)
    assert fw.to_numpy(loss).shape == () and fw.to_numpy(loss).dtype == np.float32
    assert fw.to_numpy(grad).shape == x.shape and fw.to_numpy(grad).dtype == np.float32
    assert fw.strategy_kernel("loss", strategy), "every loss strategy names its primitive"


def _ce(B=2, T=3, C=4):
    rng = np.random.default_rng(0)
    return rng.standard_normal((B, T, C)), rng.integers(0, C, (B, T)), np.array([3, 1])


BAD = {
    "unknown kind": (lambda: (*_ce(), dict(kind="hinge")), "unknown loss kind 'hinge'"),
    "unknown reduction": (lambda: (*_ce(), dict(reduction="mean")), "unknown reduction 'mean'"),
    "unknown side": (lambda: (*_ce(), dict(side="up")), "unknown side 'up'"),
    "unknown device": (lambda: (*_ce(), dict(device="tpu")), "unknown device 'tpu'"),
    "unknown strategy": (lambda: (*_ce(), dict(strategy="nope")), "strategy 'nope'"),
    "ce rank": (lambda: (_ce()[0][..., 0], _ce()[1], _ce()[2], {}), r"softmax_ce expects logits of rank 3 \[B, T, C\]"),
    "ce targets shape": (lambda: (_ce()[0], _ce()[1][:, :2], _ce()[2], {}), r"softmax_ce expects targets of shape"),
    "ce float targets": (lambda: (_ce()[0], _ce()[1].astype(float), _ce()[2], {}),
                         "softmax_ce expects integer class targets, got dtype float64"),
    "int logits": (lambda: (_ce()[0].astype(np.int64), _ce()[1], _ce()[2], {}), "needs floating-point logits"),
    "target out of range": (lambda: (_ce()[0], np.array([[0, 1, 4], [0, 9, 9]]), _ce()[2], {}),
                            r"target 4 at \(row 0, step 2\) is outside \[0, 4\)"),
    "negative target": (lambda: (_ce()[0], np.array([[0, 1, 2], [-1, 0, 0]]), _ce()[2], {}),
                        r"target -1 at \(row 1, step 0\) is outside \[0, 4\)"),
    "left: padded out of range ok, valid not": (
        lambda: (_ce()[0], np.array([[0, 1, 2], [7, 7, 5]]), _ce()[2], dict(side="left")),
        r"target 5 at \(row 1, step 2\) is outside \[0, 4\)"),
    "bce targets shape": (lambda: (_ce()[0], _ce()[0][..., 0], _ce()[2], dict(kind="sigmoid_bce")),
                          "sigmoid_bce expects targets of the logits' shape"),
    "bce int targets": (lambda: (_ce()[0], _ce()[0].astype(np.int64), _ce()[2], dict(kind="sigmoid_bce")),
                        "sigmoid_bce expects floating-point targets"),
    "lengths over T": (lambda: (*_ce()[:2], np.array([4, 1]), {}), "length 4 at index 0 exceeds"),
    "lengths count": (lambda: (*_ce()[:2], np.array([1]), {}), "lengths has 1 entries but the batch has 2"),
    "negative length": (lambda: (*_ce()[:2], np.array([1, -1]), {}), "negative length -1 at index 1"),
    "empty batch": (lambda: (np.zeros((0, 3, 4)), np.zeros((0, 3), int), np.zeros(0, int), {}), "empty batch"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_same_error_everywhere(any_adapter, case):
    make, match = BAD[case]
    x, z, L, kw = make()
    for call in (any_adapter.masked_loss, any_adapter.masked_loss_vjp):
        with pytest.raises(ValueError, match=match):
            call(any_adapter.asarray(x), any_adapter.asarray(z), L, **kw)


# (framework, native, case) -> (loss equivalent, grad equivalent); every native of every framework is listed
NATIVE_EXPECTED = {
    "torch": {"CrossEntropyLoss(ignore_index)": {"clean_padding": (True, True), "dirty_padding": (True, False),
                                                 "all_empty": (False, True)},
              "BCEWithLogitsLoss(weight=mask)": {"clean_padding": (False, False), "dirty_padding": (False, False),
                                                 "all_empty": (True, True)}},
    "tensorflow": {"SparseCategoricalCrossentropy(sample_weight=mask)": {
                       "clean_padding": (False, False), "dirty_padding": (False, False), "all_empty": (True, True)},
                   "SparseCategoricalCrossentropy(mean_with_sample_weight)": {
                       "clean_padding": (True, True), "dirty_padding": (False, False), "all_empty": (True, True)},
                   "sparse_softmax_cross_entropy_with_logits * mask": {
                       "clean_padding": (True, True), "dirty_padding": (False, False), "all_empty": (False, False)}},
    "jax": {"softmax_cross_entropy_with_integer_labels(where).mean()": {
                "clean_padding": (False, False), "dirty_padding": (False, False), "all_empty": (True, True)},
            "softmax_cross_entropy_with_integer_labels * mask": {
                "clean_padding": (True, True), "dirty_padding": (False, False), "all_empty": (False, False)}},
}


def _verdicts(records):
    return {(r["name"], r["case"].split(":")[1], r["quantity"]): r["equivalent"] for r in records}


def test_native_verdicts(fw, ref, device):
    got = _verdicts(fam.native_records(fw, ref, device))
    want = {(n, c, q): v[i] for n, cases in NATIVE_EXPECTED[fw.name].items() for c, v in cases.items()
            for i, q in enumerate(("loss", "grad"))}
    diff = [f"{k}: got {got.get(k)}, expected {want.get(k)}" for k in sorted(set(got) | set(want))
            if got.get(k) != want.get(k)]
    assert not diff, f"{fw.name} {fw.version}: " + "; ".join(diff)


RECIPE_EXPECTED = {"(loss * mask).mean()": False, "(loss * mask).sum() / mask.sum()": False,
                   "mean of micro-batch token means": False, "micro-batch sums / global token count": True,
                   "sequence_mean as token_mean": False, "F.cross_entropy(logits * mask, target)": False}
#: (recipe, case suffix) judged exact although the recipe is wrong elsewhere: the token mean of `sum / count` is
#: right wherever some token is valid, and wrong (0 / 0) only on the all-empty batch
RIGHT_ON = {("(loss * mask).sum() / mask.sum()", ":skewed_lengths")}


def test_recipe_verdicts(fw, ref, device):
    records = list(fam.recipe_records(fw, ref, device))
    assert {r["name"] for r in records} == set(RECIPE_EXPECTED)
    for r in records:
        want = RECIPE_EXPECTED[r["name"]] or any(r["name"] == n and r["case"].endswith(c) for n, c in RIGHT_ON)
        assert r["equivalent"] == want, f"{fw.name}: {r['name']} {r['case']} {r['quantity']}"
        assert r["why"] and np.isfinite(r["max_abs_err"]) or r["max_abs_err"] == float("inf")
        if not r["equivalent"] and not r["case"].endswith(":all_empty"):
            assert r["max_abs_err"] > 1e-3, "a wrong recipe must be visibly off on the skewed case"
    assert {r["case"].split(":")[-1] for r in records if r["name"] == "(loss * mask).sum() / mask.sum()"} == {
        "skewed_lengths", "all_empty"}, "judged where it is right and where it is not"


def test_check_records_validate(fw, ref, device):
    from harness.records import make

    for r in fam.check_records(fw, ref, device, dtypes=("float64",)):
        make(r.pop("source"), **r)


@pytest.mark.parametrize("kind,label_axis", fam.KINDS, ids=["ce", "bce_btc", "bce_bt"])
def test_frameworks_agree_pairwise(kind, label_axis, device):
    """Every pair of frameworks' default strategies agree with each other (float64, every reduction)."""
    names = [p.values[0] for p in framework_params() if p.values[0] in adapters.available()]
    fws = [a for a in (adapters.get(n) for n in names) if device in a.devices()]
    if len(fws) < 2:
        pytest.skip("fewer than two frameworks on this device")
    x, z, L = fam.loss_case(kind, "left", "float64", label_axis=label_axis)
    for reduction in LOSS_REDUCTIONS:
        out = {fw.name: [fw.to_numpy(a) for a in fw.masked_loss_vjp(fw.asarray(x, device), fw.asarray(z, device), L,
                                                                     kind=kind, reduction=reduction, side="left",
                                                                     device=device)] for fw in fws}
        tol = tolerance("float64", device)
        for a, b in itertools.combinations(out, 2):
            for i, q in enumerate(("loss", "grad")):
                err = np.abs(out[a][i] - out[b][i]).max()
                assert err <= tol.atol + tol.rtol * np.abs(out[a][i]).max(), f"{a} vs {b} {reduction} {q}: {err}"


def test_expand_keeps_supported_strategies_only():
    base = dict(op="loss_sigmoid_bce", framework="torch", device="cpu", dtype="float32", batch=64, max_len=128,
                profile="equal", seed=0)
    cases = fam.expand(base, {}, adapters.declared_strategies("torch", "loss"))
    assert [c["strategy"] for c in cases] == ["bce_with_logits", "valid_only"]


def test_torch_valid_only_plans_from_the_host_mask(device):
    """torch's `valid_only` takes its positions from the mask built on the host, never by reading the device's
    mask back (on a GPU that read-back is a sync per call): with padding, a device mask that cannot be read still
    gives the gathered loss, equal to the padded strategy's."""
    from tests.conftest import require

    require("torch")
    fw = on_device(adapters.get("torch"), device)
    lengths = np.array([3, 0, 5, 1])
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 5, 7)).astype("float32")
    targets = rng.integers(0, 7, size=(4, 5))
    x, z, valid, w, host_valid = fw._loss_inputs(logits, targets, lengths, "softmax_ce", "token_mean", "right",
                                                 device)

    class Unreadable:
        def __getattr__(self, name):
            raise AssertionError(f"valid_only read the device mask ({name})")

    got = fw._valid_only_loss(x, z, Unreadable(), w, "softmax_ce", host_valid)
    want = fw._padded_loss(x, z, valid, w, "softmax_ce")
    assert abs(float(got) - float(want)) <= 1e-6 * max(1.0, abs(float(want))), (float(got), float(want))


@pytest.mark.parametrize("name,strategy", strategy_params("loss"))
def test_class_targets_of_every_integer_dtype(name, strategy, device):
    """softmax_ce targets of any integer dtype give what int64 targets give (TF's losses take int32/int64 only, so
    the adapter casts after the range check); the expected loss and gradient are NumPy's own log-softmax."""
    require(name)
    fw = on_device(adapters.get(name), device)
    if fw.why_not("loss", strategy, kind="softmax_ce", device=device, dtype="float32") is not None:
        pytest.skip(f"{name}/{strategy} does not run softmax_ce")
    logits = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 4, 3)
    targets, L = np.array([[0, 1, 2, 0], [2, 2, 1, 0]]), np.array([2, 4])
    valid = valid_mask(L, 4)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    onehot = np.eye(3)[targets]
    want_loss = -(logp * onehot).sum(-1)[valid].sum() / valid.sum()
    want_grad = np.where(valid[..., None], (np.exp(logp) - onehot) / valid.sum(), 0)
    for dtype in ("int8", "int16", "int32", "uint8", "uint16", "uint32", "uint64"):
        loss, grad = fw.masked_loss_vjp(fw.asarray(logits, device), fw.asarray(targets.astype(dtype), device), L,
                                        strategy=strategy, device=device)
        got = (float(fw.to_numpy(loss)), fw.to_numpy(grad))
        assert np.isclose(got[0], want_loss, rtol=1e-5) and np.allclose(got[1], want_grad, atol=1e-6), (
            f"{name}/{strategy} targets {dtype}: loss {got[0]} (want {want_loss}), grad {got[1]}")
