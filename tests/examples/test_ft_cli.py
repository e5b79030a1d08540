"""The FT example plugin through the installed `detox` console script (a subprocess, so only what pip
installed is used): `detox edit --hparams FT/...`, `detox apply`, `detox eval --edit` and an FT step in a
pipeline, on a tiny model folder with the embedded model's module names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..tiny import tiny_llama, tiny_tokenizer

DETOX = str(Path(sys.executable).parent / "detox")
FACT = {"prompt": "The capital of Zarkovia is", "target_new": "Velmora"}
FT_TENSOR = "model.layers.4.mlp.down_proj.weight"  # FT/smollm2-135m edits layer 4


def detox(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([DETOX, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ft-cli")
    tiny_llama(layers=6).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "fact.jsonl").write_text(json.dumps(FACT) + "\n")
    return root


def test_help_and_plugins_list_the_ft_editor(folder: Path) -> None:
    plugins = detox("plugins", "--json")
    assert plugins.returncode == 0, plugins.stderr
    rows = {row["name"]: row for row in json.loads(plugins.stdout)}
    assert rows["FT"]["distribution"] == "ft-editor" and rows["FT"]["status"] == "ok"
    help_text = detox("edit", "--help").stdout
    assert "FT" in help_text and "--requests FILE" in help_text and "[DINM, FT]" in help_text


def test_edit_apply_eval_and_a_pipeline_step(folder: Path) -> None:
    model, out = str(folder / "model"), folder / "ft-edit"
    made = detox("edit", "--hparams", "FT/smollm2-135m", "--requests", str(folder / "fact.jsonl"), "--model", model,
                 "--out", str(out), "--json", str(folder / "ft.json"))
    assert made.returncode == 0, made.stderr
    assert "FT edit of" in made.stdout and FT_TENSOR in made.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["editor"] == "FT" and manifest["distribution"] == "ft-editor"
    assert manifest["tensors"] == [FT_TENSOR] and manifest["footprint"]["additive"] is True

    applied = detox("apply", str(out), "--model", model)
    assert applied.returncode == 0, applied.stderr
    assert "(FT, parameter_delta)" in applied.stdout and FT_TENSOR in applied.stdout

    evaluated = detox("eval", "--model", model, "--edit", str(out), "--dataset", "benign", "--limit", "1",
                      "--max-new-tokens", "2", "--judge", "refusal", "--no-progress",
                      "--json", str(folder / "eval.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((folder / "eval.json").read_text())["edits"] == [str(out)]

    pipeline = folder / "ft-then-destein.yaml"
    pipeline.write_text(yaml.safe_dump({"steps": [
        {"hparams": "FT/smollm2-135m", "requests": [FACT], "name": "fact"},
        {"hparams": {"alg_name": "DeStein", "apply": "hook", "pairs": {"num_pairs": 4, "batch_size": 4}},
         "pairs": [{"toxic": "you are a stupid idiot", "nontoxic": "you are a kind person"}] * 4},
    ]}))
    composed = detox("edit", "--pipeline", str(pipeline), "--model", model, "--out", str(folder / "composed"))
    assert composed.returncode == 0, composed.stderr
    steps = json.loads((folder / "composed" / "manifest.json").read_text())["step_editors"]
    assert steps == ["FT", "DeStein"]


def test_a_flag_of_another_editor_is_refused_for_ft(folder: Path) -> None:
    result = detox("edit", "--hparams", "FT/smollm2-135m", "--cases", "safeedit-sample", "--model",
                   str(folder / "model"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--cases is not an input of FT; it takes --requests")
