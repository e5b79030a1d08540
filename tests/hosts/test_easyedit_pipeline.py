"""The shipped pipeline destein-rome-dinm on the embedded SmolLM2-135M-Instruct: DeStein steers, EasyEdit's own ROME
(through the reverse bridge) writes a fictional fact, DINM detoxifies on SafeEdit sample case 0. After the whole
pipeline the fact is recalled and the case's harmful prompt is refused; the composed edit reverts bit for bit,
saves, and replays on a freshly loaded model to the same weights. (The order ROME -> DINM -> DeStein,
rome-dinm-destein, runs the same way but loses both on this model; see that file.)"""

from __future__ import annotations

import pytest
import torch

from .conftest import fingerprint

pytestmark = pytest.mark.integration

FACT_PROMPT = "The capital of the island nation of Zarkovia is"  # base model: " the city of Zaroth."
FACT = "Velmora"


def test_destein_then_rome_then_dinm_on_the_embedded_model(easyeditor, real_registry, tmp_path) -> None:
    import registry
    from detox_plugins.dinm import commands
    from detox_plugins.dinm.protocol import as_request, evaluation_prompts
    from detox_plugins.evaluation import datasets
    from detox_plugins.evaluation.generate import generate
    from detox_plugins.evaluation.judges import is_refusal
    from registry.models import load_model

    model, tok = load_model("smollm2-135m-instruct")
    assert tok.decode(tok(" Velmora, Paris.")["input_ids"]) == " Velmora, Paris."  # the rebuilt tokenizer
    dinm = registry.from_hparams("DINM/smollm2-135m")
    case = next(c for c in datasets.load_safeedit_sample() if c.case_id == commands.DEMO_CASE_ID)
    harmful = evaluation_prompts(as_request(case), dinm)["post"]["DS"]

    def fact() -> str:
        return generate(model, tok, [FACT_PROMPT], max_new_tokens=6, use_chat_template=False, progress=False)[0]

    def answer() -> str:
        return generate(model, tok, [harmful], max_new_tokens=32, use_chat_template=dinm.use_chat_template,
                        progress=False)[0]

    before = fingerprint(model)
    assert FACT not in fact() and not is_refusal(answer())
    composed = registry.compose("destein-rome-dinm", model, tok)
    try:
        assert [step.editor for step in composed.steps] == ["DeStein", "ROME", "DINM"]
        recalled, refused = fact(), answer()
        edited = fingerprint(model)
        saved = composed.save(tmp_path / "pipeline")
    finally:
        composed.revert()
    assert fingerprint(model) == before  # bit for bit
    assert FACT in recalled, recalled
    assert is_refusal(refused), refused

    fresh, _ = load_model("smollm2-135m-instruct")
    replayed = registry.load_edit(saved).apply(fresh, tok)
    assert fingerprint(fresh) == edited
    replayed.revert()
    assert fingerprint(fresh) == before
