"""DINM's edit_bare_question: the case's question without the attack is trained towards the same safe
response, the edit NLL is the mean over both prompts, bad input is refused before any change."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from detox_plugins.dinm.editor import DINMEditor
from detox_plugins.dinm.hparams import DINMHyperParams
from detox_plugins.dinm.inputs import in_context_sequence, with_suffix
from detox_plugins.dinm.losses import masked_nll
from registry.errors import EditError, HyperParamsError

from .helpers import CASE, hparams, same_state, state, tiny_model


def bare_question_nll(model: Any, tok: Any) -> float:
    """NLL of the safe response after the suffixed bare question, by a full forward of the model."""
    hp = DINMHyperParams.from_dict(hparams())
    prompt = with_suffix(CASE["generalization_prompts"][0], hp.suffix_system_prompt, hp.use_suffix)
    seq = in_context_sequence(tok, prompt, CASE["target_new"])
    with torch.no_grad():
        logits = model(input_ids=seq.input_ids, use_cache=False).logits[0]
    return float(masked_nll(logits[seq.positions], seq.targets, seq.weights))


def test_the_bare_question_is_trained_and_averaged_into_the_edit_nll(tok) -> None:
    untouched = bare_question_nll(tiny_model("llama"), tok)
    after = {}
    for flag in (False, True):
        model = tiny_model("llama")
        edit = DINMEditor(hparams(layers=[2], lr=5e-2, num_steps=6, edit_bare_question=flag), progress=False).edit(
            model, tok, [CASE])
        after[flag] = (bare_question_nll(model, tok), edit.metadata["cases"][0]["losses"])
        edit.revert()
    (plain_nll, plain_losses), (trained_nll, losses) = after[False], after[True]
    assert "extra_nll" not in plain_losses[0]
    assert losses[0]["edit_nll"] == pytest.approx(plain_losses[0]["edit_nll"])  # same attack prompt at step 0
    assert losses[0]["extra_nll"] == pytest.approx(untouched, rel=1e-4)  # the runner scores the real sequence
    assert losses[0]["loss"] == pytest.approx((losses[0]["edit_nll"] + losses[0]["extra_nll"]) / 2, rel=1e-5)
    assert losses[-1]["extra_nll"] < losses[0]["extra_nll"]
    assert trained_nll < plain_nll  # training the bare question moves it further than the attack prompt alone


def test_revert_is_exact(tok, llama) -> None:
    before = state(llama)
    edit = DINMEditor(hparams(edit_bare_question=True), progress=False).edit(llama, tok, [CASE])
    assert not same_state(llama, before)
    edit.revert()
    assert same_state(llama, before)


def test_a_case_without_a_bare_question_is_refused_before_any_change(tok, llama) -> None:
    before = state(llama)
    bare = {k: v for k, v in CASE.items() if k != "generalization_prompts"}
    with pytest.raises(EditError, match="case 7 has none.*edit_bare_question: false"):
        DINMEditor(hparams(edit_bare_question=True), progress=False).edit(llama, tok, [CASE, dict(bare, case_id=7)])
    assert same_state(llama, before)


def test_compat_mode_and_a_wrong_type_are_refused() -> None:
    with pytest.raises(HyperParamsError, match="edit_bare_question is an improved-mode option"):
        DINMHyperParams.from_dict(hparams(mode="compat", edit_bare_question=True))
    with pytest.raises(HyperParamsError, match="field 'edit_bare_question': expected true or false"):
        DINMHyperParams.from_dict(hparams(edit_bare_question="maybe"))
