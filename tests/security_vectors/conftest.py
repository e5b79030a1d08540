"""Fixtures for the security-vector tests: tiny models, a word-level tokenizer, one trained vector."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .tiny import TASKS, benign_rows, harmful_rows, tiny_llama, tiny_tokenizer

SV_TASKS = TASKS[:9]  # trains the vector
ATTACK_TASKS = TASKS[9:]  # the "user's" harmful fine-tune (other tasks)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded. Tests get this from tests/conftest.py's autouse
    fixture; session fixtures are set up before it, so ``trained_vector`` uses this directly."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def make_model(tokenizer: Any) -> Callable[..., Any]:
    """A fresh tiny Llama; the same seed gives the same weights (and fingerprint) every time."""
    return lambda seed=0: tiny_llama(len(tokenizer), seed=seed)


@pytest.fixture(scope="session")
def benign_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "benign.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in benign_rows()), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def hparams(benign_file: Path) -> Callable[..., dict[str, Any]]:
    """Hyperparameters sized for the tiny model; keyword arguments override fields."""

    def build(**overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = dict(
            alg_name="SecurityVectors", benign_data=str(benign_file), max_length=64, progress=False,
            sv_lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]),
            sv_epochs=40, sv_lr=1e-2, sv_batch_size=9, sv_kl_weight=0.5,
            user_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
            ft_epochs=3, ft_lr=5e-3, ft_batch_size=3, ft_logging_steps=1, seed=0,
        )
        base.update(overrides)
        return base

    return build


@pytest.fixture(scope="session")
def trained_vector(make_model: Callable[..., Any], tokenizer: Any, hparams: Callable[..., dict[str, Any]],
                   tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One vector trained on the tiny model (seed 0) and saved; tests load it into fresh models."""
    from detox_plugins.security_vectors.editor import SecurityVectorEditor

    model = make_model()
    with one_thread():
        edit = SecurityVectorEditor(hparams()).edit(model, tokenizer, harmful_rows(SV_TASKS))
    folder = tmp_path_factory.mktemp("vector") / "sv"
    edit.save(folder)
    edit.revert()
    return folder


@pytest.fixture
def attack_rows() -> list[dict[str, Any]]:
    return harmful_rows(ATTACK_TASKS, template=1)
