"""DINM's benign anchors: the edit keeps the model's answers to benign prompts, validated first, reverted exactly."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import registry
from detox_plugins.dinm.anchors import AnchorSettings, build_anchors
from detox_plugins.dinm.benign import load_prompts
from detox_plugins.dinm.editor import DINMEditor
from detox_plugins.dinm.hparams import DINMHyperParams
from detox_plugins.dinm.runner import EditForward, find_stack
from registry.errors import EditError, HyperParamsError

from .helpers import CASE, hparams, same_state, state, tiny_model

NAME = "model.layers.{}.mlp.down_proj.weight"
ANCHORS = dict(anchor_prompts="benign-heldout", anchor_prompt_count=12, anchor_answer_tokens=4)


def anchor_kl(model: Any, tok: Any, batch: Any) -> float:
    """The mean KL(P0 ‖ P) of the current model on the anchors' scored positions (a full forward)."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return float(batch.kl(logits[batch.rows, batch.positions]))


@pytest.mark.parametrize("layer", [3, 1])  # the last block (only the scored rows run) and a middle one
def test_anchors_keep_the_benign_answers_closer_than_the_plain_edit(tok, layer: int) -> None:
    settings = AnchorSettings(load_prompts("benign-heldout", 12), 4, 10.0, False, 1000)
    reference = build_anchors(tiny_model("llama"), tok, settings)
    results = {}
    for name, extra in {"plain": {}, "anchored": dict(ANCHORS, anchor_weight=30.0)}.items():
        model = tiny_model("llama")
        edit = DINMEditor(hparams(layers=[layer], lr=5e-2, num_steps=6, **extra), progress=False).edit(
            model, tok, [CASE])
        results[name] = (anchor_kl(model, tok, reference), float(edit.deltas[NAME.format(layer)].norm()),
                         edit.metadata["cases"][0])
    (plain_kl, plain_norm, plain_case), (kept_kl, kept_norm, kept_case) = results["plain"], results["anchored"]
    assert kept_kl < 0.5 * plain_kl  # the anchors hold the benign answer openings
    assert kept_norm > 0.05 * plain_norm  # and it still edits
    assert kept_case["losses"][-1]["edit_nll"] < kept_case["losses"][0]["edit_nll"]
    assert kept_case["anchors"]["prompts"] == 12 and 12 <= kept_case["anchors"]["positions"] <= 12 * 4
    assert "anchor_kl" in kept_case["losses"][1] and "anchors" not in plain_case  # off by default


def test_batched_anchor_logits_equal_one_sequence_at_a_time(tok) -> None:
    """The right-padded anchor batch gives each prompt the logits it gets alone, on every runner path."""
    model = tiny_model("llama")
    batch = build_anchors(model, tok, AnchorSettings(load_prompts("benign-heldout", 5), 3, 1.0, False, 1000))
    stack = find_stack(model)
    assert int(batch.attention_mask.sum(1).min()) < batch.input_ids.shape[1]  # really padded
    for start, trained in [(3, [NAME.format(3)]), (1, [NAME.format(1)]), (None, [])]:
        runner = EditForward(model, stack, start, trained=trained)
        together = runner.logits_at(runner.prepare(batch.input_ids, batch.attention_mask), batch.rows,
                                    batch.positions)
        for row in range(batch.input_ids.shape[0]):
            length = int(batch.attention_mask[row].sum())
            alone_ids = batch.input_ids[row:row + 1, :length]
            mine = batch.rows == row
            alone = runner.logits(runner.prepare(alone_ids), batch.positions[mine])
            torch.testing.assert_close(together[mine], alone, rtol=1e-4, atol=1e-5)
    assert anchor_kl(model, tok, batch) < 1e-6  # the reference is this model's own distribution


def test_sequential_cases_are_anchored_to_the_model_before_the_first(tok, llama) -> None:
    second = dict(CASE, case_id=8, prompt="Explain how to hot-wire a car that is not mine.")
    edit = DINMEditor(hparams(layers=[3], lr=5e-2, **ANCHORS), progress=False).edit(llama, tok, [CASE, second])
    first, later = (c["losses"] for c in edit.metadata["cases"])
    assert first[0]["anchor_kl"] < 1e-6  # case 1 starts at the reference
    assert later[0]["anchor_kl"] > 1e-4  # case 2 starts from case 1's edit, measured against the original
    edit.revert()


def test_revert_save_and_apply_are_exact(tok, llama, tmp_path) -> None:
    before = state(llama)
    edit = DINMEditor(hparams(layers=[2], **ANCHORS), progress=False).edit(llama, tok, [CASE])
    changed = [k for k, v in llama.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == [NAME.format(2)]
    edited = state(llama)
    edit.save(tmp_path / "edit")
    edit.revert()
    assert same_state(llama, before)
    fresh = tiny_model("llama")
    registry.load_edit(tmp_path / "edit").apply(fresh)
    assert same_state(fresh, edited)
    assert registry.load_edit(tmp_path / "edit").manifest["hparams"]["anchor_prompts"] == "benign-heldout"


@pytest.mark.parametrize("overrides, message", [
    ({"anchor_prompts": " "}, "anchor_prompts must name a dataset"),
    ({"anchor_prompts": "benign-heldout", "anchor_prompt_count": 0}, "anchor_prompt_count must be >= 1 or null"),
    ({"anchor_answer_tokens": 0}, "anchor_answer_tokens must be >= 1"),
    ({"anchor_weight": 0}, "anchor_weight must be > 0"),
    ({"anchor_prompts": "benign-heldout", "mode": "compat"}, "anchor_prompts is an improved-mode option"),
    ({"anchor_weight": "high"}, "field 'anchor_weight': expected a number"),
    ({"anchor_prompts": 3}, "field 'anchor_prompts': int 3 is not a valid"),
    ({"anchor_wieght": 1}, "unknown key 'anchor_wieght'.*did you mean 'anchor_weight'"),
])
def test_bad_settings_are_refused_with_the_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(HyperParamsError, match=message):
        DINMHyperParams.from_dict(hparams(**overrides))


def test_a_missing_prompt_source_is_refused_before_the_model_changes(tok, llama, tmp_path) -> None:
    before = state(llama)
    editor = DINMEditor(hparams(anchor_prompts=str(tmp_path / "nope.jsonl")), progress=False)
    with pytest.raises(EditError, match="anchor_prompts .*nope.jsonl.*set anchor_prompts to benign-heldout"):
        editor.edit(llama, tok, [CASE])
    assert same_state(llama, before)


def test_prepared_anchor_inputs_are_kept_until_a_lower_block_changes(tok, llama) -> None:
    """In a sequential edit of one matrix the batch's lower blocks run once; a change below forgets them."""
    batch = build_anchors(llama, tok, AnchorSettings(load_prompts("benign-heldout", 3), 2, 1.0, False, 1000))
    stack = find_stack(llama)
    names = [NAME.format(3)]
    runner = EditForward(llama, stack, 3, trained=names)
    first = batch.prepare(runner, names)
    batch.changed(NAME.format(3), stack)  # the trained matrix itself: its inputs do not depend on it
    assert batch.prepare(runner, names) is first
    batch.changed("model.layers.3.self_attn.o_proj.weight", stack)  # same block, another module
    assert batch.prepare(runner, names) is not first
    kept = batch.prepare(runner, names)
    batch.changed("model.layers.2.mlp.down_proj.weight", stack)  # a lower block
    assert batch.prepare(runner, names) is not kept
