"""DINM (arXiv 2403.14472) as a `model_editors` plugin. Heavy imports wait for the hook."""

from registry import hookimpl


@hookimpl
def register_editors(register):  # no default on `register`: pluggy would pass nothing (STYLE.md)
    from .editor import DINMEditor

    register(DINMEditor)
