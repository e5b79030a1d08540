"""Several edits of one model as one ``Edit`` (``ComposedEdit``), and the conflict checks between them.

Before anything changes, what every step will touch is compared (a ``Footprint`` per step: tensors
written and read, modules hooked or wrapped by an adapter) and conflicting compositions are refused
with a :class:`ConflictError`. A :class:`ComposedEdit` reverts its steps newest first, bit for bit;
``save(dir)`` writes one folder whose manifest lists one sub-folder per step; ``load_edit(dir)
.apply(model)`` replays them in order. ``registry.pipeline.compose`` builds one from edits and steps.

What may stack is documented in the README ("Composing editors"); in short, two steps may change
the same tensor only when both are additive deltas (``W0 + Δ``) and the later footprint is
``stackable`` (DINM's is: sequential edits of one MLP matrix are the paper's setting).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from .edits import Edit
from .errors import EditError
from .footprint import Footprint, natural_sorted

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

COMPOSED = "composed"
COMPOSED_EDITOR = "Composed"


def step_folder(index: int, editor: str) -> str:
    return f"step-{index:02d}-{editor.lower()}"


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
    if same and not (a.additive and b.additive and b.stackable):
        if not a.additive:
            reason = (f"both change {{names}}; {earlier.label} is not an additive delta (e.g. a bias fold), so "
                      f"{later.label} would overwrite it. Edit other tensors, or run them separately")
        elif not b.additive:
            reason = (f"both change {{names}}; {later.label} is not an additive delta, so it would overwrite "
                      f"{earlier.label}'s edit. Edit other tensors, or run them separately")
        else:
            reason = ("both change {names}; only an edit whose footprint is stackable (e.g. DINM's) may edit "
                      "a tensor an earlier step edited. Edit other layers, or run them separately")
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
        "both attach an adapter to {names}. Export the first one merged, or target other modules")
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


def warn_unknown(steps: Sequence[StepFootprint]) -> None:
    """Log each step that does not say what it changes (the checks cannot see it)."""
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
            fp = step.footprint()
            if fp is None:
                fp = Footprint(exact=False)
            total = fp if total is None else total.merged(fp)
        return total

    def export_config(self) -> dict[str, Any]:
        """Every step's config changes (each step must be exportable; two different values conflict)."""
        merged: dict[str, Any] = {}
        for step in leaf_edits(self.steps):
            for key, value in step.export_config().items():
                if key in merged and merged[key] != value:
                    raise EditError(f"the steps need different values of config {key!r} ({merged[key]!r}, "
                                    f"{value!r}); export them separately")
                merged[key] = value
        return merged

    def card_steps(self) -> list[dict[str, Any]]:
        return [row for step in leaf_edits(self.steps) for row in step.card_steps()]

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
        fp = leaf.footprint()
        rows.append({"step": index, "editor": leaf.editor, "payload": leaf.payload,
                     "footprint": None if fp is None else fp.to_dict()})
    return rows


def applied_footprints(edits: Sequence[Edit]) -> list[StepFootprint]:
    """The conflict-check view of edits already applied (composed edits flattened)."""
    leaves = leaf_edits(edits)
    return [StepFootprint(f"edit {i} ({e.editor})", e.footprint()) for i, e in enumerate(leaves, start=1)]


__all__ = ["COMPOSED", "ComposedEdit", "Conflict", "ConflictError", "Footprint", "StepFootprint",
           "applied_footprints", "describe_edit", "find_conflicts", "leaf_edits", "pair_conflicts",
           "raise_on_conflicts", "warn_unknown"]
