"""`detox edit` (DeStein hparams) and `detox steer` on a tiny model saved to a local folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

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


def parse(adder: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    adder(parser)
    return parser.parse_args(argv)


def test_edit_then_steer(destein_registry: Any, model_dir: Path, pair_file: Path, hparams_file: Path,
                         tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "edit"
    args = parse(commands.add_edit_arguments, ["--hparams", str(hparams_file), "--out", str(out), "--pairs",
                                               str(pair_file), "--model", str(model_dir), "--quiet"])
    assert commands.run_edit(args) == 0
    assert (out / "manifest.json").is_file() and (out / "tensors.safetensors").is_file()
    assert "DeStein edit saved" in capsys.readouterr().out
    assert commands.run_edit(args) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err

    args = parse(commands.add_steer_arguments, ["--edit", str(out), "--model", str(model_dir), "--alpha", "3",
                                                "--max-new-tokens", "4", "--width", "80", "you are", "hello"])
    assert commands.run_steer(args) == 0
    text = capsys.readouterr().out
    assert text.count("PROMPT:") == 2 and "alpha 3.0" in text and "additive/bias_fold" in text


def test_steer_builds_vectors_when_no_edit(model_dir: Path, pair_file: Path, hparams_file: Path, capsys: Any) -> None:
    args = parse(commands.add_steer_arguments, ["--hparams", str(hparams_file), "--model", str(model_dir),
                                                "--pairs", str(pair_file), "--max-new-tokens", "3", "--quiet",
                                                "--sample", "go"])
    assert commands.run_steer(args) == 0
    assert "PROMPT: go" in capsys.readouterr().out


def test_bad_pair_file_fails_before_loading_the_model(tmp_path: Path, hparams_file: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    args = parse(commands.add_edit_arguments, ["--hparams", str(hparams_file), "--out", str(tmp_path / "o"),
                                               "--pairs", str(bad), "--model", str(tmp_path / "missing")])
    assert commands.run_edit(args) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_shipped_hparams_name_resolves() -> None:
    hp = commands.load_hparams("DeStein/smollm2-135m")
    assert hp.alg_name == "DeStein" and hp.model_name == "smollm2-135m-instruct"


def test_side_by_side_layout() -> None:
    table = commands.side_by_side(["p"], ["a " * 30], ["b"], width=61)
    lines = table.splitlines()
    assert lines[0] == "PROMPT: p" and all(len(line) <= 61 for line in lines[1:])
