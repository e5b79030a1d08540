"""ft-editor: EasyEdit's FT-L as a ``model_editors`` plugin. Importing this package does no work."""

from registry import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_editors(register):  # no default on `register`: pluggy would not pass it
    from .editor import FTEditor  # torch loads only when the host asks for editors

    register(FTEditor)
