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


class InputLimitError(DetoxError, ValueError):
    """An input is larger than a documented limit (file size, YAML aliases, token counts)."""


class OutputError(DetoxError):
    """An output path cannot be written: it exists, it is locked, it is not writable, the disk is full."""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages: a hostile value never floods one.

    Containers are not expanded past the limit (a YAML alias bomb is never walked in full)."""
    if isinstance(value, (str, bytes)):
        text = repr(value[: limit + 1])
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        text = f"{type(value).__name__} of {len(value)} item{'s' if len(value) != 1 else ''}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: object) -> str:
    """The name of a value's type as a message says it: 'str', 'int', 'list', 'NoneType' -> 'null'."""
    return "null" if value is None else type(value).__name__
