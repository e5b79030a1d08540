"""The host side of detox-plugins: what any editing framework needs to discover and run editors.

Plugin authors write ``from registry import hookimpl`` and implement ``register_editors(register)``
(and, optionally, ``register_commands(register)``). Importing this package is cheap: torch and
transformers load only when a model is used. docs/ARCHITECTURE.md shows the modules, bottom-up.
"""

from __future__ import annotations

from .catalog import from_hparams, resolve_hparams_path, shipped_hparams, shipped_pipelines
from .command import Command
from .compose import ComposedEdit, ConflictError
from .editor import KINDS, Editor
from .edits import Edit, ParameterEdit
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
from .footprint import Footprint
from .hookspecs import hookimpl
from .hparams import HyperParams, peek_alg_name
from .inputs import InputField
from .models import load_model
from .pipeline import Pipeline, compose, load_pipeline, run_pipeline
from .plugins import get_editor, get_registry, list_commands, list_editors, load_editors
from .requests import EditRequest, normalise_requests
from .saved import SavedEdit, load_edit
from . import easyedit

__version__ = "0.1.0"

__all__ = [
    "KINDS", "Command", "ComposedEdit", "ConflictError", "DetoxError", "Edit", "EditError", "EditRequest",
    "Editor", "EditorNotFoundError", "Footprint", "HyperParams", "HyperParamsError", "InputField",
    "ManifestError", "ModelLoadError", "ParameterEdit", "Pipeline", "PluginError", "SavedEdit", "compose",
    "easyedit", "from_hparams", "get_editor", "get_registry", "hookimpl", "list_commands", "list_editors",
    "load_edit", "load_editors", "load_model", "load_pipeline", "model_fingerprint", "normalise_requests",
    "peek_alg_name", "resolve_hparams_path", "run_pipeline", "shipped_hparams", "shipped_pipelines",
]
