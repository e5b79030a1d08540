"""DeStein (arXiv 2404.10464) as a `model_editors` plugin. Heavy imports wait for the hook.

Public API (import from the submodules): ``editor.DeSteinEditor``, ``hparams.DeSteinHyperParams``,
``vectors.SteeringVectors``, ``edits.HookEdit`` / ``edits.BiasFoldEdit``, ``pairs.load_pairs``,
``fusion.rotate``. See DESTEIN.md for the method and the released code's details.
"""

from registry import hookimpl


@hookimpl
def register_editors(register):  # no default on `register`: pluggy would pass nothing (STYLE.md)
    from .editor import DeSteinEditor

    register(DeSteinEditor)
