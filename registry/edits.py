"""``Edit``: the handle every editor returns. Reverts bit-for-bit, saves (safetensors + JSON),
and is re-applied through ``load_edit(dir).apply(model)``.
"""

from __future__ import annotations

import abc
import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Protocol

from .checkpoint import CARD_NAME, model_card, write_merged
from .errors import EditError
from .footprint import Footprint
from .integrity import folder_digests, json_digest
from .writer import write_folder

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
TENSORS_NAME = "tensors.safetensors"
FORMAT_NAME = "detox-edit"
#: 2: the manifest records the digest of every file and of itself (1: no digests; refused unless
#: ``DETOX_ALLOW_UNVERIFIED=1``, see ``registry.saved``).
FORMAT_VERSION = 2
MANIFEST_DIGEST = "manifest_digest"
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

    def footprint(self) -> Optional[Footprint]:
        """What this edit changed and what its result depends on, for the conflict checks of
        ``registry.compose`` and for ``detox apply``; ``None`` = this edit does not say (the checks then
        cannot see it). ``ParameterEdit`` reports its deltas."""
        return None

    def summary(self) -> list[str]:
        """A few lines for a person, printed by ``detox edit`` after the edit (default: none)."""
        return []

    def restored_elsewhere(self) -> bool:
        """True when the model no longer holds this edit although ``revert()`` was not called (something
        else put the original values back); ``revert()`` is then a logged no-op. Default: never."""
        return False

    # ------------------------------------------------------------------ export (standard checkpoints)
    def export_config(self) -> dict[str, Any]:
        """The config changes a merged checkpoint of the edited model needs, so that the architecture's
        own class loads what this edit put into the weights (``{}``: none). Raise EditError naming why
        and what would work when the edit cannot live in the weights. Default: refused."""
        raise EditError(f"a {self.editor} '{self.payload}' edit changes no weights a checkpoint can hold; "
                        f"serve it with detox (load_edit(DIR).apply(model)) instead of exporting it")

    def write_peft(self, directory: Path) -> list[str]:
        """Write this edit as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
        into ``directory``; return the file names. Default: refused (only adapter edits are adapters)."""
        raise EditError(f"a {self.editor} '{self.payload}' edit is not a LoRA adapter; export it merged "
                        f"(--format merged)")

    def card_steps(self) -> list[dict[str, Any]]:
        """What a model card lists of this edit: one entry per step (editor, payload, hparams, origin)."""
        keys = ("editor", "distribution", "editor_version", "hparams", "model")
        return [{"payload": self.payload, **{k: self.metadata.get(k) for k in keys}}]

    def export(self, out: str | os.PathLike[str], *, tokenizer: Any = None, format: str = "merged",
               quality: Optional[str] = None, overwrite: bool = False) -> Path:
        """Write a standard checkpoint that loads without detox-plugins: ``merged`` (a Hugging Face folder
        of the edited model; pass the tokenizer) or ``peft`` (an adapter folder for the base model). Both
        carry a model card (``quality``: a markdown table to include)."""
        steps = self.card_steps()
        base = dict(steps[0].get("model") or {})  # the model before the first step
        title = f"{base.get('name_or_path') or 'model'} + {' + '.join(str(s['editor']) for s in steps)}"
        card = model_card(title=title, base=base, steps=steps, fmt=format, quality=quality)
        if format == "merged":
            return write_merged(self.model, tokenizer, out, config_updates=self.export_config(), card=card,
                                overwrite=overwrite)
        if format == "peft":
            def fill(folder: Path) -> None:
                self.write_peft(folder)
                (folder / CARD_NAME).write_text(card, encoding="utf-8")
            return write_folder(out, fill, overwrite=overwrite)
        raise EditError(f"unknown export format {format!r}; use merged or peft")

    def original_tensors(self) -> dict[str, "torch.Tensor"]:
        """Pre-edit values of the model's existing tensors this edit changed in place, by name.

        ``{}`` for edits that change no existing tensor (hooks, adapters, new tensors). Edits that
        write into existing parameters or buffers override this (EasyEdit's ``weights_copy``).
        """
        return {}

    # ------------------------------------------------------------------ behaviour
    def revert(self) -> None:
        if self.restored_elsewhere():
            logger.info("this %s edit was already undone outside revert() (every tensor it changed holds "
                        "its pre-edit value again, e.g. EasyEdit's restore loop); nothing to do", self.editor)
            self.applied = False
            return
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
        """Write ``manifest.json`` + ``tensors.safetensors`` atomically into ``directory`` (through
        ``registry.writer``: an existing folder only with ``overwrite``, never in place of a file).

        The manifest records the SHA-256 digest of every file of the save (``digests``) and of its
        own canonical JSON (``manifest_digest``); ``load_edit`` refuses a folder that does not match."""
        from safetensors.torch import save_file

        def fill(staging: Path) -> None:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors().items()}
            manifest = self.manifest()
            manifest["tensors"] = sorted(tensors)
            manifest["tensor_shapes"] = {k: list(v.shape) for k, v in tensors.items()}
            manifest["files"] = self.write_extra(staging)
            footprint = self.footprint()
            manifest["footprint"] = None if footprint is None else footprint.to_dict()
            save_file(tensors, str(staging / TENSORS_NAME), metadata={
                "format": FORMAT_NAME, "editor": self.editor, "payload": self.payload,
            })
            manifest["digests"] = folder_digests(staging, skip=(MANIFEST_NAME,))
            manifest = _jsonable(manifest)
            manifest[MANIFEST_DIGEST] = json_digest(manifest, without=MANIFEST_DIGEST)
            # The manifest is written last: a folder without it never loads.
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")

        target = write_folder(directory, fill, overwrite=overwrite, what="edit folder")
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


