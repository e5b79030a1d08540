"""Property-based tests of every loader that reads untrusted input: random and malformed input either
loads or raises the project's own error (a ``DetoxError`` subclass), never anything else.

Loaders: the hparams loader (``HyperParams.from_dict`` / ``read_hparams_file`` / ``from_hparams``),
the SafeEdit loader, the steering-pair loader and the saved-edit loader (``load_edit`` and the
``apply`` that follows it). Each property runs 50-100 examples; the file runs in well under 30 s.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from registry.errors import DetoxError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

#: Inputs that broke a loader once, or are known traps of PyYAML / json.
NASTY_TEXTS = [
    "a: 2001-13-01",  # PyYAML: ValueError (month must be in 1..12)
    "a: !!timestamp x",  # PyYAML: AttributeError
    "a: !!float x", "a: !!int x",  # PyYAML: ValueError
    "a: " + "1" * 5000,  # int past Python's digit limit: ValueError
    "[" * 5000, "{\"a\":" * 5000, "a: " + "[" * 5000,  # deep nesting: RecursionError
    "!!python/object/apply:os.system ['echo pwned']",  # never executed: safe_load refuses the tag
    "&a [*a]", "? [a]\n: 1", "x: !!binary '@@'", "\x00", "", "~", "- 1\n- 2", "{a: 1, a: 2}",
    "alg_name: DINM\nlr: .inf", "alg_name: DINM\nlr: .nan", "alg_name: DINM\nlayers: [1, -2]",
    "alg_name: DINM\nnum_steps: 1e400", "alg_name: DeStein\npairs: {num_pairs: x}",
    "alg_name: DeStein\nprobe: [1]", "alg_name: SecurityVectors\nsv_lora: {r: 0}",
    "alg_name: SecurityVectors\nsv_lora: {target_modules: 3}", "1" * 5000,
]

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-10**6, max_value=10**6)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)


def loads_or_detox_error(load: Callable[[], Any]) -> Any:
    """Run ``load``; only DetoxError may escape (anything else fails the test with its traceback)."""
    try:
        return load()
    except DetoxError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), f"error message not on one line: {message!r}"
        return exc


def _write(folder: Path, name: str, data: str | bytes) -> Path:
    path = folder / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


# ---------------------------------------------------------------------- hparams
def _hparams_classes() -> list[type]:
    from detox_plugins.destein.hparams import DeSteinHyperParams
    from detox_plugins.dinm.hparams import DINMHyperParams
    from detox_plugins.security_vectors.hparams import SecurityVectorHyperParams
    from registry.hparams import HyperParams

    return [HyperParams, DINMHyperParams, DeSteinHyperParams, SecurityVectorHyperParams]


def _field_names() -> list[str]:
    import dataclasses

    return sorted({f.name for cls in _hparams_classes() for f in dataclasses.fields(cls)})


hparams_keys = st.sampled_from(_field_names() + ["num_step", "lrr", "probe.kind"]) | st.text(max_size=6)
hparams_dicts = st.dictionaries(hparams_keys | st.integers(), json_values | st.sampled_from(
    [{"num_pairs": 2}, {"kind": "none"}, {"r": 4}, [0, 1], "all", "improved", "compat", "5e-4"]), max_size=6)


@FAST
@given(index=st.integers(0, 3), config=hparams_dicts, with_alg=st.booleans())
def test_hparams_from_dict_loads_or_raises_its_own_error(index: int, config: dict, with_alg: bool) -> None:
    cls = _hparams_classes()[index]
    if with_alg:
        config = {"alg_name": "X", **config}
    result = loads_or_detox_error(lambda: cls.from_dict(config, source="random"))
    if isinstance(result, cls):  # what loads round-trips
        assert cls.from_dict(result.to_dict()) == result


@FAST
@given(index=st.integers(1, 3), text=st.text(max_size=80) | st.sampled_from(NASTY_TEXTS)
       | hparams_dicts.map(lambda d: yaml.safe_dump({str(k): v for k, v in d.items()})),
       suffix=st.sampled_from([".yaml", ".json", ".yml"]))
@example(index=1, text="a: 2001-13-01", suffix=".yaml")
@example(index=1, text="[" * 5000, suffix=".json")
def test_hparams_files_load_or_raise_their_own_error(work: Path, index: int, text: str, suffix: str) -> None:
    from registry.hparams import read_hparams_file

    cls = _hparams_classes()[index]
    path = _write(work, f"hp{suffix}", text)
    loads_or_detox_error(lambda: read_hparams_file(path))
    loads_or_detox_error(lambda: cls.from_hparams(path))


@FAST
@given(data=st.binary(max_size=200))
def test_hparams_file_of_random_bytes(work: Path, data: bytes) -> None:
    from detox_plugins.dinm.hparams import DINMHyperParams

    path = _write(work, "bytes.yaml", data)
    loads_or_detox_error(lambda: DINMHyperParams.from_hparams(path))


def test_yaml_tags_are_never_executed(work: Path, tmp_path: Path) -> None:
    """safe_load only: a python/object tag is refused, nothing runs."""
    from registry.hparams import read_hparams_file

    marker = tmp_path / "pwned"
    path = _write(work, "evil.yaml", f"alg_name: !!python/object/apply:os.system ['touch {marker}']\n")
    result = loads_or_detox_error(lambda: read_hparams_file(path))
    assert isinstance(result, DetoxError) and "not valid YAML" in str(result)
    assert not marker.exists()


def test_no_unsafe_yaml_load_anywhere_in_the_project() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"(?<!\w)yaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all|full_load_all)\s*\(")
    offenders = []
    for folder in ("registry", "detox_plugins", "tests", "benchmarks", "scripts", "examples"):
        for path in (root / folder).rglob("*.py"):
            if path.resolve() == Path(__file__).resolve():
                continue
            if pattern.search(path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


# ---------------------------------------------------------------------- SafeEdit
SAFEEDIT_KEYS = ["id", "unsafety category", "question", "adversarial prompt", "safe generation",
                 "unsafe generation", "knowledge constrain", "generalization test", "attack name", "attack category"]


def _valid_record(i: int) -> dict[str, Any]:
    return {"id": i, "unsafety category": "offensiveness", "question": "q", "adversarial prompt": "a q",
            "safe generation": "No.", "unsafe generation": "Sure", "knowledge constrain": {"prompt": "2+2?",
                                                                                          "answer": "4"}}


safeedit_records = st.lists(
    st.builds(lambda i, extra: {**_valid_record(i), **extra}, st.integers(0, 99),
              st.dictionaries(st.sampled_from(SAFEEDIT_KEYS), json_values, max_size=3))
    | st.dictionaries(st.sampled_from(SAFEEDIT_KEYS) | st.text(max_size=4), json_values, max_size=6) | json_values,
    max_size=4)


@FAST
@given(records=safeedit_records | json_values)
def test_safeedit_loader_loads_or_raises_its_own_error(work: Path, records: Any) -> None:
    from detox_plugins.evaluation.datasets import SafeEditCase, load_safeedit

    path = _write(work, "safeedit.json", json.dumps(records))
    result = loads_or_detox_error(lambda: load_safeedit(path))
    if isinstance(result, list):
        assert all(isinstance(case, SafeEditCase) for case in result)
        assert all(isinstance(case.prompt, str) and isinstance(case.locality_answer, str) for case in result)


@FAST
@given(data=st.binary(max_size=200) | st.sampled_from(NASTY_TEXTS).map(str.encode))
def test_safeedit_loader_of_random_bytes(work: Path, data: bytes) -> None:
    from detox_plugins.evaluation.datasets import load_safeedit

    path = _write(work, "safeedit-bytes.json", data)
    loads_or_detox_error(lambda: load_safeedit(path))


# ---------------------------------------------------------------------- steering pairs
pair_records = st.dictionaries(st.sampled_from(["toxic", "nontoxic", "category", "id", "source", "score", "x"]),
                               json_values | st.text(alphabet=string.ascii_letters + " ", max_size=10), max_size=5)


@FAST
@given(lines=st.lists(pair_records.map(json.dumps) | st.text(max_size=20) | st.just("# comment") | st.just(""),
                      max_size=5),
       as_array=st.booleans())
def test_pair_loader_loads_or_raises_its_own_error(work: Path, lines: list[str], as_array: bool) -> None:
    from detox_plugins.destein.pairs import SteeringPair, load_pairs

    if as_array:
        text = "[" + ", ".join(lines) + "]"
    else:
        text = "\n".join(lines)
    path = _write(work, "pairs.jsonl", text)
    result = loads_or_detox_error(lambda: load_pairs(path))
    if isinstance(result, list):
        assert result and all(isinstance(p, SteeringPair) and p.toxic.strip() and p.nontoxic.strip()
                              for p in result)


@FAST
@given(data=st.binary(max_size=200) | st.sampled_from(NASTY_TEXTS).map(str.encode))
def test_pair_loader_of_random_bytes(work: Path, data: bytes) -> None:
    from detox_plugins.destein.pairs import load_pairs

    path = _write(work, "pairs-bytes.jsonl", data)
    loads_or_detox_error(lambda: load_pairs(path))


# ---------------------------------------------------------------------- saved edits
MANIFEST_KEYS = ["format", "format_version", "editor", "payload", "tensors", "tensor_shapes", "model",
                 "editor_version", "distribution", "steps", "destein", "adapter", "hparams"]


def _valid_manifest(names: list[str]) -> dict[str, Any]:
    return {"format": "detox-edit", "format_version": 1, "editor": "Scale", "payload": "parameter_delta",
            "tensors": names}


manifests = (st.dictionaries(st.sampled_from(MANIFEST_KEYS), json_values, max_size=8)
             | st.dictionaries(st.sampled_from(MANIFEST_KEYS), json_values, max_size=4).map(
                 lambda extra: {**_valid_manifest(["w"]), **extra})
             | json_values)


@FAST
@given(manifest=manifests | st.sampled_from(NASTY_TEXTS), tensors=st.binary(max_size=300) | st.none())
@example(manifest="[" * 5000, tensors=None)
@example(manifest={"format": "detox-edit", "format_version": 1, "editor": "Scale", "payload": "parameter_delta",
                   "tensors": ["w"]}, tensors=b"\xff" * 8 + b"{}")
def test_manifest_loader_loads_or_raises_its_own_error(work: Path, manifest: Any, tensors: bytes | None) -> None:
    from registry.edits import MANIFEST_NAME, TENSORS_NAME
    from registry.saved import SavedEdit, load_edit

    folder = work / "edit"
    folder.mkdir(exist_ok=True)
    for child in folder.iterdir():
        child.unlink()
    _write(folder, MANIFEST_NAME, manifest if isinstance(manifest, str) else json.dumps(manifest))
    if tensors is not None:
        _write(folder, TENSORS_NAME, tensors)
    result = loads_or_detox_error(lambda: load_edit(folder))
    assert isinstance(result, (SavedEdit, DetoxError))


tensor_specs = st.dictionaries(
    st.sampled_from(["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight",
                     "model.norm.weight", "nope", "model.layers.0.self_attn.o_proj.bias"]),
    st.tuples(st.sampled_from([(32, 64), (64, 32), (32,), (3,), ()]),
              st.sampled_from(["float32", "bfloat16", "int64", "bool"]),
              st.sampled_from([0.0, 1e-3, float("nan"), float("inf")])),
    max_size=3)


_MODEL: dict[str, Any] = {}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=tensor_specs, extra=st.dictionaries(st.sampled_from(MANIFEST_KEYS[5:]), json_values, max_size=3),
       shapes_in_manifest=st.booleans())
def test_load_and_apply_of_random_edits_is_all_or_nothing(work: Path, editor_registry: Any, specs: dict,
                                                          extra: dict, shapes_in_manifest: bool) -> None:
    """Real safetensors files with random names, shapes, dtypes and values, applied to a tiny model:
    the apply either succeeds (and reverts exactly) or raises DetoxError with the model unchanged."""
    import torch
    from safetensors.torch import save_file

    from registry.edits import MANIFEST_NAME, TENSORS_NAME

    from registry.saved import SavedEdit, load_edit
    from tests.registry.scale_editor import ScalePlugin
    from tests.tiny import tiny_llama

    if editor_registry.pm.get_plugin("scale") is None:
        editor_registry.register_plugin(ScalePlugin(), name="scale")
    folder = work / "random-edit"
    folder.mkdir(exist_ok=True)
    for child in folder.iterdir():
        child.unlink()
    tensors = {name: torch.full(shape, value).to(getattr(torch, dtype)) for name, (shape, dtype, value) in specs.items()}
    save_file(tensors, str(folder / TENSORS_NAME))
    manifest = {**_valid_manifest(sorted(tensors)), **extra}
    if shapes_in_manifest:
        manifest["tensor_shapes"] = {k: list(v.shape) for k, v in tensors.items()}
    _write(folder, MANIFEST_NAME, json.dumps(manifest))
    model = _MODEL.setdefault("model", tiny_llama())  # one model for every example: each must leave it exact
    before = _MODEL.setdefault("state", {k: v.clone() for k, v in model.state_dict().items()})
    saved = loads_or_detox_error(lambda: load_edit(folder))
    if not isinstance(saved, SavedEdit):
        return
    applied = loads_or_detox_error(lambda: saved.apply(model, force=True))
    if isinstance(applied, DetoxError):
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        return
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    applied.revert()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
