"""The command line's shared pieces: the model flags every ``detox`` command takes, and the one path
that loads a model from them (used by the host's commands and by plugin commands alike).

``--model M`` (a folder, a cached hub id, or the embedded default), ``--hparams H`` (its
``model_name``, ``dtype`` and ``device`` are the defaults), ``--dtype``, ``--device`` and repeatable
``--edit DIR`` (applied in order; ``--force`` skips the fingerprint check) mean the same on every
command: ``load_model_from_args`` is the only code that reads them.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Optional, Union

from .catalog import from_hparams
from .edits import Edit
from .limits import check_max_new_tokens
from .writer import Kind, reserve
from .hparams import HyperParams
from .models import DTYPES, load_model
from .saved import load_edit

logger = logging.getLogger(__name__)

#: The flags ``add_model_arguments`` adds (on `detox edit` no editor input may take their names).
MODEL_FLAGS = ("model", "hparams", "dtype", "device", "edit", "force")


def add_model_arguments(parser: argparse.ArgumentParser, *, hparams_help: Optional[str] = None) -> None:
    """``--model --hparams --dtype --device --edit DIR (repeatable) --force``, as one argument group."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="model folder or name (default: the hparams' model_name, else the "
                                       "embedded smollm2-135m-instruct)")
    group.add_argument("--hparams", help=hparams_help or "hyperparameter name (DINM/smollm2-135m) or file; "
                                                         "its model_name, dtype and device are the defaults")
    group.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: the hparams', else float32)")
    group.add_argument("--device", help="cpu, cuda, cuda:N (default: the hparams', else cpu)")
    group.add_argument("--edit", action="append", metavar="DIR",
                       help="apply a saved edit first (repeatable, applied in order)")
    group.add_argument("--force", action="store_true", help="apply --edit even if the model fingerprint differs")


def hparams_from_args(args: argparse.Namespace, default: Optional[str] = None) -> Optional[HyperParams]:
    """The hparams ``--hparams`` names (else ``default``), validated; None when neither is given."""
    name = getattr(args, "hparams", None) or default
    return from_hparams(name) if name else None


def load_model_from_args(args: argparse.Namespace, default: Union[HyperParams, str, None] = None
                         ) -> tuple[Any, Any, list[Edit]]:
    """Model, tokenizer and the applied ``--edit`` edits (in order).

    The model is ``--model``, else ``default`` (hparams or a name the command chose), else the
    ``--hparams`` file's model; ``--dtype``/``--device`` override the hparams' values. A failing
    ``--edit`` undoes the ones applied before it."""
    spec: Union[HyperParams, str, None] = getattr(args, "model", None) or default
    if spec is None:
        spec = hparams_from_args(args)
    dtype, device = getattr(args, "dtype", None), getattr(args, "device", None)
    model, tokenizer = load_model(spec, dtype=dtype, device=device)
    applied: list[Edit] = []
    try:
        for directory in getattr(args, "edit", None) or []:
            applied.append(load_edit(directory).apply(model, tokenizer, force=bool(getattr(args, "force", False))))
            logger.info("applied edit %s", directory)
    except BaseException:
        for edit in reversed(applied):
            edit.revert()
        raise
    return model, tokenizer, applied


def check_new_output(out: Optional[Union[str, Path]], *, overwrite: bool, kind: Kind = "folder",
                     what: str = "--out") -> None:
    """Before any work starts: refuse an existing ``--out`` (unless ``--overwrite``), a folder in place of a
    file, an unwritable parent; then lock it for this process (``registry.writer.reserve``), so a second
    ``detox`` writing the same path fails at once. ``None`` (no output asked for) checks nothing."""
    if out is not None:
        reserve(out, overwrite=overwrite, kind=kind, what=what)


def check_max_new_tokens_arg(args: argparse.Namespace) -> None:
    """``--max-new-tokens`` (where a command has it) is from 1 to ``limits.MAX_NEW_TOKENS``."""
    value = getattr(args, "max_new_tokens", None)
    if value is not None:
        check_max_new_tokens(value, what="--max-new-tokens")
