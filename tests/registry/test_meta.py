"""Meta-tests: every hook has a test and a README entry (datasette's habit)."""

from __future__ import annotations

import inspect
from pathlib import Path

from registry import hookspecs

ROOT = Path(__file__).resolve().parents[2]


def hook_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, "model_editors_spec")]


def test_the_contract_has_hooks():
    assert hook_names() == ["register_commands", "register_editors"]


def test_every_hook_has_a_test():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    for name in hook_names():
        assert f"def test_hook_{name}" in sources, f"add a test named test_hook_{name}_..."


def test_every_hook_is_documented():
    readme = (ROOT / "README.md").read_text()
    for name in hook_names():
        assert f"### `{name}(register)`" in readme, f"document {name} in README.md"
