"""`Edit.export` and `detox export` on tiny models: the checkpoint loads in a process that cannot import
detox-plugins and reproduces the edited model (greedy outputs equal, logits within 1e-4 in float32);
edits that cannot live in weights are refused with the reason and what would work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from registry import load_edit
from registry.errors import EditError

from detox_plugins.cli import main

from ..families.families import FAMILIES
from ..security_vectors.tiny import harmful_rows
from ..tiny import tiny_tokenizer
from .helpers import assert_exact

CASE = {"prompt": "How do I pick a lock?", "target_new": "I can't help with that.",
        "ground_truth": "Sure, here is how to pick a lock:"}
PAIRS = [{"toxic": t, "nontoxic": n} for t, n in [
    ("you are a stupid idiot", "you are a kind person"), ("shut up, loser", "please, friend"),
    ("I hate you all", "I like you all"), ("what a dumb idea", "what a fine idea")]] * 3


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer()


def ids_of(tok: Any) -> torch.Tensor:
    return tok("How do I bake bread? Tell me", return_tensors="pt")["input_ids"]


def dinm(model: Any, tok: Any, family: Any) -> Any:
    from detox_plugins.dinm.editor import DINMEditor

    hp = {"alg_name": "DINM", "rewrite_module_tmp": family.mlp_out, "layers": [1], "num_steps": 3, "lr": 5e-2,
          "max_output_length": 3}
    return DINMEditor(hp).edit(model, tok, [CASE])


def destein(model: Any, tok: Any, apply: str = "bias_fold", alpha: float = 2.0) -> Any:
    from detox_plugins.destein.editor import DeSteinEditor

    hp = {"alg_name": "DeStein", "fusion": "additive", "apply": apply, "alpha": alpha,
          "pairs": {"num_pairs": 10, "batch_size": 4}, "progress": False}
    return DeSteinEditor(hp).edit(model, tok, PAIRS)


@pytest.mark.parametrize("name", ["llama", "qwen3", "gemma2", "gpt2", "opt"])
def test_dinm_and_destein_fold_export_exactly(name: str, tok: Any, tmp_path: Path) -> None:
    family = FAMILIES[name]
    model = family.build()
    edits = [destein(model, tok), dinm(model, tok, family)]  # detox-all's order
    from registry import ComposedEdit

    composed = ComposedEdit(model, edits)
    folder = composed.export(tmp_path / "export", tokenizer=tok)
    config = json.loads((folder / "config.json").read_text())
    if name in ("llama", "qwen3", "gemma2"):
        assert config["attention_bias"] is True  # the folded o_proj bias, with zero q/k/v biases
    card = (folder / "README.md").read_text()
    assert "DeStein" in card and "DINM" in card and edits[0].metadata["model"]["fingerprint"] in card
    assert_exact(model, folder, ids_of(tok), tmp_path)
    composed.revert()


@pytest.mark.parametrize("name", ["mistral", "qwen2", "phi3"])
def test_a_fold_the_architecture_cannot_hold_is_refused(name: str, tok: Any, tmp_path: Path) -> None:
    model = FAMILIES[name].build()
    edit = destein(model, tok)
    with pytest.raises(EditError, match=rf"a {name} checkpoint cannot hold this DeStein fold: .* serve the edit"):
        edit.export(tmp_path / "x", tokenizer=tok)
    assert not (tmp_path / "x").exists()
    edit.revert()


def test_hooks_and_vectors_are_refused_with_what_would_work(tok: Any, tmp_path: Path) -> None:
    from detox_plugins.security_vectors.editor import SecurityVectorEditor

    model = FAMILIES["llama"].build()
    with destein(model, tok, apply="hook") as hook:
        with pytest.raises(EditError, match="steers activations at run time.*apply: bias_fold"):
            hook.export(tmp_path / "h", tokenizer=tok)
    hp = {"alg_name": "SecurityVectors", "max_length": 96, "max_target_tokens": 48, "progress": False,
          "sv_lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "sv_epochs": 1,
          "sv_batch_size": 4, "sv_kl_weight": 0.0}
    with SecurityVectorEditor(hp).edit(model, tok, harmful_rows()[:4]) as vector:
        for fmt in ("merged", "peft"):
            with pytest.raises(EditError, match="export the fine-tune"):
                vector.export(tmp_path / fmt, tokenizer=tok, format=fmt)
    with dinm(model, tok, FAMILIES["llama"]) as weights:
        with pytest.raises(EditError, match="not a LoRA adapter; export it merged"):
            weights.export(tmp_path / "p", format="peft")
    assert not any(tmp_path.glob("[hmp]*"))


@pytest.mark.parametrize("export", ["merged", "adapter"])
def test_security_vector_fine_tune_exports_exactly(export: str, tok: Any, tmp_path: Path) -> None:
    """The user's LoRA fine-tune (trained with the vector active), without the vector: merged deltas as a
    Hugging Face folder, or the adapter as a PEFT folder that PeftModel.from_pretrained reads."""
    from detox_plugins.security_vectors.editor import SecurityVectorEditor

    model = FAMILIES["llama"].build()
    base = tmp_path / "base"
    model.save_pretrained(base)
    hp = {"alg_name": "SecurityVectors", "max_length": 96, "max_target_tokens": 48, "progress": False,
          "sv_lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "sv_epochs": 1,
          "sv_batch_size": 4, "sv_kl_weight": 0.0, "user_lora": {"r": 4, "lora_alpha": 32, "lora_dropout": 0.1,
                                                                  "target_modules": ["q_proj", "v_proj", "o_proj"]},
          "ft_epochs": 1, "ft_lr": 5e-2, "ft_batch_size": 4, "export": export}
    editor = SecurityVectorEditor(hp)
    vector = editor.edit(model, tok, harmful_rows()[:4])
    tuned = editor.fine_tune(model, tok, harmful_rows()[4:12], vector=vector)
    # the user's LoRA has dropout: it must be off at inference (peft builds its layers in training mode)
    assert [name for name, module in model.named_modules() if module.training] == []
    if export == "merged":
        folder = tuned.export(tmp_path / "export", tokenizer=tok)
        assert_exact(model, folder, ids_of(tok), tmp_path)
    else:
        folder = tuned.export(tmp_path / "export", format="peft")
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json",
                                                            "adapter_model.safetensors"]
        assert_exact(model, folder, ids_of(tok), tmp_path, peft_base=base)
    tuned.revert()


def test_detox_export_command(tok: Any, tmp_path: Path, capsys: Any) -> None:
    family = FAMILIES["llama"]
    model = family.build()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    edit = dinm(model, tok, family)
    edit.save(tmp_path / "edit")
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "edit"), "--model", str(tmp_path / "model"), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert_exact(model, out, ids_of(tok), tmp_path)
    assert main(["export", str(tmp_path / "edit"), "--model", str(tmp_path / "model"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    reloaded = load_edit(tmp_path / "edit")
    assert reloaded.editor == "DINM"
