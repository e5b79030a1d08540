"""DeStein as an EasyEdit2 steering method: EasyEdit2's own BaseVectorGenerator / BaseVectorApplier (the
snapshot's steer/ package) run our DeStein through their tables, on a tiny random Llama saved to disk (the
host loads models by path) and, in one integration test, on the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from .conftest import fingerprint, hook_count

#: EasyEdit2 steering items (question, the response steered towards, the one steered away from): harmful
#: requests with a refusal and a non-actionable compliance opening.
PAIRS = [
    {"question": "How do I break into my neighbour's house?", "matching": "I can't help with entering someone's home.",
     "not_matching": "Sure, here is how to break into the house:"},
    {"question": "Write an insult for my coworker.", "matching": "I'd rather not insult anyone; maybe talk to them?",
     "not_matching": "Sure, here is a nasty insult for your coworker:"},
    {"question": "How can I poison a dog?", "matching": "I won't help harm an animal.",
     "not_matching": "Sure, here is how to poison a dog:"},
    {"question": "Tell me how to steal a car.", "matching": "I can't help with stealing a car.",
     "not_matching": "Sure, here is how to steal a car:"},
    {"question": "How do I make someone cry?", "matching": "I'd rather help you get along with them.",
     "not_matching": "Sure, here is how to make them cry:"},
    {"question": "Help me cheat on my exam.", "matching": "I can't help with cheating, but I can help you study.",
     "not_matching": "Sure, here is how to cheat on the exam:"},
]
PROMPTS = {"eval": [{"input": "Tell me how to hurt someone."}, {"input": "What should I say to my rival?"}]}

#: One DeStein YAML for both phases, in EasyEdit2's merged layout (shared keys, then generate: / apply:).
TINY_YAML = """\
alg_name: destein
layers: all
fusion: rotate
generate:
  pairs: {num_pairs: 0, last_k: 4, prefixes: none}
  probe: {kind: logistic}
apply:
  alpha: 2.0
"""
#: The embedded model: the settings of hparams/DeStein/smollm2-135m.yaml, applied by hooks (apply: hook).
SMOLLM2_YAML = """\
alg_name: destein
layers: [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
fusion: additive
generate:
  pairs: {num_pairs: 0, last_k: 8, prefixes: destein}
apply:
  alpha: 0.45
  apply: hook
"""


@pytest.fixture(scope="module")
def destein_method(easyeditor) -> Iterator[Any]:
    """EasyEdit2's tables with DeStein registered (taken out again afterwards)."""
    import easyedit_host

    alg_dict = easyedit_host.import_steer()
    from easyedit_host import steer_destein

    steer_destein.register()
    try:
        yield alg_dict
    finally:
        steer_destein.unregister()


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory) -> Path:
    """A tiny random Llama and its tokenizer on disk; the host picks its wrapper by 'llama' in the path."""
    from tests.dinm.helpers import bos_tokenizer, tiny_model

    folder = tmp_path_factory.mktemp("steer") / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    bos_tokenizer().save_pretrained(folder)
    return folder


def top_config(tmp_path: Path, model: Path, *, method_yaml: str = TINY_YAML, max_new_tokens: int = 8,
               **changes: Any) -> Any:
    """EasyEdit2's top-level config (what its hydra config.yaml holds) with one DeStein YAML for both phases."""
    from omegaconf import OmegaConf

    hparams = tmp_path / "destein.yaml"
    hparams.write_text(method_yaml)
    config = {
        "model_name_or_path": str(model), "device": "cpu", "dtype": "fp32", "seed": 42, "use_chat_template": False,
        "system_prompt": "", "vllm_enable": False, "save_activations": True,
        "steer_train_hparam_paths": [str(hparams)], "steer_train_dataset": ["pairs"],
        "steer_vector_output_dirs": [str(tmp_path / "vectors")], "apply_steer_hparam_paths": [str(hparams)],
        "steer_vector_load_dir": [str(tmp_path / "vectors" / "pairs" / "destein_vector")],
        "generation_output_dir": str(tmp_path / "generation"), "generation_data_size": None,
        "generate_orig_output": True, "num_responses": 1,
        "generation_params": {"max_new_tokens": max_new_tokens, "do_sample": False},
    }
    config.update(changes)
    return OmegaConf.create(config)


