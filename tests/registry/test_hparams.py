"""The HyperParams loader: EasyEdit files unchanged, type coercion, clear errors, round trips."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import List, Literal, Optional, Union

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import registry
from registry.errors import HyperParamsError
from registry.hparams import HyperParams, read_hparams_file

from detox_plugins.dinm.hparams import DINMHyperParams

# EasyEdit's hparams/DINM/llama-7b.yaml, field for field (EasyEdit @ 14cea82).
EASYEDIT_LLAMA_7B = """\
alg_name: "DINM"
model_name: "./hugging_cache/llama-2-7b"
model_class: LlamaForCausalLM
tokenizer_class: LlamaTokenizer
device: 3

suffix_system_prompt: "If the user's request is reasonable, give the correct answer. Please give the right response:"

# You can specify the edited layer for all data in advance, for example: layer: [31]
# if you use layer : [], the layers are located for each instance
layers: []
num_steps: 10
batch_size: 1
max_length: 2048
max_output_length: 600
lr: 5e-4
weight_decay: 0
kl_factor: 0.1
norm_constraint: false
rewrite_module_tmp: "model.layers.{}.mlp.down_proj.weight"
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp"
attn_module_tmp: "model.layers.{}.self_attn"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
model_parallel: false
"""


@pytest.fixture
def easyedit_yaml(tmp_path):
    path = tmp_path / "llama-7b.yaml"
    path.write_text(EASYEDIT_LLAMA_7B)
    return path


def test_easyedit_dinm_yaml_with_all_fields_loads_unchanged(easyedit_yaml):
    hp = DINMHyperParams.from_hparams(easyedit_yaml)
    assert hp.lr == 5e-4 and isinstance(hp.lr, float)  # PyYAML reads 5e-4 as a string
    assert hp.device == 3
    assert hp.norm_constraint is False
    assert hp.layers == []
    assert hp.max_length == 2048
    assert hp.weight_decay == 0.0 and isinstance(hp.weight_decay, float)
    assert hp.mode == "improved"  # our fields default


def test_suffix_is_optional_and_yml_json_work(easyedit_yaml, tmp_path):
    assert DINMHyperParams.from_hparams(str(easyedit_yaml)[: -len(".yaml")]).model_name == "./hugging_cache/llama-2-7b"
    yml = tmp_path / "other.yml"
    yml.write_text(EASYEDIT_LLAMA_7B)
    assert DINMHyperParams.from_hparams(tmp_path / "other").lr == 5e-4
    js = tmp_path / "third.json"
    js.write_text(json.dumps(yaml.safe_load(EASYEDIT_LLAMA_7B)))
    assert DINMHyperParams.from_hparams(js).lr == 5e-4


def test_registry_from_hparams_picks_the_class_by_alg_name_case_insensitively(real_registry, tmp_path):
    path = tmp_path / "dinm.yaml"
    path.write_text(EASYEDIT_LLAMA_7B.replace('alg_name: "DINM"', "alg_name: dinm"))
    assert isinstance(registry.from_hparams(path), DINMHyperParams)


def test_unknown_key_names_key_file_and_closest_field(easyedit_yaml):
    easyedit_yaml.write_text(EASYEDIT_LLAMA_7B + "num_step: 3\n")
    with pytest.raises(HyperParamsError) as info:
        DINMHyperParams.from_hparams(easyedit_yaml)
    message = str(info.value)
    assert "'num_step'" in message and str(easyedit_yaml) in message and "did you mean 'num_steps'" in message


def test_missing_required_field_is_named(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("lr: 0.1\n")
    with pytest.raises(HyperParamsError, match=r"missing required field\(s\) alg_name"):
        DINMHyperParams.from_hparams(path)


@pytest.mark.parametrize("key,value,fragment", [
    ("num_steps", "ten", "expected an integer"),
    ("lr", "fast", "expected a number"),
    ("layers", 3, "expected a list"),
    ("mode", "turbo", "choose one of 'improved', 'compat'"),
    ("use_suffix", "maybe", "expected true or false"),
    ("num_steps", 0, "num_steps must be > 0"),
    ("norm_constraint", True, "norm_constraint must be false or a number"),
    ("model_name", 7, "expected a string"),
])
def test_wrong_types_and_values_name_the_field(key, value, fragment):
    with pytest.raises(HyperParamsError, match=fragment):
        DINMHyperParams.from_dict({"alg_name": "DINM", key: value}, source="test.yaml")


def test_coercion_by_field_type():
    hp = DINMHyperParams.from_dict({"alg_name": "DINM", "num_steps": "5", "lr": "1e-5", "layers": ["3"],
                                    "norm_constraint": "5e-4", "mode": "COMPAT", "use_suffix": "no"})
    assert (hp.num_steps, hp.lr, hp.layers, hp.norm_constraint, hp.mode, hp.use_suffix) == (
        5, 1e-5, [3], 5e-4, "compat", False)


def test_string_values_are_not_turned_into_numbers():
    """EasyEdit float()s every string; we coerce by field type, so model_name '1' stays a string."""
    assert DINMHyperParams.from_dict({"alg_name": "DINM", "model_name": "1"}).model_name == "1"


@dataclass
class Inner:
    k: int = field(default=8, metadata={"help": "k"})


@dataclass
class NestedHP(HyperParams):
    inner: Inner = field(default_factory=Inner, metadata={"help": "nested"})
    which: Optional[Literal["a", "b"]] = field(default=None, metadata={"help": "choice"})
    scale: Union[float, List[float]] = field(default=1.0, metadata={"help": "one or many"})


def test_nested_dataclass_fields_and_round_trip():
    hp = NestedHP.from_dict({"alg_name": "X", "inner": {"k": "3"}, "which": "b", "scale": [1, "2"]})
    assert hp.inner == Inner(3) and hp.which == "b" and hp.scale == [1.0, 2.0]
    assert NestedHP.from_dict(hp.to_dict()) == hp
    with pytest.raises(HyperParamsError, match=r"unknown key 'kk' for Inner; did you mean 'k'"):
        NestedHP.from_dict({"alg_name": "X", "inner": {"kk": 3}})


def test_every_field_has_help_text():
    for name, _type, _default, help_text in DINMHyperParams.describe_fields():
        assert help_text, f"field {name} has no help"


def test_round_trip_through_yaml_and_json(easyedit_yaml):
    hp = DINMHyperParams.from_hparams(easyedit_yaml)
    assert DINMHyperParams.from_dict(yaml.safe_load(hp.to_yaml())) == hp
    assert DINMHyperParams.from_dict(json.loads(hp.to_json())) == hp


def test_every_shipped_yaml_round_trips(real_registry):
    shipped = registry.shipped_hparams()
    assert shipped, "no shipped hparams found"
    for name, path in shipped.items():
        hp = registry.from_hparams(name)
        again = type(hp).from_dict(yaml.safe_load(hp.to_yaml()), source=name)
        assert again == hp, name
        assert registry.from_hparams(path) == hp


def test_unknown_shipped_name_suggests_the_closest(real_registry):
    with pytest.raises(HyperParamsError, match="not a file, and not a shipped name"):
        registry.from_hparams("DINM/smollm2-13")


@pytest.mark.parametrize("text,fragment", [
    ("", "the file is empty"),
    ("- a\n- b\n", "expected a mapping"),
    ("alg_name: [unclosed\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_bad_files_raise_clear_errors(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(HyperParamsError, match=fragment):
        read_hparams_file(path)


def test_missing_file_and_missing_alg_name(tmp_path):
    with pytest.raises(HyperParamsError, match="not a file"):
        registry.resolve_hparams_path(tmp_path / "nothing-here")
    path = tmp_path / "noalg.yaml"
    path.write_text("lr: 1\n")
    with pytest.raises(HyperParamsError, match="missing 'alg_name'"):
        registry.peek_alg_name(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from([f.name for f in DINMHyperParams.__dataclass_fields__.values()] + ["bogus", "lrr"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=6))
def test_loader_either_loads_or_raises_its_own_error(config):
    try:
        DINMHyperParams.from_dict({"alg_name": "DINM", **config})
    except HyperParamsError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_file_text_loads_or_raises_its_own_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("hp") / "h.yaml"
    path.write_text(text)
    try:
        DINMHyperParams.from_dict(read_hparams_file(path))
    except HyperParamsError:
        pass
