"""Registration through the host, shipped hparams by name, and the command-line entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detox_plugins.cli import main
from detox_plugins.security_vectors.editor import SecurityVectorEditor

from .conftest import SV_TASKS
from .tiny import harmful_rows


@pytest.fixture
def sv_registry(editor_registry):
    import detox_plugins.security_vectors as plugin

    editor_registry.register_plugin(plugin, name="security_vectors", distribution="detox-plugins", version="0.1.0")
    return editor_registry


def test_registered_by_name_and_aliases(sv_registry) -> None:
    from registry import from_hparams, get_editor

    for name in ("SecurityVectors", "securityvectors", "sv", "security_vectors"):
        assert get_editor(name) is SecurityVectorEditor
    info = next(i for i in sv_registry.list_editors() if i.name == "SecurityVectors")
    assert info.kind == "training" and info.error is None
    hp = from_hparams("SecurityVectors/smollm2-135m")
    assert type(hp).__name__ == "SecurityVectorHyperParams" and hp.sv_adapter_name == "sv"
    assert from_hparams("SecurityVectors/llama-7b").user_mode == "full"


def test_importing_the_plugin_is_cheap() -> None:
    import subprocess
    import sys

    code = ("import sys, detox_plugins.security_vectors; "
            "print(any(m in sys.modules for m in ('torch', 'peft', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.fixture
def model_folder(make_model, tokenizer, tmp_path) -> Path:
    folder = tmp_path / "tiny-model"
    make_model().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_edit_then_finetune_through_the_parser(sv_registry, model_folder, hparams, attack_rows, tmp_path,
                                               capsys) -> None:
    import yaml

    from registry.saved import load_edit
    from registry.models import load_model

    config = hparams(model_name=str(model_folder))
    hp_file = tmp_path / "sv.yaml"
    hp_file.write_text(yaml.safe_dump(config))
    harmful = _jsonl(tmp_path / "harmful.jsonl", harmful_rows(SV_TASKS))
    attack = _jsonl(tmp_path / "attack.jsonl", attack_rows)
    assert main(["edit", "--hparams", str(hp_file), "--data", str(harmful), "--out", str(tmp_path / "sv"),
                 "--json", str(tmp_path / "sv.json")]) == 0
    printed = capsys.readouterr().out
    assert "SecurityVectors edit of" in printed and f"harmful rows {len(SV_TASKS)}" in printed
    assert json.loads((tmp_path / "sv.json").read_text())["inputs"] == {"data": str(harmful)}
    assert main(["finetune", "--hparams", str(hp_file), "--data", str(attack), "--vector", str(tmp_path / "sv"),
                 "--out", str(tmp_path / "ft")]) == 0
    assert "vector on" in capsys.readouterr().out
    assert main(["finetune", "--hparams", str(hp_file), "--data", str(attack), "--out", str(tmp_path / "plain")]) == 0
    assert "plain fine-tune" in capsys.readouterr().out
    model, tokenizer = load_model(str(model_folder))
    edit = load_edit(tmp_path / "ft").apply(model, tokenizer)  # what `detox eval --edit DIR` does
    assert edit.metadata["finetune"]["vector"] is not None
    edit.revert()
    assert main(["finetune", "--hparams", str(hp_file), "--data", str(attack), "--out", str(tmp_path / "ft")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["finetune", "--hparams", str(hp_file), "--data", str(attack), "--vector", str(tmp_path / "ft"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "not a security vector" in capsys.readouterr().err


def test_detox_command_dispatch(sv_registry, model_folder, hparams, attack_rows, tmp_path) -> None:
    import yaml

    hp_file = tmp_path / "sv.yaml"
    hp_file.write_text(yaml.safe_dump(hparams(model_name=str(model_folder), ft_epochs=1)))
    attack = _jsonl(tmp_path / "attack.jsonl", attack_rows)
    code = main(["finetune", "--hparams", str(hp_file), "--data", str(attack), "--out", str(tmp_path / "ft")])
    assert code == 0 and (tmp_path / "ft" / "manifest.json").is_file()