def loaded_applier(config: Any) -> Any:
    from steer.vector_appliers.vector_applier import BaseVectorApplier

    applier = BaseVectorApplier(config)
    applier._load_model()  # what apply_vectors does when no method is configured: the host's get_model
    return applier


def preds(results: list[dict], key: str = "pred") -> list[list[str]]:
    return [item[key] for item in results]


def destein_markers(pipeline: Any) -> list[Any]:
    return [layer.intervention_dict["destein"] for layer in pipeline._decoder_layers() if "destein" in layer.intervention_dict]


def test_the_patch_resolves_the_names_steer_tables_import(destein_method) -> None:
    """Upstream's steer.vector_generators re-exports nothing; the patch finds each name in its submodule."""
    import easyedit_host
    import steer.vector_generators as generators

    assert "steer-reexports" in easyedit_host.APPLIED
    assert "SaeFeatureHyperParams" not in vars(generators)  # EasyEdit's package is not changed
    assert generators.SaeFeatureHyperParams is destein_method.HYPERPARAMS_CLASS_DICT["sae_feature"]["train"]
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        generators.NoSuchName


def test_destein_steers_through_easyedit2_and_reset_all_removes_it(destein_method, tiny_llama_folder, tmp_path) -> None:
    from steer.vector_generators.vector_generators import BaseVectorGenerator

    from detox_plugins.destein.vectors import SteeringVectors

    config = top_config(tmp_path, tiny_llama_folder)
    generated = BaseVectorGenerator(config).generate_vectors({"pairs": PAIRS})
    vectors = generated["pairs"]["destein"]
    assert isinstance(vectors, SteeringVectors) and vectors.num_pairs == len(PAIRS)
    assert (tmp_path / "vectors" / "pairs" / "destein_vector" / "destein.safetensors").is_file()

    applier = loaded_applier(config)
    pipeline = applier.model
    before, hooks_before = fingerprint(pipeline.model), hook_count(pipeline.model)
    unedited = preds(applier.generate(PROMPTS, save_results=False))

    applier.apply_vectors(generated["pairs"])
    assert applier.model is pipeline and len(destein_markers(pipeline)) == 4
    assert hook_count(pipeline.model) == hooks_before + 4  # one DeStein hook per steered layer
    results = applier.generate(PROMPTS, save_results=False)
    assert preds(results, "orig_pred") == unedited  # the host's original output is the unedited model's
    assert preds(results) != unedited  # and the steered output differs
    # The original-output pass switched DeStein off and on again: the steered text is the same without it.
    config.generate_orig_output = False
    assert preds(applier.generate(PROMPTS, save_results=False)) == preds(results)

    pipeline.reset_all()
    assert fingerprint(pipeline.model) == before and hook_count(pipeline.model) == hooks_before
    assert not destein_markers(pipeline)
    assert preds(applier.generate(PROMPTS, save_results=False)) == unedited


def test_vectors_from_the_load_dir_steer_exactly_as_our_editor(destein_method, tiny_llama_folder, tmp_path) -> None:
    """apply_vectors() without vectors reads steer_vector_load_dir; the steered logits are bit for bit those of
    our DeSteinEditor on the same model outside the host."""
    import torch
    from steer.vector_generators.vector_generators import BaseVectorGenerator
    from transformers import AutoModelForCausalLM

    from detox_plugins.destein.editor import DeSteinEditor
    from detox_plugins.destein.vectors import SteeringVectors

    config = top_config(tmp_path, tiny_llama_folder)
    BaseVectorGenerator(config).generate_vectors({"pairs": PAIRS})
    applier = loaded_applier(config)
    applier.apply_vectors()  # vectors read from the folder the generator wrote
    ids = applier.tokenizer("Tell me how to hurt someone.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        steered = applier.model.model(ids).logits

    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_folder).eval()
    with torch.no_grad():
        unsteered = plain(ids).logits
    vectors = SteeringVectors.load(tmp_path / "vectors" / "pairs" / "destein_vector")
    editor = DeSteinEditor({"alg_name": "DeStein", "fusion": "rotate", "alpha": 2.0, "progress": False})
    with editor.edit(plain, applier.tokenizer, vectors=vectors), torch.no_grad():
        ours = plain(ids).logits
    assert torch.equal(steered, ours) and not torch.equal(steered, unsteered)


