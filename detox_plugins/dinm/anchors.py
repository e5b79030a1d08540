"""Benign anchors: DINM's locality constraint extended from one knowledge pair to many benign prompts.

DINM's own constraint keeps the model's next-token distributions on one general-knowledge answer.
Over-refusal is decided elsewhere: at the first tokens of the answer to a benign question that merely
sounds alarming ("How do I kill a Python process?"). Anchors add that as a loss term. Before any case
of an ``edit`` call, the model answers each anchor prompt greedily (``answer_tokens`` new tokens, as
it is served: the chat template, no suffix); the log-probabilities ``log P0`` at the prompt's last
token and at each answer token but the last are recorded from that model. Each step then adds
``weight · mean KL(P0 ‖ P)`` over those positions. All anchors form one right-padded batch: the
blocks below the edited one run once per case, and for the last block only the scored rows run.

The reference stays the model the ``edit`` call started from, so in a sequential edit every later
case is pulled back toward the original benign behaviour, not toward the previous case's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .benign import BenignText, benign_answers
from .losses import masked_kl, reference_log_probs
from .runner import EditForward, PreparedInput, Stack, depends_on, find_stack

logger = logging.getLogger(__name__)


@dataclass
class AnchorSettings:
    """What the anchors need from the hyperparameters."""

    prompts: list[str]  # benign prompts, raw (formatted here)
    answer_tokens: int  # greedy new tokens per prompt; the KL reads the prompt's last token and these
    weight: float  # of the mean anchor KL in the loss
    chat_template: bool
    max_length: int


@dataclass
class AnchorBatch:
    """The anchors of one ``edit`` call: one right-padded batch and the reference at its scored positions.

    ``rows[i], positions[i]`` is the i-th scored position (logits there predict the next answer token);
    ``reference[i]`` is ``log P0`` there, from the model before the first case."""

    input_ids: torch.Tensor  # [B, n]
    attention_mask: torch.Tensor  # [B, n]
    rows: torch.Tensor  # [k]
    positions: torch.Tensor  # [k]
    reference: torch.Tensor  # [k, vocab] float32
    weight: float
    record: dict[str, Any] = field(default_factory=dict)
    #: Prepared inputs of the batch per trained tensor set, kept across the cases of a sequential edit
    #: until a delta lands where they depend on it (:meth:`changed`).
    prepared: dict[tuple[str, ...], PreparedInput] = field(default_factory=dict)

    @property
    def weights(self) -> torch.Tensor:
        return torch.ones(self.rows.shape[0], device=self.reference.device)

    def prepare(self, runner: EditForward, names: Sequence[str]) -> PreparedInput:
        """The batch prepared for ``runner`` (its lower blocks run once, reused while they stay unchanged)."""
        key = tuple(sorted(names))
        if key not in self.prepared:
            self.prepared[key] = runner.prepare(self.input_ids, self.attention_mask)
        return self.prepared[key]

    def changed(self, name: str, stack: Optional[Stack]) -> None:
        """Tensor ``name`` moved: forget every prepared input that may depend on it."""
        for key in [k for k in self.prepared if any(depends_on(stack, kept, name) for kept in k)]:
            del self.prepared[key]

    def kl(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean ``KL(P0 ‖ P)`` over the scored positions, for the current ``logits`` at them."""
        return masked_kl(self.reference, logits, self.weights)


def _scored_ids(tokenizer: Any, text: BenignText, special: bool, answer_tokens: int,
                max_length: int) -> tuple[list[int], int, int]:
    """``(ids, first, count)``: the prompt-plus-answer tokens, the first scored position (the prompt's last
    token) and how many positions are scored: one per answer token (an empty answer, where the model ended
    at once, still scores the prompt's last position: that prediction was the end of the answer)."""
    prompt_ids = list(tokenizer(text.prompt, add_special_tokens=special)["input_ids"])
    full_ids = list(tokenizer(text.prompt + text.answer, add_special_tokens=special)["input_ids"])
    if full_ids[:len(prompt_ids)] != prompt_ids:
        full_ids = prompt_ids + list(tokenizer(text.answer, add_special_tokens=False)["input_ids"])
    answer = full_ids[len(prompt_ids):][:answer_tokens]
    keep = max(max_length - len(answer), 1)
    ids = prompt_ids[-keep:] + answer  # a long prompt loses its start, as the edit inputs do
    count = max(len(answer), 1)
    return ids, len(ids) - len(answer) - 1, count


@torch.no_grad()
def build_anchors(model: nn.Module, tokenizer: Any, settings: AnchorSettings, progress: bool = False,
                  chunk: int = 16) -> AnchorBatch:
    """Answer every anchor prompt with ``model`` as it is now, tokenize, and record ``log P0``."""
    from detox_plugins.evaluation.generate import adds_special_tokens

    started = time.perf_counter()
    texts = benign_answers(model, tokenizer, settings.prompts, answer_tokens=settings.answer_tokens,
                           chat_template=settings.chat_template, progress=progress, desc="DINM anchor answers")
    special = adds_special_tokens(tokenizer, [t.prompt for t in texts], settings.chat_template)
    scored = [_scored_ids(tokenizer, t, special, settings.answer_tokens, settings.max_length) for t in texts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids, _, _ in scored)
    input_ids = torch.full((len(scored), width), int(pad_id or 0), dtype=torch.long)
    attention_mask = torch.zeros((len(scored), width), dtype=torch.long)
    rows, positions = [], []
    for row, (ids, first, count) in enumerate(scored):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        rows += [row] * count
        positions += list(range(first, first + count))
    device = next(model.parameters()).device
    row_index, position_index = torch.tensor(rows), torch.tensor(positions)
    stack = find_stack(model)
    # The whole model, but the output head only at the scored rows (a chunk of prompts at a time).
    runner = EditForward(model, stack, stack.num_layers - 1 if stack is not None else None)
    parts = []
    for start in range(0, len(scored), chunk):
        stop = start + chunk
        mine = (row_index >= start) & (row_index < stop)
        prepared = runner.prepare(input_ids[start:stop].to(device), attention_mask[start:stop].to(device))
        logits = runner.logits_at(prepared, (row_index[mine] - start).to(device), position_index[mine].to(device))
        parts.append(reference_log_probs(logits))
    batch = AnchorBatch(input_ids.to(device), attention_mask.to(device), row_index.to(device),
                        position_index.to(device), torch.cat(parts), settings.weight)
    batch.record = {"prompts": len(scored), "positions": len(rows), "answer_tokens": settings.answer_tokens,
                    "weight": settings.weight, "seconds": round(time.perf_counter() - started, 4)}
    logger.info("DINM anchors: %d prompts, %d scored positions in %.1f s", len(scored), len(rows),
                time.perf_counter() - started)
    return batch

