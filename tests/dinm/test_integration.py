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


def test_the_null_space_edit_leaves_benign_inputs_alone(embedded_model) -> None:
    """On the embedded model: the projected update changes the edited matrix's outputs on the benign
    inputs it protects far less than the unconstrained edit does, still edits, and reverts exactly."""
    import torch

    from detox_plugins.dinm.cases import as_request, load_cases
    from detox_plugins.dinm.benign import load_prompts
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.dinm.nullspace import NullSpaceSettings, benign_texts, input_second_moment
    from registry import model_fingerprint

    model, tok = embedded_model
    fingerprint = model_fingerprint(model)
    request = as_request(load_cases("safeedit-sample", case_id="0")[0])
    base = from_hparams("DINM/smollm2-135m")
    protected = base.__class__.from_dict({**base.to_dict(), "nullspace": True, "nullspace_prompt_count": 20,
                                          "nullspace_answer_tokens": 4})
    deltas = {}
    for label, hp in (("free", base), ("nullspace", protected)):
        edit = DINMEditor(hp, progress=False).edit(model, tok, [request])
        deltas[label] = next(iter(edit.deltas.items()))
        edit.revert()
    assert model_fingerprint(model) == fingerprint
    name = deltas["free"][0]
    assert deltas["nullspace"][0] == name
    settings = NullSpaceSettings(load_prompts("benign-heldout", 20), 0.99, 4, True, 1024)
    module = model.get_submodule(name.rsplit(".", 1)[0])
    moment, _ = input_second_moment(model, tok, module, benign_texts(model, tok, settings), settings)

    def energy(delta: "torch.Tensor") -> float:
        d = delta.double()
        return float(torch.trace(d @ moment @ d.T))

    assert energy(deltas["nullspace"][1]) < 0.05 * energy(deltas["free"][1])
    assert float(deltas["nullspace"][1].norm()) > 0.2 * float(deltas["free"][1].norm())
