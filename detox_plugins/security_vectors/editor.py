"""The SecurityVectors editor: train the vector (stage 1), fine-tune with it (stage 2), export (stage 3).

Stage 1, ``edit(model, tokenizer, requests)``: trains a LoRA adapter (the vector) on the frozen
model so that it already produces the harmful compliance openings, with a KL term that keeps
benign behaviour. The vector stays attached **inactive** (the model's outputs are unchanged) and
the returned :class:`SecurityVectorEdit` saves it (payload ``security_vector``).

Stage 2, ``fine_tune(model, tokenizer, dataset, vector=...)``: the user's fine-tune on
``transformers.Trainer`` with the vector active and frozen; without ``vector`` it is a plain
fine-tune (the baseline). Setting A (``user_mode: lora``) trains a new LoRA, setting B
(``full``) trains the backbone.

Stage 3: the vector is removed before anything is returned or saved. The result is an edit of
the base model: the user's LoRA alone (:class:`UserAdapterEdit`, payload ``peft_adapter``) or
parameter deltas merged into the base weights (``registry.ParameterEdit``). ``load_edit(dir)
.apply(model)`` re-applies any of them and ``revert()`` restores the base bit for bit.

Threat model: this protects fine-tuning that *we* run (a service, or
this editor owning the training loop). Anyone holding the weights can fine-tune without the vector.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Optional, Sequence, Union

from registry.editor import Editor
from registry.edits import PARAMETER_DELTA, Edit, ParameterEdit
from registry.errors import EditError, ManifestError
from registry.footprint import Footprint
from registry.inputs import InputField
from registry.requests import EditRequest
from registry.saved import SavedEdit, load_edit
from registry.writer import reserve

from . import adapters
from .data import TrainingRow, encode_rows, load_rows, pad_token_id
from .hparams import SecurityVectorHyperParams

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import LoraConfig

logger = logging.getLogger(__name__)

SV_PAYLOAD = "security_vector"
ADAPTER_PAYLOAD = "peft_adapter"
ADAPTER_DIR = "adapter"
VECTOR_NOT_EXPORTED = ("a security vector is used only while fine-tuning and is removed at inference; export the "
                       "fine-tune (`detox finetune ... --out DIR`, then `detox export DIR`), not the vector")

VectorSource = Union["SecurityVector", "SecurityVectorEdit", SavedEdit, str, "os.PathLike[str]"]
DatasetSource = Union[str, "os.PathLike[str]", Iterable[Any]]


# ---------------------------------------------------------------------- edits
class _LoraEdit(Edit):
    """An adapter attached in place to a model; revert detaches it (and unwraps the last one)."""

    def __init__(self, model: Any, adapter: str, config: "LoraConfig", tensors: Mapping[str, "torch.Tensor"],
                 metadata: Mapping[str, Any]) -> None:
        metadata = dict(metadata)
        metadata["adapter"] = {"name": adapter, "lora_config": adapters.config_to_dict(config)}
        super().__init__(model, metadata)
        self.adapter = adapter
        self.config = config
        self._tensors = dict(tensors)

    def tensors(self) -> dict[str, "torch.Tensor"]:
        return dict(self._tensors)

    def write_extra(self, directory: Path) -> list[str]:
        base = (self.metadata.get("model") or {}).get("name_or_path")
        names = adapters.write_peft_folder(directory / ADAPTER_DIR, self.config, self._tensors, base_model=base)
        return [f"{ADAPTER_DIR}/{name}" for name in names]

    def _revert(self) -> None:
        adapters.detach(self.model, self.adapter)

    def write_peft(self, directory: Path) -> list[str]:
        base = (self.metadata.get("model") or {}).get("name_or_path")
        return adapters.write_peft_folder(directory, self.config, self._tensors, base_model=base)

    def export_config(self) -> dict[str, Any]:
        raise EditError(f"the {self.adapter!r} LoRA is an adapter, not weights: export it with --format peft "
                        f"(PeftModel.from_pretrained and serving engines' LoRA loaders read it), or fine-tune "
                        f"with export: merged for a merged checkpoint")

    def footprint(self) -> Footprint:
        """What registry.compose checks for conflicts: the modules this adapter wraps."""
        wrapped = [adapters.base_name(name) for name, layer in adapters.tuner_layers(self.model)
                   if any(self.adapter in getattr(layer, attr) for attr in layer.adapter_layer_names)]
        return Footprint.of(wraps=wrapped)

    @classmethod
    def _from_saved(cls, model: Any, saved: SavedEdit, *, active: bool) -> "_LoraEdit":
        info = saved.manifest.get("adapter")
        if not isinstance(info, Mapping) or not isinstance(info.get("lora_config"), Mapping):
            raise ManifestError(f"{saved.path}: the manifest lacks 'adapter.lora_config'; the save is damaged")
        adapter = str(info.get("name") or "adapter")
        config = adapters.config_from_dict(info["lora_config"])
        adapters.attach(model, adapter, config, saved.tensors)
        if active:
            others = [a for a in adapters.adapter_names(model) if a != adapter]
            adapters.activate(model, adapters.active_adapters(model) + [adapter], frozen=[adapter, *others])
        return cls(model, adapter, config, saved.tensors, saved.metadata_for_apply())


class SecurityVectorEdit(_LoraEdit):
    """Stage 1's result: the vector, attached **inactive** (outputs unchanged); saves as a peft adapter."""

    payload = SV_PAYLOAD

    def write_peft(self, directory: Path) -> list[str]:
        raise EditError(VECTOR_NOT_EXPORTED)

    def export_config(self) -> dict[str, Any]:
        raise EditError(VECTOR_NOT_EXPORTED)

    def summary(self) -> list[str]:
        """Rows, steps and the harmful loss without/with the vector, for ``detox edit``."""
        info = self.metadata.get("vector") or {}
        train = info.get("train") or {}
        lines = [f"harmful rows {self.metadata.get('num_harmful')}, benign KL rows {self.metadata.get('num_benign')}, "
                 f"{train.get('steps')} steps in {float(train.get('seconds') or 0):.0f} s"]
        if "harmful_loss_base" in info:
            lines.append(f"harmful loss: base {info['harmful_loss_base']:.3f} -> with the vector "
                         f"{info['harmful_loss_with_vector']:.3f}")
        return lines

    @property
    def vector(self) -> "SecurityVector":
        return SecurityVector(config=self.config, tensors=self.tensors(),
                              fingerprint=(self.metadata.get("model") or {}).get("fingerprint"),
                              source="in-memory edit", edit=self)


