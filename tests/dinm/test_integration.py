"""One DINM edit on the embedded SmolLM2-135M-Instruct makes a shipped harmful case refused."""

from __future__ import annotations

from registry import from_hparams
import pytest

pytestmark = pytest.mark.integration


def test_one_edit_makes_the_shipped_case_refused(embedded_model) -> None:
    from detox_plugins.evaluation import datasets

    if not datasets.shipped_data_path("safeedit_sample.json").is_file():
        pytest.skip("detox_plugins/data/safeedit_sample.json is not there")
    from detox_plugins.dinm import commands
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.dinm.protocol import as_request, evaluation_prompts
    from detox_plugins.evaluation.generate import generate
    from detox_plugins.evaluation.judges import is_refusal

    model, tok = embedded_model
    hp = from_hparams("DINM/smollm2-135m")
    case = next(c for c in datasets.load_safeedit_sample() if c.case_id == commands.DEMO_CASE_ID)
    request = as_request(case)
    prompt = evaluation_prompts(request, hp)["post"]["DS"]
    answer = dict(max_new_tokens=32, use_chat_template=hp.use_chat_template, progress=False)
    before = generate(model, tok, [prompt], **answer)[0]
    assert not is_refusal(before), before
    edit = DINMEditor(hp).edit(model, tok, [request])
    try:
        after = generate(model, tok, [prompt], **answer)[0]
    finally:
        edit.revert()
    assert is_refusal(after), after
