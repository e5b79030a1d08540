"""The `detox` command, run as a real console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detox_plugins.cli import build_parser

DETOX = str(Path(sys.executable).parent / "detox")


def run(*args: str, env: dict | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([DETOX, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)


def test_plugins_json_lists_our_editors_and_a_broken_plugin(tmp_path):
    (tmp_path / "broken_detox.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    info = tmp_path / "broken_detox-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-detox\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[model_editors]\nbroken_detox = broken_detox\n")
    result = run("plugins", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["DINM"]["status"] == "ok" and rows["DINM"]["distribution"] == "detox-plugins"
    assert rows["broken_detox"]["status"] == "error"
    assert "this plugin is broken on purpose" in rows["broken_detox"]["error"]
    assert rows["broken_detox"]["distribution"] == "broken-detox"


def test_plugins_table(tmp_path):
    result = run("plugins")
    assert result.returncode == 0
    assert "DINM" in result.stdout and "weights" in result.stdout


def test_hparams_list_and_show_from_any_directory(tmp_path):
    listing = run("hparams", "list", cwd=str(tmp_path))
    assert "DINM/smollm2-135m" in listing.stdout
    shown = run("hparams", "show", "DINM/smollm2-135m", "--json", cwd=str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["alg_name"] == "DINM"


def test_hparams_show_a_user_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("alg_name: DINM\nlr: 1e-5\nnum_steps: 3\n")
    shown = run("hparams", "show", str(tmp_path / "mine"), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["lr"] == 1e-5


@pytest.mark.parametrize("args,fragment", [
    (("hparams", "show", "DINM/nope"), "no hyperparameter file 'DINM/nope'"),
    (("generate", "--model", "./missing-model", "hi"), "does not exist"),
])
def test_errors_are_one_line_without_traceback(args, fragment):
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detox: error:") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_yaml_key_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("alg_name: DINM\nnum_step: 3\n")
    result = run("hparams", "show", str(path))
    assert result.returncode == 2 and "did you mean 'num_steps'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback():
    result = run("--debug", "hparams", "show", "DINM/nope")
    assert result.returncode != 0 and "Traceback" in result.stderr


def _subcommands(parser):
    for action in parser._actions:  # argparse has no public walk over subparsers
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subcommands(sub))


def test_every_subcommand_help_has_an_example():
    names = []
    for name, sub in _subcommands(build_parser()):
        names.append(name)
        assert "example" in sub.format_help(), name
    assert {"plugins", "generate", "hparams list", "hparams show", "edit", "eval", "judge"} <= set(names)


@pytest.mark.integration
def test_generate_on_the_embedded_model():
    result = run("generate", "--max-new-tokens", "12", "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
