"""Judges: the refusal strings, alt-profanity-check, a local HF classifier, and the registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from detox_plugins.evaluation.judges import (
    REFUSAL_STRINGS,
    ClassifierJudge,
    RefusalJudge,
    get_judge,
    is_refusal,
    known_judges,
)
from registry.errors import DetoxError
from detox_plugins.evaluation.errors import JudgeError


def test_refusal_list_is_the_standard_29():
    assert len(REFUSAL_STRINGS) == 29
    assert len(set(REFUSAL_STRINGS)) == 29
    assert "I'm sorry" in REFUSAL_STRINGS and "I can't assist" in REFUSAL_STRINGS
    assert all("\u2019" not in s for s in REFUSAL_STRINGS)


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("Here is a recipe. Note that stealing is illegal.", True),  # substring anywhere
        ("Sure, here is how to bake bread:", False),
        ("i'm sorry", False),  # case-sensitive
        ("I\u2019m sorry, no.", False),  # curly apostrophe is not matched by default
        ("", False),
    ],
)
def test_is_refusal(text, refused):
    assert is_refusal(text) is refused


def test_is_refusal_normalizes_apostrophes_on_request():
    assert is_refusal("I\u2019m sorry, no.", normalize_apostrophes=True)


def test_refusal_judge_scores():
    judge = get_judge("refusal")
    assert (judge.name, judge.version) == ("refusal", "gcg-29")
    scores = judge.judge(["q1", "q2", "q3"], ["I cannot do that.", "Sure, here you go.", "   \n"])
    assert scores == [0.0, 1.0, 0.5]
    assert judge.label(["Sure."]) == [1.0]  # the responses-first spelling
    assert judge.judge(None, ["Sorry!"]) == [0.0]


def test_judge_rejects_mismatched_lengths():
    with pytest.raises(JudgeError, match="2 prompts but 1 responses"):
        RefusalJudge().judge(["a", "b"], ["x"])


def test_unknown_judge_lists_known_ones_and_closest():
    with pytest.raises(JudgeError) as info:
        get_judge("profanty")
    message = str(info.value)
    assert "'profanity'" in message and "did you mean" in message
    for name in known_judges():
        assert name in message
    assert isinstance(info.value, DetoxError)


def test_judge_spec_errors():
    with pytest.raises(JudgeError, match="needs a folder"):
        get_judge("classifier")
    with pytest.raises(JudgeError, match="takes no ':' argument"):
        get_judge("refusal:/x")
    with pytest.raises(JudgeError, match="no option"):
        get_judge("refusal", bogus=1)
    assert get_judge("refusal", normalize_apostrophes=True).version == "gcg-29+apostrophes"


# --- profanity --------------------------------------------------------------------------------


def test_profanity_judge_scores_profanity_high():
    pytest.importorskip(
        "profanity_check",
        reason="pip install --no-deps alt-profanity-check==1.9.1 && pip install scikit-learn==1.9.1 joblib==1.6.0",
    )
    judge = get_judge("profanity")
    assert judge.version.startswith("alt-profanity-check==1.9.1")
    scores = judge.judge(None, ["you are a fucking idiot", "How do I kill a Python process?", "Have a nice day"])
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > 0.5 > scores[1] and scores[2] < 0.5


def test_profanity_judge_missing_package_names_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # makes the import fail
    with pytest.raises(JudgeError, match=r"install it with: pip install \"detox-plugins\[eval\]\"  \(alt-profanity-check==1\.9\.1"):
        get_judge("profanity")


# --- classifier -------------------------------------------------------------------------------


def _manual_probs(folder: Path, texts: list[str]) -> list[float]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        probs = []
        for text in texts:  # one at a time: no padding involved
            logits = model(**tokenizer(text, return_tensors="pt")).logits
            probs.append(torch.softmax(logits, -1)[0, 1].item())
    return probs


def test_classifier_judge_probability_of_unsafe_label(classifier_dir):
    judge = get_judge(f"classifier:{classifier_dir}", batch_size=2)
    assert judge.name == "classifier" and judge.version.startswith(classifier_dir.name + "@")
    texts = ["sure here is how to make it", "sorry i cannot help", "hello world", "the sky is blue ."]
    scores = judge.judge(None, texts)
    assert scores == pytest.approx(_manual_probs(classifier_dir, texts), abs=1e-5)
    flipped = get_judge(f"classifier:{classifier_dir}", unsafe_label=0).judge(None, texts)
    assert [a + b for a, b in zip(scores, flipped)] == pytest.approx([1.0] * 4, abs=1e-5)
    by_name = get_judge(f"classifier:{classifier_dir}", unsafe_label="unsafe").judge(None, texts)
    assert by_name == pytest.approx(scores)


def test_classifier_judge_argmax_empty_and_truncation(classifier_dir):
    judge = ClassifierJudge(path=str(classifier_dir), mode="argmax")
    long_text = " ".join(["water"] * 2000)  # longer than the 512 positions: must be truncated
    scores = judge.judge(None, ["hello world", "", "  ", long_text])
    assert scores[1:3] == [0.5, 0.5]
    assert scores[0] in (0.0, 1.0) and scores[3] in (0.0, 1.0)
    probability = ClassifierJudge(path=str(classifier_dir)).judge(None, ["hello world"])[0]
    assert scores[0] == float(probability > 0.5)


def test_classifier_judge_prompt_response_needs_prompts(classifier_dir):
    judge = ClassifierJudge(path=str(classifier_dir), input="prompt_response")
    scores = judge.judge(["how do you bake bread ?"], ["sure here is how"])
    assert 0.0 <= scores[0] <= 1.0
    with pytest.raises(JudgeError, match="needs the prompts"):
        judge.judge(None, ["x"])


def test_classifier_judge_errors(tmp_path, classifier_dir):
    with pytest.raises(JudgeError, match="not found; download the model there beforehand"):
        get_judge(f"classifier:{tmp_path / 'missing'}")
    with pytest.raises(JudgeError, match="is not a Hugging Face model folder"):
        get_judge(f"classifier:{tmp_path}")  # exists but holds no model
    with pytest.raises(JudgeError, match="unsafe_label must be in 0..1"):
        get_judge(f"classifier:{classifier_dir}", unsafe_label=5)
    with pytest.raises(JudgeError, match="mode"):
        get_judge(f"classifier:{classifier_dir}", mode="vote")
