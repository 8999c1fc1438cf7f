"""The recipes practitioners copy: every one is caught in every framework, and correct where it honestly is."""
from __future__ import annotations

import numpy as np
import pytest

import adapters
from adapters.spec import RnnSpec, init_params, valid_mask
from harness.idioms import IDIOMS, idiom_case, padding_for, reference_for, run_idiom, verdicts
from harness.tolerances import tolerance
from tests.conftest import framework_params


def judge(fw, name, cell, side, bi, batch=None):
    spec = RnnSpec(cell, input_size=3, hidden_size=4, num_layers=1, bidirectional=bi)
    x, L, cot = batch or idiom_case(spec, side, padding=padding_for(name))
    params = init_params(spec, seed=1, dtype="float64")
    got = run_idiom(fw, name, spec, params, x, L, side, cot)
    want = reference_for(adapters.get("numpy"), name, spec, params, x, L, side, cot)
    return {v.quantity: v for v in verdicts(got, want, valid_mask(L, x.shape[1], side), tolerance("float64"))}


@pytest.mark.parametrize("name", list(IDIOMS))
@pytest.mark.parametrize("framework", framework_params(("numpy", "torch", "tensorflow", "jax")))
def test_every_idiom_is_caught(framework, name):
    fw = adapters.get(framework)
    caught = {(cell, side, bi): [q for q, v in judge(fw, name, cell, side, bi).items() if not v.equivalent]
              for cell in ("lstm", "gru") for side in ("right", "left") for bi in (False, True)}
    assert any(caught.values()), f"{framework}: recipe {name} was never caught: {caught}"


@pytest.mark.parametrize("framework", framework_params(("numpy", "torch", "tensorflow", "jax")))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_mask_outputs_right_uni_is_right_for_outputs_wrong_for_state(framework, cell):
    v = judge(adapters.get(framework), "mask_outputs", cell, "right", False)
    assert v["outputs"].equivalent, f"valid outputs should be exact, err {v['outputs'].max_abs_err}"
    assert not v["h_n"].equivalent and v["h_n"].max_abs_err > 1e-3, "the final state must be caught as wrong"


@pytest.mark.parametrize("framework", framework_params(("numpy", "torch", "tensorflow", "jax")))
def test_last_step_is_exact_only_for_left_padded_forward(framework):
    fw = adapters.get(framework)
    assert judge(fw, "last_step", "lstm", "left", False)["h_n"].equivalent
    assert not judge(fw, "last_step", "lstm", "right", False)["h_n"].equivalent
    assert not judge(fw, "last_step", "lstm", "left", True)["h_n"].equivalent


def test_unknown_idiom():
    spec = RnnSpec("lstm", 3, 4)
    x, L, cot = idiom_case(spec, "right")
    with pytest.raises(ValueError, match="unknown idiom"):
        run_idiom(adapters.get("numpy"), "magic", spec, init_params(spec), x, L, "right", cot)


@pytest.mark.parametrize("framework", framework_params(("numpy", "torch", "jax")))
def test_recipe_records_name_the_kernel_that_ran(framework):
    """A recipe's check record names the kernel the adapter ran for it (as every figure must), not a strategy."""
    from harness.families import rnn as family

    fw, ref = adapters.get(framework), adapters.get("numpy")
    recs = list(family.idiom_records(fw, ref))
    spec = RnnSpec("lstm", input_size=3, hidden_size=4)
    x, L, _ = idiom_case(spec, "right")
    ran = fw.rnn(spec, init_params(spec, seed=1, dtype="float64"), fw.asarray(x), L).kernel
    assert recs and ran in {r["kernel"] for r in recs}, {r["kernel"] for r in recs}
    assert not {r["kernel"] for r in recs} & set(fw.strategy_table("rnn")), "a strategy's name where a kernel goes"


def test_recipes_see_non_zero_finite_padding_except_the_zero_padding_one():
    spec = RnnSpec("lstm", 3, 4)
    for side in ("right", "left"):
        x, L, _ = idiom_case(spec, side)
        pad = ~valid_mask(L, x.shape[1], side)
        assert np.isfinite(x).all() and np.all(x[pad] != 0), "padding must hold finite non-zero garbage"
    assert padding_for("mask_from_value") == "zero" and padding_for("mask_outputs") == "garbage"
    x, L, _ = idiom_case(spec, "right", padding="zero")
    assert not x[~valid_mask(L, x.shape[1], "right")].any()


@pytest.mark.parametrize("framework", framework_params(("numpy", "torch")))
def test_mask_inputs_and_mask_outputs_differ_on_garbage_padding(framework):
    """x * mask zeroes the garbage, outputs * mask does not: their final states (and gradients) differ."""
    fw = adapters.get(framework)
    for cell in ("lstm", "gru"):
        i, o = (judge(fw, n, cell, "right", False) for n in ("mask_inputs", "mask_outputs"))
        assert i["outputs"].equivalent and o["outputs"].equivalent, "valid outputs of a right-padded forward RNN"
        assert abs(i["h_n"].max_abs_err - o["h_n"].max_abs_err) > 1e-3, (i, o)
        assert abs(i["grads"].max_abs_err - o["grads"].max_abs_err) > 1e-3, (i, o)


@pytest.mark.parametrize("framework", framework_params(("numpy", "torch", "tensorflow", "jax")))
def test_sort_without_unsort_is_wrong_unless_the_batch_came_sorted(framework):
    fw = adapters.get(framework)
    wrong = judge(fw, "sort_without_unsort", "lstm", "right", False)
    assert not any(v.equivalent for v in wrong.values()), "outputs, h_n and grads come back in sorted row order"
    order = np.array([0, 3, 1, 2])  # lengths 6, 4, 3, 1: already sorted, so nothing is reordered
    for bi in (False, True):
        x, L, cot = idiom_case(RnnSpec("lstm", input_size=3, hidden_size=4, bidirectional=bi), "right")
        batch = (x[order], L[order], {k: (v[:, order] if k != "outputs" else v[order]) for k, v in cot.items()})
        right = judge(fw, "sort_without_unsort", "lstm", "right", bi, batch=batch)
        assert all(v.equivalent for v in right.values()), {q: v.max_abs_err for q, v in right.items()}


@pytest.mark.parametrize("framework", framework_params(("numpy", "torch")))
def test_sort_without_unsort_input_gradient_comes_back_through_the_sort(framework):
    """Autodiff routes the input gradient back through `x[sort_idx]`: it lands on each row's own valid steps (the
    padded steps of the original rows get exactly 0), though the recipe's loss pairs the wrong rows."""
    spec = RnnSpec("gru", input_size=3, hidden_size=4)
    x, L, cot = idiom_case(spec, "right")
    got = run_idiom(adapters.get(framework), "sort_without_unsort", spec, init_params(spec, seed=1), x, L, "right",
                    cot)
    gx = got["grads"]["x"]
    valid = valid_mask(L, x.shape[1], "right")
    assert not gx[~valid].any() and np.abs(gx[valid]).min() > 0, gx
