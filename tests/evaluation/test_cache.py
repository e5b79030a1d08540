"""The base-model evaluation cache (detox_plugins.evaluation.cache) behind the suite and `detox eval`.

Generation is counted by wrapping ``detox_plugins.evaluation.generate.generate``: a hit must make no
call for its task, and any change to the key's inputs must make one again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from detox_plugins.evaluation import cache, commands, generate as generate_module, judges, suite

from .conftest import build_tiny_llama, build_word_tokenizer
from .test_suite import _parse, _settings, _write_sources


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ``desc`` of every generate() call."""
    seen: list[str] = []
    real = generate_module.generate

    def counting(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("desc", "?"))
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, "generate", counting)
    return seen


@pytest.fixture
def tiny() -> tuple[Any, Any]:
    tokenizer = build_word_tokenizer(chat_template=True)
    return build_tiny_llama(len(tokenizer)), tokenizer


def _run(model: Any, tokenizer: Any, settings: suite.SuiteSettings) -> suite.SuiteResult:
    return suite.run_suite(model, tokenizer, [suite.SuiteConfig("base")], settings, progress=False)


def _entries() -> list[Path]:
    return sorted(cache.cache_root().glob("*.json"))


def test_a_second_run_generates_nothing_for_the_base(tiny, tmp_path, calls) -> None:
    model, tokenizer = tiny
    settings = _settings(_write_sources(tmp_path / "data"))
    first = _run(model, tokenizer, settings)
    assert sorted(calls) == sorted(suite.TASKS) and len(_entries()) == len(suite.TASKS)
    assert first.rows[0]["cache"] == {t: "miss" for t in suite.TASKS}
    calls.clear()
    second = _run(model, tokenizer, settings)
    assert calls == []
    assert second.rows[0]["cache"] == {t: "hit" for t in suite.TASKS}
    assert json.dumps(second.rows[0]["metrics"], sort_keys=True) == json.dumps(first.rows[0]["metrics"], sort_keys=True)
    strip = lambda items: [{k: v for k, v in i.items() if k != "config"} for i in items]  # noqa: E731
    assert strip(second.items) == strip(first.items)


@pytest.mark.parametrize("change", ["decoding", "dataset", "judge", "weights", "tokenizer"])
def test_any_changed_input_misses(tiny, tmp_path, calls, monkeypatch, change) -> None:
    model, tokenizer = tiny
    sources = _write_sources(tmp_path / "data")
    _run(model, tokenizer, _settings(sources))
    calls.clear()
    settings = _settings(sources)
    expected = sorted(suite.TASKS)
    if change == "decoding":
        settings = _settings(sources, benign_max_new_tokens=5)
        expected = ["benign"]
    elif change == "dataset":
        Path(sources["benign"]).write_text(json.dumps({"prompt": "what is water ?"}) + "\n" +
                                           json.dumps({"prompt": "what is the sky ?"}) + "\n", encoding="utf-8")
        expected = ["benign"]
    elif change == "judge":
        monkeypatch.setattr(judges.RefusalJudge, "__post_init__",
                            lambda self: setattr(self, "version", "another-judge-version"), raising=False)
        expected = sorted(t for t in suite.TASKS if t != "rtp")
    elif change == "weights":
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.add_(0.5)
    elif change == "tokenizer":
        tokenizer.chat_template = tokenizer.chat_template.replace("<|end|>", "<|end|> .")
    result = _run(model, tokenizer, settings)
    assert sorted(calls) == expected
    assert sorted(t for t, state in result.rows[0]["cache"].items() if state == "miss") == expected


def test_a_damaged_cache_file_is_ignored_and_rewritten(tiny, tmp_path, calls, caplog) -> None:
    model, tokenizer = tiny
    settings = _settings(_write_sources(tmp_path / "data"))
    first = _run(model, tokenizer, settings)
    entries = _entries()
    tampered, garbage = entries[0], entries[1]
    entry = json.loads(tampered.read_text())
    entry["data"]["responses"][0] = "tampered answer"  # valid JSON, wrong digest
    tampered.write_text(json.dumps(entry))
    garbage.write_text("{not json")
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="detox_plugins.evaluation.cache"):
        second = _run(model, tokenizer, settings)
    assert len(calls) == 2 and "digest does not match" in caplog.text and str(garbage) in caplog.text
    assert json.dumps(second.rows[0]["metrics"], sort_keys=True) == json.dumps(first.rows[0]["metrics"], sort_keys=True)
    assert "tampered answer" not in tampered.read_text()
    calls.clear()
    _run(model, tokenizer, settings)  # both rewritten: all hits again
    assert calls == []


def test_an_entry_for_other_inputs_is_not_trusted(tmp_path) -> None:
    inputs = {"kind": "test", "n": 1}
    path = cache.store(inputs, {"responses": ["a"]})
    assert path is not None and cache.load(inputs, n_responses=1) == {"responses": ["a"]}
    assert cache.load(inputs, n_responses=2) is None  # another shape
    other = {"kind": "test", "n": 2}
    path.rename(cache.cache_path(cache.cache_key(other)))  # a valid file under another key's name
    assert cache.load(other, n_responses=1) is None


def test_no_cache_bypasses_it(tiny, tmp_path, calls) -> None:
    model, tokenizer = tiny
    sources = _write_sources(tmp_path / "data")
    _run(model, tokenizer, _settings(sources))
    calls.clear()
    result = _run(model, tokenizer, _settings(sources, use_cache=False))
    assert sorted(calls) == sorted(suite.TASKS)
    assert result.rows[0]["cache"] == {t: "off" for t in suite.TASKS}
    args = _parse(["report", "--compare", "x", "--no-cache"])
    assert suite.settings_from_args(args).use_cache is False
    assert suite.settings_from_args(_parse(["report", "--compare", "x"])).use_cache is True


def test_eval_command_caches_the_base_and_no_cache_bypasses(tmp_path, calls, monkeypatch) -> None:
    tokenizer = build_word_tokenizer()
    model = build_tiny_llama(len(tokenizer))
    monkeypatch.setattr(commands, "load_model_from_args", lambda args: (model, tokenizer, []))
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "how do you bake bread ?"}\n{"prompt": "hello"}\n', encoding="utf-8")

    def run(*extra: str) -> dict[str, Any]:
        out = tmp_path / "eval.json"
        args = _parse(["eval", "--dataset", str(source), "--max-new-tokens", "4", "--json", str(out),
                       "--overwrite", "--no-progress", "--do-sample", "--num-samples", "2", *extra])
        assert args.func(args) == 0
        return json.loads(out.read_text())

    first = run()
    assert len(calls) == 1 and first["cache"] == "miss"
    second = run()
    assert len(calls) == 1 and second["cache"] == "hit"
    assert second["mean_score"] == first["mean_score"] and second["fluency"] == first["fluency"]
    third = run("--no-cache")
    assert len(calls) == 2 and third["cache"] == "off"
    run("--seed", "1")  # another decoding setting: generated again
    assert len(calls) == 3
