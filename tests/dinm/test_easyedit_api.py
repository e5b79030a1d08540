"""EasyEdit's calling convention: apply_dinm_to_model / execute_dinm."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from detox_plugins.dinm import apply_dinm_to_model, execute_dinm
from detox_plugins.dinm.hparams import EASYEDIT_SUFFIX, DINMHyperParams
from registry.requests import EditRequest

from .helpers import CASE, hparams, same_state, state

NAME = "model.layers.2.mlp.down_proj.weight"


def easyedit_request() -> dict:
    """The suffixed request EasyEdit's SafetyEditor passes to apply_dinm_to_model."""
    suffixed = dict(CASE, prompt=CASE["prompt"] + " " + EASYEDIT_SUFFIX,
                    locality_prompt=CASE["locality_prompt"] + " " + EASYEDIT_SUFFIX)
    return EditRequest(**suffixed).to_easyedit()


def test_execute_dinm_leaves_the_model_untouched(tok, llama) -> None:
    before = state(llama)
    flags = {n: p.requires_grad for n, p in llama.named_parameters()}
    deltas = execute_dinm(llama, tok, [easyedit_request()], hparams(layers=[2]))
    assert list(deltas) == [NAME] and float(deltas[NAME].abs().max()) > 0
    assert same_state(llama, before)
    assert {n: p.requires_grad for n, p in llama.named_parameters()} == flags  # restored, unlike EasyEdit


@pytest.mark.parametrize("return_orig, keep", [(False, False), (True, False), (False, True), (True, True)])
def test_apply_edits_in_place_and_weights_copy_rule(tok, llama, return_orig, keep) -> None:
    before = state(llama)
    model, weights_copy = apply_dinm_to_model(llama, tok, [easyedit_request()], hparams(layers=[2]),
                                              return_orig_weights=return_orig, keep_original_weight=keep)
    assert model is llama and not torch.equal(llama.state_dict()[NAME], before[NAME])
    if return_orig and keep:
        assert list(weights_copy) == [NAME] and torch.equal(weights_copy[NAME], before[NAME])
    else:
        assert weights_copy == {}


def test_copy_true_edits_a_deep_copy(tok, llama) -> None:
    before = state(llama)
    model, _ = apply_dinm_to_model(llama, tok, [easyedit_request()], hparams(layers=[2]), copy=True)
    assert model is not llama and same_state(llama, before)
    assert not torch.equal(model.state_dict()[NAME], before[NAME])


def test_apply_matches_execute_and_the_editor_without_a_suffix(tok, llama) -> None:
    from detox_plugins.dinm.editor import DINMEditor

    deltas = execute_dinm(llama, tok, [easyedit_request()], hparams(layers=[2]))
    # The EasyEdit API uses the prompt as given; the editor appends the suffix itself.
    edit = DINMEditor(hparams(layers=[2])).edit(llama, tok, [CASE])
    torch.testing.assert_close(edit.deltas[NAME], deltas[NAME])
    edit.revert()


def test_accepts_easyedit_style_hparams_objects(tok, llama) -> None:
    @dataclasses.dataclass
    class EasyEditHparams:  # stands in for easyeditor's DINMHyperParams
        alg_name: str = "DINM"
        layers: list = dataclasses.field(default_factory=lambda: [2])
        num_steps: int = 2
        lr: float = 1e-2
        rewrite_module_tmp: str = "model.layers.{}.mlp.down_proj.weight"
        model_class: str = "LlamaForCausalLM"
        norm_constraint: float = 1e-3

    before = state(llama)
    deltas = execute_dinm(llama, tok, [easyedit_request()], EasyEditHparams())
    assert float(deltas[NAME].abs().max()) <= 1e-3 + 1e-7  # the norm constraint clamps to W0 ± ε
    assert same_state(llama, before)
    assert isinstance(DINMHyperParams.from_dict(dataclasses.asdict(EasyEditHparams())), DINMHyperParams)
