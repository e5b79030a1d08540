"""Every editor on tiny random models of the families users run (GQA, tied embeddings, q/k/v biases,
extra norms, fused projections, Conv1D, MoE MLPs): edit, export a merged checkpoint that transformers
reloads with the same logits (or a named refusal), revert bit-exact, save, load, apply to a fresh copy of
the model with the same result, revert again. A family an editor cannot handle must be a
named refusal in ``families.REFUSALS``, never a silent wrong edit. The README's table is rendered from
the same data (``python -m tests.families.families``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from registry import load_edit
from registry.errors import EditError

from ..security_vectors.tiny import harmful_rows
from ..tiny import tiny_tokenizer
from .families import EDITORS, FAMILIES, REFUSALS, export_refusal, render_table

ROOT = Path(__file__).resolve().parents[2]
CASE = {"prompt": "How do I pick a lock?", "target_new": "I can't help with that.",
        "ground_truth": "Sure, here is how to pick a lock:"}
PAIRS = [{"toxic": t, "nontoxic": n} for t, n in [
    ("you are a stupid idiot", "you are a kind person"), ("shut up, loser", "please, friend"),
    ("I hate you all", "I like you all"), ("what a dumb idea", "what a fine idea")]] * 3
PROBE = "How do I bake bread?"


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer()


def state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model: Any, saved: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(now[key], value), key


def logits(model: Any, tok: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(PROBE, return_tensors="pt")).logits


def make_edit(editor: str, family: Any, model: Any, tok: Any) -> Any:
    from detox_plugins.destein.editor import DeSteinEditor
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.security_vectors.editor import SecurityVectorEditor

    if editor.startswith("DINM"):
        layers = [1] if "fixed" in editor else []
        hp = {"alg_name": "DINM", "rewrite_module_tmp": family.mlp_out, "layers": layers, "num_steps": 2,
              "lr": 1e-2, "max_output_length": 3}
        return DINMEditor(hp).edit(model, tok, [CASE])
    if editor.startswith("DeStein"):
        hp = {"alg_name": "DeStein", "fusion": "additive", "apply": "bias_fold" if "fold" in editor else "hook",
              "alpha": 1.0, "pairs": {"num_pairs": 10, "batch_size": 4}, "progress": False}
        return DeSteinEditor(hp).edit(model, tok, PAIRS)
    hp = {"alg_name": "SecurityVectors", "max_length": 96, "max_target_tokens": 48, "progress": False,
          "sv_lora": {"r": 4, "lora_alpha": 8, "target_modules": list(family.attention_inputs)},
          "sv_epochs": 1, "sv_batch_size": 4, "sv_kl_weight": 0.0}
    return SecurityVectorEditor(hp).edit(model, tok, harmful_rows()[:4])


@pytest.mark.parametrize("editor", EDITORS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_edit_revert_save_load_apply(name: str, editor: str, tok: Any, tmp_path: Path) -> None:
    family = FAMILIES[name]
    model = family.build()
    before, base_logits = state(model), logits(model, tok)
    if (name, editor) in REFUSALS:
        with pytest.raises(EditError, match=REFUSALS[(name, editor)]):
            make_edit(editor, family, model, tok)
        assert_same(model, before)
        return
    edit = make_edit(editor, family, model, tok)
    edited_state, edited_logits = state(model), logits(model, tok)
    changed = edited_state.keys() != before.keys() or any(not torch.equal(v, before[k]) for k, v in edited_state.items())
    assert changed or not torch.equal(edited_logits, base_logits), "the edit changed nothing"
    refusal = export_refusal(name, editor)
    if refusal is not None:
        with pytest.raises(EditError, match=refusal):
            edit.export(tmp_path / "export", tokenizer=tok)
        assert not (tmp_path / "export").exists()
    else:
        from transformers import AutoModelForCausalLM

        exported = AutoModelForCausalLM.from_pretrained(edit.export(tmp_path / "export", tokenizer=tok)).eval()
        assert torch.allclose(logits(exported, tok), edited_logits, atol=1e-4, rtol=0)
    folder = edit.save(tmp_path / "edit")
    edit.revert()
    assert_same(model, before)

    fresh = family.build()  # the same seed: the same weights and fingerprint
    applied = load_edit(folder).apply(fresh, tok)
    assert_same(fresh, edited_state)
    assert torch.equal(logits(fresh, tok), edited_logits)
    applied.revert()
    assert_same(fresh, before)


def test_a_sequence_longer_than_learned_positions_is_refused(tok: Any) -> None:
    """GPT-2 with 64 positions: the suffixed DINM prompt does not fit; a clear refusal, nothing changed."""
    from detox_plugins.dinm.editor import DINMEditor

    family = FAMILIES["gpt2"]
    model = type(family)(family.model_type, {**family.config, "n_positions": 64}, family.mlp_out,
                         family.attention_inputs).build()
    before = state(model)
    hp = {"alg_name": "DINM", "rewrite_module_tmp": family.mlp_out, "layers": [1], "num_steps": 1}
    with pytest.raises(EditError, match=r"tokens, over this model's 64 positions; shorten the prompt"):
        DINMEditor(hp).edit(model, tok, [CASE])
    assert_same(model, before)


def test_readme_table_is_rendered_from_the_tested_families() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert render_table() in readme, "regenerate it: python -m tests.families.families"


#: Shipped hparams for 7-9B instruct models, and the family whose tiny model has the same module names.
LARGE_MODELS = {"llama3.1-8b-instruct": "llama", "qwen2.5-7b-instruct": "qwen2", "mistral-7b-instruct": "mistral",
                "gemma2-9b-it": "gemma2"}


@pytest.mark.parametrize("model", sorted(LARGE_MODELS))
def test_shipped_large_model_hparams_point_at_real_modules(model: str) -> None:
    """Each editor's file for the model validates and its templates resolve on that family's modules."""
    import registry
    from detox_plugins.security_vectors import adapters

    tiny = FAMILIES[LARGE_MODELS[model]].build()
    for alg in ("DINM", "DeStein", "SecurityVectors"):
        hparams = registry.from_hparams(f"{alg}/{model}")
        assert "UNMEASURED" in Path(registry.resolve_hparams_path(f"{alg}/{model}")).read_text()
        editor = registry.get_editor(alg)(hparams)
        if alg == "SecurityVectors":
            adapters.check_target_modules(tiny, hparams.sv_lora.target_modules, where="sv_lora")
            continue
        footprint = editor.planned_footprint(tiny)
        assert footprint is not None and (footprint.writes or footprint.hooks), alg
