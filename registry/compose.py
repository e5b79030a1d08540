"""Several applied edits as one: revert in reverse order, save one folder, replay on load."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .edits import Edit
from .errors import EditError

if TYPE_CHECKING:  # pragma: no cover
    import torch

COMPOSED = "composed"
COMPOSED_EDITOR = "Composed"


def step_folder(index: int, editor: str) -> str:
    return f"step-{index:02d}-{editor.lower()}"


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

    def write_extra(self, directory: Path) -> list[str]:
        names = []
        for index, step in enumerate(self.steps):
            name = step_folder(index, step.editor)
            step.save(directory / name)
            names.append(name)
        return names


def compose(edits: Sequence[Edit]) -> ComposedEdit:
    """Wrap edits already applied in order to one model; ``revert()`` undoes them newest first."""
    edits = list(edits)
    if not edits:
        raise EditError("compose() needs at least one edit")
    return ComposedEdit(edits[0].model, edits)
