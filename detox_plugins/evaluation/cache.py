"""A cache of base-model evaluations, so ``detox report``, ``detox eval`` and the benchmarks generate
the unedited model's answers once.

An entry holds what one task produced on the base model (its responses, and the judge's scores
where the caller stores them) under ``$DETOX_CACHE/eval/<key>.json``, where ``key`` is the SHA-256
of the canonical JSON of every input that decides the answers: the model fingerprint (and dtype,
device), the tokenizer and chat template, the dataset's name, version and a digest of its rows, the
decoding settings, the prompt format, the judge and its version, and the versions of the code that
generates. Any change to one of them is another key.

Entries are written through :mod:`registry.writer` (a hidden sibling, then a rename; a later run
replaces an entry) and read under the data size limit (:func:`registry.limits.read_text`). A file
that is unreadable, damaged (its recorded digest does not match), for other inputs, or of another
shape is ignored with a warning and regenerated; it is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

from registry.integrity import json_digest
from registry.limits import read_text
from registry.models import CACHE_ENV, cache_dir
from registry.writer import ensure_folder, write_file

logger = logging.getLogger(__name__)

FORMAT = "detox-eval-cache/1"
SUBDIR = "eval"


def canonical(data: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): what keys and digests are computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def rows_digest(rows: Any) -> str:
    """``sha256:<hex>`` of a dataset's loaded rows."""
    return "sha256:" + hashlib.sha256(canonical(rows).encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of what turns prompts into tokens and back: class, vocabulary, special tokens, chat
    template, padding side."""
    try:
        vocab = sorted(tokenizer.get_vocab().items())
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary listing: its length
        vocab = [("len", len(tokenizer))]
    data = {
        "class": type(tokenizer).__name__,
        "vocab": vocab,
        "special": {k: str(v) for k, v in sorted((getattr(tokenizer, "special_tokens_map", None) or {}).items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
    }
    return rows_digest(data)[len("sha256:"):][:32]


def model_inputs(model: Any, tokenizer: Any, fingerprint: str | None = None) -> dict[str, Any]:
    """The model half of a key: fingerprint, dtype, device, tokenizer, and the generating code's versions."""
    from importlib import metadata

    import torch

    from registry.fingerprint import model_fingerprint

    param = next(iter(model.parameters()), None)
    versions = {}
    for dist in ("detox-plugins", "transformers", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    versions["torch"] = torch.__version__
    return {
        "fingerprint": fingerprint or model_fingerprint(model),
        "dtype": str(param.dtype) if param is not None else None,
        "device": param.device.type if param is not None else None,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "versions": versions,
    }


def cache_key(inputs: Mapping[str, Any]) -> str:
    """The hex SHA-256 of the canonical JSON of ``inputs``."""
    return hashlib.sha256(canonical({"format": FORMAT, **inputs}).encode("utf-8")).hexdigest()


def cache_root() -> Path:
    """The folder of the entries: ``$DETOX_CACHE/eval``."""
    return cache_dir() / SUBDIR


def cache_path(key: str) -> Path:
    return cache_root() / f"{key}.json"


def load(inputs: Mapping[str, Any], *, n_responses: int) -> dict[str, Any] | None:
    """The stored entry for ``inputs`` (``responses`` and whatever else was stored), or None.

    A missing file is a plain miss; a damaged or mismatching one is a miss with a warning."""
    inputs = json.loads(canonical(inputs))  # the form a stored entry holds them in
    key = cache_key(inputs)
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        entry = json.loads(read_text(path, kind="data", what="evaluation cache file"))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is regenerated, never trusted
        logger.warning("ignoring the evaluation cache file %s (%s); regenerating it", path, exc)
        return None
    problem = _problem(entry, key, inputs, n_responses)
    if problem:
        logger.warning("ignoring the evaluation cache file %s: %s; regenerating it", path, problem)
        return None
    logger.info("base-model answers from the cache: %s", path)
    return entry["data"]


def _problem(entry: Any, key: str, inputs: Mapping[str, Any], n_responses: int) -> str | None:
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return f"not a {FORMAT} file"
    if entry.get("digest") != json_digest(entry, without="digest"):
        return "its digest does not match its contents (damaged or edited)"
    if entry.get("key") != key or entry.get("inputs") != inputs:
        return "it was stored for other inputs"
    data = entry.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("responses"), list):
        return "it holds no responses"
    if len(data["responses"]) != n_responses:
        return f"it holds {len(data['responses'])} responses, not {n_responses}"
    if not all(isinstance(r, str) or (isinstance(r, list) and all(isinstance(x, str) for x in r))
               for r in data["responses"]):
        return "its responses are not text"
    return None


def store(inputs: Mapping[str, Any], data: Mapping[str, Any]) -> Path | None:
    """Write ``data`` (with ``responses``) for ``inputs``; a failure to write is a warning, not an error."""
    inputs = json.loads(canonical(inputs))
    key = cache_key(inputs)
    entry: dict[str, Any] = {"format": FORMAT, "key": key, "inputs": inputs, "data": json.loads(canonical(data))}
    entry["digest"] = json_digest(entry, without="digest")
    try:
        ensure_folder(cache_root(), what="evaluation cache folder", env=CACHE_ENV)
        return write_file(cache_path(key), canonical(entry), overwrite=True, what="evaluation cache file")
    except Exception as exc:  # noqa: BLE001 - the evaluation itself succeeded; only the cache is lost
        logger.warning("could not write the evaluation cache (%s); the next run generates again", exc)
        return None
