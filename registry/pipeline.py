"""Pipelines: several editors run on one model in order, as one composed, revertible edit.

A pipeline file (``hparams/pipelines/<name>.yaml`` when shipped, or any YAML/JSON file)::

    name: detox-all                      # optional (default: the file name)
    description: DeStein, then DINM      # optional
    model_name: smollm2-135m-instruct    # optional (default: the first step's hparams' model_name)
    steps:
      - hparams: DeStein/smollm2-135m    # a shipped name, a path (relative to this file), or a mapping
        override: {alpha: 0.3}           # merged into the hparams before validation
        name: steer                      # optional label
      - hparams: DINM/smollm2-135m
        cases: safeedit-sample           # inputs the editor reads (its ``spec_keys``)
        case_id: 0

Every key is checked like hyperparameters: an unknown key names the closest valid one, an unknown
``alg_name`` lists the installed editors, and each step's inputs are read and validated (files
loaded, cases found) before a model is touched. Step inputs reach the editor through its declared
``Editor.inputs`` and ``read_inputs``, and what it will change through ``planned_footprint``, so
the host knows nothing about any editor.

``run_pipeline`` first predicts every step's footprint and refuses conflicting pipelines
(``ConflictError``) before anything changes; then it runs the steps, checks each actual footprint
right after its step, and on any failure (also an interrupt) undoes the steps already run, newest
first, so the model is bit-for-bit as it was.
"""

from __future__ import annotations

import difflib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .catalog import resolve_hparams_path, resolve_pipeline_path
from .compose import ComposedEdit, StepFootprint, applied_footprints, leaf_edits, raise_on_conflicts, warn_unknown
from .editor import Editor
from .edits import Edit
from .errors import DetoxError, EditError, HyperParamsError
from .hparams import HyperParams, deep_merge, read_hparams_file
from .inputs import check_input_keys, resolve_input_path, resolve_input_paths
from .models import load_model
from .plugins import get_editor

logger = logging.getLogger(__name__)


PIPELINE_KEYS: dict[str, str] = {
    "name": "Label of the pipeline (default: the file name).",
    "description": "One line saying what the pipeline does.",
    "model_name": "Model to edit (default: the first step's hparams' model_name).",
    "steps": "The editors to run, in order: a list of step mappings.",
}
STEP_KEYS: dict[str, str] = {
    "hparams": "Hyperparameters: a shipped name (DINM/smollm2-135m), a file (relative to the pipeline "
               "file) or an inline mapping with alg_name.",
    "override": "A mapping merged into the hparams before validation (nested mappings merge key by key).",
    "name": "A label for this step in reports and errors (default: 'step N (EDITOR)').",
}


# ---------------------------------------------------------------------- the parsed form
@dataclass
class PipelineStep:
    """One validated step: the editor (with its hparams) and the inputs its ``read_spec`` returned."""

    index: int  # 0-based
    label: str
    source: str  # where the hparams came from
    editor: Editor
    inputs: Any
    spec: dict[str, Any] = field(default_factory=dict)  # the editor's own keys, as written

    @property
    def editor_name(self) -> str:
        return type(self.editor).name

    def record(self) -> dict[str, Any]:
        """What the composed manifest records about this step."""
        return {"name": self.label, "editor": self.editor_name, "hparams": self.source, "inputs": self.spec}


@dataclass
class Pipeline:
    """A parsed pipeline file: validated steps, ready to run on a model."""

    name: str
    steps: list[PipelineStep]
    description: str = ""
    model_name: Optional[str] = None
    source: Optional[str] = None

    def model_spec(self) -> Union[HyperParams, str]:
        """What ``registry.load_model`` loads for this pipeline when no model is given."""
        return self.model_name if self.model_name else self.steps[0].editor.hparams

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "source": self.source,
                "model_name": self.model_name, "steps": [s.record() for s in self.steps]}


# ---------------------------------------------------------------------- parsing
def _closest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(known))}."


def load_pipeline(path_or_name: Union[str, Path]) -> Pipeline:
    """Read and validate a pipeline file or shipped pipeline (no model is loaded)."""
    path = resolve_pipeline_path(path_or_name)
    data = read_hparams_file(path)
    return parse_pipeline(data, source=str(path), base_dir=path.parent, default_name=path.stem)


