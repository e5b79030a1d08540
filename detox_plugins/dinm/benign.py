"""Benign prompts for DINM's benign-behaviour options, and the model's own greedy answers to them.

Both the null-space projection and the benign anchors read a dataset name or file of benign prompts
(``benign-heldout`` by default: disjoint from the benign-150 over-refusal set) and the answers the
unedited model gives them, generated once before any case's delta lands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from registry.errors import EditError


def load_prompts(source: str, count: Optional[int], field: str = "nullspace_prompts") -> list[str]:
    """The benign prompts of a dataset name or file (first ``count``), refused with the fix when unusable;
    ``field`` is the hparams field that named ``source`` (for the message)."""
    from detox_plugins.evaluation.datasets import load_dataset
    from detox_plugins.evaluation.errors import DatasetError

    try:
        rows = load_dataset(source, limit=count)
    except DatasetError as error:
        raise EditError(f"{field} {source!r}: {error}; set {field} to benign-heldout or to a "
                        f"JSONL file with a 'prompt' per line") from error
    prompts = [str(row["prompt"]) for row in rows if str(row.get("prompt", "")).strip()]
    if not prompts:
        raise EditError(f"{field} {source!r} has no non-empty prompt; fix the file or use benign-heldout")
    return prompts


@dataclass(frozen=True)
class BenignText:
    """One benign input: the prompt as the model sees it (formatted) and the model's own answer."""

    prompt: str
    answer: str = ""


def benign_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, answer_tokens: int, chat_template: bool,
                   progress: bool = False, desc: str = "DINM benign answers") -> list[BenignText]:
    """The formatted ``prompts``, each with its greedy answer of ``answer_tokens`` new tokens (none for 0)."""
    from detox_plugins.evaluation.generate import format_prompts, generate

    formatted = format_prompts(tokenizer, list(prompts), use_chat_template=chat_template)
    if answer_tokens == 0:
        return [BenignText(text) for text in formatted]
    answers = generate(model, tokenizer, list(prompts), max_new_tokens=answer_tokens,
                       use_chat_template=chat_template, batch_size=16, progress=progress, desc=desc)
    return [BenignText(text, str(answer)) for text, answer in zip(formatted, answers)]
