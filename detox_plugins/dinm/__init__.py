"""DINM (arXiv 2403.14472) as a `model_editors` plugin. Heavy imports wait for the hook."""

from registry import hookimpl


@hookimpl
def register_editors(register):  # no default on `register`: pluggy would pass nothing (1.6 leaves it None)
    from .editor import DINMEditor

    register(DINMEditor)


@hookimpl
def register_commands(register):  # this editor's own `detox` verbs
    from .commands import COMMANDS

    for command in COMMANDS:
        register(command)


_LAZY = {
    "DINMEditor": ".editor",
    "DINMHyperParams": ".hparams",
    "apply_dinm_to_model": ".easyedit_api",
    "execute_dinm": ".easyedit_api",
}


def __getattr__(name):  # lazy re-exports keep `import detox_plugins.dinm` cheap
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
