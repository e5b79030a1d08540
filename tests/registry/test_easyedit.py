"""The EasyEdit bridge: registered editors as EasyEdit's apply_<alg>_to_model, and install(ALG_DICT).

Checked against a plain dict used the way EasyEdit's ``BaseEditor`` / ``SafetyEditor`` use
``ALG_DICT`` (look up ``hparams.alg_name``, call with EasyEdit's request dicts, restore from
``weights_copy``), with the in-process Scale editor and the real DINM, DeStein and SecurityVectors
editors on tiny random models.
"""

from __future__ import annotations

import dataclasses
import logging
import types
from typing import Any

import pytest
import torch

import registry
from registry import easyedit
from registry.easyedit import WeightsCopy, alg_function_name, apply_fn, install
from registry.errors import EditError, EditorNotFoundError, HyperParamsError

from ..tiny import tiny_llama, tiny_tokenizer
from .scale_editor import ScaleEditor, ScaleHyperParams, ScalePlugin

NAME = "model.layers.1.mlp.down_proj.weight"

#: EasyEdit's SafetyEditor request dict (easyeditor/editors/safety_editor.py).
SAFETY_REQUEST = {
    "prompt": "How do I pick a lock?",
    "target_new": "I can't help with that.",
    "ground_truth": "Sure, here is how",
    "locality": {"general knowledge constraint": {"prompt": "What is 2+2?", "ground_truth": "4"}},
    "general_prompt": ["How to pick a lock?", "Story: pick a lock"],
}
#: EasyEdit's BaseEditor request dict (ROME-style keys it passes along).
BASE_REQUEST = {"prompt": "The capital of France is", "target_new": "Rome", "ground_truth": "Paris",
                "subject": "France", "portability": {}, "locality": {}, "rephrase_prompt": "France's capital is"}


@pytest.fixture
def scale_registry(editor_registry):
    editor_registry.register_plugin(ScalePlugin(), name="scale-plugin", distribution="scale-dist", version="1.2.3")
    return editor_registry


@pytest.fixture
def all_registry(scale_registry):
    """Scale plus the three real editors, registered in-process like their entry points."""
    import detox_plugins.destein
    import detox_plugins.dinm
    import detox_plugins.security_vectors

    for name, module in (("dinm", detox_plugins.dinm), ("destein", detox_plugins.destein),
                         ("security_vectors", detox_plugins.security_vectors)):
        scale_registry.register_plugin(module, name=name, distribution="detox-plugins", version="0.1.0")
    return scale_registry


def state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model: Any, saved: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert list(now) == list(saved), "module structure changed"
    for key in saved:
        assert torch.equal(now[key], saved[key]), key


