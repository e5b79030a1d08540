"""The shipped files of every installed editor: hyperparameters (``DINM/smollm2-135m``) and pipelines
(``detox-all``), found by name in each editor's ``hparams_package``."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Union

from .editor import PIPELINES_FOLDER
from .errors import HyperParamsError
from .hparams import HPARAMS_SUFFIXES, HyperParams, peek_alg_name, shipped_in_package
from .hparams import resolve_hparams_path as _resolve_in
from .plugins import get_editor, get_registry

logger = logging.getLogger(__name__)


def hparams_packages() -> list[tuple[str, Any]]:
    """``(package, its files)`` for every importable ``hparams_package`` of an installed editor, in
    registry order, each once; a package that cannot be imported is logged and skipped."""
    from importlib.resources import files

    names: list[str] = []
    for info in get_registry().list_editors():
        pkg = info.editor_class.hparams_package if info.editor_class else None
        if pkg and pkg not in names:
            names.append(pkg)
    found = []
    for pkg in names:
        try:
            found.append((pkg, files(pkg)))
        except (ModuleNotFoundError, TypeError) as exc:
            logger.warning("hparams package %r is not importable: %s", pkg, exc)
    return found


def shipped_hparams() -> dict[str, Path]:
    """``{"DINM/smollm2-135m": path}`` for every YAML/JSON shipped by an installed editor."""
    found: dict[str, Path] = {}
    for pkg, _root in hparams_packages():
        for name, path in shipped_in_package(pkg, skip=(PIPELINES_FOLDER,)).items():
            found.setdefault(name, path)
    return found


def resolve_hparams_path(path_or_name: Union[str, Path]) -> Path:
    """A user file (suffix optional) first, then a shipped name such as ``DINM/smollm2-135m``."""
    try:
        return _resolve_in(path_or_name)  # a file needs no plugins loaded
    except HyperParamsError:
        if not str(path_or_name).strip():
            raise  # the empty name: nothing to look up
    return _resolve_in(path_or_name, shipped_hparams())


def from_hparams(path_or_name: Union[str, Path]) -> HyperParams:
    """Load a YAML/JSON file (or shipped name) into the hparams class of the editor its alg_name names."""
    path = resolve_hparams_path(path_or_name)
    editor_class = get_editor(peek_alg_name(path))
    return editor_class.hparams_class.from_hparams(path)


def shipped_pipelines() -> dict[str, Path]:
    """``{"detox-all": path}`` for every pipeline shipped in an installed editor's hparams package."""
    found: dict[str, Path] = {}
    for _pkg, root in hparams_packages():
        folder = root / PIPELINES_FOLDER
        if not folder.is_dir():
            continue
        for item in sorted(folder.iterdir(), key=lambda t: t.name):
            stem, dot, suffix = item.name.rpartition(".")
            if dot and f".{suffix}" in HPARAMS_SUFFIXES and item.is_file():
                found.setdefault(stem, Path(str(item)))
    return found


def resolve_pipeline_path(path_or_name: Union[str, Path]) -> Path:
    """A pipeline file (suffix optional) first, then a shipped name like ``detox-all``."""
    raw = str(path_or_name).strip()
    if not raw:
        raise HyperParamsError("empty pipeline name; pass a pipeline file or a shipped name like detox-all")
    path = Path(raw).expanduser()
    candidates = [path] if path.suffix in HPARAMS_SUFFIXES else [path.with_name(path.name + s)
                                                                  for s in HPARAMS_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = shipped_pipelines()
    key = raw.replace("\\", "/")
    if key.startswith(f"{PIPELINES_FOLDER}/"):
        key = key[len(PIPELINES_FOLDER) + 1:]
    for suffix in HPARAMS_SUFFIXES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    for name, found in shipped.items():
        if name.lower() == key.lower():
            return found
    close = difflib.get_close_matches(key, list(shipped), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise HyperParamsError(f"no pipeline {raw!r}: not a file, and not a shipped pipeline "
                           f"({', '.join(sorted(shipped)) or 'none installed'}).{hint}")
