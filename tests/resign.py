"""``resign(folder)``: recompute a saved edit's digests after a test damaged it on purpose, so the damage
reaches the checks behind the digest check (shapes, NaN, versions, fingerprints, a failing step)."""

from __future__ import annotations

import json
from pathlib import Path

from registry.edits import MANIFEST_DIGEST, MANIFEST_NAME
from registry.integrity import folder_digests, json_digest


def resign(folder: Path) -> None:
    """Re-digest ``folder`` and every step folder inside it (innermost first), as a new save would."""
    for sub in sorted((p for p in folder.iterdir() if (p / MANIFEST_NAME).is_file()), reverse=True):
        resign(sub)
    path = folder / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    if "digests" in manifest:
        manifest["digests"] = folder_digests(folder, skip=(MANIFEST_NAME,))
        manifest[MANIFEST_DIGEST] = json_digest(manifest, without=MANIFEST_DIGEST)
        path.write_text(json.dumps(manifest))
