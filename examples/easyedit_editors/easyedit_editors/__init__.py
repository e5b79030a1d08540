"""easyedit-editors: EasyEdit's own algorithms as ``model_editors`` editors. Importing this package
does no work; ``register_editors`` imports ``easyeditor`` (see ``host``) and registers nothing when it
is not importable, so the other plugins load as before."""

from __future__ import annotations

import logging

from registry import hookimpl

__version__ = "0.1.0"
logger = logging.getLogger(__name__)
#: Why nothing was registered, when easyeditor could not be imported (``detox plugins`` prints it).
UNAVAILABLE: list[str] = []


@hookimpl
def register_editors(register):  # no default on `register`: pluggy would not pass it
    from . import host

    try:
        easyeditor = host.import_easyeditor()
    except Exception as exc:  # a missing or broken easyeditor: register nothing, say why once
        reason = f"easyeditor not importable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        if reason not in UNAVAILABLE:
            UNAVAILABLE.append(reason)
            logger.warning("easyedit-editors: %s; no EasyEdit editors registered", reason)
        return
    from .editor import editor_classes

    for editor_class in editor_classes(easyeditor):
        register(editor_class)
