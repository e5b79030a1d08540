"""Saved edits: ``load_edit(dir)`` reads a folder ``Edit.save`` wrote; ``.apply(model)`` re-applies it
through the editor that made it (found in the plugin registry)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from .compose import COMPOSED, ComposedEdit
from .edits import FORMAT_NAME, FORMAT_VERSION, MANIFEST_DIGEST, MANIFEST_NAME, TENSORS_NAME, Edit
from .errors import EditorNotFoundError, ManifestError, shown, type_name
from .fingerprint import model_fingerprint
from .footprint import Footprint
from .integrity import json_digest, mismatches
from .limits import read_text
from .plugins import get_registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


@dataclass
class SavedEdit:
    """An edit read from disk, not yet applied. ``apply(model)`` returns the applied ``Edit``."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, "torch.Tensor"]

    @property
    def editor(self) -> str:
        return str(self.manifest["editor"])

    @property
    def payload(self) -> str:
        return str(self.manifest["payload"])

    @property
    def fingerprint(self) -> Optional[str]:
        return (self.manifest.get("model") or {}).get("fingerprint")

    def metadata_for_apply(self) -> dict[str, Any]:
        skip = {"format", "format_version", "payload", "created", "tensors", "tensor_shapes", "files", "footprint",
                "digests", MANIFEST_DIGEST}
        return {k: v for k, v in self.manifest.items() if k not in skip}

    def saved_footprint(self) -> Optional[Footprint]:
        """The footprint the edit recorded when it was saved (None for a save that has none)."""
        data = self.manifest.get("footprint")
        return Footprint.from_dict(data) if isinstance(data, dict) else None

    def apply(self, model: Any, tokenizer: Any = None, *, force: bool = False) -> Edit:
        if self.payload == COMPOSED:
            return self._apply_steps(model, tokenizer, force=force)
        registry = get_registry()
        try:
            editor_class = registry.get_editor(self.editor)
        except EditorNotFoundError:
            dist = self.manifest.get("distribution") or "the distribution that provides it"
            raise ManifestError(
                f"{self.path}: editor {self.editor!r} is not installed; pip install {dist}"
            ) from None
        info = registry.editors()[self.editor.lower()]
        saved_version = str(self.manifest.get("editor_version") or "")
        if not _versions_compatible(saved_version, info.version):
            raise ManifestError(
                f"{self.path}: saved by {self.editor} {saved_version}, installed {info.version} is "
                f"incompatible; install {info.distribution}=={saved_version} or redo the edit"
            )
        expected = self.fingerprint
        if expected and not force:
            actual = model_fingerprint(model)
            if actual != expected:
                saved_model = (self.manifest.get("model") or {}).get("name_or_path", "?")
                raise ManifestError(
                    f"{self.path}: this edit was made for model {saved_model} (fingerprint {expected}), "
                    f"but the given model's fingerprint is {actual}; load that model, or pass force=True "
                    f"(--force) to apply anyway"
                )
        return editor_class.apply_saved(model, self, tokenizer=tokenizer)

    def step_folders(self) -> list[Path]:
        """The step folders of a composed edit, in order (each a plain folder name inside ``path``)."""
        steps = self.manifest.get("steps")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise ManifestError(f"{self.path}: a composed edit needs a non-empty 'steps' list of folder names")
        for name in steps:
            if "/" in name or "\\" in name or name.startswith("."):
                raise ManifestError(f"{self.path}: step folder {name!r} is not a plain folder name")
        return [self.path / name for name in steps]

    def _apply_steps(self, model: Any, tokenizer: Any, *, force: bool) -> Edit:
        """Replay a composed edit step by step; a failing step undoes the ones before it."""
        folders = self.step_folders()
        applied: list[Edit] = []
        try:
            for folder in folders:
                applied.append(load_edit(folder).apply(model, tokenizer, force=force))
        except BaseException:
            for step in reversed(applied):
                step.revert()
            raise
        return ComposedEdit(model, applied, metadata=self.metadata_for_apply())


def _versions_compatible(saved: str, installed: str) -> bool:
    if not saved or not installed:
        return True
    from packaging.version import InvalidVersion, Version

    try:
        a, b = Version(saved), Version(installed)
    except InvalidVersion:
        return saved == installed
    if a.major != b.major:
        return False
    return a.major > 0 or a.minor == b.minor


REQUIRED_MANIFEST_KEYS = ("format", "format_version", "editor", "payload", "tensors")
#: Set to 1 to load saves without digests (format 1, written before digests were recorded), unverified.
ALLOW_UNVERIFIED_ENV = "DETOX_ALLOW_UNVERIFIED"


