"""Fixtures of the DINM tests (helpers live in tests/dinm/helpers.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.tiny import tiny_tokenizer

from .helpers import CASE, tiny_model



@pytest.fixture
def tok() -> Any:
    return tiny_tokenizer()


@pytest.fixture
def llama() -> Any:
    return tiny_model("llama")


@pytest.fixture
def case() -> dict[str, Any]:
    return dict(CASE)