def parse_pipeline(data: Mapping[str, Any], *, source: str = "<pipeline>", base_dir: Optional[Path] = None,
                   default_name: str = "pipeline") -> Pipeline:
    """Validate a pipeline mapping: its keys, every step's hparams and inputs."""
    if not isinstance(data, Mapping):
        raise HyperParamsError(f"{source}: a pipeline is a mapping with 'steps', got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str) or key not in PIPELINE_KEYS:
            hint = (" This looks like a hyperparameter file: run it with --hparams, or list it as a step "
                    "(steps: [{hparams: FILE}])." if key == "alg_name" else "")
            raise HyperParamsError(f"{source}: unknown pipeline key {key!r}; {_closest(str(key), list(PIPELINE_KEYS))}"
                                   f" Remove or rename it.{hint}")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise HyperParamsError(f"{source}: 'steps' must be a non-empty list of steps such as "
                               f"{{hparams: DINM/smollm2-135m, cases: safeedit-sample, case_id: 0}}")
    for key in ("name", "description", "model_name"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise HyperParamsError(f"{source}: '{key}' must be a string, got {data[key]!r}")
    prepared = [prepare_step(spec, index, source=source, base_dir=base_dir) for index, spec in enumerate(steps)]
    return Pipeline(name=data.get("name") or default_name, steps=prepared, description=data.get("description") or "",
                    model_name=data.get("model_name"), source=source)


def prepare_steps(specs: Sequence[Any], *, source: str = "compose()", base_dir: Optional[Path] = None,
                  start: int = 0) -> list[PipelineStep]:
    """Validated steps from step mappings, hparams names/paths, ``HyperParams`` or ``PipelineStep`` s;
    ``start`` numbers them after that many edits already applied."""
    steps = []
    for index, spec in enumerate(specs, start=start):
        if isinstance(spec, PipelineStep):
            spec.index = index
            steps.append(spec)
        elif isinstance(spec, Pipeline):
            raise EditError("compose(): pass a pipeline on its own, not inside a list of steps")
        else:
            steps.append(prepare_step(spec, index, source=source, base_dir=base_dir))
    return steps


def prepare_step(spec: Any, index: int, *, source: str = "<pipeline>", base_dir: Optional[Path] = None
                 ) -> PipelineStep:
    """Validate one step (its keys, hparams, override and inputs); nothing touches a model."""
    if isinstance(spec, (str, Path, HyperParams)):
        spec = {"hparams": spec}
    where = f"{source} step {index + 1}"
    if not isinstance(spec, Mapping):
        raise HyperParamsError(f"{where}: a step is a mapping with 'hparams', got {type(spec).__name__}")
    if "hparams" not in spec:
        raise HyperParamsError(f"{where}: missing 'hparams' (a shipped name like DINM/smollm2-135m, a file, "
                               f"or a mapping with alg_name)")
    override = spec.get("override") or {}
    if not isinstance(override, Mapping):
        raise HyperParamsError(f"{where}: 'override' must be a mapping of hparams keys, got {override!r}")
    editor_class, hparams, hp_source = _step_hparams(spec["hparams"], override, where, base_dir)
    label = spec.get("name")
    if label is not None and not isinstance(label, str):
        raise HyperParamsError(f"{where}: 'name' must be a string, got {label!r}")
    context = f"{where} ({label or editor_class.name})"
    label = label or f"step {index + 1} ({editor_class.name})"
    check_input_keys(spec, editor_class.inputs, where=where, editor=editor_class.name, also=list(STEP_KEYS))
    inputs_spec = {k: v for k, v in spec.items() if k not in STEP_KEYS}
    editor = editor_class(hparams)
    try:
        inputs = editor.read_inputs(resolve_input_paths(inputs_spec, editor_class.inputs, base_dir))
    except DetoxError as exc:
        raise _with_context(exc, context) from None
    return PipelineStep(index=index, label=label, source=hp_source, editor=editor, inputs=inputs,
                        spec=dict(inputs_spec))


def _with_context(exc: DetoxError, where: str) -> DetoxError:
    try:
        return type(exc)(f"{where}: {exc}")
    except TypeError:  # an error type with another constructor: keep it as it is
        return exc


def _step_hparams(value: Any, override: Mapping[str, Any], where: str, base_dir: Optional[Path]
                  ) -> tuple[type, HyperParams, str]:
    """(editor class, validated hparams with the override merged in, a label of their source)."""
    if isinstance(value, HyperParams):
        raw: Mapping[str, Any] = value.to_dict()
        label = f"<{type(value).__name__}>"
    elif isinstance(value, Mapping):
        raw, label = value, "<inline>"
    elif isinstance(value, (str, Path)):
        label = str(value)
        try:
            raw = read_hparams_file(resolve_hparams_path(resolve_input_path(value, base_dir)))
        except DetoxError as exc:
            raise _with_context(exc, where) from None
    else:
        raise HyperParamsError(f"{where}: 'hparams' must be a name, a file or a mapping, got {value!r}")
    alg = raw.get("alg_name")
    if not isinstance(alg, str) or not alg.strip():
        raise HyperParamsError(f"{where}: the hparams ({label}) have no 'alg_name' (e.g. alg_name: DINM); add it")
    try:
        editor_class = get_editor(alg.strip())
    except DetoxError as exc:
        raise _with_context(exc, f"{where} ({label})") from None
    merged = deep_merge(raw, override) if override else dict(raw)
    source = f"{where} ({label}{' + override' if override else ''})"
    hparams = editor_class.hparams_class.from_dict(merged, source=source)
    return editor_class, editor_class.coerce_hparams(hparams), label


# ---------------------------------------------------------------------- running
def load_model_for_steps(steps: Sequence[PipelineStep], model_name: Optional[str] = None) -> tuple[Any, Any]:
    """The model (and tokenizer) a pipeline runs on: ``model_name`` or the first step's hparams'."""
    return load_model(model_name if model_name else steps[0].editor.hparams)


def plan(steps: Sequence[PipelineStep], model: Any) -> list[StepFootprint]:
    """Each step's predicted footprint on ``model`` (``None`` where the editor cannot predict it)."""
    planned = []
    for step in steps:
        try:
            footprint = step.editor.planned_footprint(model, step.inputs)
        except DetoxError as exc:
            raise _with_context(exc, step.label) from None
        planned.append(StepFootprint(step.label, footprint))
    return planned


def run_pipeline(pipeline: Pipeline, model: Any = None, tokenizer: Any = None, *, check_conflicts: bool = True,
                 metadata: Optional[dict[str, Any]] = None, context: Sequence[Edit] = ()) -> ComposedEdit:
    """Run every step of ``pipeline`` on ``model`` (loaded from the pipeline when None).

    ``context``: edits already on the model (e.g. ``--edit DIR``) that the steps are checked against
    but that are not part of the result."""
    if model is None:
        model, tokenizer = load_model_for_steps(pipeline.steps, pipeline.model_name)
    extra = {"pipeline": pipeline.record(), **(metadata or {})}
    return run_steps(pipeline.steps, model, tokenizer, check_conflicts=check_conflicts, metadata=extra,
                     context=context)


def run_steps(steps: Sequence[PipelineStep], model: Any, tokenizer: Any, *, prior: Sequence[Edit] = (),
              check_conflicts: bool = True, metadata: Optional[dict[str, Any]] = None,
              context: Sequence[Edit] = ()) -> ComposedEdit:
    """Run ``steps`` in order after the already-applied ``prior`` edits; all or nothing.

    Conflicts predicted from the hparams are refused before anything changes. Each step's actual
    footprint is checked right after it runs. Any failure undoes the steps run here, newest first.
    ``prior`` edits become the first steps of the result; ``context`` edits are only checked against.
    """
    if model is None:
        raise EditError("no model to run the steps on; pass model= (and tokenizer=)")
    if not steps:
        raise EditError("no steps to run; a pipeline needs at least one step")
    prior = list(prior)
    seen = [StepFootprint(f"--edit {s.label}", s.footprint) for s in applied_footprints(context)]
    seen += applied_footprints(prior)
    if check_conflicts:
        planned = plan(steps, model)
        for entry in planned:
            if entry.footprint is None:
                logger.warning("%s cannot say before it runs what it changes; it is checked right after", entry.label)
        raise_on_conflicts(seen + planned)
    done: list[Edit] = []
    seconds: list[float] = []
    try:
        for step in steps:
            started = time.perf_counter()
            logger.info("running %s", step.label)
            edit = step.editor.edit(model, tokenizer, step.inputs)
            if not isinstance(edit, Edit):
                raise EditError(f"{step.label}: {type(step.editor).__name__}.edit returned "
                                f"{type(edit).__name__}, not an Edit; the pipeline cannot revert it")
            done.append(edit)
            seconds.append(round(time.perf_counter() - started, 3))
            if check_conflicts:
                seen.append(StepFootprint(step.label, edit.footprint()))
                raise_on_conflicts(seen, only_last=True, undone=True)
    except BaseException:
        _undo(done)
        raise
    labels = [f"edit {i} ({e.editor})" for i, e in enumerate(prior, start=1)] + [s.label for s in steps]
    extra = {"step_labels": labels, "step_seconds": [None] * len(prior) + seconds, **(metadata or {})}
    return ComposedEdit(model, prior + done, metadata=extra)


def _undo(done: Sequence[Edit]) -> None:
    """Revert the steps run so far, newest first; a revert that fails is reported, not hidden."""
    failures = []
    for edit in reversed(done):
        if not edit.applied:
            continue
        try:
            edit.revert()
        except Exception as exc:  # keep undoing the rest; the original error still propagates
            logger.error("could not undo the %s edit: %s", edit.editor, exc)
            failures.append(f"{edit.editor}: {exc}")
    if failures:
        raise EditError(f"a step failed and undoing the earlier steps also failed ({'; '.join(failures)}); "
                        f"reload the model")


# ---------------------------------------------------------------------- compose()
Item = Union[Edit, Mapping[str, Any], str, "os.PathLike[str]", Any]


def compose(items: Union[Sequence[Item], str, "os.PathLike[str]", Pipeline, Mapping[str, Any]],
            model: Any = None, tokenizer: Any = None, *, check_conflicts: bool = True,
            metadata: Optional[dict[str, Any]] = None) -> ComposedEdit:
    """One edit from several, applied in order to one model.

    ``items`` is a list whose head may be edits already applied to the model (oldest first) and
    whose tail are steps to run now, each a shipped hparams name or path (``"DeStein/smollm2-135m"``),
    a ``HyperParams`` object, or a step mapping as in a pipeline file (``{"hparams": "DINM/smollm2-135m",
    "cases": "safeedit-sample", "case_id": 0, "override": {...}}``). ``items`` may also be a whole
    pipeline: a pipeline file or shipped name (``"detox-all"``), a parsed ``Pipeline`` or its mapping.

    Conflicts are checked first (``ConflictError``, nothing changed); a step that fails, or whose
    actual footprint conflicts, undoes the steps this call ran. ``model``/``tokenizer`` default to
    the applied edits' model; with steps only and no model, the model the pipeline (or first
    step's hparams) names is loaded.
    """
    if isinstance(items, (str, os.PathLike, Pipeline)) or (isinstance(items, Mapping) and "steps" in items):
        parsed = items if isinstance(items, Pipeline) else (
            parse_pipeline(items) if isinstance(items, Mapping) else load_pipeline(items))
        return run_pipeline(parsed, model, tokenizer, check_conflicts=check_conflicts, metadata=metadata)
    if isinstance(items, (Edit, Mapping)):
        items = [items]
    items = list(items)
    if not items:
        raise EditError("compose() needs at least one edit or step")
    applied: list[Edit] = []
    specs: list[Any] = []
    for item in items:
        if isinstance(item, Edit):
            if specs:
                raise EditError("compose(): edits already applied must come before the steps to run; put "
                                f"the {item.editor} edit first")
            applied.append(item)
        else:
            specs.append(item)
    if applied:
        owner = applied[0].model
        if model is not None and model is not owner:
            raise EditError("compose(): the given model is not the one the edits were applied to")
        model = owner
        for edit in applied:  # the same checks ComposedEdit makes, before the conflict check
            if edit.model is not owner:
                raise EditError("every composed edit must belong to the same model")
            if not edit.applied:
                raise EditError(f"the {edit.editor} edit was already reverted; apply it before composing")
        if check_conflicts:
            prior = applied_footprints(applied)
            warn_unknown(prior)
            raise_on_conflicts(prior)
    if not specs:
        return ComposedEdit(owner, applied, metadata=metadata)
    steps = prepare_steps(specs, start=len(leaf_edits(applied)))
    if model is None:
        model, tokenizer = load_model_for_steps(steps)
    return run_steps(steps, model, tokenizer, prior=applied, check_conflicts=check_conflicts,
                               metadata=metadata)


__all__ = ["Pipeline", "PipelineStep", "compose", "load_pipeline", "parse_pipeline", "prepare_step",
           "prepare_steps", "run_pipeline", "run_steps"]
