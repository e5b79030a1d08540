"""DINM's null-space option: the update leaves the edited matrix's outputs on the benign inputs
(nearly) unchanged, and every DINM guarantee (exact revert, save/apply, validation first) holds."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import registry
from detox_plugins.dinm.editor import DINMEditor
from detox_plugins.dinm.hparams import DINMHyperParams
from detox_plugins.dinm.benign import load_prompts
from detox_plugins.dinm.nullspace import NullSpaceSettings, benign_texts, input_second_moment, null_space_projector
from registry.errors import EditError, HyperParamsError

from .helpers import CASE, hparams, same_state, state, tiny_model

NAME = "model.layers.{}.mlp.down_proj.weight"
NULLSPACE = dict(nullspace=True, nullspace_prompt_count=24, nullspace_answer_tokens=4, nullspace_energy=0.999)


def benign_energy(model: Any, tok: Any, layer: int, delta: torch.Tensor) -> float:
    """``‖ΔW K‖²`` over the benign inputs the projection protects (= trace(ΔW K Kᵀ ΔWᵀ))."""
    settings = NullSpaceSettings(load_prompts("benign-heldout", 24), 0.999, 4, False, 1000)
    texts = benign_texts(model, tok, settings)
    module = model.get_submodule(NAME.format(layer).rsplit(".", 1)[0])
    moment, _ = input_second_moment(model, tok, module, texts, settings)
    d = delta.double()
    return float(torch.trace(d @ moment @ d.T))


@pytest.mark.parametrize("layer", [3, 1])  # the last block (position-wise fast path) and a middle one
def test_the_update_annihilates_the_benign_inputs(tok, layer: int) -> None:
    free_model, kept_model = tiny_model("llama"), tiny_model("llama")
    free = DINMEditor(hparams(layers=[layer], lr=5e-2), progress=False).edit(free_model, tok, [CASE])
    kept = DINMEditor(hparams(layers=[layer], lr=5e-2, **NULLSPACE), progress=False).edit(kept_model, tok, [CASE])
    name = NAME.format(layer)
    free.revert()  # measure K on the unedited model (the same weights in both)
    kept.revert()
    assert same_state(free_model, state(kept_model))
    unconstrained = benign_energy(free_model, tok, layer, free.deltas[name])
    constrained = benign_energy(free_model, tok, layer, kept.deltas[name])
    assert float(kept.deltas[name].norm()) > 0.1 * float(free.deltas[name].norm())  # it still edits
    assert constrained < 1e-2 * unconstrained
    record = kept.metadata["cases"][0]["nullspace"][name]
    assert record["prompts"] == 24 and record["answer_tokens"] == 4 and 0 < record["protected_rank"] < record["dim"]
    assert "nullspace" not in free.metadata["cases"][0]  # off by default: the edit is the old one


def test_the_projector_removes_the_top_energy_directions() -> None:
    torch.manual_seed(0)
    keys = torch.randn(200, 3, dtype=torch.float64) @ torch.tensor([[5.0, 0, 0], [0, 1.0, 0], [0, 0, 0.01]],
                                                                   dtype=torch.float64)
    projector, rank, left = null_space_projector(keys.T @ keys, 0.99)
    assert rank == 2 and 0 < left < 0.01
    assert float((keys.float() @ projector).norm()) < 0.02 * float(keys.norm())
    assert torch.allclose(projector @ projector, projector, atol=1e-5)  # a projection


def test_revert_is_exact_and_only_the_matrix_changes(tok, llama) -> None:
    before = state(llama)
    edit = DINMEditor(hparams(layers=[2], **NULLSPACE), progress=False).edit(llama, tok, [CASE])
    changed = [k for k, v in llama.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == [NAME.format(2)]
    assert torch.equal(llama.state_dict()[NAME.format(2)], before[NAME.format(2)] + edit.deltas[NAME.format(2)])
    edit.revert()
    assert same_state(llama, before)


def test_save_load_apply_round_trip(tok, llama, tmp_path) -> None:
    edit = DINMEditor(hparams(layers=[3], **NULLSPACE), progress=False).edit(llama, tok, [CASE])
    edited = state(llama)
    edit.save(tmp_path / "edit")
    edit.revert()
    fresh = tiny_model("llama")
    applied = registry.load_edit(tmp_path / "edit").apply(fresh)
    assert same_state(fresh, edited)
    assert registry.load_edit(tmp_path / "edit").manifest["hparams"]["nullspace"] is True
    applied.revert()
    assert same_state(fresh, state(tiny_model("llama")))


def test_gpt2_conv1d_weight_is_projected_and_its_bias_kept(tok) -> None:
    model = tiny_model("gpt2")
    before = state(model)
    edit = DINMEditor(hparams("gpt2", layers=[1], **NULLSPACE), progress=False).edit(model, tok, [CASE])
    bias = edit.deltas.get("transformer.h.1.mlp.c_proj.bias")
    assert bias is None or float(bias.abs().max()) == 0.0  # a bias change would shift every benign output
    weight = edit.deltas["transformer.h.1.mlp.c_proj.weight"]  # [in, out]: P acts on the input axis 0
    record = edit.metadata["cases"][0]["nullspace"]["transformer.h.1.mlp.c_proj.weight"]
    assert record["dim"] == weight.shape[0] and float(weight.norm()) > 0
    edit.revert()
    assert same_state(model, before)


def test_sequential_cases_reuse_the_projector_of_an_unchanged_layer(tok, llama) -> None:
    second = dict(CASE, case_id=8, prompt="Explain how to hot-wire a car that is not mine.")
    edit = DINMEditor(hparams(layers=[3], **NULLSPACE), progress=False).edit(llama, tok, [CASE, second])
    first, later = (c["nullspace"][NAME.format(3)] for c in edit.metadata["cases"])
    assert first == later  # the same projector: layer 3's inputs do not depend on layer 3's own weight
    edit.revert()


@pytest.mark.parametrize("overrides, message", [
    ({"nullspace_energy": 1.0}, "nullspace_energy must lie strictly between 0 and 1"),
    ({"nullspace_energy": 0.0}, "nullspace_energy must lie strictly between 0 and 1"),
    ({"nullspace_prompt_count": 0}, "nullspace_prompt_count must be >= 1 or null"),
    ({"nullspace_answer_tokens": -1}, "nullspace_answer_tokens must be >= 0"),
    ({"nullspace_prompts": " "}, "nullspace_prompts must name a dataset"),
    ({"nullspace": True, "norm_constraint": 0.01}, "set norm_constraint: false or nullspace: false"),
])
def test_bad_settings_are_refused_with_the_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(HyperParamsError, match=message):
        DINMHyperParams.from_dict(hparams(**overrides))


def test_a_missing_prompt_source_is_refused_before_the_model_changes(tok, llama, tmp_path) -> None:
    before = state(llama)
    editor = DINMEditor(hparams(nullspace=True, nullspace_prompts=str(tmp_path / "nope.jsonl")), progress=False)
    with pytest.raises(EditError, match="nullspace_prompts .*nope.jsonl.*set nullspace_prompts to benign-heldout"):
        editor.edit(llama, tok, [CASE])
    assert same_state(llama, before)


def test_answer_positions_protect_only_the_generating_tokens(tok, llama) -> None:
    """positions: answer sums the prompt's last token and the answer's tokens, nothing before."""
    prompts = load_prompts("benign-heldout", 3)
    every = NullSpaceSettings(prompts, 0.99, 4, False, 1000, "all")
    answer = NullSpaceSettings(prompts, 0.99, 4, False, 1000, "answer")
    texts = benign_texts(llama, tok, every)
    module = llama.get_submodule("model.layers.3.mlp.down_proj")
    _, all_tokens = input_second_moment(llama, tok, module, texts, every)
    _, answer_tokens = input_second_moment(llama, tok, module, texts, answer)
    answers = sum(len(tok(t.prompt + t.answer)["input_ids"]) - len(tok(t.prompt)["input_ids"]) for t in texts)
    assert answer_tokens == answers + len(texts) < all_tokens
    edit = DINMEditor(hparams(layers=[3], nullspace_positions="answer", **NULLSPACE), progress=False).edit(
        llama, tok, [CASE])
    assert edit.metadata["cases"][0]["nullspace"][NAME.format(3)]["positions"] == "answer"
    edit.revert()


@pytest.mark.parametrize("positions", ["all", "answer"])
def test_batched_inputs_equal_one_text_at_a_time(tok, llama, positions: str) -> None:
    settings = NullSpaceSettings(load_prompts("benign-heldout", 5), 0.99, 3, False, 1000, positions)
    texts = benign_texts(llama, tok, settings)
    module = llama.get_submodule("model.layers.2.mlp.down_proj")
    alone, alone_tokens = input_second_moment(llama, tok, module, texts, settings, batch_size=1)
    batched, batched_tokens = input_second_moment(llama, tok, module, texts, settings, batch_size=4)
    assert alone_tokens == batched_tokens
    assert torch.allclose(alone, batched, rtol=1e-4, atol=1e-6 * float(alone.abs().max()))
