"""One batched generation helper for every evaluation.

Left padding with an attention mask, explicit decoding (greedy by default), and the response is
the tokens after the input length decoded with ``skip_special_tokens`` (no text slicing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

from registry.errors import DetoxError
from registry.limits import check_max_new_tokens

logger = logging.getLogger(__name__)


def uses_chat_template(tokenizer: Any, use_chat_template: bool | None = None) -> bool:
    """Resolve ``use_chat_template``: None means "on when the tokenizer has a chat template"."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is None:
        return has_template
    if use_chat_template and not has_template:
        raise DetoxError("use_chat_template is on but the tokenizer has no chat_template; turn it off")
    return bool(use_chat_template)


def format_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
) -> list[str]:
    """Format raw prompts the same way before and after an edit.

    With the chat template, each prompt becomes one user turn (after an optional system turn) with
    the generation prompt appended. Without it, an optional system prompt is prepended with a blank
    line between.
    """
    if not uses_chat_template(tokenizer, use_chat_template):
        if system_prompt:
            return [f"{system_prompt}\n\n{p}" for p in prompts]
        return list(prompts)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [
        tokenizer.apply_chat_template(
            system + [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def adds_special_tokens(tokenizer: Any, texts: Sequence[str], chat_template: bool) -> bool:
    """Don't add BOS again when the formatted text already carries the special tokens."""
    if chat_template:
        return False
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and any(t.startswith(bos) for t in texts))


@contextmanager
def _padding_for_generation(tokenizer: Any, truncate_left: bool) -> Iterator[None]:
    """Left padding and a pad token (EOS if none) for the duration; restores the tokenizer after."""
    saved = (tokenizer.padding_side, tokenizer.truncation_side, tokenizer.pad_token)
    try:
        tokenizer.padding_side = "left"
        if truncate_left:
            tokenizer.truncation_side = "left"  # keep the rightmost tokens, as EasyEdit does
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise DetoxError("the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token")
            tokenizer.pad_token = tokenizer.eos_token
        yield
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = saved[0], saved[1]
        if saved[2] is None:
            tokenizer.pad_token = None


@contextmanager
def _scoped_seed(seed: int) -> Iterator[None]:
    """Seed torch for a block and restore the global RNG state afterwards."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _model_device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    seed: int = 0,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
    batch_size: int = 8,
    max_input_tokens: int | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[str] | list[list[str]]:
    """Generate continuations for ``prompts`` and return only the new text.

    Returns ``list[str]`` when ``num_samples == 1``, else one list of ``num_samples`` strings per
    prompt. ``batch_size`` counts sequences per forward pass (prompts x samples, at least one
    prompt). Sampling is seeded per batch with ``seed + index of the batch's first prompt`` inside
    a forked RNG, so results depend on ``seed`` and ``batch_size`` but never on global RNG state,
    and global state is left untouched. Greedy outputs can shift slightly with batch size (padding
    numerics), so record it. ``max_input_tokens`` keeps each input's rightmost tokens (EasyEdit's
    truncation). The model is put in eval mode (its training flag is restored afterwards).
    """
    check_max_new_tokens(max_new_tokens, context_length=_context_length(model))
    if num_samples < 1:
        raise DetoxError(f"num_samples must be >= 1, got {num_samples}")
    if batch_size < 1:
        raise DetoxError(f"batch_size must be >= 1, got {batch_size}")
    if max_input_tokens is not None and max_input_tokens < 1:
        raise DetoxError(f"max_input_tokens must be >= 1 or None, got {max_input_tokens}")
    import torch
    from tqdm.auto import tqdm

    chat = uses_chat_template(tokenizer, use_chat_template)
    texts = format_prompts(tokenizer, prompts, use_chat_template=chat, system_prompt=system_prompt)
    add_special = adds_special_tokens(tokenizer, texts, chat)
    returns_per_prompt = num_samples if do_sample else 1
    if num_samples > 1 and not do_sample:
        logger.warning("num_samples=%d with greedy decoding gives identical samples", num_samples)
    prompts_per_batch = max(1, batch_size // returns_per_prompt)
    decoding: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "num_beams": 1,
        "num_return_sequences": returns_per_prompt,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    if do_sample:
        decoding.update(temperature=temperature, top_p=top_p, top_k=top_k)

    results: list[list[str]] = []
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with _padding_for_generation(tokenizer, truncate_left=max_input_tokens is not None):
            eos_id = model.generation_config.eos_token_id
            decoding["pad_token_id"] = tokenizer.pad_token_id
            decoding["eos_token_id"] = eos_id if eos_id is not None else tokenizer.eos_token_id
            starts = range(0, len(texts), prompts_per_batch)
            # One bar in new tokens over all batches: it moves per generated token, not per batch.
            bar = tqdm(total=len(starts) * max_new_tokens, desc=desc, disable=not progress, unit="tok")
            if progress:
                decoding["stopping_criteria"] = _token_ticker(bar)
            for number, start in enumerate(starts):
                batch = texts[start : start + prompts_per_batch]
                enc = tokenizer(
                    batch,
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=add_special,
                    truncation=max_input_tokens is not None,
                    max_length=max_input_tokens,
                ).to(device)
                enc.pop("token_type_ids", None)
                input_length = enc["input_ids"].shape[1]
                with torch.inference_mode(), _scoped_seed(seed + start):
                    output = model.generate(**enc, **decoding)
                new_tokens = output[:, input_length:]
                decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                for i in range(len(batch)):
                    samples = decoded[i * returns_per_prompt : (i + 1) * returns_per_prompt]
                    results.append(samples * num_samples if returns_per_prompt == 1 else samples)
                bar.n = (number + 1) * max_new_tokens  # a batch that stopped early counts as done
                bar.refresh()
            bar.close()
    finally:
        decoding.pop("stopping_criteria", None)
        model.train(was_training)
    if num_samples == 1:
        return [samples[0] for samples in results]
    return results


def _context_length(model: Any) -> Optional[int]:
    """The model's context length from its config (``max_position_embeddings``), when it has one."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _token_ticker(bar: Any) -> Any:
    """A stopping criterion that never stops generation and advances ``bar`` by one per generated token
    (built here: transformers is imported only when generating)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class TokenTicker(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            bar.update(1)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([TokenTicker()])