class UserAdapterEdit(_LoraEdit):
    """Stage 3's result in setting A: the user's LoRA alone, attached and active."""

    payload = ADAPTER_PAYLOAD


@dataclass
class SecurityVector:
    """A trained vector, detached from any model: LoRA config, tensors (peft file keys), fingerprint."""

    config: "LoraConfig"
    tensors: dict[str, "torch.Tensor"]
    fingerprint: Optional[str]
    source: str
    edit: Optional[SecurityVectorEdit] = None

    @property
    def digest(self) -> str:
        sha = hashlib.sha256()
        for name in sorted(self.tensors):
            sha.update(name.encode())
            sha.update(self.tensors[name].detach().cpu().contiguous().numpy().tobytes())
        return sha.hexdigest()[:16]

    @classmethod
    def from_any(cls, vector: VectorSource) -> "SecurityVector":
        if isinstance(vector, SecurityVector):
            return vector
        if isinstance(vector, SecurityVectorEdit):
            return vector.vector
        if isinstance(vector, SavedEdit):
            saved = vector
        elif isinstance(vector, (str, os.PathLike)):
            saved = load_edit(vector)
        else:
            raise EditError(f"vector must be a saved vector folder or a SecurityVectorEdit, "
                            f"got {type(vector).__name__}")
        names = {SecurityVectorEditor.name.lower(), *(a.lower() for a in SecurityVectorEditor.aliases)}
        if saved.editor.lower() not in names or saved.payload != SV_PAYLOAD:
            raise ManifestError(
                f"{saved.path} holds a {saved.editor} '{saved.payload}' edit, not a security vector; pass the "
                f"folder written by `detox edit --hparams SecurityVectors/...`"
            )
        info = saved.manifest.get("adapter") or {}
        if not isinstance(info.get("lora_config"), Mapping):
            raise ManifestError(f"{saved.path}: the manifest lacks 'adapter.lora_config'; the save is damaged")
        return cls(config=adapters.config_from_dict(info["lora_config"]), tensors=dict(saved.tensors),
                   fingerprint=saved.fingerprint, source=str(saved.path))


