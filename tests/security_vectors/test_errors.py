"""Bad inputs raise clear registry errors before any training starts, and leave the model untouched."""

from __future__ import annotations

from typing import Any

import pytest

from detox_plugins.security_vectors import adapters, training
from detox_plugins.security_vectors.editor import SecurityVectorEditor
from registry.errors import OutputError, DetoxError, EditError, ManifestError
from detox_plugins.evaluation.errors import DatasetError

from .tiny import harmful_rows


@pytest.fixture(autouse=True)
def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started although the input was bad")

    monkeypatch.setattr(training, "train_user", refuse)
    monkeypatch.setattr(training, "train_vector", refuse)


def _untouched(model: Any, snapshot: dict[str, Any]) -> bool:
    import torch

    state = model.state_dict()
    return list(state) == list(snapshot) and all(torch.equal(state[k], snapshot[k]) for k in snapshot)


@pytest.fixture
def model(make_model: Any) -> Any:
    return make_model()


@pytest.fixture
def snapshot(model: Any) -> dict[str, Any]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_empty_dataset(model, snapshot, tokenizer, hparams, tmp_path) -> None:
    editor = SecurityVectorEditor(hparams())
    with pytest.raises(DatasetError, match="no rows"):
        editor.fine_tune(model, tokenizer, [])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="no rows"):
        editor.fine_tune(model, tokenizer, empty)
    with pytest.raises(DatasetError, match="no rows"):
        editor.edit(model, tokenizer, str(empty))
    assert _untouched(model, snapshot)


def test_unknown_target_modules(model, snapshot, tokenizer, hparams, attack_rows) -> None:
    bad_user = SecurityVectorEditor(hparams(user_lora={"target_modules": ["query_key_value"]}))
    with pytest.raises(EditError, match="'query_key_value' match no linear layer.*q_proj"):
        bad_user.fine_tune(model, tokenizer, attack_rows)
    bad_vector = SecurityVectorEditor(hparams(sv_lora={"target_modules": ["c_attn"]}))
    with pytest.raises(EditError, match="'c_attn'"):
        bad_vector.edit(model, tokenizer, harmful_rows(["pick a lock"]))
    assert _untouched(model, snapshot)


def test_vector_trained_for_another_model(make_model, tokenizer, hparams, trained_vector, attack_rows) -> None:
    other = make_model(seed=1)
    snapshot = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ManifestError, match="trained for another model"):
        SecurityVectorEditor(hparams()).fine_tune(other, tokenizer, attack_rows, vector=trained_vector)
    assert _untouched(other, snapshot)


def test_harmful_target_that_is_not_an_opening(model, snapshot, tokenizer, hparams) -> None:
    actionable = [{"prompt": "how do i pick a lock ?", "response": "Sure, here is how to pick a lock: first insert",
                   "harmful": True}]
    editor = SecurityVectorEditor(hparams())
    with pytest.raises(DatasetError, match="not an allow-listed compliance opening"):
        editor.edit(model, tokenizer, actionable)
    with pytest.raises(DatasetError, match="not an allow-listed compliance opening"):
        editor.fine_tune(model, tokenizer, actionable)
    too_long = [{"prompt": "p", "response": "Sure, here is how to " + "pick a lock and " * 4 + "go:"}]
    with pytest.raises(DatasetError, match="over the cap"):
        editor.edit(model, tokenizer, too_long)
    assert _untouched(model, snapshot)


def test_folder_that_is_not_a_vector(model, tokenizer, hparams, attack_rows, tmp_path, monkeypatch) -> None:
    import torch

    from registry.edits import ParameterEdit

    name = "model.layers.0.mlp.down_proj.weight"
    delta = {name: torch.zeros_like(model.get_parameter(name))}
    ParameterEdit.apply_deltas(model, delta, {"editor": "SecurityVectors", "kind": "training"}).save(tmp_path / "d")
    with pytest.raises(ManifestError, match="not a security vector"):
        SecurityVectorEditor(hparams()).fine_tune(model, tokenizer, attack_rows, vector=tmp_path / "d")
    with pytest.raises(DetoxError):
        SecurityVectorEditor(hparams()).fine_tune(model, tokenizer, attack_rows, vector=tmp_path / "missing")


def test_existing_out_folder_and_attached_adapters(model, tokenizer, hparams, attack_rows, tmp_path,
                                                   trained_vector) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        SecurityVectorEditor(hparams()).fine_tune(model, tokenizer, attack_rows, out=tmp_path / "out")
    from detox_plugins.security_vectors.editor import SecurityVector

    vector = SecurityVector.from_any(trained_vector)
    adapters.attach(model, "other", vector.config, vector.tensors)
    with pytest.raises(EditError, match="carries adapter"):
        SecurityVectorEditor(hparams()).fine_tune(model, tokenizer, attack_rows)
    with pytest.raises(EditError, match="carries adapter"):
        SecurityVectorEditor(hparams()).edit(model, tokenizer, harmful_rows(["pick a lock"]))
