"""Batching policies reorder work and never change it: each covers the dataset exactly once, behaves as named,
and an epoch's summed loss and gradients equal the reference's for every policy in every framework (the gate)."""
from __future__ import annotations

import numpy as np
import pytest

import adapters
from harness import policies
from harness.families import epoch
from harness.profiles import lengths_for
from tests.conftest import framework_params, on_device

L = lengths_for("lognormal", 1000, 128, seed=3)


@pytest.mark.parametrize("policy", policies.POLICIES)
def test_every_policy_covers_the_dataset_exactly_once(policy):
    got = policies.batches(policy, L, batch_size=32, seed=1)
    flat = np.concatenate(got)
    assert sorted(flat.tolist()) == list(range(L.size)), f"{policy} lost or repeated a sequence"
    assert got[0].tolist() == policies.batches(policy, L, batch_size=32, seed=1)[0].tolist(), "not deterministic"


def test_policies_do_what_they_say():
    pad = {p: policies.realised_padding(L, policies.batches(p, L, batch_size=8)) for p in policies.POLICIES}
    assert pad["sorted"] < pad["bucketed"] < pad["random"], pad
    tb = policies.batches("token_budget", L, batch_size=32, budget=32 * 128)
    assert all(len(b) * L[b].max() <= 32 * 128 for b in tb), "a token_budget batch exceeds its budget"
    assert pad["token_budget"] < pad["random"]
    assert len(policies.shapes(L, policies.batches("random", L, batch_size=32))) > 1


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown batching policy 'magic'"):
        policies.batches("magic", L, batch_size=4)


@pytest.mark.parametrize("framework", framework_params(("numpy", "torch", "tensorflow", "jax")))
def test_epoch_sums_equal_the_reference_for_every_policy(framework, device):
    fw = adapters.get(framework)
    if framework != "numpy":
        on_device(fw, device)
    recs = list(epoch.check_records(fw, adapters.get("numpy"), device if framework != "numpy" else "cpu"))
    assert len(recs) == len(policies.POLICIES) * 2
    bad = [(r["cell"], r["name"], r["quantity"], r["max_abs_err"]) for r in recs if not r["equivalent"]]
    assert not bad, f"{framework}: an epoch differs from the reference: {bad}"


def test_the_epoch_gate_can_fail():
    """Dropping one batch from an epoch (a policy that loses a sequence) is caught."""
    fw, ref = adapters.get("numpy"), adapters.get("numpy")
    real = policies.batches

    def lossy(*a, **kw):
        out = real(*a, **kw)
        return out[:-1] if len(out) > 1 else out

    policies.batches = lossy
    try:
        recs = list(epoch.check_records(fw, ref))
    finally:
        policies.batches = real
    assert any(not r["equivalent"] for r in recs)