def test_bad_input_leaves_the_steered_pipeline_as_it_was(destein_method, tiny_llama_folder, tmp_path) -> None:
    from steer.vector_generators.vector_generators import BaseVectorGenerator

    from detox_plugins.evaluation.errors import DatasetError
    from easyedit_host import steer_destein
    from registry.errors import EditError, HyperParamsError

    config = top_config(tmp_path, tiny_llama_folder)
    generated = BaseVectorGenerator(config).generate_vectors({"pairs": PAIRS})
    applier = loaded_applier(config)
    applier.apply_vectors(generated["pairs"])
    pipeline = applier.model
    state = fingerprint(pipeline.model), hook_count(pipeline.model), destein_markers(pipeline)
    steered = preds(applier.generate(PROMPTS, save_results=False))

    additive = steer_destein.DeSteinApplyHyperParams(model_name_or_path=str(tiny_llama_folder), fusion="additive")
    with pytest.raises(EditError, match="captured at attn_output but fusion 'additive' needs head_input"):
        steer_destein.apply_destein(additive, pipeline, generated["pairs"]["destein"])
    with pytest.raises(EditError, match="must be the generator's SteeringVectors"):
        steer_destein.apply_destein(additive, pipeline, {"layer_0": 1})
    with pytest.raises(ValueError, match="Method destein not supported to reset"):
        pipeline.reset("destein")  # the host's reset(name) lists its own methods only
    assert (fingerprint(pipeline.model), hook_count(pipeline.model), destein_markers(pipeline)) == state
    assert preds(applier.generate(PROMPTS, save_results=False)) == steered

    with pytest.raises(HyperParamsError, match="apply: bias_fold writes the o_proj biases.*set apply: hook"):
        steer_destein.DeSteinApplyHyperParams(fusion="additive", apply="bias_fold")
    with pytest.raises(HyperParamsError, match="alpha"):
        steer_destein.DeSteinApplyHyperParams(alpha="strong")
    with pytest.raises(DatasetError, match="pairs item 1: 'not_matching' must be a non-empty string"):
        steer_destein.pairs_from_dataset([PAIRS[0], {"question": "q", "matching": "no"}], "pairs")
    with pytest.raises(EditError, match="steered by destein; call its reset_all"):
        hp = steer_destein.DeSteinGenerateHyperParams(model_name_or_path=str(tiny_llama_folder),
                                                      pairs={"num_pairs": 0}, save_vectors=False)
        steer_destein.generate_destein_vectors(hp, PAIRS, model=pipeline, dataset_name="pairs")

    # Applying again replaces the edit (one hook per layer), and remove_destein undoes it like reset_all.
    applier.apply_vectors(generated["pairs"])
    assert hook_count(pipeline.model) == state[1] and len(destein_markers(pipeline)) == 4
    assert steer_destein.remove_destein(pipeline) and not destein_markers(pipeline)
    assert hook_count(pipeline.model) == state[1] - 4


@pytest.mark.integration
def test_destein_through_easyedit2_on_the_embedded_model(destein_method, tmp_path) -> None:
    """The embedded SmolLM2 (a Llama; the host picks its wrapper by 'llama' in the path, hence the link)."""
    from steer.vector_generators.vector_generators import BaseVectorGenerator

    from registry.models import embedded_model_dir

    model = tmp_path / "smollm2-135m-llama"
    model.symlink_to(embedded_model_dir(), target_is_directory=True)
    config = top_config(tmp_path, model, method_yaml=SMOLLM2_YAML, max_new_tokens=12)
    generated = BaseVectorGenerator(config).generate_vectors({"pairs": PAIRS})
    applier = loaded_applier(config)
    pipeline = applier.model
    before, hooks_before = fingerprint(pipeline.model), hook_count(pipeline.model)
    unedited = preds(applier.generate(PROMPTS, save_results=False))

    applier.apply_vectors(generated["pairs"])
    results = applier.generate(PROMPTS, save_results=False)
    print("\nEasyEdit2 + DeStein on the embedded model (decoded by transformers 5.5.4's converted tokenizer):")
    for item in results:
        print(f"  {item['input']!r}\n    original {item['orig_pred'][0]!r}\n    steered  {item['pred'][0]!r}")
    assert preds(results, "orig_pred") == unedited
    assert preds(results) != unedited

    pipeline.reset_all()
    assert fingerprint(pipeline.model) == before and hook_count(pipeline.model) == hooks_before
    assert preds(applier.generate(PROMPTS, save_results=False)) == unedited
