"""SHA-256 digests of files, folders and JSON manifests: what a save records and a load verifies.

``folder_digests(dir, skip=...)`` maps every file under ``dir`` (hidden files and ``skip`` left
out; ``/`` separated relative names) to its digest; ``json_digest(obj)`` digests canonical JSON
(sorted keys, no spaces), so a manifest can carry the digest of itself without that field.
These detect damage and tampering by anyone who does not also rewrite the digests; they are not
signatures.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

CHUNK = 1024 * 1024


def file_digest(path: Union[str, "os.PathLike[str]"]) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK)
            if not block:
                break
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def folder_files(root: Path, skip: Iterable[str] = ()) -> list[str]:
    """Relative names of every regular file under ``root``, hidden entries and ``skip`` left out."""
    skipped = set(skip)
    names = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            rel = Path(folder, name).relative_to(root).as_posix()
            if rel not in skipped:
                names.append(rel)
    return names


def folder_digests(root: Path, skip: Iterable[str] = ()) -> dict[str, str]:
    """``{relative name: sha256:...}`` for every file under ``root`` (see ``folder_files``)."""
    return {name: file_digest(root / name) for name in folder_files(root, skip)}


def json_digest(data: Mapping[str, Any], *, without: str) -> str:
    """``sha256:<hex>`` of ``data`` as canonical JSON, the key ``without`` left out."""
    body = {k: v for k, v in data.items() if k != without}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return f"sha256:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"


def mismatches(root: Path, recorded: Mapping[str, str]) -> list[str]:
    """Names in ``recorded`` whose file under ``root`` is missing or has another digest."""
    wrong = []
    for name, expected in sorted(recorded.items()):
        path = root / name
        if not path.is_file() or file_digest(path) != expected:
            wrong.append(name)
    return wrong