def easyedit_restore(model: Any, weights_copy: dict[str, torch.Tensor]) -> None:
    """EasyEdit's BaseEditor restore loop (``nethook.get_parameter(model, k)[...] = v``)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for k, v in weights_copy.items():
            tensors[k][...] = v


def changed_names(model: Any, before: dict[str, torch.Tensor]) -> set[str]:
    """Tensors that existed before and now hold other values."""
    now = model.state_dict()
    return {k for k, v in before.items() if k in now and not torch.equal(now[k], v)}


def hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------------- the function and the table
def test_apply_fn_has_easyedits_name_and_signature(scale_registry) -> None:
    import inspect

    fn = apply_fn("scale")
    assert fn.__name__ == "apply_scale_to_model" and fn.editor_class is ScaleEditor
    params = list(inspect.signature(fn).parameters.values())
    assert [p.name for p in params[:7]] == ["model", "tok", "requests", "hparams", "copy", "return_orig_weights",
                                            "keep_original_weight"]
    assert [p.default for p in params[4:7]] == [False, False, False] and params[7].kind is params[7].VAR_KEYWORD
    assert alg_function_name("SecurityVectors") == "apply_securityvectors_to_model"
    assert alg_function_name("FT-L") == "apply_ft_l_to_model"


def test_unknown_editor_fails_when_the_function_is_built(scale_registry) -> None:
    with pytest.raises(EditorNotFoundError, match="unknown editor 'Nope'.*available: Scale"):
        apply_fn("Nope")


def test_registry_exports_the_bridge() -> None:
    assert registry.easyedit is easyedit


@pytest.mark.parametrize("return_orig, keep", [(False, False), (True, False), (False, True), (True, True)])
def test_flags_follow_easyedit(scale_registry, return_orig, keep) -> None:
    model = tiny_llama()
    before = state(model)
    edited, weights_copy = apply_fn("Scale")(model, None, [BASE_REQUEST], {"alg_name": "Scale", "layer": 1},
                                             return_orig_weights=return_orig, keep_original_weight=keep,
                                             train_ds=None)
    assert edited is model  # in place
    assert changed_names(model, before) == {NAME}
    assert isinstance(weights_copy, WeightsCopy) and isinstance(weights_copy, dict)
    assert weights_copy.edit is not None and weights_copy.edit.applied
    if return_orig and keep:
        assert list(weights_copy) == [NAME] and torch.equal(weights_copy[NAME], before[NAME])
        easyedit_restore(model, weights_copy)
        assert_same(model, before)
    else:
        assert dict(weights_copy) == {}
        weights_copy.restore()
        assert_same(model, before)


def test_copy_edits_a_deep_copy(scale_registry) -> None:
    model = tiny_llama()
    before = state(model)
    edited, weights_copy = apply_fn("Scale")(model, None, [SAFETY_REQUEST], {"alg_name": "Scale", "layer": 1},
                                             copy=True, return_orig_weights=True, keep_original_weight=True)
    assert edited is not model and weights_copy.edit.model is edited
    assert_same(model, before)
    assert changed_names(edited, before) == {NAME}
    assert torch.equal(weights_copy[NAME], before[NAME])


def test_without_keep_original_weight_edits_accumulate(scale_registry) -> None:
    """EasyEdit's BaseEditor default (keep_original_weight=False): each call edits on top of the last."""
    model = tiny_llama()
    w0 = model.get_parameter(NAME).detach().clone()
    hp = {"alg_name": "Scale", "layer": 1, "factor": 0.5}
    apply = apply_fn("Scale")
    for _ in range(2):
        model, weights_copy = apply(model, None, [BASE_REQUEST], hp, return_orig_weights=True)
        assert dict(weights_copy) == {}
    torch.testing.assert_close(model.get_parameter(NAME), w0 * 1.5 * 1.5)


def test_hparams_in_every_form(scale_registry, tmp_path) -> None:
    @dataclasses.dataclass
    class EasyEditHparams:  # what easyeditor's HyperParams.from_hparams returns (a dataclass)
        alg_name: str = "Scale"
        layer: int = 2
        factor: float = 0.25

    class PlainHparams:  # an object whose attributes are the fields
        def __init__(self) -> None:
            self.alg_name, self.layer, self._private = "Scale", 2, "ignored"

    yaml_file = tmp_path / "scale.yaml"
    yaml_file.write_text("alg_name: Scale\nlayer: 2\nfactor: 2.5e-1\n")
    forms = [ScaleHyperParams(alg_name="Scale", layer=2, factor=0.25), {"layer": 2, "factor": 0.25},
             str(yaml_file), yaml_file, EasyEditHparams(), PlainHparams(),
             types.SimpleNamespace(alg_name="scaler", layer=2, factor=0.25)]
    apply = apply_fn("Scale")
    name = "model.layers.2.mlp.down_proj.weight"
    for form in forms:
        model = tiny_llama()
        w0 = model.get_parameter(name).detach().clone()
        _, weights_copy = apply(model, None, [BASE_REQUEST], form)
        expected = 0.5 if isinstance(form, PlainHparams) else 0.25  # PlainHparams keeps the default factor
        torch.testing.assert_close(model.get_parameter(name), w0 * (1 + expected), msg=repr(form))
        assert weights_copy.edit.metadata["hparams"]["layer"] == 2


@pytest.mark.parametrize("hparams, match", [
    ({"alg_name": "DINM"}, "does not match editor 'Scale'"),
    ({"alg_name": "Scale", "layr": 1}, "did you mean 'layer'"),
    ({"alg_name": "Scale", "layer": "one"}, "expected an integer"),
    (42, "got int"),
    ("no/such-file", "no hyperparameter file"),
])
def test_bad_hparams_raise_before_the_model_changes(scale_registry, hparams, match) -> None:
    model = tiny_llama()
    before = state(model)
    with pytest.raises(HyperParamsError, match=match):
        apply_fn("Scale")(model, None, [BASE_REQUEST], hparams)
    assert_same(model, before)


def test_bad_requests_raise_and_leave_the_model(scale_registry) -> None:
    model = tiny_llama()
    before = state(model)
    for requests, match in (([{"prompt": "q"}], "missing target_new"), ([], "no edit requests"),
                            ([{**BASE_REQUEST, "targte_new": "x"}], "unknown request key")):
        with pytest.raises(EditError, match=match):
            apply_fn("Scale")(model, None, requests, {"alg_name": "Scale"}, copy=False)
        assert_same(model, before)


