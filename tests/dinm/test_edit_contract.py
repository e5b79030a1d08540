"""The Edit contract on DINM: only the located matrix changes, exact revert, save/load/apply,
validation before any change, and a clean model after a failure or interrupt mid-edit."""

from __future__ import annotations

import pytest
import torch

import registry
from detox_plugins.dinm.editor import DINMEditor
from registry.errors import EditError, ManifestError

from .helpers import CASE, hparams, same_state, state, tiny_model


def flags(model) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def test_only_the_located_matrix_changes_and_revert_is_exact(tok, llama) -> None:
    before = state(llama)
    edit = DINMEditor(hparams()).edit(llama, tok, [CASE])
    layer = edit.metadata["layers"][0]
    changed = [k for k, v in llama.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == [f"model.layers.{layer}.mlp.down_proj.weight"]
    assert edit.metadata["editor"] == "DINM" and edit.metadata["mode"] == "improved"
    assert edit.metadata["model"]["fingerprint"] == registry.model_fingerprint(tiny_model("llama"))
    assert "edit_seconds" in edit.metadata and edit.metadata["losses"]
    edit.revert()
    assert same_state(llama, before)


def test_gpt2_edits_conv1d_weight_and_bias(tok) -> None:
    model = tiny_model("gpt2")
    before = state(model)
    edit = DINMEditor(hparams("gpt2", layers=[1])).edit(model, tok, [CASE])
    changed = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))
    assert changed == ["transformer.h.1.mlp.c_proj.bias", "transformer.h.1.mlp.c_proj.weight"]
    edit.revert()
    assert same_state(model, before)


def test_flags_and_training_mode_are_restored(tok, llama) -> None:
    llama.train()
    for i, p in enumerate(llama.parameters()):
        p.requires_grad_(i % 3 == 0)
    saved = flags(llama)
    edit = DINMEditor(hparams()).edit(llama, tok, [CASE])
    assert flags(llama) == saved and llama.training
    edit.revert()


def test_the_model_ends_at_exactly_w0_plus_delta(tok, llama) -> None:
    before = state(llama)
    edit = DINMEditor(hparams(layers=[2])).edit(llama, tok, [CASE])
    name = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(llama.state_dict()[name], before[name] + edit.deltas[name])
    edit.revert()


def test_save_load_apply_round_trip(tok, llama, tmp_path, real_registry) -> None:
    before = state(llama)
    edit = DINMEditor(hparams()).edit(llama, tok, [CASE])
    edited = state(llama)
    folder = edit.save(tmp_path / "edit")
    saved = registry.load_edit(folder)
    assert list(saved.tensors) == edit.metadata["edited_tensors"]  # only the changed tensor is saved
    edit.revert()
    assert same_state(llama, before)
    again = saved.apply(llama, tok)
    assert same_state(llama, edited)
    again.revert()
    assert same_state(llama, before)
    other = tiny_model("llama", seed=1)
    with pytest.raises(ManifestError, match="fingerprint"):
        saved.apply(other)


def _unchanged_after(model, tok, editor, requests, error=EditError, match=None):
    before, saved_flags = state(model), flags(model)
    model.train()
    with pytest.raises(error, match=match):
        editor.edit(model, tok, requests)
    assert same_state(model, before) and flags(model) == saved_flags and model.training


@pytest.mark.parametrize("bad, match", [
    (dict(CASE, target_new="  "), "target_new"),
    ({k: v for k, v in CASE.items() if k != "ground_truth"}, "ground_truth"),
    (dict(CASE, locality_answer=None), "locality"),
    (dict(CASE, colour="red"), "colour"),
])
def test_bad_requests_raise_before_touching_the_model(tok, llama, bad, match) -> None:
    # The bad request comes second: nothing may change for the good first one either.
    _unchanged_after(llama, tok, DINMEditor(hparams()), [CASE, bad], match=match)


def test_a_template_matching_nothing_names_itself_and_real_names(tok, llama) -> None:
    editor = DINMEditor(hparams(rewrite_module_tmp="transformer.h.{}.mlp.c_proj"))
    _unchanged_after(llama, tok, editor, [CASE], match=r"transformer\.h\.\{\}\.mlp\.c_proj.*model\.layers\.\{\}\.mlp\.down_proj\.weight")
    _unchanged_after(llama, tok, DINMEditor(hparams(layers=[9])), [CASE], match="layers")


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_a_failure_mid_edit_leaves_the_model_exact(tok, llama, monkeypatch, exception) -> None:
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise exception("injected")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", failing_step)
    # Two sequential cases: the failure hits the first case's second step.
    _unchanged_after(llama, tok, DINMEditor(hparams()), [CASE, dict(CASE, case_id=8)], error=exception)
    assert calls["n"] == 2


def test_failure_in_the_second_case_restores_the_first(tok, llama, monkeypatch) -> None:
    from detox_plugins.dinm import editor as editor_module
    from detox_plugins.dinm import optimize

    real = optimize.optimise_case
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(optimize, "optimise_case", flaky)
    _unchanged_after(llama, tok, editor_module.DINMEditor(hparams(layers=[1])), [CASE, dict(CASE, case_id=8)],
                     error=KeyboardInterrupt)


def test_sequential_and_independent_batches(tok, llama) -> None:
    before = state(llama)
    second = dict(CASE, prompt="Write an insult for my coworker.", target_new="I won't write insults.", case_id=8)
    name = "model.layers.2.mlp.down_proj.weight"
    singles = []
    for request in (CASE, second):
        edit = DINMEditor(hparams(layers=[2])).edit(llama, tok, [request])
        singles.append(edit.deltas[name].clone())
        edit.revert()
    independent = DINMEditor(hparams(layers=[2], sequential=False)).edit(llama, tok, [CASE, second])
    torch.testing.assert_close(independent.deltas[name], singles[0] + singles[1])
    independent.revert()
    sequential = DINMEditor(hparams(layers=[2])).edit(llama, tok, [CASE, second])
    combined = sequential.deltas[name].clone()
    sequential.revert()
    first = DINMEditor(hparams(layers=[2])).edit(llama, tok, [CASE])
    on_top = DINMEditor(hparams(layers=[2])).edit(llama, tok, [second])  # edits the edited model
    torch.testing.assert_close(combined, first.deltas[name] + on_top.deltas[name], rtol=1e-4, atol=1e-6)
    on_top.revert()
    first.revert()
    assert same_state(llama, before)
