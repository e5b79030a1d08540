"""The evaluation layer's errors: datasets and judges. Each message names the problem and the fix."""

from __future__ import annotations

from registry.errors import DetoxError


class DatasetError(DetoxError, ValueError):
    """A dataset file is missing, malformed, or lacks required fields."""


class DatasetUnavailableError(DatasetError):
    """An optional external dataset package is not installed; the message says how to install it."""


class JudgeError(DetoxError, ValueError):
    """An unknown judge name, or a judge whose optional dependency is missing."""