def check_in_memory(tensors: Mapping[str, Any], *, editor: str) -> None:
    """Refuse tensors that live on the meta device: a model dispatched by accelerate with CPU or disk
    offload keeps offloaded weights outside the module, where an in-place edit cannot reach them."""
    offloaded = sorted(name for name, tensor in tensors.items() if getattr(tensor, "device", None) is not None
                       and tensor.device.type == "meta")
    if offloaded:
        raise EditError(
            f"{editor} would change {offloaded[0]}{f' (+{len(offloaded) - 1} more)' if len(offloaded) > 1 else ''}, "
            f"which is offloaded (accelerate's device_map put it on 'disk' or in its CPU offload, so the module holds "
            f"no weights); keep the edited layers on a device in the device_map (e.g. 'cpu' or 0), or edit other layers")


class ParameterEdit(Edit):
    """An edit that adds deltas to existing tensors: ``W = W0 + delta``. Revert copies W0 back."""

    payload = PARAMETER_DELTA

    def __init__(self, model: Any, originals: dict[str, "torch.Tensor"], deltas: dict[str, "torch.Tensor"],
                 metadata: Mapping[str, Any], *, stackable: bool = False) -> None:
        self.originals = originals
        self.deltas = deltas
        self.stackable = stackable
        super().__init__(model, metadata)

    @property
    def applied(self) -> bool:
        """True while the model holds this edit: False after ``revert()``, and also once every
        tensor it changed holds its pre-edit value again because something else put it back
        (EasyEdit's restore loop copying ``weights_copy`` into the model)."""
        return self._applied and not self.restored_elsewhere()

    @applied.setter
    def applied(self, value: bool) -> None:
        self._applied = bool(value)

    def restored_elsewhere(self) -> bool:
        """Every tensor this edit changed holds its pre-edit value again, though ``revert()`` was not
        called (an edit whose deltas are all zero never counts: it is indistinguishable)."""
        import torch

        if not self._applied or not any(bool(d.any()) for d in self.deltas.values()):
            return False
        try:
            with torch.no_grad():
                return all(torch.equal(_resolve_parameter(self.model, name).detach(), original)
                           for name, original in self.originals.items())
        except KeyError:
            return False

    @classmethod
    def apply_deltas(cls, model: Any, deltas: Mapping[str, "torch.Tensor"],
                     metadata: Mapping[str, Any], *, stackable: bool = False) -> "ParameterEdit":
        """Check every name and shape first, then apply all deltas; on any failure restore all.

        ``stackable``: later additive edits of the same tensors are allowed (see ``Footprint``)."""
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
        check_in_memory(targets, editor=str(metadata.get("editor", "this edit")))
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
        return cls(model, originals, stored, metadata, stackable=stackable)

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

    def footprint(self) -> Footprint:
        return Footprint.of(writes=self.deltas, additive=True, stackable=self.stackable)

    def export_config(self) -> dict[str, Any]:
        return {}  # W0 + delta lives in the weights as they are

    def original_tensors(self) -> dict[str, "torch.Tensor"]:
        return dict(self.originals)


class SavedPayload(Protocol):
    """What ``Editor.apply_saved`` reads of a saved edit (``registry.saved.SavedEdit`` is one)."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, "torch.Tensor"]

    @property
    def payload(self) -> str: ...

    def metadata_for_apply(self) -> dict[str, Any]: ...

    def saved_footprint(self) -> Optional[Footprint]: ...
