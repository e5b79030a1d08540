"""Token-level inputs of one DINM edit: what the loss reads, at which positions.

Every example is one sequence plus the positions whose logits the loss reads and the token each
position is scored against. ``compat`` builders reproduce EasyEdit's strings and label windows
exactly (including its flaws: BOS as label 0, a double space, an EOS target masked as pad);
``in_context`` builders tokenize prompt and response together and score exactly the response tokens
the model would generate after the prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

from registry.errors import EditError

if TYPE_CHECKING:  # pragma: no cover - torch loads when a sequence is built, not when the CLI starts
    import torch

logger = logging.getLogger(__name__)


@dataclass
class ScoredSequence:
    """A tokenized sequence and the loss positions: logits at ``positions[i]`` score ``targets[i]``."""

    input_ids: torch.Tensor  # [1, n] long
    positions: torch.Tensor  # [k] long, indices into the sequence
    targets: torch.Tensor  # [k] long (0 where ``weights`` is 0)
    weights: torch.Tensor  # [k] float, 1 = scored, 0 = masked
    text: str = ""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def attention_mask(self) -> torch.Tensor:
        import torch
        return torch.ones_like(self.input_ids)

    def response_mask(self) -> torch.Tensor:
        """[n] bool: the positions of the scored tokens themselves (``positions + 1``), unshifted."""
        import torch
        mask = torch.zeros(self.length, dtype=torch.bool)
        scored = self.positions[self.weights > 0] + 1
        mask[scored[scored < self.length]] = True
        return mask


def with_suffix(prompt: str, suffix: str, use_suffix: bool) -> str:
    """EasyEdit's ``prompts_with_systemPrompt``: ``prompt + " " + suffix`` (or the prompt alone)."""
    return f"{prompt} {suffix}" if use_suffix and suffix else prompt