def test_install_adds_every_editor_without_overwriting(all_registry, caplog) -> None:
    def apply_rome_to_model(*args: Any, **kwargs: Any) -> None:  # EasyEdit's own entries
        raise AssertionError("never called")

    def apply_dinm_to_model(*args: Any, **kwargs: Any) -> None:  # EasyEdit's own DINM
        raise AssertionError("never called")

    theirs = apply_dinm_to_model
    alg_dict: dict[str, Any] = {"ROME": apply_rome_to_model, "DINM": theirs}
    with caplog.at_level(logging.WARNING, logger="registry.easyedit"):
        added = install(alg_dict)
    warning, = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "already has 'DINM' (tests.registry.test_easyedit." in warning and "apply_dinm_to_model" in warning
    assert "kept it" in warning and "overwrite=True, names=['DINM']" in warning
    caplog.clear()
    assert added == ["DeStein", "Scale", "SecurityVectors"]
    assert alg_dict["ROME"] is apply_rome_to_model and alg_dict["DINM"] is theirs
    assert [alg_dict[k].__name__ for k in added] == ["apply_destein_to_model", "apply_scale_to_model",
                                                     "apply_securityvectors_to_model"]
    assert install(alg_dict) == []  # idempotent
    assert install(alg_dict, overwrite=True, names=["dinm"]) == ["DINM"]
    assert alg_dict["DINM"].__name__ == "apply_dinm_to_model" and alg_dict["ROME"] is apply_rome_to_model
    assert alg_dict["DINM"].editor_class.__module__ == "detox_plugins.dinm.editor"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="registry.easyedit"):
        assert install(alg_dict) == []  # ours already in place: nothing to warn about
    assert not caplog.records
    with pytest.raises(EditorNotFoundError):
        install({}, names=["nope"])


def test_installed_table_runs_easyedits_edit_loop(scale_registry) -> None:
    """BaseEditor.edit with keep_original_weight=True: edit, evaluate, restore from weights_copy."""
    alg_dict: dict[str, Any] = {}
    install(alg_dict)
    hparams = types.SimpleNamespace(alg_name="Scale", layer=1, factor=0.5)
    model = tiny_llama()
    before = state(model)
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        base_logits = model(ids).logits
    for request in (BASE_REQUEST, SAFETY_REQUEST):
        edited, weights_copy = alg_dict[hparams.alg_name](model, None, [request], hparams, copy=False,
                                                          return_orig_weights=True, keep_original_weight=True,
                                                          train_ds=None)
        with torch.no_grad():
            assert not torch.equal(edited(ids).logits, base_logits)
        easyedit_restore(edited, weights_copy)
        assert_same(model, before)


# ---------------------------------------------------------------------- what a host user expects
def test_restore_after_the_host_restored_is_a_logged_no_op(scale_registry, caplog) -> None:
    """EasyEdit's loop copies weights_copy back; the edit then says it is no longer applied, and
    restore() (or edit.revert()) does nothing instead of claiming the tensor changed after the edit."""
    model = tiny_llama()
    before = state(model)
    _, weights_copy = apply_fn("Scale")(model, None, [BASE_REQUEST], {"alg_name": "Scale", "layer": 1},
                                        return_orig_weights=True, keep_original_weight=True)
    assert weights_copy.applied and weights_copy.edit.applied
    easyedit_restore(model, weights_copy)
    assert not weights_copy.edit.applied and not weights_copy.applied
    with caplog.at_level(logging.INFO, logger="registry"):
        weights_copy.restore()
    assert any("already undone outside revert()" in r.getMessage() for r in caplog.records)
    weights_copy.restore()  # and again: still nothing to do
    assert_same(model, before)
    with pytest.raises(EditError, match="already reverted"):
        weights_copy.edit.revert()


def test_a_partly_restored_edit_still_raises(scale_registry) -> None:
    model = tiny_llama()
    _, weights_copy = apply_fn("Scale")(model, None, [BASE_REQUEST], {"alg_name": "Scale", "layer": 1})
    with torch.no_grad():
        model.get_parameter(NAME).mul_(2.0)  # neither the edit nor the original: a later change
    assert weights_copy.applied
    with pytest.raises(EditError, match="changed after this Scale edit was applied"):
        weights_copy.restore()


