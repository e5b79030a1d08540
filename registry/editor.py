"""The editor contract: ``Editor`` (what plugins implement) and ``EditRequest`` (what they edit with)."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Optional, Sequence, Union

from .errors import EditError, HyperParamsError
from .hparams import HyperParams

if TYPE_CHECKING:  # pragma: no cover
    from .compose import Footprint
    from .edits import Edit, SavedEdit

KINDS = ("weights", "activations", "training")

#: EasyEdit's key for the knowledge-constraint locality input (SafetyEditor).
EASYEDIT_LOCALITY_KEY = "general knowledge constraint"


@dataclass
class EditRequest:
    """One edit case, SafeEdit-style. Field names follow EasyEdit's request dicts."""

    prompt: str
    target_new: str  # the safe response the edited model should give
    ground_truth: Optional[str] = None  # the unsafe response (DINM localizes with it)
    locality_prompt: Optional[str] = None  # knowledge-constraint question
    locality_answer: Optional[str] = None  # its answer, which must survive the edit
    generalization_prompts: list[str] = field(default_factory=list)
    case_id: Optional[Union[int, str]] = None
    category: Optional[str] = None

    def validate(self, *, need_ground_truth: bool = False, need_locality: bool = False) -> "EditRequest":
        where = f"request {self.case_id!r}" if self.case_id is not None else "request"
        for name in ("prompt", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EditError(f"{where}: '{name}' is empty; give the {_FIELD_WORDS[name]}")
        if need_ground_truth and (not isinstance(self.ground_truth, str) or not self.ground_truth.strip()):
            raise EditError(
                f"{where}: 'ground_truth' (the unsafe response) is empty; it is needed to locate the "
                f"toxic layer, or set 'layers' in the hparams to skip localization"
            )
        if need_locality and not (self.locality_prompt and self.locality_answer):
            raise EditError(f"{where}: 'locality_prompt' and 'locality_answer' are both needed")
        if not all(isinstance(p, str) for p in self.generalization_prompts):
            raise EditError(f"{where}: 'generalization_prompts' must be a list of strings")
        return self

    @classmethod
    def from_any(cls, request: Union["EditRequest", Mapping[str, Any]]) -> "EditRequest":
        """Accept an EditRequest, our dict layout, or EasyEdit's request dict."""
        if isinstance(request, EditRequest):
            return request
        if not isinstance(request, Mapping):
            raise EditError(f"an edit request must be an EditRequest or a dict, got {type(request).__name__}")
        data = dict(request)
        locality = data.pop("locality", None)
        if isinstance(locality, Mapping) and locality:
            entry = locality.get(EASYEDIT_LOCALITY_KEY) or next(iter(locality.values()))
            if isinstance(entry, Mapping):
                data.setdefault("locality_prompt", _first(entry.get("prompt")))
                data.setdefault("locality_answer", _first(entry.get("ground_truth")))
        general = data.pop("general_prompt", None)
        if general is not None and "generalization_prompts" not in data:
            data["generalization_prompts"] = [general] if isinstance(general, str) else list(general)
        if "id" in data and "case_id" not in data:
            data["case_id"] = data.pop("id")
        if "locality_ground_truth" in data and "locality_answer" not in data:  # EasyEdit's SafetyDataset
            data["locality_answer"] = data.pop("locality_ground_truth")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(k for k in data if k not in known)
        # EasyEdit passes a few keys DINM never reads; keep them out of the way, reject real typos.
        tolerated = {"subject", "portability", "loc_prompt", "rephrase_prompt", "time", "requested_rewrite",
                     "question", "cond"}
        bad = [k for k in unknown if k not in tolerated]
        if bad:
            raise EditError(
                f"unknown request key(s) {', '.join(bad)}; known keys: {', '.join(sorted(known))}"
            )
        kwargs = {k: v for k, v in data.items() if k in known}
        for name in ("prompt", "target_new", "ground_truth"):
            if name in kwargs:
                kwargs[name] = _first(kwargs[name])
        if "prompt" not in kwargs or "target_new" not in kwargs:
            missing = [k for k in ("prompt", "target_new") if k not in kwargs]
            raise EditError(f"edit request is missing {', '.join(missing)}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_easyedit(self) -> dict[str, Any]:
        """EasyEdit's request dict for SafetyEditor / apply_<alg>_to_model."""
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "target_new": self.target_new,
            "ground_truth": self.ground_truth,
            "locality": {},
        }
        if self.locality_prompt is not None:
            out["locality"][EASYEDIT_LOCALITY_KEY] = {
                "prompt": self.locality_prompt,
                "ground_truth": self.locality_answer,
            }
        if self.generalization_prompts:
            out["general_prompt"] = list(self.generalization_prompts)
        if self.case_id is not None:
            out["case_id"] = self.case_id
        return out


_FIELD_WORDS = {"prompt": "harmful prompt to edit on", "target_new": "safe response to teach"}


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise EditError(f"expected one string, got a list of {len(value)}; pass one request per case")
        return value[0]
    return value


def normalise_requests(
    requests: Union[EditRequest, Mapping[str, Any], Iterable[Union[EditRequest, Mapping[str, Any]]]],
    *,
    max_requests: Optional[int] = None,
) -> list[EditRequest]:
    """A list of validated-shape EditRequests; an empty or oversized batch raises EditError."""
    if isinstance(requests, (EditRequest, Mapping)):
        requests = [requests]
    items = [EditRequest.from_any(r) for r in requests]
    if not items:
        raise EditError("no edit requests given; pass at least one request (prompt + target_new)")
    if max_requests is not None and len(items) > max_requests:
        raise EditError(
            f"{len(items)} requests given but this editor takes at most {max_requests} per call; split the batch"
        )
    return items


class Editor(abc.ABC):
    """Base class of every editor. Subclasses set the class attributes and implement ``edit``."""

    name: ClassVar[str]
    kind: ClassVar[str]  # one of KINDS
    hparams_class: ClassVar[type[HyperParams]]
    aliases: ClassVar[tuple[str, ...]] = ()
    #: Dotted package holding shipped YAML as ``<ALG>/<model>.yaml`` (found by `--hparams ALG/model`).
    hparams_package: ClassVar[Optional[str]] = None
    #: Keys a pipeline step of this editor may carry besides hparams/override/name (key -> help text);
    #: ``read_spec`` receives them. The default: EasyEdit request dicts under ``requests:``.
    spec_keys: ClassVar[Mapping[str, str]] = {
        "requests": "EasyEdit request dicts (prompt, target_new, ground_truth, locality, ...).",
    }
    #: True when this editor's weight edits are additive deltas computed on the current weights, so a
    #: composition may let it edit a tensor an earlier step already edited (DINM's sequential edits
    #: of one MLP matrix). False: such a composition is refused as a conflict (registry.compose).
    stackable: ClassVar[bool] = False
    #: Hparams fields the EasyEdit bridge (``registry.easyedit``) sets because EasyEdit's host already
    #: did that part before calling ``apply_<alg>_to_model`` (DINM: ``{"use_suffix": False}``).
    easyedit_overrides: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, hparams: Union[HyperParams, Mapping[str, Any], str, Path, None] = None) -> None:
        self.hparams = self.coerce_hparams(hparams)

    @classmethod
    def coerce_hparams(cls, hparams: Union[HyperParams, Mapping[str, Any], str, Path, None]) -> HyperParams:
        if hparams is None:
            return cls.hparams_class.from_dict({"alg_name": cls.name}, source=f"{cls.name} defaults")
        if isinstance(hparams, cls.hparams_class):
            result = hparams
        elif isinstance(hparams, HyperParams):
            raise HyperParamsError(
                f"{cls.__name__} needs {cls.hparams_class.__name__}, got {type(hparams).__name__}"
            )
        elif isinstance(hparams, Mapping):
            result = cls.hparams_class.from_dict(hparams)
        else:
            result = cls.hparams_class.from_hparams(hparams)
        names = {cls.name.lower(), *(a.lower() for a in cls.aliases)}
        if result.alg_name.lower() not in names:
            raise HyperParamsError(
                f"alg_name {result.alg_name!r} does not match editor {cls.name!r}; set alg_name: {cls.name}"
            )
        return result

    @abc.abstractmethod
    def edit(self, model: Any, tokenizer: Any, requests: Sequence[Union[EditRequest, Mapping[str, Any]]]) -> "Edit":
        """Change ``model`` in place and return the handle that reverts, saves and re-applies it."""

    def base_metadata(self, model: Any, **extra: Any) -> dict[str, Any]:
        """What every saved edit records: editor, versions, hparams and the pre-edit model fingerprint."""
        from .fingerprint import model_fingerprint
        from .plugins import editor_origin

        distribution, version = editor_origin(type(self))
        config = getattr(model, "config", None)
        return {
            "editor": self.name,
            "kind": self.kind,
            "distribution": distribution,
            "editor_version": version,
            "hparams": self.hparams.to_dict(),
            "model": {
                "fingerprint": model_fingerprint(model),
                "name_or_path": getattr(config, "_name_or_path", None),
                "model_type": getattr(config, "model_type", None),
            },
            **extra,
        }

    # ------------------------------------------------------------------ pipeline hooks (registry.pipeline)
    def read_spec(self, spec: Mapping[str, Any], *, base_dir: Optional[Path] = None) -> Any:
        """Read and validate a pipeline step's inputs (its ``spec_keys``) without touching a model.

        The result goes to ``edit_from_spec``. ``base_dir`` is the pipeline file's folder: relative
        paths are resolved against it (``registry.pipeline.step_path``). The default reads
        ``requests:`` as EasyEdit request dicts.
        """
        requests = spec.get("requests")
        if requests is None:
            raise EditError(f"a {self.name} step needs 'requests:' (a list of EasyEdit request dicts with "
                            f"prompt and target_new)")
        if not isinstance(requests, (list, tuple, Mapping)):
            raise EditError(f"'requests' must be a list of request dicts, got {type(requests).__name__}")
        return normalise_requests(requests)

    def edit_from_spec(self, model: Any, tokenizer: Any, inputs: Any) -> "Edit":
        """Run one pipeline step with the inputs ``read_spec`` returned. The default calls ``edit``."""
        return self.edit(model, tokenizer, inputs)

    def planned_targets(self, model: Any, inputs: Any = None) -> Optional["Footprint"]:
        """What ``edit_from_spec`` would change on ``model``, predicted from the hparams (and inputs)
        without changing anything; ``None`` = cannot say (checked right after the step instead)."""
        return None

    @classmethod
    def apply_saved(cls, model: Any, saved: "SavedEdit", tokenizer: Any = None) -> "Edit":
        """Re-apply a saved edit of this editor to ``model``. The default handles parameter deltas."""
        from .edits import PARAMETER_DELTA, ParameterEdit
        from .errors import ManifestError

        if saved.payload != PARAMETER_DELTA:
            raise ManifestError(
                f"{saved.path}: payload {saved.payload!r} is not supported by {cls.__name__}.apply_saved"
            )
        return ParameterEdit.apply_deltas(model, saved.tensors, metadata=saved.metadata_for_apply())
