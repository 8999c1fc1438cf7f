"""The recipe / native verdicts say where a recipe is wrong, why, with which error per quantity, and what to use
instead; information-only quantities and raising recipes read as what they are."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import adapters
from harness.families import attention as att
from harness.families import loss
from harness.families.base import doc_why
from harness.report.tables import verdict_matrix
from tests.conftest import framework_params


def rec(name, case, quantity, ok, err, *, kind="idiom", op="loss", fw="torch", **extra) -> dict:
    return {"source": "check", "framework": fw, "version": "1", "device": "cpu", "kind": kind, "op": op,
            "name": name, "case": case, "quantity": quantity, "equivalent": ok, "max_abs_err": err, "kernel": "k",
            "side": "right", "dtype": "float64", **extra}


def cell(df: pd.DataFrame, name: str, fw: str = "torch") -> str:
    return df.set_index("name").loc[name, fw]


def test_verdict_says_where_with_errors_per_quantity_why_and_fix():
    why, fix = "sum / count: 0/0 on an empty batch", "divide by max(count, 1)"
    recs = [rec("r", "softmax_ce:skewed_lengths", q, True, 0.0, why=why, fix=fix) for q in ("loss", "grad")]
    recs += [rec("r", "softmax_ce:all_empty", "loss", False, float("inf"), why=why, fix=fix),
             rec("r", "softmax_ce:all_empty", "grad", False, 2.5, why=why, fix=fix)]
    m = verdict_matrix(pd.DataFrame(recs))
    assert cell(m, "r") == "WRONG on: all-empty batch (loss err inf, grad err 2.5). exact on: skewed lengths"
    row = m.set_index("name").loc["r"]
    assert row["what it does"] == why and row["use instead"] == fix


def test_a_raising_native_says_raises_with_its_first_line():
    recs = [rec("n", "softmax_ce:clean_padding", "loss", True, 0.0, kind="native"),
            rec("n", "softmax_ce:dirty_padding", "loss", False, float("inf"), kind="native",
                error="InvalidArgumentError: Received a label value of 10 which is outside the valid range\nmore")]
    got = cell(verdict_matrix(pd.DataFrame(recs)), "n")
    assert got == ("raises InvalidArgumentError: Received a label value of 10 which is outside the valid range "
                   "(on: NaN/inf logits and out-of-range targets in padding). exact on: clean padding"), got


def test_a_framework_error_reads_as_its_type_and_first_sentence():
    err = ("InvalidArgumentError: {{function_node __wrapped__Sparse_device_/job:localhost/device:CPU:0}} Received "
           "a label value of -100 which is outside the valid range of [0, 7).  Label values: 5 0 -100\nTraceback")
    got = cell(verdict_matrix(pd.DataFrame([rec("n", "all_empty", "loss", False, float("inf"), error=err)])), "n")
    assert got == ("raises InvalidArgumentError: Received a label value of -100 which is outside the valid range of "
                   "[0, 7) (on: all-empty batch)"), got


def test_information_only_records_never_make_a_verdict_wrong():
    recs = [rec("a", "keyless", "outputs_valid", True, 0.0, kind="native", op="attention"),
            rec("a", "keyless", "padded_rows", True, 1.42, kind="native", op="attention", judged=False,
                detail="padded query rows hold values; ignored downstream, not judged")]
    got = cell(verdict_matrix(pd.DataFrame(recs)), "a")
    assert got == ("exact on: a batch with a keyless query row. info: padded query rows hold values; ignored "
                   "downstream, not judged"), got


def test_sides_tell_places_apart():
    recs = [rec("e", "ragged_batch", "outputs", True, 0.0, op="embed+rnn"),
            rec("e", "ragged_batch", "outputs", False, 0.3, op="embed+rnn", side="left")]
    assert cell(verdict_matrix(pd.DataFrame(recs)), "e") == \
        "WRONG on: ragged batch, left padding (outputs err 0.3). exact on: ragged batch, right padding"


def test_doc_why_keeps_the_whole_first_paragraph():
    def f():
        """First sentence that runs
        over two lines: and its end.

        Second paragraph."""
    assert doc_why(f) == "First sentence that runs over two lines: and its end."


@pytest.mark.parametrize("framework", framework_params(("torch", "tensorflow", "jax")))
def test_loss_native_why_is_not_cut(framework, ref):
    fw = adapters.get(framework)
    for r in loss.native_records(fw, ref):
        doc = fw.NATIVES["loss"][r["name"]].__doc__
        assert r["why"] == " ".join(doc.split("\n\n")[0].split()), r["why"]
        assert r["why"].endswith("."), f"{r['name']}: why cut mid-sentence: {r['why']!r}"
        assert r["fix"].startswith("varlen's exact strategy")


@pytest.mark.parametrize("framework", framework_params(("torch",)))
def test_torch_attention_natives_judge_valid_and_keyless_rows_padded_rows_are_information(framework, ref):
    recs = list(att.native_records(adapters.get(framework), ref))
    by = {(r["name"], r["quantity"]): r for r in recs}
    for name in ("keyless_row", "keyless_row_math", "additive_neg_inf_mask", "mha_key_padding_mask"):
        judged = [r for r in recs if r["name"] == name and r.get("judged", True)]
        assert judged and all(r["equivalent"] for r in judged), [(r["quantity"], r["max_abs_err"]) for r in judged]
        info = by[(name, "padded_rows")]
        assert info["judged"] is False and info["equivalent"] and info["max_abs_err"] > 0, info
        assert "not judged" in info["detail"]
    raised = by[("additive_neg1e9_float16", "runs")]
    assert raised["error"].startswith("RuntimeError: value cannot be converted to type c10::Half without overflow")
    assert raised["detail"].startswith("raises RuntimeError: value cannot be converted"), raised["detail"]
    assert "raises" in raised["why"], raised["why"]
    m = verdict_matrix(pd.DataFrame(recs))
    assert cell(m, "additive_neg1e9_float16", framework).startswith("raises RuntimeError: value cannot be converted")
    assert cell(m, "keyless_row", framework).startswith("exact on:")


def test_masked_logits_cross_entropy_recipe_adds_log_c_per_padded_step(ref):
    """seed 004: F.cross_entropy(logits * mask, target) over every position, computed here by hand."""
    x, z, L = loss.loss_case("softmax_ce", "right", "float64", lengths=(3, 1, 0), maxlen=4, classes=5, dirty=False)
    got_loss, got_grad = loss.recipe_results(ref, x, z, L, "softmax_ce")["F.cross_entropy(logits * mask, target)"]
    valid = np.arange(4)[None, :] < L[:, None]
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, z[..., None], -1)[..., 0]
    want = (ce[valid].sum() + (~valid).sum() * np.log(5)) / 12
    assert np.isclose(got_loss, want, rtol=1e-12), (got_loss, want)
    assert not np.any(got_grad[~valid]), "the mask multiply stops the gradient at padded logits"


def test_sum_over_count_recipe_is_exact_with_tokens_and_wrong_on_an_empty_batch(ref):
    recs = [r for r in loss.recipe_records(ref, ref) if r["name"] == "(loss * mask).sum() / mask.sum()"]
    got = {(r["case"], r["quantity"]): r["equivalent"] for r in recs}
    assert got == {(f"{k}:{c}", q): c == "skewed_lengths" for k in ("softmax_ce", "sigmoid_bce")
                   for c in ("skewed_lengths", "all_empty") for q in ("loss", "grad")}, got
    assert all(r["fix"] and r["why"] for r in recs)
