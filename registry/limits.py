"""Bounds on what the project reads: file sizes and token counts.

Every file the project reads as text (hyperparameters, pipelines, manifests, cases, pairs,
datasets, request files) goes through ``read_text``, which refuses a file over its kind's limit
before reading it: configuration files (YAML/JSON hyperparameters, pipelines, manifests) 1 MB,
data files 64 MB. ``DETOX_MAX_FILE_MB=N`` sets one limit of N MB for every kind.

``check_max_new_tokens`` is the one rule for ``max_new_tokens`` everywhere: an integer from 1 to
``MAX_NEW_TOKENS`` (and at most the model's context length, where the caller knows it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, Optional, Union

from .errors import InputLimitError, shown, type_name

logger = logging.getLogger(__name__)

MAX_FILE_ENV = "DETOX_MAX_FILE_MB"
#: Default limits in MB. YAML is parsed in pure Python (about 1 MB/s), so configuration stays small.
DEFAULT_LIMITS_MB = {"config": 1.0, "data": 64.0}
Kind = Literal["config", "data"]
MAX_NEW_TOKENS = 4096
MB = 1024 * 1024


def limit_bytes(kind: Kind) -> int:
    """The size limit of a file of this kind, in bytes (``DETOX_MAX_FILE_MB`` overrides every kind)."""
    raw = os.environ.get(MAX_FILE_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise InputLimitError(f"{MAX_FILE_ENV}={shown(raw)} is not a number; set it to a size in MB, "
                                  f"e.g. {MAX_FILE_ENV}=256") from None
        if not value > 0:
            raise InputLimitError(f"{MAX_FILE_ENV}={shown(raw)} must be > 0; set it to a size in MB")
        return int(value * MB)
    return int(DEFAULT_LIMITS_MB[kind] * MB)


def check_size(path: Union[str, Path], *, kind: Kind, what: str = "file") -> int:
    """The file's size in bytes; ``InputLimitError`` when it is over the limit of its kind."""
    path = Path(path)
    size = path.stat().st_size
    limit = limit_bytes(kind)
    if size > limit:
        raise InputLimitError(
            f"{path}: this {what} is {_size(size)}, over the {_size(limit)} limit for {kind} files; "
            f"set {MAX_FILE_ENV}={max(1, int(size / MB) + 1)} (or more) to read it"
        )
    return size


def read_text(path: Union[str, Path], *, kind: Kind, what: str = "file") -> str:
    """The file's text (UTF-8), refused before reading when over its kind's limit.

    Raises ``InputLimitError`` for size, and lets ``OSError``/``UnicodeDecodeError`` through for the
    caller to name in its own terms. A file that grows while read is still cut at the limit."""
    path = Path(path)
    check_size(path, kind=kind, what=what)
    limit = limit_bytes(kind)
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise InputLimitError(f"{path}: this {what} grew past the {_size(limit)} limit while it was read; "
                              f"set {MAX_FILE_ENV} higher or stop writing to it")
    return data.decode("utf-8")


def _size(count: int) -> str:
    return f"{count / MB:.3g} MB" if count >= MB // 10 else f"{count / 1024:.3g} KB"


def check_max_new_tokens(value: object, *, what: str = "max_new_tokens",
                         context_length: Optional[int] = None) -> int:
    """``value`` as a token count from 1 to ``MAX_NEW_TOKENS`` (and ``context_length``), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputLimitError(f"{what} must be an integer, got {type_name(value)} {shown(value)}")
    cap = MAX_NEW_TOKENS if context_length is None else min(MAX_NEW_TOKENS, int(context_length))
    if value < 1:
        raise InputLimitError(f"{what} must be at least 1, got {value}; pass a positive number of tokens")
    if value > cap:
        reason = "the model's context length" if cap != MAX_NEW_TOKENS else "the limit"
        raise InputLimitError(f"{what} {value} is over {reason} ({cap} tokens); pass at most {cap}")
    return value
