"""``EditRequest``: one edit case as every editor receives it (EasyEdit's request dicts, validated)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from .errors import EditError, InputLimitError, shown, type_name
from .limits import read_text

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
    subject: Optional[str] = None  # the entity whose fact a knowledge editor (ROME, MEMIT) rewrites

    def validate(self, *, need_ground_truth: bool = False, need_locality: bool = False) -> "EditRequest":
        where = f"request {shown(self.case_id, 40)}" if self.case_id is not None else "request"
        for name in ("prompt", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise EditError(f"{where}: '{name}' must be a string, got {type_name(value)} {shown(value, 40)}; "
                                f"give the {_FIELD_WORDS[name]} as text")
            if not value.strip():
                raise EditError(f"{where}: '{name}' is empty; give the {_FIELD_WORDS[name]}")
        for name in ("ground_truth", "locality_prompt", "locality_answer", "category", "subject"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise EditError(f"{where}: '{name}' must be a string, got {type_name(value)} {shown(value, 40)}")
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
        unknown = [k for k in data if k not in known]
        # EasyEdit passes a few keys DINM never reads; keep them out of the way, reject real typos.
        tolerated = {"portability", "loc_prompt", "rephrase_prompt", "time", "requested_rewrite",
                     "question", "cond"}
        bad = [k for k in unknown if k not in tolerated]
        if bad:
            raise EditError(
                f"unknown request key(s) {', '.join(shown(k, 40) for k in bad[:5])}; known keys: "
                f"{', '.join(sorted(known))}"
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
        if self.subject is not None:
            out["subject"] = self.subject
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


def read_requests(value: Any, *, what: str = "requests") -> list[EditRequest]:
    """Requests from a list of request dicts, one dict, or a JSON (list) / JSONL file path."""
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise EditError(f"{what}: {path} is not a file; pass a JSON list or JSONL file of request dicts "
                            f"(prompt, target_new, ...)")
        try:
            text = read_text(path, kind="data", what=f"{what} file")
            stripped = text.lstrip()
            if stripped.startswith("["):
                value = json.loads(text)
            else:
                value = [json.loads(line) for line in text.splitlines() if line.strip()]
        except InputLimitError:
            raise
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise EditError(f"{what}: {path} is not valid JSON/JSONL: {' '.join(str(exc).split())[:200]}") from None
    if isinstance(value, (EditRequest, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise EditError(f"'{what}' must be a list of request dicts or a JSON/JSONL file, got {type(value).__name__}")
    return normalise_requests(value)
