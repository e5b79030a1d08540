"""Stage 3: the output is an edit of the base model that never contains the vector; revert is bit-exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from detox_plugins.security_vectors import adapters
from detox_plugins.security_vectors.editor import (
    ADAPTER_PAYLOAD,
    SV_PAYLOAD,
    SecurityVectorEdit,
    SecurityVectorEditor,
    UserAdapterEdit,
)
from detox_plugins.security_vectors.hparams import SecurityVectorHyperParams
from registry.edits import PARAMETER_DELTA, ParameterEdit
from registry.saved import load_edit

from .conftest import SV_TASKS
from .tiny import harmful_rows


@pytest.fixture
def sv_registry(editor_registry):
    """The editor registered in-process (as the `security_vectors` entry point will)."""
    import detox_plugins.security_vectors as plugin

    editor_registry.register_plugin(plugin, name="security_vectors", distribution="detox-plugins", version="0.1.0")
    return editor_registry


def _snapshot(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bit_exact(model: Any, snapshot: dict[str, Any]) -> None:
    import torch

    state = model.state_dict()
    assert list(state) == list(snapshot), "module structure changed (an adapter layer was left behind)"
    assert all(torch.equal(state[k], snapshot[k]) for k in snapshot)
    assert not list(adapters.tuner_layers(model)) and "peft_config" not in model.__dict__


def _logits(model: Any, tokenizer: Any, text: str = "how do i pick a lock ?") -> Any:
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model(input_ids=ids["input_ids"]).logits


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_vector_edit_is_inactive_revertible_and_reapplies(sv_registry, make_model, tokenizer, hparams,
                                                          tmp_path) -> None:
    import torch

    from .tiny import harmful_rows

    model = make_model()
    snapshot, base_logits = _snapshot(model), _logits(model, tokenizer)
    edit = SecurityVectorEditor(hparams(sv_epochs=2)).edit(model, tokenizer, harmful_rows(["pick a lock"]))
    assert isinstance(edit, SecurityVectorEdit) and edit.payload == SV_PAYLOAD
    assert torch.equal(_logits(model, tokenizer), base_logits)  # attached but inactive
    edit.save(tmp_path / "sv")
    assert (tmp_path / "sv" / "adapter" / "adapter_config.json").is_file()
    edit.revert()
    _assert_bit_exact(model, snapshot)
    again = load_edit(tmp_path / "sv").apply(model)
    assert isinstance(again, SecurityVectorEdit) and adapters.adapter_names(model) == ["sv"]
    assert torch.equal(_logits(model, tokenizer), base_logits)
    again.revert()
    _assert_bit_exact(model, snapshot)


@pytest.mark.parametrize("export", ["adapter", "merged"])
def test_lora_fine_tune_output_holds_only_the_user_adapter(sv_registry, make_model, tokenizer, hparams,
                                                           trained_vector, attack_rows, tmp_path, export) -> None:
    import torch

    model = make_model()
    snapshot = _snapshot(model)
    vector_bytes = (trained_vector / "tensors.safetensors").read_bytes()
    editor = SecurityVectorEditor(hparams(export=export))
    result = editor.fine_tune(model, tokenizer, attack_rows, vector=trained_vector, out=tmp_path / "ft")
    tuned = _logits(model, tokenizer)
    files = _all_files(tmp_path / "ft")
    assert not any("sv" in part for f in files for part in Path(f).parts), files
    names = list(load_edit(tmp_path / "ft").tensors)
    assert names and not any(".sv." in n or "sv" in n.split(".") for n in names)
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert manifest["finetune"]["vector"]["digest"]  # a record of which vector was used, not the vector
    if export == "adapter":
        assert isinstance(result, UserAdapterEdit) and result.payload == ADAPTER_PAYLOAD
        assert adapters.adapter_names(model) == ["user"]
        config = json.loads((tmp_path / "ft" / "adapter" / "adapter_config.json").read_text())
        assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    else:
        assert isinstance(result, ParameterEdit) and result.payload == PARAMETER_DELTA
        assert not adapters.adapter_names(model)
    assert (trained_vector / "tensors.safetensors").read_bytes() == vector_bytes
    result.revert()
    _assert_bit_exact(model, snapshot)
    reapplied = load_edit(tmp_path / "ft").apply(model)
    assert torch.allclose(_logits(model, tokenizer), tuned, atol=1e-5)
    reapplied.revert()
    _assert_bit_exact(model, snapshot)


def test_saved_user_adapter_loads_in_plain_peft(make_model, tokenizer, hparams, attack_rows, tmp_path) -> None:
    import torch
    from peft import PeftModel

    model = make_model()
    result = SecurityVectorEditor(hparams()).fine_tune(model, tokenizer, attack_rows, out=tmp_path / "ft")
    tuned = _logits(model, tokenizer)
    result.revert()
    peft_model = PeftModel.from_pretrained(make_model(), str(tmp_path / "ft" / "adapter"))
    assert torch.allclose(_logits(peft_model, tokenizer), tuned, atol=1e-5)


def test_full_fine_tune_changes_the_base_and_exports_deltas(sv_registry, make_model, tokenizer, hparams,
                                                            trained_vector, attack_rows, tmp_path) -> None:
    import torch

    model = make_model()
    snapshot = _snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    editor = SecurityVectorEditor(hparams(user_mode="full", ft_lr=1e-3, ft_epochs=1))
    result = editor.fine_tune(model, tokenizer, attack_rows, vector=trained_vector, out=tmp_path / "full")
    assert isinstance(result, ParameterEdit)
    assert not list(adapters.tuner_layers(model))  # unload(): no LoRA parameter remains
    assert not any("lora" in name for name in model.state_dict())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, snapshot[k])]
    assert changed and flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert not any("lora" in n or "sv" in n.split(".") for n in load_edit(tmp_path / "full").tensors)
    result.revert()
    _assert_bit_exact(model, snapshot)


def test_plain_fine_tune_is_the_baseline(make_model, tokenizer, hparams, attack_rows) -> None:
    model = make_model()
    snapshot = _snapshot(model)
    result = SecurityVectorEditor(hparams()).fine_tune(model, tokenizer, attack_rows)
    assert result.metadata["finetune"]["vector"] is None
    assert result.metadata["finetune"]["train"]["guard_steps_checked"] == 0
    result.revert()
    _assert_bit_exact(model, snapshot)


def test_applied_vector_edit_is_used_then_detached(make_model, tokenizer, hparams, trained_vector,
                                                   attack_rows) -> None:
    from detox_plugins.security_vectors.editor import SecurityVector

    model = make_model()
    snapshot = _snapshot(model)
    vector = SecurityVector.from_any(trained_vector)
    adapters.attach(model, "sv", vector.config, vector.tensors)
    edit = SecurityVectorEdit(model, "sv", vector.config, vector.tensors, {"model": {"fingerprint": None}})
    result = SecurityVectorEditor(hparams()).fine_tune(model, tokenizer, attack_rows, vector=edit)
    assert not edit.applied and adapters.adapter_names(model) == ["user"]
    result.revert()
    _assert_bit_exact(model, snapshot)


def test_saved_vector_and_fine_tune_compose(sv_registry, make_model, tokenizer, hparams, trained_vector,
                                            attack_rows, tmp_path) -> None:
    """`detox eval --edit SV --edit FT --force`: the inactive vector changes nothing; reverts in any order.

    (--force: the attached vector changes the fingerprint the fine-tune's manifest expects.)"""
    import torch

    model = make_model()
    snapshot = _snapshot(model)
    SecurityVectorEditor(hparams()).fine_tune(model, tokenizer, attack_rows, vector=trained_vector,
                                              out=tmp_path / "ft").revert()
    alone = load_edit(tmp_path / "ft").apply(model)
    tuned = _logits(model, tokenizer)
    alone.revert()
    vector = load_edit(trained_vector).apply(model)
    tuned_edit = load_edit(tmp_path / "ft").apply(model, force=True)
    assert adapters.active_adapters(model) == ["user"]
    assert adapters.frozen_adapters(model) == ["sv", "user"]
    assert torch.allclose(_logits(model, tokenizer), tuned, atol=1e-6)
    vector.revert()
    assert adapters.adapter_names(model) == ["user"] and adapters.frozen_adapters(model) == ["user"]
    tuned_edit.revert()
    _assert_bit_exact(model, snapshot)


def test_an_attached_adapter_follows_the_model_into_eval_mode(make_model, tokenizer, hparams, attack_rows,
                                                              tmp_path) -> None:
    """peft builds LoRA layers in training mode; attached to a model in eval mode their dropout must be
    off, after fine-tuning and after re-applying the saved adapter (two forward passes agree)."""
    import torch

    from detox_plugins.security_vectors.editor import SecurityVectorEditor
    from registry import load_edit

    model = make_model()
    config = hparams(user_lora=dict(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"]),
                     export="adapter", ft_epochs=1)
    tuned = SecurityVectorEditor(config).fine_tune(model, tokenizer, attack_rows)
    ids = torch.tensor([[1, 5, 6, 7, 8]])

    def deterministic(m) -> bool:
        with torch.no_grad():
            return torch.equal(m(input_ids=ids).logits, m(input_ids=ids).logits)

    assert deterministic(model) and not any(m.training for m in model.modules())
    folder = tuned.save(tmp_path / "ft")
    tuned.revert()
    applied = load_edit(folder).apply(model, tokenizer)
    assert deterministic(model) and not any(m.training for m in model.modules())
    applied.revert()


def test_training_starts_from_the_seeded_adapter_whatever_ran_before(make_model, tokenizer, hparams,
                                                                     attack_rows) -> None:
    """peft draws lora_A at random: with ``seed`` the vector and the user adapter start from the same draw
    however the caller's generator was left, so a run gives the same result in any order; the caller's
    generator is left where it was."""
    import torch

    runs = []
    for caller_seed in (1, 2):
        model = make_model()  # seeds the generator itself: the caller's draw comes after it
        torch.manual_seed(caller_seed)
        vector = SecurityVectorEditor(hparams(sv_epochs=2)).edit(model, tokenizer, harmful_rows(SV_TASKS[:6]))
        vector.revert()
        torch.manual_seed(10 + caller_seed)
        tuned = SecurityVectorEditor(hparams(ft_epochs=1)).fine_tune(model, tokenizer, attack_rows[:6])
        runs.append((vector.tensors(), tuned.tensors(), tuned.metadata["finetune"]["train"]["train_loss"]))
        tuned.revert()
        config = SecurityVectorHyperParams.from_dict(hparams()).user_lora.to_lora_config()
        fresh = make_model()
        before = torch.random.get_rng_state()
        adapters.attach(fresh, "probe", config, seed=0)
        assert torch.equal(torch.random.get_rng_state(), before)
    (vector_1, user_1, loss_1), (vector_2, user_2, loss_2) = runs
    assert vector_1.keys() == vector_2.keys() and all(torch.equal(vector_1[k], vector_2[k]) for k in vector_1)
    assert user_1.keys() == user_2.keys() and all(torch.equal(user_1[k], user_2[k]) for k in user_1)
    assert loss_1 == loss_2