def _verify_digests(path: Path, manifest: Mapping[str, Any]) -> None:
    """The manifest's digest of itself, then of every file it lists; refuse anything that differs.

    A save without digests (format 1) is refused unless ``DETOX_ALLOW_UNVERIFIED=1`` (then loaded with a
    warning); re-saving it (``detox apply OLD --out NEW`` with the variable set) records them."""
    manifest_path = path / MANIFEST_NAME
    digests = manifest.get("digests")
    recorded = manifest.get(MANIFEST_DIGEST)
    if digests is None and recorded is None:
        if os.environ.get(ALLOW_UNVERIFIED_ENV, "") in ("1", "true", "yes"):
            logger.warning("%s has no digests (saved by an older detox-plugins); loaded unverified", path)
            return
        raise ManifestError(
            f"{path} was saved without digests (an older format), so it cannot be verified; re-save it with "
            f"`{ALLOW_UNVERIFIED_ENV}=1 detox apply {path} --out NEW_DIR`, or set {ALLOW_UNVERIFIED_ENV}=1 to "
            f"load it unverified")
    if not isinstance(recorded, str) or not isinstance(digests, dict) or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items()):
        raise ManifestError(f"{manifest_path}: 'digests' and '{MANIFEST_DIGEST}' are missing or malformed; the "
                            f"save is damaged, redo the edit")
    if json_digest(manifest, without=MANIFEST_DIGEST) != recorded:
        raise ManifestError(f"{manifest_path} was changed after the save (its digest does not match); restore "
                            f"the original or redo the edit")
    extra = manifest.get("files") or []
    expected = {TENSORS_NAME, *(f for f in extra if isinstance(f, str))}
    folders = {name.split("/", 1)[0] for name in digests if "/" in name}
    unlisted = sorted(e for e in expected if e not in digests and e not in folders)
    if unlisted:
        raise ManifestError(f"{manifest_path}: no digest recorded for {', '.join(unlisted)}; the save is damaged, "
                            f"redo the edit")
    for name in digests:
        if name.startswith("/") or ".." in name.split("/"):
            raise ManifestError(f"{manifest_path}: digest entry {shown(name)} is not a path inside the folder")
    wrong = mismatches(path, digests)
    if wrong:
        raise ManifestError(
            f"{path}: {', '.join(wrong[:3])}{' (+%d more)' % (len(wrong) - 3) if len(wrong) > 3 else ''} "
            f"{'does' if len(wrong) == 1 else 'do'} not match the digest recorded at save time (damaged, "
            f"replaced or tampered with); redo the edit or restore the original files")


def load_edit(directory: str | os.PathLike[str]) -> SavedEdit:
    """Read a saved edit folder (JSON + safetensors only; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory)
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise ManifestError(f"{path} is not a folder; pass the folder an edit was saved to")
    if not manifest_path.is_file():
        raise ManifestError(f"{path} has no {MANIFEST_NAME}; it is not a saved edit (or its save was interrupted)")
    try:
        manifest = json.loads(read_text(manifest_path, kind="config", what="manifest"))
    except OSError as exc:
        raise ManifestError(f"cannot read {manifest_path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digit limit, deep nesting
        raise ManifestError(f"{manifest_path} is not valid JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{manifest_path}: expected a JSON object")
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"{manifest_path}: missing key(s) {', '.join(missing)}")
    if manifest["format"] != FORMAT_NAME:
        raise ManifestError(f"{manifest_path}: format {manifest['format']!r} is not {FORMAT_NAME!r}")
    version = manifest["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION or version < 1:
        raise ManifestError(
            f"{manifest_path}: format_version {version!r} is not supported (this build reads 1..{FORMAT_VERSION}); "
            f"upgrade detox-plugins"
        )
    if not isinstance(manifest["editor"], str) or not isinstance(manifest["payload"], str):
        raise ManifestError(f"{manifest_path}: 'editor' and 'payload' must be strings, got "
                            f"{type_name(manifest['editor'])} and {type_name(manifest['payload'])}")
    if manifest.get("model") is not None and not isinstance(manifest["model"], dict):
        raise ManifestError(f"{manifest_path}: 'model' must be an object (fingerprint, name_or_path); the save is damaged")
    names = manifest["tensors"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ManifestError(f"{manifest_path}: 'tensors' must be a list of names")
    tensors_path = path / TENSORS_NAME
    if not tensors_path.is_file():
        raise ManifestError(f"{path} lacks {TENSORS_NAME}")
    _verify_digests(path, manifest)
    try:
        tensors = load_file(str(tensors_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ManifestError(f"{tensors_path} is not a valid safetensors file: {exc}") from None
    if sorted(tensors) != sorted(names):
        raise ManifestError(f"{path}: the tensors on disk do not match the manifest's list; the save is damaged")
    _check_tensors(path, manifest, tensors)
    return SavedEdit(path=path, manifest=manifest, tensors=tensors)


def _check_tensors(path: Path, manifest: Mapping[str, Any], tensors: Mapping[str, "torch.Tensor"]) -> None:
    """Shapes as the manifest recorded them, and finite values: a damaged file never reaches a model."""
    import torch

    shapes = manifest.get("tensor_shapes")
    if shapes is not None and not isinstance(shapes, Mapping):
        raise ManifestError(f"{path}: 'tensor_shapes' must map tensor names to shapes; the save is damaged")
    for name, tensor in tensors.items():
        recorded = (shapes or {}).get(name)
        if recorded is not None and recorded != list(tensor.shape):
            raise ManifestError(
                f"{path}: tensor {name!r} has shape {list(tensor.shape)} on disk but the manifest records "
                f"{recorded!r}; the save is damaged, redo the edit"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ManifestError(
                f"{path}: tensor {name!r} holds NaN or infinite values; the save is damaged, redo the edit"
            )
