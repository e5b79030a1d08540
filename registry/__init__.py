"""The host side of detox-plugins: what any editing framework needs to discover and run editors.

Plugin authors write ``from registry import hookimpl`` and implement ``register_editors(register)``.
Importing this package is cheap: torch and transformers load only when a model is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from .compose import ComposedEdit, ConflictError, Footprint, compose
from .editor import KINDS, Editor, EditRequest, normalise_requests
from .edits import Edit, ParameterEdit, SavedEdit, load_edit
from .errors import (
    DetoxError,
    EditError,
    EditorNotFoundError,
    HyperParamsError,
    ManifestError,
    ModelLoadError,
    PluginError,
)
from .fingerprint import model_fingerprint
from .hookspecs import hookimpl
from .hparams import HyperParams, peek_alg_name, resolve_hparams_path
from .models import load_model
from .plugins import get_editor, get_registry, list_editors, load_editors, shipped_hparams
from .pipeline import Pipeline, load_pipeline, run_pipeline, shipped_pipelines
from . import easyedit  # noqa: E402  (the EasyEdit bridge; imports no torch)

__version__ = "0.1.0"

__all__ = [
    "ConflictError", "Footprint", "Pipeline", "load_pipeline", "run_pipeline", "shipped_pipelines",
    "KINDS", "ComposedEdit", "DetoxError", "Edit", "EditError", "EditRequest", "Editor", "EditorNotFoundError",
    "HyperParams", "HyperParamsError", "ManifestError", "ModelLoadError", "ParameterEdit",
    "PluginError", "SavedEdit", "compose", "from_hparams", "get_editor", "get_registry", "hookimpl",
    "list_editors", "load_edit", "load_editors", "load_model", "model_fingerprint",
    "normalise_requests", "shipped_hparams",
    "easyedit",
]


def from_hparams(path_or_name: Union[str, Path]) -> HyperParams:
    """Load a YAML/JSON file (or shipped name) into the hparams class of the editor its alg_name names."""
    path = resolve_hparams_path(path_or_name)
    editor_class = get_editor(peek_alg_name(path))
    return editor_class.hparams_class.from_hparams(path)
