"""Toxic-layer localization (DINM.md §4 and §12.3).

``locate_easyedit`` reproduces EasyEdit: one left-padded batch ``[y+, y-]`` of the responses alone,
``output_hidden_states``, the Frobenius distance of the whole padded ``[n, d]`` matrices for
``hidden_states[1..L]`` (the last one post-final-norm), argmax minus one; ties keep the lowest.

``locate_blocks`` is the fixed version: the raw output of every block, collected with forward hooks
(never the post-norm final state), mean-pooled over the response tokens only (each sequence runs
alone, so no padding enters), optionally after the prompt; score ``‖μ+ − μ−‖₂``, or that divided by the mean norm of
``μ±`` (``relative_l2``), since the residual stream grows with depth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .inputs import ScoredSequence
from .runner import Stack

logger = logging.getLogger(__name__)


@dataclass
class Localization:
    """The located layer, its per-layer scores and how they were computed."""

    layer: int
    scores: list[float] = field(default_factory=list)
    method: str = "easyedit"
    #: The inputs (hidden, args, kwargs) of every block for the edit sequence, when captured.
    block_inputs: Optional[dict[int, tuple[Any, tuple[Any, ...], dict[str, Any]]]] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "method": self.method, "scores": [round(s, 6) for s in self.scores]}


def _argmax_first(scores: list[float]) -> int:
    best = 0
    for index, value in enumerate(scores):
        if value > scores[best]:  # strict: a tie keeps the lowest index
            best = index
    return best


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad) if pad is not None else 0


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def locate_easyedit(model: nn.Module, tokenizer: Any, safe: str, unsafe: str) -> Localization:
    """EasyEdit's ``_locate_toxic_layer`` for one case (left padding, as in its standard flow)."""
    limit = getattr(tokenizer, "model_max_length", None)
    limit = limit if isinstance(limit, int) and 0 < limit < 10**7 else None
    rows = []
    for text in (safe, unsafe):
        ids = list(tokenizer(text)["input_ids"])
        rows.append(ids[:limit] if limit else ids)
    width = max(len(r) for r in rows)
    pad = _pad_id(tokenizer)
    input_ids = torch.full((2, width), pad, dtype=torch.long)
    attention_mask = torch.zeros((2, width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, width - len(ids):] = 1
    device = _device(model)
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states
    scores = [float(torch.dist(hidden[i][0].float(), hidden[i][1].float(), p=2)) for i in range(1, len(hidden))]
    return Localization(_argmax_first(scores), scores, "easyedit")


#: Keep every block's input of the edit sequence (to skip the cache pass) only below this size.
CAPTURE_LIMIT_BYTES = 512 * 2**20


@torch.no_grad()
def locate_blocks(model: nn.Module, stack: Stack, tokenizer: Any, safe: ScoredSequence, unsafe: ScoredSequence,
                  *, metric: str = "l2", candidates: Optional[list[int]] = None,
                  capture_inputs: bool = False) -> Localization:
    """Per-instance localization on raw block outputs, pooled over each sequence's scored tokens.

    Each sequence runs alone (no padding, so no pad handling is needed). With ``capture_inputs``,
    the inputs of every block for ``safe`` are kept in ``block_inputs`` so that the edit, whose
    input is the same sequence, can start from the located block without another forward pass.
    """
    device = _device(model)
    means: dict[int, list[torch.Tensor]] = {}
    captured: dict[int, tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]] = {}
    hidden_size = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
    keep = capture_inputs and stack.num_layers * safe.length * max(hidden_size, 1) * 4 <= CAPTURE_LIMIT_BYTES
    for row, seq in enumerate((safe, unsafe)):
        weights = seq.response_mask().float()
        if float(weights.sum()) == 0:
            weights = torch.ones(seq.length)  # nothing scored: pool over every token
        weights = (weights / weights.sum()).to(device)

        def make_hook(index: int):
            def hook(_module: nn.Module, _args: Any, output: Any) -> None:
                states = output[0] if isinstance(output, (tuple, list)) else output
                means.setdefault(index, []).append(weights @ states[0].float())
            return hook

        def make_capture(index: int):
            def capture(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                hidden = args[0] if args else kwargs["hidden_states"]
                rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                captured[index] = (hidden.detach(), tuple(args[1:]), rest)
            return capture

        handles = [block.register_forward_hook(make_hook(i)) for i, block in enumerate(stack.blocks)]
        if keep and row == 0:
            handles += [block.register_forward_pre_hook(make_capture(i), with_kwargs=True)
                        for i, block in enumerate(stack.blocks)]
        try:
            model(input_ids=seq.input_ids.to(device), attention_mask=seq.attention_mask.to(device), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
    layers = candidates if candidates is not None else sorted(means)
    scores = []
    for index in layers:
        mu = means[index]
        distance = torch.linalg.vector_norm(mu[0] - mu[1])
        if metric == "relative_l2":
            scale = 0.5 * (torch.linalg.vector_norm(mu[0]) + torch.linalg.vector_norm(mu[1]))
            distance = distance / scale.clamp_min(1e-12)
        scores.append(float(distance))
    layer = layers[_argmax_first(scores)]
    return Localization(layer, scores, f"blocks/{metric}", block_inputs=captured or None)
