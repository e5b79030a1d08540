"""Shared fixtures: an isolated editor registry and tiny random models built in-process."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

# tests/hosts drive the real EasyEdit and run only in .venv-hosts (scripts/setup_hosts.sh installs the
# EasyEdit import easyedit_host there, and `make test` runs them with it); the main env skips collecting them.
import importlib.util

collect_ignore = [] if importlib.util.find_spec("easyedit_host") else ["hosts"]

# Nothing in the test run may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread per test: tiny models run fastest so, and on a 2-core machine shared with
    other processes multi-threaded runs of the embedded model were 3-6x slower (measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _eval_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's base-model evaluation cache is its own empty folder (the model cache stays shared)."""
    from detox_plugins.evaluation import cache

    root = tmp_path_factory.mktemp("eval-cache")
    monkeypatch.setattr(cache, "cache_root", lambda: root)


@pytest.fixture
def editor_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator["object"]:
    """A fresh registry with entry-point autoloading off; tests register plugins in-process."""
    from registry import plugins

    monkeypatch.setenv(plugins.ENV_LOAD, "")
    monkeypatch.delenv(plugins.ENV_STRICT, raising=False)
    plugins.reset_registry()
    try:
        yield plugins.get_registry()
    finally:
        plugins.reset_registry()


@pytest.fixture
def real_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator["object"]:
    """A fresh registry that discovers the installed entry points."""
    from registry import plugins

    monkeypatch.delenv(plugins.ENV_LOAD, raising=False)
    monkeypatch.delenv(plugins.ENV_STRICT, raising=False)
    plugins.reset_registry()
    try:
        yield plugins.get_registry()
    finally:
        plugins.reset_registry()


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded SmolLM2-135M-Instruct (converted once into the cache), shared read-only."""
    from registry.models import load_model

    return load_model()
