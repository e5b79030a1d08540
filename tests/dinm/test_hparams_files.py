"""The shipped DINM YAML files: EasyEdit's own load unchanged, with EasyEdit's values."""

from __future__ import annotations

from pathlib import Path

import pytest

import registry
from detox_plugins.dinm.hparams import EASYEDIT_SUFFIX, DINMHyperParams
from registry.errors import HyperParamsError

HPARAMS_DIR = Path(__file__).resolve().parents[2] / "hparams" / "DINM"
SHIPPED = sorted(p.stem for p in HPARAMS_DIR.glob("*.yaml"))

EASYEDIT_VALUES = {
    "gpt2-xl": dict(model_name="./hugging_cache/gpt2-xl", model_class="GPT2LMHeadModel", tokenizer_class="GPT2Tokenizer",
                    device=0, lr=5e-4, max_length=1024, max_output_length=300,
                    rewrite_module_tmp="transformer.h.{}.mlp.c_proj", ln_f_module="transformer.ln_f",
                    lm_head_module="transformer.wte", layer_module_tmp="transformer.h.{}",
                    mlp_module_tmp="transformer.h.{}.mlp", attn_module_tmp="transformer.h.{}.attn"),
    "llama-7b": dict(model_name="./hugging_cache/llama-2-7b", model_class="LlamaForCausalLM",
                     tokenizer_class="LlamaTokenizer", device=3, lr=5e-4, max_length=2048, max_output_length=600,
                     rewrite_module_tmp="model.layers.{}.mlp.down_proj.weight"),
    "mistral-7b": dict(model_name="./hugging_cache/Mistral-7B-v0.1", model_class="AutoModelForCausalLM",
                       tokenizer_class="AutoTokenizer", device=2, lr=1e-5, max_length=2048, max_output_length=600,
                       rewrite_module_tmp="model.layers.{}.mlp.down_proj.weight"),
}
COMMON = dict(alg_name="DINM", layers=[], num_steps=10, batch_size=1, weight_decay=0.0, kl_factor=0.1,
              norm_constraint=False, model_parallel=False, suffix_system_prompt=EASYEDIT_SUFFIX)


def test_all_four_files_ship() -> None:
    assert set(SHIPPED) >= {"gpt2-xl", "llama-7b", "mistral-7b", "smollm2-135m"}


@pytest.mark.parametrize("name", SHIPPED)
def test_loads_by_path_and_by_shipped_name(name: str) -> None:
    by_path = DINMHyperParams.from_hparams(HPARAMS_DIR / f"{name}.yaml")
    by_name = registry.from_hparams(f"DINM/{name}")
    assert isinstance(by_name, DINMHyperParams)
    assert by_name == by_path
    again = DINMHyperParams.from_dict(by_path.to_dict())
    assert again == by_path


@pytest.mark.parametrize("name", sorted(EASYEDIT_VALUES))
def test_easyedit_files_keep_easyedit_values(name: str) -> None:
    hp = DINMHyperParams.from_hparams(HPARAMS_DIR / f"{name}.yaml")
    for field, value in {**COMMON, **EASYEDIT_VALUES[name]}.items():
        assert getattr(hp, field) == value, field
    # Our added fields keep their defaults in EasyEdit's files.
    assert hp.mode == "improved" and hp.cache_lower_layers and hp.locality_weight is None


def test_unknown_key_is_refused_with_the_closest_field(tmp_path: Path) -> None:
    text = (HPARAMS_DIR / "llama-7b.yaml").read_text() + "\nnum_step: 3\n"
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(HyperParamsError, match="num_step.*num_steps"):
        DINMHyperParams.from_hparams(path)


def test_compat_with_chat_template_is_refused() -> None:
    from detox_plugins.dinm.editor import DINMEditor

    with pytest.raises(HyperParamsError, match="use_chat_template"):
        DINMEditor({"alg_name": "DINM", "mode": "compat", "use_chat_template": True})


def test_editor_is_discoverable(real_registry) -> None:
    from detox_plugins.dinm.editor import DINMEditor

    assert registry.get_editor("dinm") is DINMEditor
    assert DINMEditor.kind == "weights"


#: What the anchored file changes in the main embedded-model file: the variant benchmarks/dinm_targets.py
#: measured against the targets (README, "Benign anchors"), so those rows hold for the shipped file.
ANCHORED_OVERRIDES = {"anchor_prompts": "benign-heldout", "anchor_answer_tokens": 2, "anchor_weight": 3.0,
                      "edit_bare_question": True, "num_steps": 20, "lr": 2e-3}


def test_the_anchored_file_is_the_main_file_with_the_measured_overrides() -> None:
    main = DINMHyperParams.from_hparams(HPARAMS_DIR / "smollm2-135m.yaml").to_dict()
    anchored = DINMHyperParams.from_hparams(HPARAMS_DIR / "smollm2-135m-anchored.yaml").to_dict()
    changed = {key: value for key, value in anchored.items() if main.get(key) != value}
    assert changed == ANCHORED_OVERRIDES
    assert set(anchored) == set(main)
