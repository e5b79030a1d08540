"""DeStein (arXiv 2404.10464) as a `model_editors` plugin. Heavy imports wait for the hook.

Public API (import from the submodules): ``editor.DeSteinEditor``, ``hparams.DeSteinHyperParams``,
``vectors.SteeringVectors``, ``edits.HookEdit`` / ``edits.BiasFoldEdit``, ``pairs.load_pairs``,
``fusion.rotate``. ``rotate`` reproduces the released code, ``additive`` the paper's form.
"""

from registry import hookimpl


@hookimpl
def register_editors(register):  # no default on `register`: pluggy would pass nothing (1.6 leaves it None)
    from .editor import DeSteinEditor

    register(DeSteinEditor)


@hookimpl
def register_commands(register):  # this editor's own `detox` verbs
    from .commands import COMMANDS

    for command in COMMANDS:
        register(command)
