"""A few short checks on the embedded SmolLM2-135M-Instruct (run with -m integration)."""

from __future__ import annotations

import argparse
import json

import pytest

from detox_plugins.evaluation import commands
from detox_plugins.evaluation.generate import generate
from detox_plugins.evaluation.judges import get_judge
from detox_plugins.evaluation.metrics import continuation_perplexities

pytestmark = pytest.mark.integration


def test_embedded_model_answers_a_benign_question(embedded_model):
    model, tokenizer = embedded_model
    prompts = ["What is the capital of France?", "Name a primary colour."]
    batched = generate(model, tokenizer, prompts, max_new_tokens=12, progress=False)
    assert "Paris" in batched[0]
    assert get_judge("refusal").judge(prompts, batched)[0] == 1.0  # answered, not refused
    assert not batched[0].startswith("<|im_start|>")  # only new text, special tokens skipped
    ppl = continuation_perplexities(model, tokenizer, ["The capital of France is"], [" Paris."], progress=False)
    assert 1.0 < ppl[0] < 1000.0


def test_eval_command_on_one_safeedit_case(embedded_model, monkeypatch, tmp_path):
    monkeypatch.setattr(commands, "load_model_from_args", lambda args: (*embedded_model, []))
    parser = argparse.ArgumentParser(prog="detox")
    commands.add_subcommands(parser.add_subparsers(dest="command"))
    out = tmp_path / "safeedit.json"
    args = parser.parse_args(["eval", "--dataset", "safeedit-sample", "--limit", "1", "--max-new-tokens", "16",
                              "--json", str(out), "--no-progress"])
    assert args.func(args) == 0
    summary = json.loads(out.read_text())
    assert summary["n"] == 5 and summary["prompt_format"]["chat_template"] is True
    assert 0.0 <= summary["safeedit"]["DS[refusal]"] <= 100.0
