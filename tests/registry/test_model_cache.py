"""The converted-model cache verifies itself on every load: a damaged folder is rebuilt, or named."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from registry import models
from registry.errors import ModelLoadError, OutputError

from ..tiny import tiny_llama, tiny_tokenizer


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch):
    """The embedded model's cache path with a tiny model as what the GGUF converts into (counted)."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: (tmp_path / "model.gguf", "9.9"))
    calls = []

    def convert(gguf: Path, target: Path) -> Path:
        calls.append(target)
        staging = target.parent / f".{target.name}.tmp"
        tiny_llama(layers=1).save_pretrained(staging)
        tiny_tokenizer().save_pretrained(staging)
        models.write_cache_manifest(staging)
        os.replace(staging, target)
        return target

    monkeypatch.setattr(models, "convert_gguf", convert)
    return calls


def test_a_sound_cache_is_used_and_not_rebuilt(fake_conversion):
    folder = models.embedded_model_dir()
    assert models.embedded_model_dir() == folder and len(fake_conversion) == 1
    assert models.cache_problem(folder) is None and (folder / models.CACHE_MANIFEST).is_file()


def test_a_truncated_cached_model_is_rebuilt(fake_conversion, caplog):
    folder = models.embedded_model_dir()
    weights = folder / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="registry.models"):
        assert models.embedded_model_dir() == folder
    assert len(fake_conversion) == 2 and "is damaged (model.safetensors has" in caplog.text
    assert models.cache_problem(folder) is None
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # the damaged copy is gone


def test_a_changed_file_of_the_same_size_is_found_by_its_digest(fake_conversion):
    folder = models.embedded_model_dir()
    config = folder / "config.json"
    text = config.read_text()
    config.write_text(text.replace('"', "'", 1))  # same length, other bytes, new mtime
    assert models.cache_problem(folder) == "config.json changed after it was written"


def test_a_cache_from_before_the_manifest_is_checked_by_its_safetensors_header(tmp_path):
    folder = tmp_path / "old-cache"
    tiny_llama(layers=1).save_pretrained(folder)
    assert models.cache_problem(folder) is None
    weights = folder / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size - 10)
    assert "its header needs" in models.cache_problem(folder)


def test_a_damaged_cache_that_cannot_be_removed_is_named(fake_conversion, monkeypatch):
    folder = models.embedded_model_dir()
    (folder / "model.safetensors").write_bytes(b"x")

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(models.os, "rename", refuse)
    with pytest.raises(ModelLoadError, match=f"{folder} is damaged .* delete that folder, or set DETOX_CACHE"):
        models.embedded_model_dir()


def test_a_cache_that_is_a_file_is_named_before_converting(tmp_path, monkeypatch, fake_conversion):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "file"))
    with pytest.raises(OutputError, match="is not a folder; set DETOX_CACHE to a writable folder"):
        models.embedded_model_dir()
    assert fake_conversion == []
