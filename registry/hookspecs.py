"""The whole plugin contract: one hook, ``register_editors(register)``."""

from pluggy import HookimplMarker, HookspecMarker

PROJECT_NAME = "model_editors"

hookspec = HookspecMarker(PROJECT_NAME)
hookimpl = HookimplMarker(PROJECT_NAME)


@hookspec
def register_editors(register):  # type: ignore[no-untyped-def]
    """Call ``register(EditorClass)`` once per editor; the class carries name, kind, hparams_class."""
