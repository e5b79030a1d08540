"""``Edit``: the handle every editor returns. Reverts bit-for-bit, saves (safetensors + JSON),
and is re-applied through ``load_edit(dir).apply(model)``.
"""

from __future__ import annotations

import abc
import datetime as _dt
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from .errors import EditError, EditorNotFoundError, ManifestError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
TENSORS_NAME = "tensors.safetensors"
FORMAT_NAME = "detox-edit"
FORMAT_VERSION = 1
PARAMETER_DELTA = "parameter_delta"


class Edit(abc.ABC):
    """A change made to one model. ``revert()`` undoes it exactly; ``save(dir)`` makes it portable."""

    def __init__(self, model: Any, metadata: Mapping[str, Any]) -> None:
        self.model = model
        self.metadata: dict[str, Any] = dict(metadata)
        self.applied = True

    # ------------------------------------------------------------------ contract
    @property
    def editor(self) -> str:
        return str(self.metadata.get("editor", "?"))

    @property
    @abc.abstractmethod
    def payload(self) -> str:
        """Name of the payload layout, e.g. ``parameter_delta``; the editor's apply_saved reads it."""

    @abc.abstractmethod
    def _revert(self) -> None:
        """Undo the change; called once, only while applied."""

    @abc.abstractmethod
    def tensors(self) -> dict[str, "torch.Tensor"]:
        """The tensors that make up the saved artifact."""

    def write_extra(self, directory: Path) -> list[str]:
        """Write files other than tensors (e.g. a peft adapter); return their relative names."""
        return []

    def original_tensors(self) -> dict[str, "torch.Tensor"]:
        """Pre-edit values of the model's existing tensors this edit changed in place, by name.

        ``{}`` for edits that change no existing tensor (hooks, adapters, new tensors). Edits that
        write into existing parameters or buffers override this (EasyEdit's ``weights_copy``).
        """
        return {}

    # ------------------------------------------------------------------ behaviour
    def revert(self) -> None:
        if not self.applied:
            raise EditError(f"this {self.editor} edit was already reverted")
        self._revert()
        self.applied = False

    def __enter__(self) -> "Edit":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.applied:
            self.revert()

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "payload": self.payload,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **self.metadata,
        }

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``manifest.json`` + ``tensors.safetensors`` atomically into ``directory``."""
        from safetensors.torch import save_file

        target = Path(directory)
        if target.exists() and not overwrite:
            raise EditError(f"{target} already exists; choose a new folder or pass overwrite=True")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors().items()}
            manifest = self.manifest()
            manifest["tensors"] = sorted(tensors)
            manifest["tensor_shapes"] = {k: list(v.shape) for k, v in tensors.items()}
            manifest["files"] = self.write_extra(staging)
            save_file(tensors, str(staging / TENSORS_NAME), metadata={
                "format": FORMAT_NAME, "editor": self.editor, "payload": self.payload,
            })
            # The manifest is written last: a folder without it never loads.
            (staging / MANIFEST_NAME).write_text(json.dumps(_jsonable(manifest), indent=2, sort_keys=True))
            if target.exists():
                trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(target, trash)
                os.replace(staging, target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("saved %s edit to %s", self.editor, target)
        return target


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


# ---------------------------------------------------------------------- parameter deltas
def _resolve_parameter(model: Any, name: str) -> "torch.Tensor":
    params = dict(model.named_parameters())
    if name in params:
        return params[name]
    buffers = dict(model.named_buffers())
    if name in buffers:
        return buffers[name]
    raise KeyError(name)


class ParameterEdit(Edit):
    """An edit that adds deltas to existing tensors: ``W = W0 + delta``. Revert copies W0 back."""

    payload = PARAMETER_DELTA

    def __init__(self, model: Any, originals: dict[str, "torch.Tensor"], deltas: dict[str, "torch.Tensor"],
                 metadata: Mapping[str, Any]) -> None:
        super().__init__(model, metadata)
        self.originals = originals
        self.deltas = deltas

    @classmethod
    def apply_deltas(cls, model: Any, deltas: Mapping[str, "torch.Tensor"],
                     metadata: Mapping[str, Any]) -> "ParameterEdit":
        """Check every name and shape first, then apply all deltas; on any failure restore all."""
        import torch

        if not deltas:
            raise EditError("an edit with no tensors cannot be applied")
        targets = {}
        for name, delta in deltas.items():
            try:
                param = _resolve_parameter(model, name)
            except KeyError:
                raise EditError(
                    f"the model has no tensor {name!r}; this edit was made for another architecture"
                ) from None
            if tuple(param.shape) != tuple(delta.shape):
                raise EditError(
                    f"tensor {name!r} has shape {tuple(param.shape)} but the edit's delta has "
                    f"{tuple(delta.shape)}; this edit was made for another model"
                )
            targets[name] = param
        originals: dict[str, torch.Tensor] = {}
        stored: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for name, param in targets.items():
                    originals[name] = param.detach().clone()
                    delta = deltas[name].detach().to(device=param.device, dtype=param.dtype)
                    stored[name] = delta
                    param.copy_(originals[name] + delta)
        except BaseException:
            with torch.no_grad():
                for name, original in originals.items():
                    targets[name].copy_(original)
            raise
        return cls(model, originals, stored, metadata)

    def _revert(self) -> None:
        import torch

        with torch.no_grad():
            params = {name: _resolve_parameter(self.model, name) for name in self.originals}
            for name, param in params.items():
                expected = self.originals[name] + self.deltas[name]
                if not torch.equal(param.detach(), expected):
                    raise EditError(
                        f"tensor {name!r} changed after this {self.editor} edit was applied; "
                        f"revert the later edits first (newest first)"
                    )
            for name, param in params.items():
                param.copy_(self.originals[name])

    def tensors(self) -> dict[str, "torch.Tensor"]:
        return dict(self.deltas)

    def original_tensors(self) -> dict[str, "torch.Tensor"]:
        return dict(self.originals)


# ---------------------------------------------------------------------- saved edits
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
        skip = {"format", "format_version", "payload", "created", "tensors", "tensor_shapes", "files"}
        return {k: v for k, v in self.manifest.items() if k not in skip}

    def apply(self, model: Any, tokenizer: Any = None, *, force: bool = False) -> Edit:
        from .fingerprint import model_fingerprint
        from .plugins import get_registry

        if self.payload == "composed":
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
        from .compose import ComposedEdit

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
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
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
        raise ManifestError(f"{manifest_path}: 'editor' and 'payload' must be strings")
    if manifest.get("model") is not None and not isinstance(manifest["model"], dict):
        raise ManifestError(f"{manifest_path}: 'model' must be an object (fingerprint, name_or_path); the save is damaged")
    names = manifest["tensors"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ManifestError(f"{manifest_path}: 'tensors' must be a list of names")
    tensors_path = path / TENSORS_NAME
    if not tensors_path.is_file():
        raise ManifestError(f"{path} lacks {TENSORS_NAME}")
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
