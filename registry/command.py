"""``Command``: a ``detox`` subcommand contributed by a plugin through ``register_commands``.

The host builds one ``argparse`` subparser per command: its summary and examples become the
``--help`` text; with ``model_arguments`` the host adds the shared model flags (``--model``,
``--hparams``, ``--dtype``, ``--device``, repeatable ``--edit DIR``, ``--force``), and ``run`` loads
the model with ``registry.commandline.load_model_from_args(args)`` so they mean the same as on
every other command. ``run`` returns the exit status; errors are raised as ``DetoxError``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Callable

from .errors import PluginError

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """The default ``add_arguments``: the command takes only the shared flags."""


@dataclass(frozen=True)
class Command:
    """One subcommand: ``detox NAME ...``."""

    name: str
    summary: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    examples: tuple[str, ...] = ()
    model_arguments: bool = True

    def validate(self) -> None:
        """Raise PluginError for a command the host could not add."""
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise PluginError(f"command name {self.name!r} must be lower-case letters, digits and dashes")
        if not isinstance(self.summary, str) or not self.summary.strip():
            raise PluginError(f"command {self.name!r} needs a one-line summary")
        if not callable(self.run) or not callable(self.add_arguments):
            raise PluginError(f"command {self.name!r}: run and add_arguments must be callables")
        if not self.examples or not all(isinstance(e, str) and e.startswith("detox ") for e in self.examples):
            raise PluginError(f"command {self.name!r} needs at least one example starting with 'detox '")