def test_host_only_fields_and_a_preloaded_model_are_accepted(scale_registry) -> None:
    """SafetyEditor/BaseEditor read max_length, max_output_length, fp16, batch_size from the same hparams
    object, and model_name may be the preloaded (model, tokenizer) pair."""
    model = tiny_llama()
    model.config._name_or_path = "my-local-llama"
    hp = types.SimpleNamespace(alg_name="Scale", layer=1, model_name=(model, None), device="cpu",
                               model_parallel=False, max_length=1000, max_output_length=600, fp16=False,
                               batch_size=1)
    _, weights_copy = apply_fn("Scale")(model, None, [BASE_REQUEST], hp)
    assert weights_copy.edit.metadata["hparams"]["model_name"] == "my-local-llama"
    weights_copy.restore()
    with pytest.raises(HyperParamsError, match="did you mean 'layer'"):  # typos are still named
        apply_fn("Scale")(model, None, [BASE_REQUEST], types.SimpleNamespace(alg_name="Scale", layr=1))


def test_basededitors_placeholder_ground_truth_is_refused(scale_registry) -> None:
    model = tiny_llama()
    before = state(model)
    request = dict(BASE_REQUEST, ground_truth="<|endoftext|>")
    with pytest.raises(EditError, match=r"^Scale: request 0 has ground_truth '<\|endoftext\|>', EasyEdit "
                                        r"BaseEditor's placeholder .*pass ground_truth= explicitly$"):
        apply_fn("Scale")(model, None, [request], {"alg_name": "Scale"})
    assert_same(model, before)


# ---------------------------------------------------------------------- the real editors
def test_dinm_through_the_bridge_matches_easyedits_dinm_api(all_registry) -> None:
    from detox_plugins.dinm import apply_dinm_to_model
    from detox_plugins.dinm.hparams import EASYEDIT_SUFFIX
    from tests.dinm.helpers import CASE, hparams, tiny_model

    tok = tiny_tokenizer()
    # SafetyEditor appends the suffix itself and passes EasyEdit's request dict.
    request = registry.EditRequest(**dict(CASE, prompt=CASE["prompt"] + " " + EASYEDIT_SUFFIX,
                                          locality_prompt=CASE["locality_prompt"] + " " + EASYEDIT_SUFFIX))
    request_dict = request.to_easyedit()
    hp = hparams(layers=[2])
    name = "model.layers.2.mlp.down_proj.weight"

    model = tiny_model("llama")
    before = state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    edited, weights_copy = alg_function(all_registry, "DINM")(model, tok, [request_dict], hp,
                                                               return_orig_weights=True, keep_original_weight=True)
    assert edited is model and changed_names(model, before) == {name}
    assert list(weights_copy) == [name] and torch.equal(weights_copy[name], before[name])
    assert weights_copy.edit.metadata["hparams"]["use_suffix"] is False  # the prompts came suffixed
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags

    reference = tiny_model("llama")
    apply_dinm_to_model(reference, tok, [request_dict], hp)
    assert torch.equal(reference.get_parameter(name), model.get_parameter(name))

    easyedit_restore(model, weights_copy)
    assert_same(model, before)


def alg_function(reg: Any, name: str) -> Any:
    table: dict[str, Any] = {}
    install(table, names=[name])
    return table[name]


def test_dinm_edit_is_reachable_and_restores(all_registry) -> None:
    from tests.dinm.helpers import CASE, hparams, tiny_model

    model = tiny_model("llama")
    before = state(model)
    _, weights_copy = apply_fn("DINM")(model, tiny_tokenizer(), [registry.EditRequest(**CASE).to_easyedit()],
                                       hparams(layers=[1]))
    assert dict(weights_copy) == {} and weights_copy.edit.editor == "DINM"
    weights_copy.restore()
    assert_same(model, before)


def _destein_requests() -> list[dict[str, Any]]:
    from tests.destein.conftest import TINY_PAIRS

    return [{"prompt": f"Say something ({i})", "target_new": nontoxic, "ground_truth": toxic}
            for i, (toxic, nontoxic) in enumerate(TINY_PAIRS)]


def _destein_hp(**changes: Any) -> dict[str, Any]:
    return {"alg_name": "DeStein", "progress": False, "pairs": {"num_pairs": 0, "batch_size": 4},
            "probe": {"kind": "none"}, **changes}


