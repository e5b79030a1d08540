"""Bounded input: file sizes, YAML aliases and duplicate keys, max_new_tokens, messages that name types."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import limits, safeyaml
from registry.errors import EditError, HyperParamsError, InputLimitError, shown
from registry.hparams import read_hparams_file
from registry.requests import EditRequest, normalise_requests


def bomb(levels: int, width: int = 9) -> str:
    lines = ["a: &a [" + ",".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*{'a' if i == 1 else f'l{i - 1}'}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_while_composing_and_fast():
    started = time.perf_counter()
    with pytest.raises(HyperParamsError, match="expands to more than") as info:
        safeyaml.load(bomb(9), "bomb.yaml")
    assert time.perf_counter() - started < 1.0 and "lol" not in str(info.value)


def test_too_many_aliases_and_recursive_aliases_are_refused():
    many = "a: &a 1\nb: [" + ", ".join(["*a"] * (safeyaml.MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(HyperParamsError, match="more than 100 YAML aliases"):
        safeyaml.load(many, "many.yaml")
    with pytest.raises(HyperParamsError, match="recursive alias"):
        safeyaml.load("a: &a [1, *a]\n", "loop.yaml")


def test_ordinary_anchors_and_merge_keys_still_load():
    text = "base: &base {lr: 1, steps: 2}\nrun:\n  <<: *base\n  steps: 3\n"
    assert safeyaml.load(text, "ok.yaml") == {"base": {"lr": 1, "steps": 2}, "run": {"lr": 1, "steps": 3}}


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text("alg_name: DINM\nsteps: 10\nlr: 1\nsteps: 99\n")
    with pytest.raises(HyperParamsError, match=r"line 4: duplicate key 'steps' \(first given on line 2\)"):
        read_hparams_file(path)
    (tmp_path / "hp.json").write_text('{"alg_name": "DINM", "lr": 1, "lr": 2}')
    with pytest.raises(HyperParamsError, match="duplicate key 'lr'"):
        read_hparams_file(tmp_path / "hp.json")


def test_duplicate_keys_in_a_pipeline_are_refused(tmp_path):
    from registry.pipeline import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsteps:\n  - hparams: DINM/smollm2-135m\n    case_id: 0\n    case_id: 1\n")
    with pytest.raises(HyperParamsError, match="line 5: duplicate key 'case_id'"):
        load_pipeline(path)


def test_set_values_refuse_duplicate_keys_and_alias_bombs_but_keep_plain_text():
    """`detox edit --set`: a VALUE that is not YAML is taken as text; refused YAML is never taken as text."""
    from detox_plugins.cli import parse_overrides

    with pytest.raises(safeyaml.YAMLRefusedError, match=r"--set pairs line 1: duplicate key 'num_pairs'"):
        parse_overrides(["pairs={num_pairs: 3, num_pairs: 4}"])
    with pytest.raises(safeyaml.YAMLRefusedError, match="YAML aliases|expands to"):
        parse_overrides(["alpha={" + ", ".join(bomb(9).splitlines()) + "}"])  # the bomb as one flow mapping
    assert parse_overrides(["suffix_system_prompt=Note: answer: briefly", "pairs.num_pairs=5"]) == {
        "suffix_system_prompt": "Note: answer: briefly", "pairs": {"num_pairs": 5}}  # not YAML: the text


def test_a_value_in_an_error_is_cut(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text("alg_name: DINM\nnum_steps: '" + "9x" * 5000 + "'\n")
    with pytest.raises(HyperParamsError) as info:
        from registry.catalog import from_hparams

        from_hparams(path)
    assert len(str(info.value)) < 300 and "expected an integer, got str" in str(info.value)
    assert shown(list(range(10**6))) == "list of 1000000 items"


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 4096), limit_kb=st.floats(0.01, 4.0))
def test_read_text_refuses_exactly_the_files_over_the_limit(tmp_path_factory, size, limit_kb):
    path = tmp_path_factory.mktemp("f") / "data.jsonl"
    path.write_bytes(b"x" * size)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(limits.MAX_FILE_ENV, str(limit_kb / 1024))
        limit = limits.limit_bytes("data")
        if size > limit:
            with pytest.raises(InputLimitError, match=limits.MAX_FILE_ENV):
                limits.read_text(path, kind="data")
        else:
            assert limits.read_text(path, kind="data") == "x" * size


def test_the_limit_variable_must_be_a_positive_number(monkeypatch, tmp_path):
    (tmp_path / "f").write_text("x")
    for bad in ("lots", "0", "-3"):
        monkeypatch.setenv(limits.MAX_FILE_ENV, bad)
        with pytest.raises(InputLimitError, match=limits.MAX_FILE_ENV):
            limits.read_text(tmp_path / "f", kind="config")


@pytest.mark.parametrize("value,fragment", [(0, "at least 1"), (-5, "at least 1"), (10**9, "over the limit"),
                                            ("12", "must be an integer, got str"), (True, "got bool")])
def test_max_new_tokens_is_one_rule(value, fragment):
    with pytest.raises(InputLimitError, match=fragment):
        limits.check_max_new_tokens(value)
    assert limits.check_max_new_tokens(64) == 64
    with pytest.raises(InputLimitError, match="context length"):
        limits.check_max_new_tokens(300, context_length=256)


def test_generate_refuses_tokens_past_the_context_length():
    from detox_plugins.evaluation.generate import generate

    from tests.tiny import tiny_llama, tiny_tokenizer

    with pytest.raises(InputLimitError, match="context length \\(256 tokens\\)"):
        generate(tiny_llama(), tiny_tokenizer(), ["hi"], max_new_tokens=1000, progress=False)


@pytest.mark.parametrize("field,value,fragment", [
    ("prompt", 5, "'prompt' must be a string, got int 5"),
    ("target_new", {"a": 1}, "'target_new' must be a string, got dict"),
    ("prompt", "  ", "'prompt' is empty"),
    ("ground_truth", 3.5, "'ground_truth' must be a string, got float"),
])
def test_request_messages_name_the_real_type(field, value, fragment):
    request = {"prompt": "p", "target_new": "t", field: value}
    with pytest.raises(EditError, match=fragment.replace("(", "\\(")):
        EditRequest.from_any(request).validate()


def test_the_editor_names_the_type_of_a_bad_prompt():
    from detox_plugins.dinm.editor import DINMEditor

    from tests.dinm.helpers import hparams
    from tests.tiny import tiny_llama, tiny_tokenizer

    model = tiny_llama()
    with pytest.raises(EditError, match="'prompt' must be a string, got int"):
        DINMEditor(hparams(), progress=False).edit(model, tiny_tokenizer(),
                                                   [{"prompt": 5, "target_new": "No.", "ground_truth": "Sure"}])
    assert normalise_requests([{"prompt": "p", "target_new": "t"}])[0].prompt == "p"
