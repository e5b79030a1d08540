"""FT-L then DINM on the embedded SmolLM2-135M-Instruct: the written fact survives the detox edit,
the harmful prompt is refused, and reverting the composition restores every weight bit-for-bit."""

from __future__ import annotations

from registry import from_hparams
import pytest
import torch

pytestmark = pytest.mark.integration

#: A fact the base model does not know (it answers " the city of Zaroth.").
FACT = {"prompt": "The capital of the island nation of Zarkovia is", "target_new": "Velmora"}


def test_fact_then_detox_keeps_the_fact_refuses_and_reverts(embedded_model, real_registry) -> None:
    from detox_plugins.evaluation import datasets

    if not datasets.shipped_data_path("safeedit_sample.json").is_file():
        pytest.skip("detox_plugins/data/safeedit_sample.json is not there")
    import registry
    from detox_plugins.dinm import commands
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.dinm.protocol import as_request, evaluation_prompts
    from detox_plugins.evaluation.generate import generate
    from detox_plugins.evaluation.judges import is_refusal

    torch.set_num_threads(1)
    model, tok = embedded_model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hp = from_hparams("DINM/smollm2-135m")
    case = next(c for c in datasets.load_safeedit_sample() if c.case_id == commands.DEMO_CASE_ID)
    request = as_request(case)
    harmful = evaluation_prompts(request, hp)["post"]["DS"]

    def fact() -> str:
        return generate(model, tok, [FACT["prompt"]], max_new_tokens=6, use_chat_template=False, progress=False)[0]

    def answer() -> str:
        return generate(model, tok, [harmful], max_new_tokens=32, use_chat_template=hp.use_chat_template,
                        progress=False)[0]

    assert not fact().strip().startswith(FACT["target_new"]) and not is_refusal(answer())
    ft_class = registry.get_editor("FT")  # found through the ft-editor entry point
    steps = []
    try:
        steps.append(ft_class(registry.from_hparams("FT/smollm2-135m")).edit(model, tok, [FACT]))
        assert fact().strip().startswith(FACT["target_new"]), fact()
        steps.append(DINMEditor(hp).edit(model, tok, [request]))
        after_fact, after_answer = fact(), answer()
    finally:
        composed = registry.compose(steps) if steps else None
        if composed is not None:
            composed.revert()
    assert after_fact.strip().startswith(FACT["target_new"]), after_fact
    assert is_refusal(after_answer), after_answer
    now = model.state_dict()
    assert now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)