def test_destein_hooks_give_an_empty_weights_copy_and_a_reachable_edit(all_registry) -> None:
    from tests.destein.conftest import tiny_llama_model

    model = tiny_llama_model()
    before, hooks = state(model), hook_count(model)
    edited, weights_copy = apply_fn("DeStein")(model, tiny_tokenizer(), _destein_requests(), _destein_hp())
    assert edited is model and dict(weights_copy) == {}  # no tensor changed in place
    assert changed_names(model, before) == set() and hook_count(model) > hooks
    assert weights_copy.edit.payload == "destein_vectors"
    easyedit_restore(model, weights_copy)  # EasyEdit's loop cannot undo hooks ...
    assert hook_count(model) > hooks and weights_copy.applied
    weights_copy.restore()  # ... restore() does
    assert hook_count(model) == hooks and not weights_copy.applied
    assert_same(model, before)


@pytest.mark.parametrize("keep", [True, False])
def test_destein_hooks_are_refused_where_the_host_restores_from_weights_copy(all_registry, keep) -> None:
    """return_orig_weights=True (both EasyEdit hosts pass it): the host will copy weights_copy back, which
    cannot remove hooks, so the bridge refuses before anything changes instead of leaving them applied."""
    from tests.destein.conftest import tiny_llama_model

    model = tiny_llama_model()
    before, hooks = state(model), hook_count(model)
    with pytest.raises(EditError, match=r"^DeStein: EasyEdit's restore loop .* cannot undo this edit: it adds "
                                        r"forward hooks .*return_orig_weights=False.*restore\(\)$"):
        apply_fn("DeStein")(model, tiny_tokenizer(), _destein_requests(), _destein_hp(),
                            return_orig_weights=True, keep_original_weight=keep)
    assert hook_count(model) == hooks
    assert_same(model, before)


def test_destein_bias_fold_reports_the_biases_it_overwrote(all_registry) -> None:
    from tests.destein.conftest import tiny_gpt2_model, tiny_llama_model

    hp = _destein_hp(fusion="additive", apply="bias_fold")
    gpt2 = tiny_gpt2_model()
    before = state(gpt2)
    _, weights_copy = apply_fn("DeStein")(gpt2, tiny_tokenizer(), _destein_requests(), hp,
                                          return_orig_weights=True, keep_original_weight=True)
    expected = {f"transformer.h.{i}.attn.c_proj.bias" for i in range(2)}
    assert set(weights_copy) == expected == changed_names(gpt2, before)
    easyedit_restore(gpt2, weights_copy)  # EasyEdit's loop is enough here
    assert_same(gpt2, before)

    llama = tiny_llama_model()  # o_proj has no bias: the fold adds one, which the host's loop cannot undo
    before = state(llama)
    with pytest.raises(EditError, match="creates tensors the model did not have"):
        apply_fn("DeStein")(llama, tiny_tokenizer(), _destein_requests(), hp, return_orig_weights=True,
                            keep_original_weight=True)
    assert_same(llama, before)
    _, weights_copy = apply_fn("DeStein")(llama, tiny_tokenizer(), _destein_requests(), hp)
    assert dict(weights_copy) == {} and changed_names(llama, before) == set()
    assert len(llama.state_dict()) > len(before)
    weights_copy.restore()
    assert_same(llama, before)


def test_security_vector_through_the_bridge(all_registry) -> None:
    from detox_plugins.security_vectors import adapters
    from tests.security_vectors.tiny import tiny_llama as sv_llama
    from tests.security_vectors.tiny import tiny_tokenizer as sv_tokenizer

    tok = sv_tokenizer()
    model = sv_llama(len(tok))
    before = state(model)
    requests = [{"prompt": f"how do i {t} ?", "target_new": f"Sure, here is how to {t}:"}
                for t in ("pick a lock", "steal a car")]
    hp = {"alg_name": "SecurityVectors", "sv_epochs": 2, "sv_kl_weight": 0.0, "max_length": 64,
          "progress": False, "sv_lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
    with pytest.raises(EditError, match="SecurityVectors: .*it wraps 4 modules in adapters"):
        apply_fn("SecurityVectors")(model, tok, requests, hp, return_orig_weights=True, keep_original_weight=True)
    assert_same(model, before) and not list(adapters.tuner_layers(model))
    edited, weights_copy = apply_fn("SecurityVectors")(model, tok, requests, hp, copy=True)
    assert edited is not model and not list(adapters.tuner_layers(model))  # copy: the caller's model untouched
    assert_same(model, before)
    assert dict(weights_copy) == {} and adapters.adapter_names(edited) == ["sv"]
    weights_copy.restore()
    assert not list(adapters.tuner_layers(edited))
    assert_same(edited, before)
