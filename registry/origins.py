"""Which distribution (and version) provides an editor class, for the manifests edits record.

The plugin registry records the origin of every editor it registers (from its entry point's
distribution); a class the registry never saw is looked up by its top-level package.
"""

from __future__ import annotations

import threading
import weakref
from importlib.metadata import PackageNotFoundError, packages_distributions, version

IN_PROCESS = "<in-process>"

_ORIGINS: "weakref.WeakKeyDictionary[type, tuple[str, str]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def record_origin(editor_class: type, distribution: str, dist_version: str) -> None:
    """Remember that ``editor_class`` was registered by ``distribution`` ``dist_version``."""
    with _LOCK:
        _ORIGINS[editor_class] = (distribution, dist_version)


def forget_origins() -> None:
    """Forget every recorded origin (the registry was reset)."""
    with _LOCK:
        _ORIGINS.clear()


def origin_of(editor_class: type) -> tuple[str, str]:
    """(distribution, version): as registered, else from the class's top-level package."""
    with _LOCK:
        recorded = _ORIGINS.get(editor_class)
    if recorded is not None:
        return recorded
    top = editor_class.__module__.split(".")[0]
    for dist in packages_distributions().get(top, []):
        try:
            return dist, version(dist)
        except PackageNotFoundError:
            continue
    return IN_PROCESS, ""
