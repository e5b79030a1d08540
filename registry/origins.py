"""Which distribution (and version) provides an editor class, for the manifests edits record.

The plugin registry records the origin of every editor it registers (from its entry point's
distribution) and installs itself as the lookup for classes it has not collected yet; a class the
registry never saw is looked up by its top-level package.
"""

from __future__ import annotations

import threading
import weakref
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from typing import Callable, Optional

IN_PROCESS = "<in-process>"

_ORIGINS: "weakref.WeakKeyDictionary[type, tuple[str, str]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
#: Called with a class not yet recorded; it may record origins (the registry collects its editors).
_LOOKUP: Optional[Callable[[type], None]] = None


def set_lookup(lookup: Optional[Callable[[type], None]]) -> None:
    """Install the callable that records origins on demand (the plugin registry), or remove it."""
    global _LOOKUP
    _LOOKUP = lookup


def record_origin(editor_class: type, distribution: str, dist_version: str) -> None:
    """Remember that ``editor_class`` was registered by ``distribution`` ``dist_version``."""
    with _LOCK:
        _ORIGINS[editor_class] = (distribution, dist_version)


def forget_origins() -> None:
    """Forget every recorded origin (the registry was reset)."""
    with _LOCK:
        _ORIGINS.clear()
    set_lookup(None)


def origin_of(editor_class: type) -> tuple[str, str]:
    """(distribution, version): as registered, else from the class's top-level package."""
    with _LOCK:
        recorded = _ORIGINS.get(editor_class)
    if recorded is None and _LOOKUP is not None:
        _LOOKUP(editor_class)
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
