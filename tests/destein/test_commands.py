"""`detox edit --hparams DeStein/...` and `detox steer`, through the real `detox` parser, on a tiny model
saved to a local folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from detox_plugins.cli import main
from detox_plugins.destein import commands

from .conftest import TINY_PAIRS


@pytest.fixture
def model_dir(tmp_path: Path, llama: Any, tok: Any) -> Path:
    folder = tmp_path / "tiny-llama"
    llama.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def pair_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"toxic": t, "nontoxic": n}) for t, n in TINY_PAIRS))
    return path


@pytest.fixture
def hparams_file(tmp_path: Path) -> Path:
    path = tmp_path / "destein.yaml"
    path.write_text("alg_name: DeStein\nfusion: additive\napply: bias_fold\nalpha: 1.5\n"
                    "pairs: {num_pairs: 10, batch_size: 4}\n")
    return path


def detox(argv: list[str]) -> int:
    """Run ``detox ARGV`` through the parser the console script builds."""
    return main(argv)


def test_edit_then_steer(destein_registry: Any, model_dir: Path, pair_file: Path, hparams_file: Path,
                         tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "edit"
    argv = ["edit", "--hparams", str(hparams_file), "--out", str(out), "--pairs", str(pair_file),
            "--model", str(model_dir), "--quiet"]
    assert detox(argv) == 0
    assert (out / "manifest.json").is_file() and (out / "tensors.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "DeStein edit of" in printed and "saved the edit to" in printed and "vectors" in printed
    assert detox(argv) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err

    assert detox(["steer", "--vectors", str(out), "--model", str(model_dir), "--alpha", "3", "--max-new-tokens",
                  "4", "--width", "80", "you are", "hello"]) == 0
    text = capsys.readouterr().out
    assert text.count("PROMPT:") == 2 and "alpha 3.0" in text and "additive/bias_fold" in text


def test_edit_takes_hparams_overrides(destein_registry: Any, model_dir: Path, pair_file: Path,
                                      hparams_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "edit"
    assert detox(["edit", "--hparams", str(hparams_file), "--set", "alpha=0.25", "--set", "pairs.num_pairs=6",
                  "--pairs", str(pair_file), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hparams"]["alpha"] == 0.25 and manifest["hparams"]["pairs"]["num_pairs"] == 6


def test_steer_builds_vectors_when_no_edit(destein_registry: Any, model_dir: Path, pair_file: Path,
                                           hparams_file: Path, capsys: Any) -> None:
    assert detox(["steer", "--hparams", str(hparams_file), "--model", str(model_dir), "--pairs", str(pair_file),
                  "--max-new-tokens", "3", "--quiet", "--sample", "go"]) == 0
    assert "PROMPT: go" in capsys.readouterr().out


def test_bad_pair_file_fails_before_loading_the_model(destein_registry: Any, tmp_path: Path, hparams_file: Path,
                                                      capsys: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert detox(["edit", "--hparams", str(hparams_file), "--out", str(tmp_path / "o"), "--pairs", str(bad),
                  "--model", str(tmp_path / "missing")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_an_input_of_another_editor_is_refused(destein_registry: Any, tmp_path: Path, hparams_file: Path,
                                               capsys: Any) -> None:
    from detox_plugins.dinm import register_editors  # DINM's --cases is a flag only once DINM is installed

    class DINMPlugin:
        pass

    DINMPlugin.register_editors = staticmethod(register_editors)
    destein_registry.register_plugin(DINMPlugin(), name="dinm", distribution="detox-plugins", version="0.1.0")
    assert detox(["edit", "--hparams", str(hparams_file), "--cases", "safeedit-sample", "--out",
                  str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--cases is not an input of DeStein; it takes --pairs, --requests" in err


def test_side_by_side_layout() -> None:
    table = commands.side_by_side(["p"], ["a " * 30], ["b"], width=61)
    lines = table.splitlines()
    assert lines[0] == "PROMPT: p" and all(len(line) <= 61 for line in lines[1:])
