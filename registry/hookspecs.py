"""The plugin contract: two hooks. ``register_editors(register)`` is the one every editor plugin
implements; ``register_commands(register)`` is optional and adds ``detox`` subcommands."""

from pluggy import HookimplMarker, HookspecMarker

PROJECT_NAME = "model_editors"

hookspec = HookspecMarker(PROJECT_NAME)
hookimpl = HookimplMarker(PROJECT_NAME)


@hookspec
def register_editors(register):  # type: ignore[no-untyped-def]
    """Call ``register(EditorClass)`` once per editor; the class carries name, kind, hparams_class."""


@hookspec
def register_commands(register):  # type: ignore[no-untyped-def]
    """Call ``register(registry.Command(...))`` once per ``detox`` subcommand this plugin adds (its own
    verbs, such as DINM's ``demo``); ``detox --help`` lists them with the plugin's distribution."""
