"""The package is layered one way: a module imports only modules of lower layers (every import counts:
top-level, inside functions, and under ``TYPE_CHECKING``), and no two modules import each other in a
circle. docs/ARCHITECTURE.md draws the same layers."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("registry", "detox_plugins")

#: Bottom-up. A module may import modules of strictly lower layers (and its own ancestor packages).
LAYERS: list[tuple[str, ...]] = [
    # registry: the host library
    ("registry.errors", "registry.hookspecs", "registry.fingerprint", "registry.origins", "registry.footprint"),
    ("registry.limits", "registry.safeyaml", "registry.integrity", "registry.writer", "registry.gguf_tokenizer"),
    ("registry.hparams", "registry.requests", "registry.inputs", "registry.command", "registry.checkpoint"),
    ("registry.edits", "registry.models"),
    ("registry.editor",),
    ("registry.plugins",),
    ("registry.catalog", "registry.compose"),
    ("registry.saved",),
    ("registry.pipeline", "registry.easyedit"),
    ("registry.commandline",),
    ("registry",),
    # detox_plugins: the evaluation layer, the editor plugins, then the commands
    ("detox_plugins", "detox_plugins.data", "detox_plugins.evaluation", "detox_plugins.evaluation.errors"),
    ("detox_plugins.evaluation.cache", "detox_plugins.evaluation.datasets", "detox_plugins.evaluation.generate"),
    ("detox_plugins.evaluation.judges",),
    ("detox_plugins.evaluation.metrics",),
    ("detox_plugins.evaluation.report",),
    ("detox_plugins.evaluation.suite",),
    ("detox_plugins.dinm*", "detox_plugins.destein*", "detox_plugins.security_vectors*"),
    ("detox_plugins.evaluation.commands",),
    ("detox_plugins.cli",),
]
#: Editor plugins are independent of each other: none imports another's package.
EDITOR_PACKAGES = ("detox_plugins.dinm", "detox_plugins.destein", "detox_plugins.security_vectors")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t for t in submodules if t in known] or [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer_of(name: str) -> int:
    for index, patterns in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"{name} is in no layer of tests/test_layers.py; add it (and to docs/ARCHITECTURE.md)")


def test_every_module_has_a_layer():
    for name in graph():
        layer_of(name)


def test_no_module_imports_a_higher_or_equal_layer():
    wrong = []
    for name, targets in sorted(graph().items()):
        for target in sorted(targets):
            same_editor = any(name.startswith(p) and target.startswith(p) for p in EDITOR_PACKAGES)
            if same_editor:
                continue  # inside one editor package: only circles are refused (below)
            if layer_of(target) >= layer_of(name):
                wrong.append(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_editor_plugins_do_not_import_each_other():
    for name, targets in graph().items():
        mine = next((p for p in EDITOR_PACKAGES if name == p or name.startswith(p + ".")), None)
        if mine is None:
            continue
        others = [t for t in targets if any(t == p or t.startswith(p + ".") for p in EDITOR_PACKAGES if p != mine)]
        assert not others, f"{name} imports {others}"


def test_no_import_circles():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, circles


def test_the_layer_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself works: an import of the CLI from the registry is reported."""
    fake = {"registry.errors": tmp_path / "errors.py"}
    fake["registry.errors"].write_text("from detox_plugins.cli import main\n")
    targets = imports("registry.errors", fake["registry.errors"], {"registry.errors", "detox_plugins.cli"})
    assert targets == {"detox_plugins.cli"} and layer_of("detox_plugins.cli") > layer_of("registry.errors")


def _documented_layers() -> dict[str, int]:
    """``{pattern: layer}`` from the two layer tables of docs/ARCHITECTURE.md."""
    import re

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    found: dict[str, int] = {}
    prefix = ""
    for line in text.splitlines():
        if line.startswith("### `"):
            prefix = line.strip("#` ")
        row = re.match(r"^\| (\d+) \| (.+?) \|", line)
        if row:
            for name in re.findall(r"`([^`]+)`", row.group(2)):
                full = name if name == prefix else f"{prefix}.{name}"
                found[full] = int(row.group(1))
    return found


def test_architecture_doc_draws_the_same_layers():
    documented = _documented_layers()
    expected = {pattern: index for index, patterns in enumerate(LAYERS) for pattern in patterns}
    assert documented == expected, "docs/ARCHITECTURE.md and LAYERS disagree"