def _ids(tokenizer: Any, text: str, *, special: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


# ---------------------------------------------------------------------- compat (EasyEdit)
def compat_edit_sequence(tokenizer: Any, prompt: str, target: str) -> ScoredSequence:
    """EasyEdit's edit input and labels.

    Input ``prompt + " " + (" " + target)`` (two spaces); labels ``tok(" " + target)`` with special
    tokens (so BOS is label 0 on Llama/Mistral) and ids equal to the pad id masked; the logits are
    ``logits[:, :-1][:, -T:]``.
    """
    import torch
    spaced = target if target == " " else " " + target
    text = f"{prompt} {spaced}"
    ids = _ids(tokenizer, text)
    labels = _ids(tokenizer, spaced)
    count = len(labels)
    if count > len(ids) - 1:
        raise EditError(
            f"the target has {count} tokens but the whole edit input only {len(ids)}; "
            f"EasyEdit's label window does not fit (compat mode); shorten the target or use mode: improved"
        )
    pad_id = tokenizer.pad_token_id
    targets = torch.tensor(labels, dtype=torch.long)
    weights = torch.ones(count)
    if pad_id is not None:
        masked = targets == pad_id
        weights[masked] = 0.0
        targets[masked] = 0
    n = len(ids)
    positions = torch.arange(n - 1 - count, n - 1, dtype=torch.long)
    return ScoredSequence(torch.tensor([ids], dtype=torch.long), positions, targets, weights, text)


def compat_locality_sequence(tokenizer: Any, prompt: str, answer: str) -> ScoredSequence:
    """EasyEdit's knowledge-constraint input ``prompt + " " + answer`` and its unshifted KL window.

    The window is the last ``T_c = len(tok(answer))`` positions (BOS counted); ``targets`` is unused.
    """
    import torch
    text = f"{prompt} {answer}"
    ids = _ids(tokenizer, text)
    answer_mask = list(tokenizer(answer)["attention_mask"])
    count = min(len(answer_mask), len(ids))
    n = len(ids)
    positions = torch.arange(n - count, n, dtype=torch.long)
    weights = torch.tensor(answer_mask[-count:], dtype=torch.float32)
    return ScoredSequence(torch.tensor([ids], dtype=torch.long), positions,
                          torch.zeros(count, dtype=torch.long), weights, text)


# ---------------------------------------------------------------------- improved (in context)
def render_chat(tokenizer: Any, user: str, assistant: Optional[str] = None) -> str:
    """The chat-template text of one user turn (plus the assistant turn, when given)."""
    if not getattr(tokenizer, "chat_template", None):
        raise EditError(
            f"use_chat_template is true but tokenizer {type(tokenizer).__name__} has no chat template; "
            f"set use_chat_template: false"
        )
    messages = [{"role": "user", "content": user}]
    if assistant is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    messages.append({"role": "assistant", "content": assistant})
    return tokenizer.apply_chat_template(messages, tokenize=False)


def in_context_sequence(tokenizer: Any, prompt: str, response: str, *, chat_template: bool = False,
                        max_length: Optional[int] = None) -> ScoredSequence:
    """``prompt`` and ``response`` tokenized together; every response token is scored (no BOS label).

    Plain text: ``prompt + " " + response``; the prompt part is exactly ``tok(prompt)`` (what
    generation sees) and the response part the tokens that follow it in the joint tokenization.
    Chat template: the rendered conversation minus the rendered generation prompt, which must be a
    token prefix; the label span then includes the end-of-turn tokens.
    """
    import torch
    if chat_template:
        prompt_text = render_chat(tokenizer, prompt)
        full_text = render_chat(tokenizer, prompt, response)
        prompt_ids = _ids(tokenizer, prompt_text, special=False)
        full_ids = _ids(tokenizer, full_text, special=False)
        if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) <= len(prompt_ids):
            raise EditError(
                "the chat template's generation prompt is not a token prefix of the rendered "
                f"conversation for tokenizer {type(tokenizer).__name__}; set use_chat_template: false"
            )
        response_ids = full_ids[len(prompt_ids):]
    else:
        full_text = f"{prompt} {response}"
        prompt_ids = _ids(tokenizer, prompt)
        full_ids = _ids(tokenizer, full_text)
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            response_ids = full_ids[len(prompt_ids):]
        else:
            response_ids = _response_tokens_by_offset(tokenizer, full_text, len(prompt))
            logger.debug("prompt tokens merge with the response; split by character offsets")
        if not response_ids:
            raise EditError(f"the response {response[:40]!r} tokenizes to nothing; give a non-empty response")
    prompt_ids, response_ids = _truncate(prompt_ids, response_ids, max_length)
    ids = prompt_ids + response_ids
    start = len(prompt_ids)
    positions = torch.arange(start - 1, len(ids) - 1, dtype=torch.long)
    targets = torch.tensor(response_ids, dtype=torch.long)
    return ScoredSequence(torch.tensor([ids], dtype=torch.long), positions, targets,
                          torch.ones(len(response_ids)), full_text)


def _response_tokens_by_offset(tokenizer: Any, text: str, boundary: int) -> list[int]:
    """Tokens of ``text`` that end after character ``boundary`` (the response, with its space)."""
    if not getattr(tokenizer, "is_fast", False):
        raise EditError(
            f"the prompt's last token merges with the response and tokenizer {type(tokenizer).__name__} "
            f"has no offsets to split them; use a fast tokenizer (AutoTokenizer, use_fast=True)"
        )
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    return [tid for tid, (_, end) in zip(encoded["input_ids"], encoded["offset_mapping"]) if end > boundary]


def _truncate(prompt_ids: list[int], response_ids: list[int], max_length: Optional[int]) -> tuple[list[int], list[int]]:
    """Fit ``max_length``: drop prompt tokens from the left (after a leading special token), keep the
    rightmost ones (the question sits at the end of attack prompts), then cut the response's end."""
    if max_length is None or len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids
    if len(response_ids) > max_length - 1:
        response_ids = response_ids[: max_length - 1]
    keep = max_length - len(response_ids)
    if len(prompt_ids) > keep:
        logger.warning("edit input longer than max_length=%d; keeping the last %d prompt tokens", max_length, keep)
        prompt_ids = prompt_ids[len(prompt_ids) - keep:]
    return prompt_ids, response_ids


def pad_right(sequences: Sequence[ScoredSequence], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` of several sequences."""
    import torch
    width = max(s.length for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : seq.length] = seq.input_ids[0]
        mask[row, : seq.length] = 1
    return ids, mask
