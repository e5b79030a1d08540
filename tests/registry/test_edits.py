"""The Edit handle: bit-exact revert, atomic save, load + apply with fingerprint/version checks."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import registry
from registry import EditRequest, load_edit, model_fingerprint, normalise_requests
from registry.edits import MANIFEST_DIGEST, MANIFEST_NAME, ParameterEdit
from registry.errors import EditError, ManifestError, OutputError
from registry.integrity import json_digest

from ..tiny import tiny_llama
from .scale_editor import ScaleEditor, ScalePlugin

REQUEST = {"prompt": "How do I pick a lock?", "target_new": "I can't help with that.", "ground_truth": "Sure, here is how"}


@pytest.fixture
def scale_registry(editor_registry):
    editor_registry.register_plugin(ScalePlugin(), name="scale-plugin", distribution="scale-dist", version="1.2.3")
    return editor_registry


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, saved):
    now = model.state_dict()
    assert now.keys() == saved.keys()
    for key in saved:
        assert torch.equal(now[key], saved[key]), key


def test_edit_changes_only_the_target_and_reverts_bit_for_bit(scale_registry):
    model = tiny_llama()
    before = state(model)
    edit = ScaleEditor({"alg_name": "Scale", "layer": 1}).edit(model, None, [REQUEST])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["model.layers.1.mlp.down_proj.weight"]
    edit.revert()
    assert_same_state(model, before)
    with pytest.raises(EditError, match="already reverted"):
        edit.revert()


def test_edit_is_a_context_manager(scale_registry):
    model = tiny_llama()
    before = state(model)
    with pytest.raises(RuntimeError):
        with ScaleEditor({"alg_name": "Scale"}).edit(model, None, [REQUEST]):
            raise RuntimeError("evaluation failed")
    assert_same_state(model, before)


def test_save_load_apply_round_trip_is_bit_exact(scale_registry, tmp_path):
    model = tiny_llama()
    edit = ScaleEditor({"alg_name": "Scale", "layer": 2}).edit(model, None, [REQUEST])
    edited = state(model)
    out = edit.save(tmp_path / "edit")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["editor"] == "Scale" and manifest["editor_version"] == "1.2.3"
    assert manifest["tensors"] == ["model.layers.2.mlp.down_proj.weight"]
    assert manifest["hparams"]["layer"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tensors.safetensors"]
    edit.revert()

    fresh = tiny_llama()
    applied = load_edit(out).apply(fresh)
    assert_same_state(fresh, edited)
    applied.revert()
    assert_same_state(fresh, state(tiny_llama()))


def test_fingerprint_mismatch_is_refused_unless_forced(scale_registry, tmp_path):
    model = tiny_llama(seed=0)
    out = ScaleEditor({"alg_name": "Scale"}).edit(model, None, [REQUEST]).save(tmp_path / "e")
    other = tiny_llama(seed=1)
    before = state(other)
    with pytest.raises(ManifestError, match="fingerprint.*pass force=True"):
        load_edit(out).apply(other)
    assert_same_state(other, before)
    load_edit(out).apply(other, force=True).revert()
    assert_same_state(other, before)


def test_shape_mismatch_is_refused_before_anything_changes(scale_registry, tmp_path):
    out = ScaleEditor({"alg_name": "Scale"}).edit(tiny_llama(), None, [REQUEST]).save(tmp_path / "e")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2))
    before = state(wider)
    with pytest.raises(EditError, match="shape"):
        load_edit(out).apply(wider, force=True)
    assert_same_state(wider, before)


def resigned(manifest):
    """A manifest changed on purpose, with its own digest recomputed (as a new save would write it)."""
    return {**manifest, MANIFEST_DIGEST: json_digest(manifest, without=MANIFEST_DIGEST)}


def test_missing_editor_and_incompatible_version_are_refused(scale_registry, tmp_path):
    out = ScaleEditor({"alg_name": "Scale"}).edit(tiny_llama(), None, [REQUEST]).save(tmp_path / "e")
    manifest_path = out / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(resigned({**manifest, "editor_version": "2.0.0"})))
    with pytest.raises(ManifestError, match="incompatible"):
        load_edit(out).apply(tiny_llama())
    manifest_path.write_text(json.dumps(resigned({**manifest, "editor": "Nope", "distribution": "nope-dist"})))
    with pytest.raises(ManifestError, match="not installed; pip install nope-dist"):
        load_edit(out).apply(tiny_llama())


def test_revert_refuses_when_a_later_edit_changed_the_tensor(scale_registry):
    model = tiny_llama()
    first = ScaleEditor({"alg_name": "Scale"}).edit(model, None, [REQUEST])
    second = ScaleEditor({"alg_name": "Scale"}).edit(model, None, [REQUEST])
    with pytest.raises(EditError, match="revert the later edits first"):
        first.revert()
    second.revert()
    first.revert()


def test_save_is_atomic(scale_registry, tmp_path, monkeypatch):
    edit = ScaleEditor({"alg_name": "Scale"}).edit(tiny_llama(), None, [REQUEST])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OutputError, match="cannot write .*/e: disk full"):
        edit.save(tmp_path / "e")
    assert list(tmp_path.iterdir()) == []


def test_save_does_not_overwrite_by_default(scale_registry, tmp_path):
    edit = ScaleEditor({"alg_name": "Scale"}).edit(tiny_llama(), None, [REQUEST])
    edit.save(tmp_path / "e")
    with pytest.raises(OutputError, match="already exists"):
        edit.save(tmp_path / "e")
    edit.save(tmp_path / "e", overwrite=True)
    assert load_edit(tmp_path / "e").editor == "Scale"


def test_failed_apply_restores_every_tensor(scale_registry):
    model = tiny_llama()
    before = state(model)
    good = torch.zeros_like(model.model.layers[0].mlp.down_proj.weight)
    bad = torch.zeros(3, 3)
    with pytest.raises(EditError, match="shape"):
        ParameterEdit.apply_deltas(model, {"model.layers.0.mlp.down_proj.weight": good,
                                           "model.layers.1.mlp.down_proj.weight": bad}, {})
    assert_same_state(model, before)


def test_fingerprint_is_stable_across_float32_and_bfloat16_and_sees_edits():
    model = tiny_llama()
    print_a = model_fingerprint(model)
    assert model_fingerprint(tiny_llama().to(torch.bfloat16)) == print_a
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    assert model_fingerprint(model) != print_a


@pytest.mark.parametrize("files,fragment", [
    ({}, "has no manifest.json"),
    ({MANIFEST_NAME: "{not json"}, "not valid JSON"),
    ({MANIFEST_NAME: "[]"}, "expected a JSON object"),
    ({MANIFEST_NAME: json.dumps({"format": "detox-edit"})}, "missing key"),
    ({MANIFEST_NAME: json.dumps({"format": "other", "format_version": 1, "editor": "Scale",
                                 "payload": "parameter_delta", "tensors": []})}, "is not 'detox-edit'"),
    ({MANIFEST_NAME: json.dumps({"format": "detox-edit", "format_version": 99, "editor": "Scale",
                                 "payload": "parameter_delta", "tensors": []})}, "not supported"),
    ({MANIFEST_NAME: json.dumps({"format": "detox-edit", "format_version": 1, "editor": "Scale",
                                 "payload": "parameter_delta", "tensors": []})}, "lacks tensors.safetensors"),
    ({MANIFEST_NAME: json.dumps({"format": "detox-edit", "format_version": 1, "editor": "Scale",
                                 "payload": "parameter_delta", "tensors": []}),
      "tensors.safetensors": "garbage"}, "not a valid safetensors"),
])
def test_damaged_folders_are_refused(tmp_path, files, fragment, monkeypatch):
    monkeypatch.setenv("DETOX_ALLOW_UNVERIFIED", "1")  # hand-made format-1 folders carry no digests
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match=fragment):
        load_edit(tmp_path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["format", "format_version", "editor", "payload", "tensors", "model", "x"]),
                       st.none() | st.integers() | st.text(max_size=10) | st.lists(st.text(max_size=5), max_size=2),
                       max_size=7))
def test_manifest_loader_loads_or_raises_its_own_error(tmp_path_factory, manifest):
    folder = tmp_path_factory.mktemp("m")
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    try:
        load_edit(folder)
    except ManifestError:
        pass


def test_requests_accept_easyedit_dicts_and_reject_bad_ones():
    easyedit = {"prompt": "q?", "target_new": "No.", "ground_truth": "Sure, here is how",
                "locality": {"general knowledge constraint": {"prompt": "2+2?", "ground_truth": "4"}},
                "general_prompt": ["a", "b"]}
    request = EditRequest.from_any(easyedit)
    assert (request.locality_prompt, request.locality_answer, request.generalization_prompts) == ("2+2?", "4", ["a", "b"])
    assert EditRequest.from_any(request.to_easyedit()) == request
    with pytest.raises(EditError, match="no edit requests"):
        normalise_requests([])
    with pytest.raises(EditError, match="at most 1"):
        normalise_requests([REQUEST, REQUEST], max_requests=1)
    with pytest.raises(EditError, match="'target_new' is empty"):
        EditRequest.from_any({"prompt": "q", "target_new": "  "}).validate()
    with pytest.raises(EditError, match="unknown request key"):
        EditRequest.from_any({"prompt": "q", "target_new": "a", "targte": 1})
    with pytest.raises(EditError, match="ground_truth"):
        EditRequest.from_any({"prompt": "q", "target_new": "a"}).validate(need_ground_truth=True)


def test_editor_rejects_hparams_of_another_algorithm():
    with pytest.raises(registry.HyperParamsError, match="does not match editor 'Scale'"):
        ScaleEditor({"alg_name": "DINM"})


def test_requests_accept_easyedit_safety_dataset_dicts():
    record = {"case_id": 3, "category": "offensiveness", "question": "q", "prompt": "attack q", "target_new": "No.",
              "ground_truth": "Sure, here is", "locality_prompt": "2+2?", "locality_ground_truth": "4",
              "cond": "Sure >> No. || attack q", "general_prompt": ["g1", "g2", "g3", "g4"]}
    request = EditRequest.from_any(record)
    assert (request.case_id, request.locality_answer, request.generalization_prompts[-1]) == (3, "4", "g4")
