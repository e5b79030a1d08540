"""Composed edits: revert newest first, one folder on disk, replay on load, all-or-nothing."""

from __future__ import annotations

import json

import pytest
import torch

import registry
from registry import compose, load_edit
from registry.compose import ConflictError
from registry.errors import EditError
from registry.hookspecs import hookimpl

from ..resign import resign
from ..tiny import tiny_llama
from .scale_editor import ScaleEditor, ScaleHyperParams, ScalePlugin
from .test_edits import REQUEST, assert_same_state, state


class StackScaleEditor(ScaleEditor):
    """The scale editor, declaring that its deltas may stack on a tensor an earlier edit changed."""

    name = "StackScale"
    aliases = ()
    hparams_class = ScaleHyperParams
    stacks = True


class StackScalePlugin:
    @hookimpl
    def register_editors(self, register):
        register(StackScaleEditor)


@pytest.fixture
def scale_registry(editor_registry):
    editor_registry.register_plugin(ScalePlugin(), name="scale-plugin", distribution="scale-dist", version="1.2.3")
    editor_registry.register_plugin(StackScalePlugin(), name="stack-plugin", distribution="scale-dist",
                                    version="1.2.3")
    return editor_registry


def three_edits(model, editor=StackScaleEditor):
    return [editor({"alg_name": editor.name, "layer": layer, "factor": f}).edit(model, None, [REQUEST])
            for layer, f in ((0, 0.5), (1, -0.25), (0, 0.125))]  # the third edits the first's tensor again


def test_composed_revert_is_bit_exact_in_reverse_order(scale_registry):
    model = tiny_llama()
    before = state(model)
    composed = compose(three_edits(model))
    composed.revert()
    assert_same_state(model, before)


def test_composed_save_load_apply_replays_every_step(scale_registry, tmp_path):
    model = tiny_llama()
    composed = compose(three_edits(model))
    edited = state(model)
    out = composed.save(tmp_path / "pipeline")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == ["step-00-stackscale", "step-01-stackscale", "step-02-stackscale"]
    assert all((out / step / "manifest.json").is_file() for step in manifest["steps"])
    composed.revert()

    fresh = tiny_llama()
    replayed = load_edit(out).apply(fresh)
    assert isinstance(replayed, registry.ComposedEdit)
    assert_same_state(fresh, edited)
    replayed.revert()
    assert_same_state(fresh, state(tiny_llama()))


def test_a_failing_step_undoes_the_steps_before_it(scale_registry, tmp_path):
    model = tiny_llama()
    out = compose(three_edits(model)).save(tmp_path / "pipeline")
    (out / "step-02-stackscale" / "tensors.safetensors").write_bytes(b"damaged")
    resign(out)  # past the digest check: steps 0 and 1 apply, then step 2 fails
    fresh = tiny_llama()
    before = state(fresh)
    with pytest.raises(registry.ManifestError, match="not a valid safetensors"):
        load_edit(out).apply(fresh)
    assert_same_state(fresh, before)


def test_compose_rejects_bad_input(scale_registry):
    model = tiny_llama()
    with pytest.raises(EditError, match="at least one edit"):
        compose([])
    edit = ScaleEditor({"alg_name": "Scale"}).edit(model, None, [REQUEST])
    other = ScaleEditor({"alg_name": "Scale"}).edit(tiny_llama(seed=3), None, [REQUEST])
    with pytest.raises(EditError, match="same model"):
        compose([edit, other])
    edit_state = state(model)
    edit.revert()
    with pytest.raises(EditError, match="already reverted"):
        compose([edit])
    assert not torch.equal(state(model)["model.layers.0.mlp.down_proj.weight"],
                           edit_state["model.layers.0.mlp.down_proj.weight"])


def test_a_tensor_edited_twice_is_refused_unless_the_editor_declares_stacking(scale_registry):
    model = tiny_llama()
    edits = three_edits(model, editor=ScaleEditor)  # Scale's footprint is not stackable
    edited = state(model)
    with pytest.raises(ConflictError, match=r"\(nothing was changed\): edit 3 \(Scale\) vs edit 1 \(Scale\): "
                                            r"both change model\.layers\.0\.mlp\.down_proj\.weight") as info:
        compose(edits)
    assert [c.rule for c in info.value.conflicts] == ["same-tensor"]
    assert_same_state(model, edited)  # compose changed nothing
    composed = compose(edits, check_conflicts=False)  # the caller may insist; revert is still exact
    composed.revert()
    assert_same_state(model, state(tiny_llama()))


def test_composed_footprint_and_description_list_every_step(scale_registry):
    model = tiny_llama()
    composed = compose(three_edits(model))
    rows = composed.describe()
    assert [r["editor"] for r in rows] == ["StackScale"] * 3
    assert rows[1]["footprint"]["writes"] == ["model.layers.1.mlp.down_proj.weight"]
    assert composed.footprint().writes == {"model.layers.0.mlp.down_proj.weight",
                                           "model.layers.1.mlp.down_proj.weight"}
    composed.revert()
