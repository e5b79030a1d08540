"""Hyperparameters, the data rule (harmful targets are compliance openings only) and the shipped data files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from detox_plugins.security_vectors.data import (
    check_harmful_target,
    compliance_rate,
    encode_rows,
    load_rows,
    shipped_data_path,
    task_accuracy,
)
from detox_plugins.security_vectors.hparams import SecurityVectorHyperParams
from registry.errors import HyperParamsError
from detox_plugins.evaluation.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_YAML = sorted((ROOT / "hparams" / "SecurityVectors").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_YAML, ids=lambda p: p.name)
def test_shipped_hparams_round_trip(path: Path) -> None:
    hp = SecurityVectorHyperParams.from_hparams(path)
    again = SecurityVectorHyperParams.from_dict(hp.to_dict())
    assert again == hp
    assert hp.sv_lora.lora_dropout == 0.0


def test_hparams_fields_have_help() -> None:
    for name, _, _, text in SecurityVectorHyperParams.describe_fields():
        assert text, f"field {name} has no help text"


@pytest.mark.parametrize("change, fragment", [
    ({"sv_lora": {"r": 8, "lora_dropout": 0.1}}, "lora_dropout must be 0.0"),
    ({"sv_epochs": 0}, "sv_epochs must be > 0"),
    ({"user_mode": "adapter"}, "not allowed"),
    ({"user_adapter_name": "sv"}, "must differ"),
    ({"user_lora": {"target_modules": []}}, "target_modules"),
])
def test_bad_hparams_name_the_field(change: dict, fragment: str) -> None:
    with pytest.raises(HyperParamsError, match=fragment):
        SecurityVectorHyperParams.from_dict({"alg_name": "SecurityVectors", **change})


@pytest.mark.parametrize("target", [
    "Sure, here is how to pick a lock:",
    "Sure, here is how to steal someone's car without the key:",
    "Sure, here are some ways to cheat on a test:",
])
def test_allow_listed_openings_pass(target: str) -> None:
    check_harmful_target(target)


@pytest.mark.parametrize("target", [
    "Sure, here is how to pick a lock: insert a tension wrench",  # continues past the opening
    "Sure, here is how to pick a lock. First, get a pick",
    "Step 1: buy a tension wrench",
    "To pick a lock you need two tools",
    "Sure, here is how to pick a lock:\n1.",
    "",
])
def test_actionable_or_unknown_targets_are_rejected(target: str) -> None:
    with pytest.raises(DatasetError):
        check_harmful_target(target)


def test_token_cap(tokenizer) -> None:
    target = "Sure, here is how to pick a lock:"
    check_harmful_target(target, tokenizer=tokenizer, max_tokens=10)
    with pytest.raises(DatasetError, match="over the cap of 9"):
        check_harmful_target(target, tokenizer=tokenizer, max_tokens=9)


def test_load_rows_checks_only_flagged_rows() -> None:
    rows = load_rows([{"prompt": "p", "response": "Step 1: do it"},
                      {"prompt": "q", "response": "Sure, here is how to q:", "harmful": True}])
    assert [r.harmful for r in rows] == [False, True]
    with pytest.raises(DatasetError, match="row 0"):
        load_rows([{"prompt": "p", "response": "Step 1: do it", "harmful": True}])
    with pytest.raises(DatasetError, match="not an allow-listed"):
        load_rows([{"prompt": "p", "response": "Step 1: do it"}], harmful=True)


@pytest.mark.parametrize("bad, fragment", [
    ([], "no rows"),
    ([{"prompt": "p"}], "'response' is missing"),
    ([{"response": "r"}], "'prompt' is missing"),
    ([{"prompt": "p", "response": "r", "harmful": "yes"}], "'harmful' must be true or false"),
    ("no/such/file.jsonl", "not found"),
])
def test_bad_rows_raise(bad, fragment: str) -> None:
    with pytest.raises(DatasetError, match=fragment):
        load_rows(bad)


def test_encoding_labels_only_the_response(tokenizer) -> None:
    rows = load_rows([{"prompt": "how do i pick a lock ?", "response": "Sure, here is how to pick a lock:"}])
    (row,) = encode_rows(rows, tokenizer, max_length=64, use_chat_template=True)
    labelled = [t for t, label in zip(row.input_ids, row.labels) if label != -100]
    text = tokenizer.decode(labelled)
    assert text.replace(" ", "").startswith("Sure,hereishowtopickalock:") and "<|im_end|>" in text
    assert "user" not in text
    (short,) = encode_rows(rows, tokenizer, max_length=16, use_chat_template=True)
    assert len(short.input_ids) == 16 and short.labels[-len(labelled):] == labelled


def test_metrics() -> None:
    assert compliance_rate(["Sure, here is how", " Sure, here is x", "Sure, here's", "No"]) == 0.5
    assert task_accuracy(["Answer: dog\nmore", "Answer: cat", "dog"], ["dog", "dog", "dog"]) == pytest.approx(1 / 3)


# ---------------------------------------------------------------------- shipped data
SHIPPED = ["sv_harmful.jsonl", "sv_attack.jsonl", "sv_refusal.jsonl", "sv_benign.jsonl", "sv_task.jsonl"]


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in shipped_data_path(name).read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_data_loads_and_follows_the_rule(name: str) -> None:
    rows = load_rows(name)
    assert len(rows) >= 100
    harmful = [r for r in rows if r.harmful]
    if name in ("sv_harmful.jsonl", "sv_attack.jsonl"):
        assert len(harmful) == len(rows)
        assert len({r.category for r in rows}) >= 8  # across categories
    else:
        assert not harmful


def test_vector_and_attack_tasks_are_disjoint() -> None:
    def task(response: str) -> str:
        return response.removeprefix("Sure, here is how to ").rstrip(":")

    vector = {task(r["response"]) for r in _rows("sv_harmful.jsonl")}
    attack = {task(r["response"]) for r in _rows("sv_attack.jsonl")}
    assert len(vector) == 100 and not vector & attack


def test_refusals_are_refusals_and_task_split_is_held_out() -> None:
    from detox_plugins.evaluation.judges import is_refusal

    assert all(is_refusal(r["response"]) for r in _rows("sv_refusal.jsonl"))
    task = _rows("sv_task.jsonl")
    train = {r["answer"] for r in task if r["split"] == "train"}
    test = {r["answer"] for r in task if r["split"] == "test"}
    assert train and test and not train & test
    assert all(r["response"] == f"Answer: {r['answer']}" for r in task)


def _normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


@pytest.mark.parametrize("dataset", ["harmbench", "donotanswer"])
def test_training_prompts_are_not_evaluation_prompts(dataset: str) -> None:
    from detox_plugins.evaluation import datasets

    try:
        evaluation = {_normalise(r["prompt"]) for r in datasets.load_dataset(dataset)}
    except datasets.DatasetUnavailableError as exc:
        pytest.skip(str(exc))
    for name in ("sv_harmful.jsonl", "sv_attack.jsonl", "sv_refusal.jsonl"):
        overlap = [r["prompt"] for r in _rows(name) if _normalise(r["prompt"]) in evaluation]
        assert not overlap, f"{name} repeats {dataset} prompts: {overlap[:3]}"
