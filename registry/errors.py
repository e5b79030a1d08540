"""The error types of the host. Every message names the problem and the fix, on one line."""

from __future__ import annotations


class DetoxError(Exception):
    """Base class of every error this project raises on purpose (bad input, missing files, ...)."""


class HyperParamsError(DetoxError, ValueError):
    """A hyperparameter file or value is wrong: unknown key, wrong type, missing field."""


class EditorNotFoundError(DetoxError, LookupError):
    """No registered editor has the requested name."""


class PluginError(DetoxError):
    """A plugin failed to load or to register its editors (raised only in strict mode)."""


class ModelLoadError(DetoxError):
    """A model or tokenizer could not be found or loaded."""


class EditError(DetoxError, ValueError):
    """An edit request is invalid or does not fit the model; the model was left unchanged."""


class ManifestError(DetoxError):
    """A saved edit cannot be loaded or applied (bad manifest, wrong model, missing editor)."""