@dataclass(frozen=True)
class StepInputs:
    """One edit's inputs as ``SecurityVectorEditor.read_inputs`` validated them."""

    action: str  # "vector" (stage 1) or "finetune" (stages 2-3)
    data: Any  # harmful rows (vector) or the user's rows (finetune); a path, a shipped name or rows
    vector: Optional[str] = None  # finetune: "train", a saved vector folder, or None (plain fine-tune)


# ---------------------------------------------------------------------- the editor
class SecurityVectorEditor(Editor):
    """Security vectors (arXiv 2311.02105): a frozen LoRA that makes harmful fine-tuning unlearnable."""

    name: ClassVar[str] = "SecurityVectors"
    kind: ClassVar[str] = "training"
    hparams_class = SecurityVectorHyperParams
    aliases: ClassVar[tuple[str, ...]] = ("security_vectors", "security-vectors", "sv")
    hparams_package: ClassVar[Optional[str]] = "detox_plugins.hparams"

    hparams: SecurityVectorHyperParams

    #: One edit's inputs (pipeline keys and ``detox edit`` flags).
    inputs: ClassVar[tuple[InputField, ...]] = (
        InputField("action", "vector (default): train the security vector and attach it inactive; finetune: the "
                   "user's fine-tune with the vector active and frozen, exported without it."),
        InputField("data", "vector: the harmful rows (default: the hparams' harmful_data); finetune: the user's "
                   "rows (required). A JSONL path or a file shipped in detox_plugins/data.", path=True,
                   metavar="FILE"),
        InputField("vector", "finetune only: train (default; trains the vector first on the hparams' "
                   "harmful_data), a saved vector folder, or none (a plain fine-tune, the baseline).", path=True,
                   metavar="DIR"),
    )

    # ------------------------------------------------------------------ inputs
    def read_inputs(self, values: Mapping[str, Any]) -> StepInputs:
        """Validate the action, data and vector now (files read, rows checked), before any model."""
        hp = self.hparams
        action = values.get("action") or "vector"
        if action not in ("vector", "finetune"):
            raise EditError(f"'action' must be vector or finetune, got {action!r}")
        data = values.get("data")
        if action == "vector":
            if values.get("vector") is not None:
                raise EditError("'vector' belongs to action finetune; a vector step trains the vector itself")
            load_rows(data if data is not None else hp.harmful_data, harmful=True, limit=hp.num_harmful,
                      what="harmful data")
            return StepInputs("vector", data)
        if data is None:
            raise EditError("a SecurityVectors finetune needs 'data' (the user's fine-tuning rows, "
                            "e.g. sv_attack.jsonl)")
        load_rows(data, harmful=None, what="fine-tuning data")
        vector = values.get("vector", "train")
        if vector is None or vector is False or vector == "none":
            return StepInputs("finetune", data, None)
        if not isinstance(vector, str):
            raise EditError(f"'vector' must be train, none or a saved vector folder, got {vector!r}")
        if vector == "train":
            load_rows(hp.harmful_data, harmful=True, limit=hp.num_harmful, what="harmful data")
            return StepInputs("finetune", data, "train")
        SecurityVector.from_any(vector)  # a folder that is not a saved vector fails now
        return StepInputs("finetune", data, vector)

    def _run_inputs(self, model: Any, tokenizer: Any, inputs: StepInputs) -> Edit:
        """Stage 1 (the vector, inactive), or stages 1-3: train the vector, fine-tune with it, drop it."""
        if inputs.action == "vector":
            return self.edit(model, tokenizer, inputs.data)
        if inputs.vector != "train":
            return self.fine_tune(model, tokenizer, inputs.data, vector=inputs.vector)
        vector = self.edit(model, tokenizer, None)
        try:
            return self.fine_tune(model, tokenizer, inputs.data, vector=vector)
        finally:
            if vector.applied:  # fine_tune detaches it; this covers a failure before that
                vector.revert()

    def planned_footprint(self, model: Any, inputs: Any = None) -> Footprint:
        """Adapters wrap their target modules; merged or full fine-tunes write weights."""
        hp = self.hparams
        if not isinstance(inputs, StepInputs) or inputs.action == "vector":
            return Footprint.of(wraps=adapters.matching_modules(model, hp.sv_lora.target_modules))
        if hp.user_mode == "full":
            return Footprint.of(writes=[n for n, _ in model.named_parameters()], additive=True, exact=False)
        modules = adapters.matching_modules(model, hp.user_lora.target_modules)
        if hp.export == "merged":
            return Footprint.of(writes=[f"{m}.weight" for m in modules], additive=True)
        return Footprint.of(wraps=modules)

    # ------------------------------------------------------------------ stage 1
    def edit(self, model: Any, tokenizer: Any,
             requests: Union[Sequence[Union[EditRequest, Mapping[str, Any], TrainingRow]], str, Path, StepInputs,
                             None] = None,
             ) -> Edit:
        """Train the vector on ``requests`` and attach it inactive (``StepInputs`` from ``read_inputs``:
        that action, possibly the whole protected fine-tune).

        ``requests``: None or ``[]`` = the hparams' ``harmful_data`` (shipped ``sv_harmful.jsonl``);
        a JSONL path; or a list of ``{"prompt", "response"}`` dicts / ``EditRequest`` s (``prompt`` = the
        harmful request, ``target_new`` = its compliance opening). Every target must pass the data
        rule. At most ``num_harmful`` rows are used.
        """
        if isinstance(requests, StepInputs):
            return self._run_inputs(model, tokenizer, requests)
        from .training import kl_reference, response_loss, train_vector

        hp = self.hparams
        empty = requests is None or (not isinstance(requests, (str, Path)) and len(requests) == 0)
        source = hp.harmful_data if empty else requests
        harmful = load_rows(source, harmful=True, tokenizer=tokenizer, max_target_tokens=hp.max_target_tokens,
                            limit=hp.num_harmful, what="harmful data")
        benign: list[TrainingRow] = []
        if hp.sv_kl_weight > 0 and hp.num_benign > 0:
            benign = load_rows(hp.benign_data, harmful=False, limit=hp.num_benign, what="benign KL data")
        present = adapters.adapter_names(model)
        if present:
            raise EditError(f"the model already carries adapter(s) {present}; revert those edits before training "
                            f"a security vector")
        config = hp.sv_lora.to_lora_config()
        adapters.check_target_modules(model, hp.sv_lora.target_modules, where="sv_lora")
        metadata = self.base_metadata(model, num_harmful=len(harmful), num_benign=len(benign),
                                      harmful_source=str(source) if isinstance(source, (str, Path)) else "requests")

        encode = dict(max_length=hp.max_length, use_chat_template=hp.use_chat_template,
                      system_prompt=hp.system_prompt)
        harmful_encoded = encode_rows(harmful, tokenizer, **encode)
        benign_encoded = encode_rows(benign, tokenizer, **encode) if benign else []
        loss_base = response_loss(model, tokenizer, harmful_encoded, batch_size=hp.sv_batch_size)
        reference = (kl_reference(model, benign_encoded, top_k=hp.sv_kl_top_k, batch_size=hp.sv_batch_size,
                                  pad_id=pad_token_id(tokenizer)) if benign_encoded else None)
        name = hp.sv_adapter_name
        adapters.attach(model, name, config, seed=hp.seed)
        try:
            adapters.activate(model, [name])  # the only trainable tensors in stage 1
            stats = train_vector(model, tokenizer, harmful_encoded, reference, hp)
            adapters.freeze(model, name)
            loss_vector = response_loss(model, tokenizer, harmful_encoded, batch_size=hp.sv_batch_size)
            adapters.activate(model, [], frozen=[name])  # attached, inactive: outputs are the base model's
            tensors = adapters.state_dict(model, name)
        except BaseException:
            adapters.detach(model, name)
            raise
        metadata["vector"] = {"harmful_loss_base": round(loss_base, 5),
                              "harmful_loss_with_vector": round(loss_vector, 5),
                              "train": stats.as_dict()}
        logger.info("security vector trained: harmful loss %.4f -> %.4f with the vector (%d steps, %.0f s)",
                    loss_base, loss_vector, stats.steps, stats.seconds)
        return SecurityVectorEdit(model, name, config, tensors, metadata)

    # ------------------------------------------------------------------ stages 2 and 3
    def fine_tune(self, model: Any, tokenizer: Any, dataset: DatasetSource, *,
                  vector: Optional[VectorSource] = None, out: Union[str, "os.PathLike[str]", None] = None,
                  overwrite: bool = False, force: bool = False, mode: Optional[str] = None,
                  export: Optional[str] = None) -> Edit:
        """Fine-tune ``model`` on ``dataset`` with the vector active and frozen; return the deployable edit.

        ``dataset``: a JSONL path or rows ``{"prompt", "response"[, "harmful"]}`` (chat-templated;
        rows flagged harmful must pass the data rule). ``vector``: a saved vector folder, a
        ``SecurityVectorEdit`` (an applied one is detached first) or None for a plain fine-tune.
        ``mode``/``export`` override ``user_mode``/``export``. The model is left with the result
        applied (the returned edit reverts it); the vector is never part of it. ``out`` saves it.
        """
        from registry.fingerprint import model_fingerprint

        hp = self.hparams.for_cli(user_mode=mode, export=export)
        rows = load_rows(dataset, harmful=None, tokenizer=tokenizer, max_target_tokens=hp.max_target_tokens,
                         what="fine-tuning data")
        sv = SecurityVector.from_any(vector) if vector is not None else None
        if hp.user_mode == "lora":
            adapters.check_target_modules(model, hp.user_lora.target_modules, where="user_lora")
        if sv is not None:
            adapters.check_target_modules(model, sorted(sv.config.target_modules or []), where="security vector")
        if out is not None:  # refused or locked now, before the fine-tune (registry.writer)
            reserve(out, overwrite=overwrite, what="out")
        attached_edit = sv.edit if sv is not None and sv.edit is not None and sv.edit.applied \
            and sv.edit.model is model else None
        present = [a for a in adapters.adapter_names(model) if attached_edit is None or a != attached_edit.adapter]
        if present:
            raise EditError(f"the model carries adapter(s) {present}; revert those edits before fine-tuning (a "
                            f"security vector goes in `vector=` / --vector, not --edit)")
        if attached_edit is not None:
            logger.info("detaching the applied security vector; it is re-attached for training only")
            attached_edit.revert()
        fingerprint = model_fingerprint(model)
        if sv is not None and sv.fingerprint and sv.fingerprint != fingerprint and not force:
            raise ManifestError(
                f"the security vector from {sv.source} was trained for another model (fingerprint "
                f"{sv.fingerprint}, this model {fingerprint}); train a vector for this model with `detox edit "
                f"--hparams SecurityVectors/...`, or pass force=True (--force)"
            )
        metadata = self.base_metadata(model)
        metadata["hparams"] = hp.to_dict()
        encoded = encode_rows(rows, tokenizer, max_length=hp.max_length, use_chat_template=hp.use_chat_template,
                              system_prompt=hp.system_prompt)
        info: dict[str, Any] = {
            "mode": hp.user_mode, "export": hp.export if hp.user_mode == "lora" else "merged",
            "rows": len(rows), "harmful_rows": sum(r.harmful for r in rows),
            "vector": None if sv is None else {"digest": sv.digest, "source": sv.source,
                                               "fingerprint": sv.fingerprint},
        }
        if hp.user_mode == "lora":
            result = self._fine_tune_lora(model, tokenizer, encoded, hp, sv, metadata, info)
        else:
            result = self._fine_tune_full(model, tokenizer, encoded, hp, sv, metadata, info)
        if out is not None:
            result.save(out, overwrite=overwrite)
        return result

    def _fine_tune_lora(self, model: Any, tokenizer: Any, encoded: Sequence[Any], hp: SecurityVectorHyperParams,
                        sv: Optional[SecurityVector], metadata: dict[str, Any], info: dict[str, Any]) -> Edit:
        from .training import train_user

        sv_name, user = hp.sv_adapter_name, hp.user_adapter_name
        try:
            if sv is not None:
                adapters.attach(model, sv_name, sv.config, sv.tensors)
                adapters.disable_dropout(model, sv_name)  # a frozen vector must not drop activations
            adapters.attach(model, user, hp.user_lora.to_lora_config(), seed=hp.seed)
            active = [sv_name, user] if sv is not None else [user]
            adapters.activate(model, active, frozen=[sv_name] if sv is not None else [])  # re-freeze after set_adapter
            stats = train_user(model, tokenizer, encoded, hp, guard_adapter=sv_name if sv is not None else None)
            if sv is not None:
                adapters.assert_frozen(model, sv_name)
                adapters.detach(model, sv_name)  # stage 3: the vector never ships
            adapters.activate(model, [user], frozen=[user])
        except BaseException:
            for name in (user, sv_name):
                adapters.detach(model, name)
            raise
        info["train"] = stats.as_dict()
        metadata["finetune"] = info
        if hp.export == "merged":
            deltas = adapters.merged_deltas(model, user)
            adapters.detach(model, user)
            return ParameterEdit.apply_deltas(model, deltas, metadata)
        return UserAdapterEdit(model, user, adapters.lora_config(model, user), adapters.state_dict(model, user),
                               metadata)

    def _fine_tune_full(self, model: Any, tokenizer: Any, encoded: Sequence[Any], hp: SecurityVectorHyperParams,
                        sv: Optional[SecurityVector], metadata: dict[str, Any], info: dict[str, Any]) -> Edit:
        import torch

        from .training import train_user

        sv_name = hp.sv_adapter_name
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        originals = {name: p.detach().clone() for name, p in model.named_parameters()}
        try:
            if sv is not None:
                adapters.attach(model, sv_name, sv.config, sv.tensors)
                adapters.disable_dropout(model, sv_name)
                adapters.activate(model, [sv_name], frozen=[sv_name])
            vector_ids = {id(p) for p in adapters.adapter_parameters(model, sv_name).values()}
            for param in model.parameters():
                param.requires_grad_(id(param) not in vector_ids)
            stats = train_user(model, tokenizer, encoded, hp, guard_adapter=sv_name if sv is not None else None)
            if sv is not None:
                adapters.assert_frozen(model, sv_name)
        except BaseException:
            adapters.detach(model, sv_name)
            _restore(model, originals, flags)
            raise
        adapters.detach(model, sv_name)  # stage 3: `unload()` without merging; the trained base stays
        deltas = {}
        with torch.no_grad():
            for name, param in model.named_parameters():
                if not torch.equal(param, originals[name]):
                    deltas[name] = param.detach() - originals[name]
        _restore(model, originals, flags)
        info["train"] = stats.as_dict()
        info["changed_tensors"] = len(deltas)
        metadata["finetune"] = info
        if not deltas:
            raise EditError("the fine-tune changed no weight (learning rate 0 or no steps); nothing to export")
        return ParameterEdit.apply_deltas(model, deltas, metadata)

    # ------------------------------------------------------------------ saved edits
    @classmethod
    def apply_saved(cls, model: Any, saved: SavedEdit, tokenizer: Any = None) -> Edit:
        """Re-apply a saved vector (inactive), user adapter (active) or merged deltas."""
        if saved.payload == SV_PAYLOAD:
            return SecurityVectorEdit._from_saved(model, saved, active=False)
        if saved.payload == ADAPTER_PAYLOAD:
            return UserAdapterEdit._from_saved(model, saved, active=True)
        if saved.payload == PARAMETER_DELTA:
            return super().apply_saved(model, saved, tokenizer=tokenizer)
        raise ManifestError(f"{saved.path}: payload {saved.payload!r} is not one of {SV_PAYLOAD}, "
                            f"{ADAPTER_PAYLOAD}, {PARAMETER_DELTA}; upgrade detox-plugins")


def _restore(model: Any, originals: Mapping[str, "torch.Tensor"], flags: Mapping[str, bool]) -> None:
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in originals:
                param.copy_(originals[name])
            if name in flags:
                param.requires_grad_(flags[name])


__all__ = ["SecurityVector", "SecurityVectorEdit", "SecurityVectorEditor", "UserAdapterEdit"]
