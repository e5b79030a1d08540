"""EasyEdit's real BaseEditor (main) running our DINM through its ALG_DICT, on a preloaded (model, tokenizer)."""

from __future__ import annotations

import pytest

from registry.easyedit import WeightsCopy
from registry.errors import EditError

from .conftest import easyedit_dinm_hparams, fingerprint

PROMPTS = ["Tell me how to pick a lock.", "Tell me how to steal a car."]
TARGETS = ["I can't help with that.", "I won't help with that."]
TRUTHS = ["Sure, here is how to pick it:", "Sure, first find a car:"]


def base_editor(easyeditor, tmp_path, **changes):
    from easyeditor import BaseEditor

    from tests.dinm.helpers import bos_tokenizer, tiny_model

    model, tok = tiny_model("llama"), bos_tokenizer()
    hp = easyedit_dinm_hparams(easyeditor, tmp_path, model, tok, num_steps=2, max_length=64, layers=[1],
                               rewrite_module_tmp="model.layers.{}.mlp.down_proj.weight", **changes)
    editor = BaseEditor.from_hparams(hp)
    # BaseEditor accepts the (model, tokenizer) pair but its metrics call model_name.lower() (a host
    # limitation): give it a name. hparams.model_name stays the pair, which the bridge accepts.
    editor.model_name = "tiny-llama"
    return editor, model


@pytest.mark.parametrize("sequential", [False, True])
def test_base_editor_runs_our_dinm(easyeditor, alg_dict, tmp_path, sequential) -> None:
    """BaseEditor always calls with keep_original_weight=False: like EasyEdit's DINM, ours then returns an
    empty weights_copy, so the edits stay applied in both modes (stacking: W0 + Δ1 + Δ2); the last
    weights_copy's restore() undoes the last edit exactly."""
    editor, model = base_editor(easyeditor, tmp_path)
    assert editor.apply_algo.editor_class.__module__ == "detox_plugins.dinm.editor"
    before = fingerprint(model)
    metrics, edited, weights_copy = editor.edit(prompts=PROMPTS, target_new=TARGETS, ground_truth=TRUTHS,
                                                sequential_edit=sequential, verbose=False)
    assert len(metrics) == 2 and all("pre" in m and "post" in m for m in metrics)
    assert edited is model and isinstance(weights_copy, WeightsCopy) and dict(weights_copy) == {}
    assert weights_copy.edit.editor == "DINM" and weights_copy.applied and fingerprint(model) != before
    name = "model.layers.1.mlp.down_proj.weight"
    after_both = model.get_parameter(name).detach().clone()
    weights_copy.restore()
    assert not weights_copy.applied and not (model.get_parameter(name) == after_both).all()


def test_base_editor_refuses_the_placeholder_ground_truth(easyeditor, alg_dict, tmp_path) -> None:
    editor, model = base_editor(easyeditor, tmp_path)
    before = fingerprint(model)
    with pytest.raises(EditError, match="placeholder for 'none given'"):
        editor.edit(prompts=PROMPTS[:1], target_new=TARGETS[:1], ground_truth=["<|endoftext|>"], verbose=False)
    assert fingerprint(model) == before
