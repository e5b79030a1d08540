"""Several edits of one model as one ``Edit``: conflict checks, reverse-order revert, one folder.

``compose(items, model, tokenizer)`` takes edits already applied to ``model`` (in the order they
were applied) and/or steps to run after them: hyperparameters, pipeline step specs or a whole
pipeline (see ``registry.pipeline``). Before anything changes, what every step will touch is
compared (a :class:`Footprint` per step: tensors written and read, modules hooked or wrapped by an
adapter) and conflicting compositions are refused with a :class:`ConflictError`. The result is a
:class:`ComposedEdit`: ``revert()`` undoes the steps newest first, bit for bit; ``save(dir)``
writes one folder whose manifest lists one sub-folder per step; ``load_edit(dir).apply(model)``
replays them in order (a failing step undoes the ones before it).

What may stack is documented in the README ("Composing editors"); in short, two steps may change
the same tensor only when both are additive deltas (``W0 + Δ``) and the later editor declares
``stackable = True`` (DINM does: sequential edits of one MLP matrix are the paper's setting).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

from .edits import Edit, ParameterEdit
from .errors import EditError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .pipeline import Pipeline

logger = logging.getLogger(__name__)

COMPOSED = "composed"
COMPOSED_EDITOR = "Composed"
_BASE_LAYER = re.compile(r"\.base_layer(?=\.|$)")


def step_folder(index: int, editor: str) -> str:
    return f"step-{index:02d}-{editor.lower()}"


def canonical_name(name: str) -> str:
    """A tensor/module name as it reads without adapter wrappers (peft's ``.base_layer`` removed)."""
    return _BASE_LAYER.sub("", name)


# ---------------------------------------------------------------------- footprints
@dataclass(frozen=True)
class Footprint:
    """What one edit changes, and what its result depends on. Names are canonical (no ``.base_layer``).

    ``writes``: tensors (parameters/buffers, also ones the edit creates) whose values it changes.
    ``reads``: tensors its result was computed from and stays tied to (a DeStein bias fold is
    ``W_o·δ``: it reads ``o_proj.weight``). ``hooks``: modules it steers with forward hooks.
    ``wraps``: modules an adapter it attaches replaces with a wrapper. ``additive``: its writes are
    ``W0 + Δ`` deltas (``ParameterEdit``). ``exact``: False for a prediction that is a superset
    (e.g. DINM before localization: every layer it might pick).
    """

    writes: frozenset[str] = frozenset()
    reads: frozenset[str] = frozenset()
    hooks: frozenset[str] = frozenset()
    wraps: frozenset[str] = frozenset()
    additive: bool = False
    exact: bool = True

    @classmethod
    def of(cls, *, writes: Iterable[str] = (), reads: Iterable[str] = (), hooks: Iterable[str] = (),
           wraps: Iterable[str] = (), additive: bool = False, exact: bool = True) -> "Footprint":
        """A footprint with every name made canonical."""
        def names(values: Iterable[str]) -> frozenset[str]:
            return frozenset(canonical_name(str(v)) for v in values)

        return cls(names(writes), names(reads), names(hooks), names(wraps), additive, exact)

    def merged(self, other: "Footprint") -> "Footprint":
        return Footprint(self.writes | other.writes, self.reads | other.reads, self.hooks | other.hooks,
                         self.wraps | other.wraps, self.additive and other.additive, self.exact and other.exact)

    def to_dict(self) -> dict[str, Any]:
        """Names in natural order (layers.2 before layers.10)."""
        return {"writes": natural_sorted(self.writes), "reads": natural_sorted(self.reads),
                "hooks": natural_sorted(self.hooks), "wraps": natural_sorted(self.wraps),
                "additive": self.additive, "exact": self.exact}


def natural_sorted(names: Iterable[str]) -> list[str]:
    """Sorted with digit runs compared as numbers: ``layers.8`` before ``layers.10``."""
    return sorted(names, key=lambda n: [(0, int(p), "") if p.isdigit() else (1, 0, p)
                                        for p in re.split(r"(\d+)", n)])


def footprint_of(edit: Edit) -> Optional[Footprint]:
    """An applied edit's footprint: its own ``footprint()``, a ParameterEdit's deltas, else None (unknown)."""
    method = getattr(edit, "footprint", None)
    if callable(method):
        return method()
    if isinstance(edit, ParameterEdit):
        return Footprint.of(writes=edit.deltas, additive=True)
    return None


def stackable_editor(name: str) -> bool:
    """Whether the registered editor ``name`` declares ``stackable`` (False when it is not installed)."""
    from .errors import EditorNotFoundError
    from .plugins import get_editor

    try:
        return bool(getattr(get_editor(name), "stackable", False))
    except EditorNotFoundError:
        return False


def leaf_edits(edits: Iterable[Edit]) -> list[Edit]:
    """The edits with every composed edit replaced by its steps (recursively), in order."""
    out: list[Edit] = []
    for edit in edits:
        if isinstance(edit, ComposedEdit):
            out.extend(leaf_edits(edit.steps))
        else:
            out.append(edit)
    return out


# ---------------------------------------------------------------------- conflicts
@dataclass(frozen=True)
class StepFootprint:
    """One step as the conflict check sees it."""

    label: str
    footprint: Optional[Footprint]
    stackable: bool = False


@dataclass(frozen=True)
class Conflict:
    """Step ``later`` would break step ``earlier``; ``rule`` names which rule of the README table."""

    earlier: str
    later: str
    rule: str
    names: tuple[str, ...]
    why: str

    def message(self) -> str:
        return f"{self.later} vs {self.earlier}: {self.why.format(names=_short_list(self.names))}"


class ConflictError(EditError):
    """Two steps of a composition would interfere; the message lists each conflict and the fix."""

    def __init__(self, message: str, conflicts: Sequence[Conflict] = ()) -> None:
        super().__init__(message)
        self.conflicts = list(conflicts)


def _short_list(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _under(names: Iterable[str], modules: Iterable[str]) -> list[str]:
    """The names that are one of ``modules`` or lie inside one."""
    modules = list(modules)
    return sorted(n for n in names if any(n == m or n.startswith(m + ".") for m in modules))


def pair_conflicts(earlier: StepFootprint, later: StepFootprint) -> list[Conflict]:
    """Every rule ``later`` (run after ``earlier``) breaks; empty when either footprint is unknown."""
    a, b = earlier.footprint, later.footprint
    if a is None or b is None:
        return []
    found = []

    def add(rule: str, names: Iterable[str], why: str) -> None:
        names = natural_sorted(set(names))
        if names:
            found.append(Conflict(earlier.label, later.label, rule, tuple(names), why))

    same = a.writes & b.writes
    if same and not (a.additive and b.additive and later.stackable):
        if not a.additive:
            reason = (f"both change {{names}}; {earlier.label} is not an additive delta (e.g. a bias fold), so "
                      f"{later.label} would overwrite it. Edit other tensors, or run them separately")
        elif not b.additive:
            reason = (f"both change {{names}}; {later.label} is not an additive delta, so it would overwrite "
                      f"{earlier.label}'s edit. Edit other tensors, or run them separately")
        else:
            reason = (f"both change {{names}}; only an editor that declares stacking (stackable = True, e.g. "
                      f"DINM) may edit a tensor an earlier step edited. Edit other layers, or run them separately")
        add("same-tensor", same, reason)
    add("reads", b.writes & a.reads,
        f"{later.label} changes {{names}}, which {earlier.label}'s result was computed from (a DeStein bias "
        f"fold is W_o·δ); the earlier edit would silently go stale. Run {later.label} first")
    add("hooked-module", _under(b.writes, a.hooks),
        f"{later.label} changes {{names}} of a module {earlier.label} steers with forward hooks built for the "
        f"old weights. Run {later.label} first")
    add("wrapped-module", _under(b.writes, a.wraps),
        f"{later.label} changes {{names}} inside a module that {earlier.label}'s adapter wraps (the adapter "
        f"was trained on the old weights). Run {later.label} first, or export the adapter merged")
    add("two-adapters", a.wraps & b.wraps,
        f"both attach an adapter to {{names}}. Export the first one merged, or target other modules")
    add("adapter-over-hook", a.hooks & b.wraps,
        f"{later.label}'s adapter would wrap {{names}}, which {earlier.label} hooks (the hook would stay on "
        f"the inner layer and steer only part of the output). Run {later.label} first")
    return found


def find_conflicts(steps: Sequence[StepFootprint], *, only_last: bool = False) -> list[Conflict]:
    """Conflicts between every earlier and later step (or only those involving the last step)."""
    found: list[Conflict] = []
    laters = [len(steps) - 1] if only_last and steps else range(len(steps))
    for j in laters:
        for i in range(j):
            found.extend(pair_conflicts(steps[i], steps[j]))
    return found


def raise_on_conflicts(steps: Sequence[StepFootprint], *, only_last: bool = False, undone: bool = False) -> None:
    """Raise ConflictError listing every conflict; ``undone`` says the steps already run were undone."""
    conflicts = find_conflicts(steps, only_last=only_last)
    if not conflicts:
        return
    state = ("the steps run so far were undone; the model is as it was"
             if undone else "nothing was changed")
    details = "; ".join(c.message() for c in conflicts)
    raise ConflictError(
        f"these edits conflict ({state}): {details}. See 'Composing editors' in the README for what may "
        f"stack, or pass check_conflicts=False to compose anyway", conflicts)


def _unknown(steps: Sequence[StepFootprint]) -> None:
    for step in steps:
        if step.footprint is None:
            logger.warning("%s does not declare what it changes; it is not checked for conflicts before it "
                           "runs", step.label)


# ---------------------------------------------------------------------- the composed edit
class ComposedEdit(Edit):
    """Edits applied one after another to the same model, handled as one edit."""

    payload = COMPOSED

    def __init__(self, model: Any, steps: Sequence[Edit], metadata: Optional[dict[str, Any]] = None) -> None:
        if not steps:
            raise EditError("compose() needs at least one edit")
        for step in steps:
            if not isinstance(step, Edit):
                raise EditError(f"compose() takes Edit objects, got {type(step).__name__}")
            if not step.applied:
                raise EditError(f"the {step.editor} edit was already reverted; apply it before composing")
            if step.model is not model:
                raise EditError("every composed edit must belong to the same model")
        self.steps = list(steps)
        names = [step_folder(i, s.editor) for i, s in enumerate(self.steps)]
        base = {"editor": COMPOSED_EDITOR, "kind": "composed", "steps": names,
                "step_editors": [s.editor for s in self.steps]}
        super().__init__(model, {**base, **(metadata or {})})

    def _revert(self) -> None:
        for step in reversed(self.steps):
            if step.applied:
                step.revert()

    def tensors(self) -> dict[str, "torch.Tensor"]:
        return {}

    def footprint(self) -> Optional[Footprint]:
        """The union of the steps' footprints (None when no step declares one)."""
        total: Optional[Footprint] = None
        for step in leaf_edits(self.steps):
            fp = footprint_of(step)
            if fp is None:
                fp = Footprint(exact=False)
            total = fp if total is None else total.merged(fp)
        return total

    def describe(self) -> list[dict[str, Any]]:
        """One row per leaf step: editor, payload, footprint (for reports such as ``detox apply``)."""
        return describe_edit(self)

    def write_extra(self, directory: Path) -> list[str]:
        names = []
        for index, step in enumerate(self.steps):
            name = step_folder(index, step.editor)
            step.save(directory / name)
            names.append(name)
        return names


def describe_edit(edit: Edit) -> list[dict[str, Any]]:
    """``[{"step", "editor", "payload", "footprint"}]`` for an edit (one row per leaf of a composed edit)."""
    rows = []
    for index, leaf in enumerate(leaf_edits([edit]), start=1):
        fp = footprint_of(leaf)
        rows.append({"step": index, "editor": leaf.editor, "payload": leaf.payload,
                     "footprint": None if fp is None else fp.to_dict()})
    return rows


def applied_footprints(edits: Sequence[Edit]) -> list[StepFootprint]:
    """The conflict-check view of edits already applied (composed edits flattened)."""
    leaves = leaf_edits(edits)
    return [StepFootprint(f"edit {i} ({e.editor})", footprint_of(e), stackable_editor(e.editor))
            for i, e in enumerate(leaves, start=1)]


Item = Union[Edit, Mapping[str, Any], str, "os.PathLike[str]", Any]


def compose(items: Union[Sequence[Item], str, "os.PathLike[str]", "Pipeline", Mapping[str, Any]],
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
    from . import pipeline as _pipeline

    if isinstance(items, (str, os.PathLike, _pipeline.Pipeline)) or (
            isinstance(items, Mapping) and "steps" in items):
        parsed = items if isinstance(items, _pipeline.Pipeline) else (
            _pipeline.parse_pipeline(items) if isinstance(items, Mapping) else _pipeline.load_pipeline(items))
        return _pipeline.run_pipeline(parsed, model, tokenizer, check_conflicts=check_conflicts, metadata=metadata)
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
            _unknown(prior)
            raise_on_conflicts(prior)
    if not specs:
        return ComposedEdit(owner, applied, metadata=metadata)
    steps = _pipeline.prepare_steps(specs, start=len(leaf_edits(applied)))
    if model is None:
        model, tokenizer = _pipeline.load_model_for_steps(steps)
    return _pipeline.run_steps(steps, model, tokenizer, prior=applied, check_conflicts=check_conflicts,
                               metadata=metadata)


__all__ = ["COMPOSED", "ComposedEdit", "Conflict", "ConflictError", "Footprint", "StepFootprint", "compose",
           "describe_edit", "find_conflicts", "footprint_of", "leaf_edits", "pair_conflicts", "raise_on_conflicts"]
