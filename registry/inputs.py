"""``InputField``: one input an editor reads for an edit, declared once for pipelines and the CLI.

An editor lists its inputs in ``Editor.inputs``. The same declaration gives a pipeline step its
keys (``cases: safeedit-sample``) and ``detox edit`` its flags (``--cases safeedit-sample``); the
host checks the keys, resolves path inputs, and hands the values to ``Editor.read_inputs``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from .errors import HyperParamsError


@dataclass(frozen=True)
class InputField:
    """One input of an edit.

    ``key``: the pipeline key (``case_id``); on the command line ``--case-id``. ``help``: one line for
    ``--help`` and pipeline errors. ``type``: how a command-line string is converted (``str``,
    ``int``, ``float``); pipeline values arrive as YAML wrote them and ``read_inputs`` checks them.
    ``path``: a file or folder; a relative path in a pipeline file is resolved against that file's
    folder when it exists there (a shipped name such as ``safeedit-sample`` is left as it is).
    ``metavar``: the placeholder ``--help`` shows.
    """

    key: str
    help: str
    type: Callable[[str], Any] = str
    path: bool = False
    metavar: Optional[str] = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def dest(self) -> str:
        """The attribute ``argparse`` stores the flag's value under."""
        return self.key.replace("-", "_")


#: The default input of an editor: EasyEdit request dicts (a list in a pipeline, a file on the CLI).
REQUESTS_INPUT = InputField(
    "requests", "EasyEdit request dicts (prompt, target_new, ground_truth, locality, ...): a list in a "
    "pipeline step, a JSON list or JSONL file on the command line.", path=True, metavar="FILE")


def check_input_keys(values: Mapping[str, Any], fields: Sequence[InputField], *, where: str,
                     editor: str, also: Sequence[str] = ()) -> None:
    """Raise HyperParamsError (a key of a file is wrong, like an hparams key) for a key no field (nor
    ``also``) declares, naming the closest one."""
    known = [f.key for f in fields] + list(also)
    for key in values:
        if not isinstance(key, str) or key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(known))}."
            raise HyperParamsError(f"{where}: unknown key {key!r} for a {editor} step; {hint} Remove or rename "
                                   f"it ({editor} steps take: {', '.join(sorted(known))}).")


def resolve_input_path(value: Any, base_dir: Optional[Path]) -> Any:
    """A relative path resolved against ``base_dir`` when it exists there; anything else unchanged."""
    if not isinstance(value, (str, Path)) or base_dir is None:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and (base_dir / path).exists():
        return str(base_dir / path)
    return str(path) if isinstance(value, Path) else value


def resolve_input_paths(values: Mapping[str, Any], fields: Sequence[InputField],
                        base_dir: Optional[Path]) -> dict[str, Any]:
    """``values`` with every path input resolved against ``base_dir`` (see ``resolve_input_path``)."""
    paths = {f.key for f in fields if f.path}
    return {k: resolve_input_path(v, base_dir) if k in paths else v for k, v in values.items()}
