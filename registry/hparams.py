"""`HyperParams`: the base of every editor's hyperparameters.

Loads YAML or JSON (EasyEdit's own files unchanged), coerces each value by the field's type
(PyYAML reads ``5e-4`` as a string), and rejects unknown keys with the closest valid field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Optional, Sequence, TypeVar, Union

import yaml

from . import safeyaml
from .errors import HyperParamsError, shown, type_name
from .limits import read_text

logger = logging.getLogger(__name__)

HPARAMS_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_MODEL = "smollm2-135m-instruct"

H = TypeVar("H", bound="HyperParams")

_MISSING = dataclasses.MISSING


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class HyperParams:
    """Fields every editor shares: which algorithm, which model, where it runs."""

    alg_name: str = field(metadata=_help("Editor name, e.g. DINM; matched case-insensitively."))
    model_name: str = field(
        default=DEFAULT_MODEL,
        metadata=_help(
            "Model to edit: 'smollm2-135m-instruct' (the embedded default), a local Hugging Face "
            "folder, or a hub id already in the local cache. Nothing is downloaded."
        ),
    )
    device: Union[int, str] = field(
        default="cpu",
        metadata=_help("'cpu', 'cuda', 'cuda:N' or an int GPU index (EasyEdit style); an int falls "
                       "back to the CPU with a warning when no GPU is present."),
    )
    dtype: str = field(
        default="float32", metadata=_help("Weights dtype: float32, bfloat16 or float16.")
    )
    model_parallel: bool = field(
        default=False, metadata=_help("Spread the model over all devices (device_map='auto').")
    )
    trust_remote_code: bool = field(
        default=False,
        metadata=_help("Allow custom modelling code shipped with the model folder. Off unless set."),
    )
    seed: int = field(default=0, metadata=_help("Seed for every RNG the editor uses."))

    #: Keys accepted for EasyEdit compatibility and ignored (documented per editor).
    ignored_keys: ClassVar[frozenset[str]] = frozenset()
    #: Old or EasyEdit key names mapped to our field names.
    key_aliases: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise HyperParamsError(
                f"dtype must be float32, bfloat16 or float16, got {shown(self.dtype)}; fix 'dtype'"
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_hparams(cls: type[H], path_or_name: str | Path, *,
                     shipped: Optional[Mapping[str, Path]] = None) -> H:
        """Load from a YAML/JSON path (suffix optional), or a name in ``shipped`` (``{"DINM/smollm2-135m":
        path}``; ``registry.from_hparams`` passes every installed editor's shipped files)."""
        path = resolve_hparams_path(path_or_name, shipped)
        return cls.from_dict(read_hparams_file(path), source=str(path))

    @classmethod
    def from_dict(cls: type[H], config: Mapping[str, Any], *, source: str = "<dict>") -> H:
        """Build from a mapping, coercing each value by its field type; errors name ``source``."""
        if not isinstance(config, Mapping):
            raise HyperParamsError(
                f"{source}: expected a mapping of hyperparameters, got {type(config).__name__}"
            )
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for raw_key, raw_value in config.items():
            if not isinstance(raw_key, str):
                raise HyperParamsError(f"{source}: keys must be strings, got {type_name(raw_key)} {shown(raw_key)}")
            key = cls.key_aliases.get(raw_key, raw_key)
            if key in cls.ignored_keys:
                logger.debug("%s: ignoring EasyEdit key %r (unused by %s)", source, key, cls.__name__)
                continue
            if key not in fields:
                raise HyperParamsError(_unknown_key_message(cls, raw_key, fields, source))
            values[key] = coerce_value(raw_value, hints[key], f"{source}: field {key!r}")
        missing = [
            name
            for name, f in fields.items()
            if name not in values and f.default is _MISSING and f.default_factory is _MISSING
        ]
        if missing:
            helps = "; ".join(f"{m}: {fields[m].metadata.get('help', '')}" for m in missing)
            raise HyperParamsError(
                f"{source}: missing required field(s) {', '.join(missing)} ({helps}); add them to the file"
            )
        try:
            return cls(**values)
        except HyperParamsError as exc:
            if str(exc).startswith(source):
                raise
            raise HyperParamsError(f"{source}: {exc}") from None

    # ------------------------------------------------------------------ dumping
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict of every field."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self: H, **changes: Any) -> H:
        """A copy with some fields changed, validated like a loaded file."""
        merged = {**self.to_dict(), **changes}
        return type(self).from_dict(merged, source=f"{type(self).__name__}.replace")

    @classmethod
    def describe_fields(cls) -> list[tuple[str, str, str, str]]:
        """(name, type, default, help) for every field, for `detox hparams show`."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if f.default is not _MISSING:
                default = repr(f.default)
            elif f.default_factory is not _MISSING:
                default = repr(f.default_factory())
            else:
                default = "(required)"
            rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
        return rows


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in; nested mappings merge key by key (a pipeline's ``override:``,
    ``detox edit --set``)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unknown_key_message(cls: type, key: str, fields: Mapping[str, Any], source: str) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"valid fields: {', '.join(sorted(fields))}"
    return f"{source}: unknown key {shown(key)} for {cls.__name__}; {hint} Remove or rename it."


# ---------------------------------------------------------------------- coercion
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` (a typing annotation) or raise HyperParamsError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # Try exact-type matches first so Union[int, str] keeps 3 an int and "cuda" a string.
        non_none = [a for a in args if a is not type(None)]
        for arg in non_none:
            if isinstance(arg, type) and type(value) is arg:
                return value
        for arg in non_none:
            try:
                return coerce_value(value, arg, where)
            except HyperParamsError as exc:
                errors.append(str(exc))
        raise HyperParamsError(
            f"{where}: {type_name(value)} {shown(value)} is not a valid {_type_name(tp)}; use one of "
            f"{', '.join(_type_name(a) for a in non_none)}"
        )
    if origin is Literal:
        for allowed in args:
            if value == allowed or (isinstance(value, str) and isinstance(allowed, str) and value.lower() == allowed.lower()):
                return allowed
        raise HyperParamsError(
            f"{where}: {shown(value)} is not allowed; choose one of {', '.join(repr(a) for a in args)}"
        )
    if origin in (list, typing.List, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise HyperParamsError(f"{where}: expected a list, got {type_name(value)} {shown(value)}")
        item_type = args[0] if args else Any
        items = [coerce_value(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, typing.Dict):
        if not isinstance(value, Mapping):
            raise HyperParamsError(f"{where}: expected a mapping, got {type_name(value)} {shown(value)}")
        key_t, val_t = args if args else (Any, Any)
        return {coerce_value(k, key_t, where): coerce_value(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise HyperParamsError(f"{where}: expected a mapping for {tp.__name__}, got {type_name(value)} {shown(value)}")
        return _coerce_nested(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "false", "no", "off"):
            return value.strip().lower() in ("true", "yes", "on")
        raise HyperParamsError(f"{where}: expected true or false, got {type_name(value)} {shown(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise HyperParamsError(f"{where}: expected an integer, got {type_name(value)} {shown(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise HyperParamsError(f"{where}: expected an integer, got {type_name(value)} {shown(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise HyperParamsError(f"{where}: expected a number, got {type_name(value)} {shown(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # YAML 1.1 reads 5e-4 as a string
            except ValueError:
                pass
        raise HyperParamsError(f"{where}: expected a number, got {type_name(value)} {shown(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise HyperParamsError(f"{where}: expected a string, got {type_name(value)} {shown(value)}; quote it in YAML")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise HyperParamsError(f"{where}: expected {tp.__name__}, got {type_name(value)} {shown(value)}")
    return value


def _coerce_nested(tp: type, value: Mapping[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
    hints = typing.get_type_hints(tp)
    values = {}
    for key, raw in value.items():
        if key not in fields:
            raise HyperParamsError(_unknown_key_message(tp, str(key), fields, where))
        values[key] = coerce_value(raw, hints[key], f"{where}.{key}")
    try:
        return tp(**values)
    except TypeError as exc:
        raise HyperParamsError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------- files
def read_hparams_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file safely into a dict (never executes tags)."""
    path = Path(path)
    try:
        text = read_text(path, kind="config", what="hyperparameter file")
    except FileNotFoundError:
        raise HyperParamsError(f"hyperparameter file {path} does not exist") from None
    except IsADirectoryError:
        raise HyperParamsError(f"hyperparameter file {path} is a folder; pass a .yaml or .json file") from None
    except UnicodeDecodeError:
        raise HyperParamsError(f"cannot read hyperparameter file {path}: it is not UTF-8 text") from None
    except OSError as exc:
        raise HyperParamsError(f"cannot read hyperparameter file {path}: {exc.strerror or exc}") from None
    if path.suffix == ".json":
        data = load_json_strict(text, str(path))
    else:
        data = safeyaml.load(text, str(path))
    if data is None:
        raise HyperParamsError(f"{path}: the file is empty; it needs at least 'alg_name'")
    if not isinstance(data, dict):
        raise HyperParamsError(f"{path}: expected a mapping of key: value lines, got {type(data).__name__}")
    return data


def load_json_strict(text: str, source: str) -> Any:
    """``json.loads`` that refuses a key given twice in one object; errors are one ``HyperParamsError`` line."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise HyperParamsError(f"{source}: duplicate key {shown(key, 60)} in one JSON object; keep one of them")
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, the int digit limit, deep nesting
        if isinstance(exc, HyperParamsError):
            raise
        message = " ".join(str(exc).split())
        raise HyperParamsError(f"{source}: not valid JSON: {message[:120]}") from None


def _with_suffixes(path: Path) -> list[Path]:
    if path.suffix in HPARAMS_SUFFIXES:
        return [path]
    return [path.with_name(path.name + s) for s in HPARAMS_SUFFIXES]


def shipped_in_package(package: Optional[str], *, skip: Sequence[str] = ()) -> dict[str, Path]:
    """``{"DINM/smollm2-135m": path}`` for the ``<ALG>/<model>.yaml`` files of one hparams package
    (folders named in ``skip``, such as ``pipelines``, left out); ``{}`` when it cannot be imported."""
    from importlib.resources import files

    if not package:
        return {}
    try:
        root = files(package)
    except (ModuleNotFoundError, TypeError) as exc:
        logger.warning("hparams package %r is not importable: %s", package, exc)
        return {}
    found: dict[str, Path] = {}
    for sub in sorted(root.iterdir(), key=lambda t: t.name):
        if not sub.is_dir() or sub.name.startswith(("_", ".")) or sub.name in skip:
            continue
        for item in sorted(sub.iterdir(), key=lambda t: t.name):
            stem, dot, suffix = item.name.rpartition(".")
            if dot and f".{suffix}" in HPARAMS_SUFFIXES and item.is_file():
                found.setdefault(f"{sub.name}/{stem}", Path(str(item)))
    return found


def resolve_hparams_path(path_or_name: str | Path, shipped: Optional[Mapping[str, Path]] = None) -> Path:
    """A user file (suffix optional) first, then a name in ``shipped`` such as ``DINM/smollm2-135m``."""
    raw = str(path_or_name).strip()
    if not raw:
        raise HyperParamsError("empty hyperparameter name; pass a file path or a name like DINM/smollm2-135m")
    for candidate in _with_suffixes(Path(raw).expanduser()):
        if candidate.is_file():
            return candidate
    shipped = shipped or {}
    key = raw.replace("\\", "/")
    for suffix in HPARAMS_SUFFIXES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    matches = {name: p for name, p in shipped.items() if name.lower() == key.lower()}
    if matches:
        return Path(str(next(iter(matches.values()))))
    close = difflib.get_close_matches(key, list(shipped), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(sorted(shipped)) or "none installed"
    raise HyperParamsError(
        f"no hyperparameter file {shown(raw)}: not a file, and not a shipped name ({listing}).{hint}"
    )


def peek_alg_name(path: Path) -> str:
    """The ``alg_name`` of a hyperparameter file, with a clear error when absent."""
    data = read_hparams_file(path)
    alg = data.get("alg_name")
    if not isinstance(alg, str) or not alg.strip():
        raise HyperParamsError(f"{path}: missing 'alg_name' (e.g. alg_name: DINM); add it to the file")
    return alg.strip()
