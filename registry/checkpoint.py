"""Standard checkpoints of an edited model: a merged Hugging Face folder (config, safetensors, tokenizer,
generation config, model card) that transformers and serving engines load without detox-plugins.

``write_merged`` saves the model as it is (edits applied in place), with config changes an edit asks
for (a DeStein bias fold on Llama sets ``attention_bias: true``). Before writing, the state dict is
checked against what the architecture's own class builds from that config: a bias the flag adds and
the edit did not write is written as zeros (q/k/v for a folded o_proj); a tensor the class would not
load is refused, so an export never loads silently different.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import EditError
from .writer import write_folder

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"


def expected_tensors(config: Any) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the state dict the architecture's own class has for ``config`` (built on the
    meta device: no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}


def merged_state(model: Any, config: Any) -> dict[str, Any]:
    """The model's state dict, completed and checked against ``config``'s architecture (see module doc)."""
    import torch

    state = {name: t.detach() for name, t in model.state_dict().items()}
    expected = expected_tensors(config)
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise EditError(
            f"{type(model).__name__} with this config would not load {len(unexpected)} tensor(s) the edit wrote "
            f"({', '.join(unexpected[:3])}); this edit cannot be written into a {config.model_type} checkpoint")
    for name, shape in expected.items():
        if name not in state:
            if not name.endswith(".bias"):
                raise EditError(f"the edited model lacks {name!r}, which a {config.model_type} checkpoint needs")
            reference = next(iter(state.values()))
            state[name] = torch.zeros(shape, dtype=reference.dtype, device=reference.device)
        elif tuple(state[name].shape) != shape:
            raise EditError(f"tensor {name!r} has shape {tuple(state[name].shape)}, but a {config.model_type} "
                            f"checkpoint needs {shape}")
    return state


def write_merged(model: Any, tokenizer: Any, out: str | os.PathLike[str], *,
                 config_updates: Optional[Mapping[str, Any]] = None, card: str = "", overwrite: bool = False) -> Path:
    """Write the edited ``model`` as a Hugging Face folder (see the module doc)."""
    config = copy.deepcopy(model.config)
    for key, value in (config_updates or {}).items():
        setattr(config, key, value)
    state = merged_state(model, config)

    def fill(folder: Path) -> None:
        original = model.config
        model.config = config
        try:
            model.save_pretrained(folder, state_dict=state, safe_serialization=True)
        finally:
            model.config = original
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        (folder / CARD_NAME).write_text(card, encoding="utf-8")

    target = write_folder(out, fill, overwrite=overwrite, what="export folder")
    logger.info("exported a merged checkpoint to %s", target)
    return target


def model_card(*, title: str, base: Mapping[str, Any], steps: list[Mapping[str, Any]], fmt: str,
               quality: Optional[str] = None) -> str:
    """A model card: the base model and its fingerprint, each edit step with its hparams, the quality table."""
    import json

    lines = [f"# {title}", "", f"Exported by detox-plugins as a {fmt} checkpoint; loading it needs only "
             "transformers (and peft for an adapter).", "", "## Base model", "",
             f"- name or path: `{base.get('name_or_path')}`", f"- model type: `{base.get('model_type')}`",
             f"- fingerprint before the edit: `{base.get('fingerprint')}`", "", "## Edit steps", ""]
    for index, step in enumerate(steps, start=1):
        lines += [f"### {index}. {step.get('editor')} ({step.get('payload')})", "",
                  f"distribution `{step.get('distribution')}` {step.get('editor_version') or ''}", "",
                  "```json", json.dumps(step.get("hparams") or {}, indent=2, sort_keys=True), "```", ""]
    lines += ["## Measured quality", "", quality.strip() if quality else "No quality table was measured for this "
              "edit (`detox report --compare DIR --json OUT`, then `detox export ... --report OUT`).", ""]
    return "\n".join(lines)
