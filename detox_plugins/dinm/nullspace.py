"""Null-space projection of DINM's update: the edited matrix keeps its outputs on benign inputs.

For an edited weight ``W`` with input ``k`` (DINM's MLP down projection: the activations entering it),
the output changes by ``ΔW·k``. Collect ``K`` = those inputs over every token of benign chat-formatted
prompts and, optionally, the model's own greedy answers to them. The top eigenvectors ``U`` of
``K Kᵀ`` holding a share ``energy`` of its trace span what benign inputs look like; with
``P = I - U Uᵀ`` every update ``ΔW·P`` satisfies ``ΔW·P·k ≈ 0`` for those inputs (exactly 0 on the
span of ``U``, and only the left-over energy elsewhere). The editing step projects both the gradient
and the accumulated update, so the final ``Δ`` lies in the null space whatever the optimizer does.
The idea is AlphaEdit's (arXiv 2410.02355); it is written here for DINM's few-step Adam loop.

A bias has no input to protect: its change would shift the output for every input, so under the
projection a bias keeps its value (its update is zero).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from registry.errors import EditError

from .benign import BenignText, benign_answers

logger = logging.getLogger(__name__)


@dataclass
class NullSpaceSettings:
    """What the projection needs from the hyperparameters."""

    prompts: list[str]  # benign prompts, raw (formatted here)
    energy: float  # protected share of trace(K Kᵀ), in (0, 1)
    answer_tokens: int  # greedy new tokens per prompt whose inputs are protected too; 0 = none
    chat_template: bool
    max_length: int
    positions: str = "all"  # "all" tokens, or only the "answer" positions (the prompt's last token on)


@dataclass
class UpdateProjector:
    """Projects updates of one tensor onto the null space of the protected inputs.

    ``matrix`` is ``P = I - U Uᵀ`` (``[d, d]``, float32) or None for a tensor that must not move (a bias);
    ``input_axis`` is the weight axis that multiplies the input (1 for ``nn.Linear``'s ``[out, in]``,
    0 for GPT-2's ``Conv1D`` ``[in, out]``)."""

    matrix: Optional[torch.Tensor]
    input_axis: int
    record: dict[str, Any]

    def project(self, update: torch.Tensor) -> torch.Tensor:
        """``update`` with every component along the protected inputs removed (same dtype and shape)."""
        if self.matrix is None:
            return torch.zeros_like(update)
        matrix = self.matrix.to(device=update.device, dtype=update.dtype)
        return update @ matrix if self.input_axis == 1 else matrix @ update


def benign_texts(model: nn.Module, tokenizer: Any, settings: NullSpaceSettings,
                 progress: bool = False) -> list[BenignText]:
    """The formatted benign prompts, each with its greedy answer (``answer_tokens`` new tokens)."""
    return benign_answers(model, tokenizer, settings.prompts, answer_tokens=settings.answer_tokens,
                          chat_template=settings.chat_template, progress=progress, desc="DINM null-space answers")


class _Stop(Exception):
    """Ends a forward pass once the module's input is recorded."""


@torch.no_grad()
def input_second_moment(model: nn.Module, tokenizer: Any, module: nn.Module, texts: Sequence[BenignText],
                        settings: NullSpaceSettings, progress: bool = False,
                        batch_size: int = 16) -> tuple[torch.Tensor, int]:
    """``K Kᵀ`` (float64, ``[d, d]``) of ``module``'s inputs over ``texts``, and how many tokens it sums.

    ``settings.positions`` "all" takes every token; "answer" only the tokens whose outputs become the
    answer (the prompt's last token, then the answer's): for the last block these are the only
    positions an edit of its MLP can change the generated text at. Texts run ``batch_size`` at a time,
    right-padded (pad positions never enter ``K``); the forward pass stops at ``module``."""
    from tqdm.auto import tqdm

    from detox_plugins.evaluation.generate import adds_special_tokens

    special = adds_special_tokens(tokenizer, [t.prompt for t in texts], settings.chat_template)
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach())
        raise _Stop

    moment: Optional[torch.Tensor] = None
    tokens = 0
    saved_side, saved_pad = tokenizer.padding_side, tokenizer.pad_token
    handle = module.register_forward_pre_hook(record)
    try:
        tokenizer.padding_side = "right"  # real tokens keep positions 0..n-1; causal attention never sees the pads
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        batches = range(0, len(texts), batch_size)
        for first in tqdm(batches, desc="DINM null-space inputs", unit="batch", disable=not progress):
            batch = texts[first:first + batch_size]
            encoded = tokenizer([t.prompt + t.answer for t in batch], add_special_tokens=special, padding=True,
                                truncation=True, max_length=settings.max_length, return_tensors="pt")
            mask = encoded["attention_mask"].bool()
            if settings.positions == "answer":
                for row, text in enumerate(batch):
                    prompt_length = len(tokenizer(text.prompt, add_special_tokens=special)["input_ids"])
                    mask[row, :max(min(prompt_length, int(mask[row].sum())) - 1, 0)] = False
            try:
                model(input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device),
                      use_cache=False)
            except _Stop:
                pass
            if not captured:
                raise EditError(f"the edited module {type(module).__name__} was not called in a forward pass; "
                                f"the null-space projection needs its inputs (set nullspace: false)")
            keys = captured.pop()[mask.to(device)].double()
            moment = keys.T @ keys if moment is None else moment + keys.T @ keys
            tokens += keys.shape[0]
    finally:
        handle.remove()
        tokenizer.padding_side, tokenizer.pad_token = saved_side, saved_pad
    if moment is None:
        raise EditError("the null-space projection got no benign text; set nullspace_prompts to benign-heldout")
    return moment, tokens


def null_space_projector(moment: torch.Tensor, energy: float) -> tuple[torch.Tensor, int, float]:
    """``P = I - U Uᵀ`` for the fewest top eigenvectors ``U`` of ``moment`` holding ``energy`` of its trace;
    returns P (float32), the protected rank and the share of the energy left outside ``U``."""
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # ascending
    eigenvalues = eigenvalues.clamp(min=0).flip(0)
    eigenvectors = eigenvectors.flip(1)
    total = float(eigenvalues.sum())
    if total <= 0:
        raise EditError("the benign inputs of the edited matrix are all zero; the null-space projection has "
                        "nothing to protect (set nullspace: false)")
    shares = torch.cumsum(eigenvalues, 0) / total
    rank = min(int(torch.searchsorted(shares, torch.tensor(energy, dtype=shares.dtype))) + 1, moment.shape[0])
    protected = eigenvectors[:, :rank]
    projector = torch.eye(moment.shape[0], dtype=moment.dtype) - protected @ protected.T
    left = float(1 - shares[rank - 1])
    return projector.float(), rank, max(left, 0.0)


def input_axis(module: nn.Module, tensor: torch.Tensor) -> int:
    """The axis of ``tensor`` (a weight of ``module``) that multiplies the module's input."""
    if isinstance(module, nn.Linear):
        return 1
    if type(module).__name__ == "Conv1D":  # GPT-2: weight [in, out], y = x W + b
        return 0
    raise EditError(f"nullspace: true supports nn.Linear and GPT-2 Conv1D weights, not {type(module).__name__}; "
                    f"set nullspace: false or edit a linear layer")


def build_projectors(model: nn.Module, tokenizer: Any, names: Sequence[str], texts: Sequence[BenignText],
                     settings: NullSpaceSettings, progress: bool = False) -> dict[str, UpdateProjector]:
    """One projector per edited tensor in ``names``; the inputs of each owning module are collected once."""
    started = time.perf_counter()
    params = dict(model.named_parameters())
    by_module: dict[str, tuple[torch.Tensor, int, float, int]] = {}
    projectors: dict[str, UpdateProjector] = {}
    for name in names:
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        tensor = params[name]
        if tensor.dim() == 1:
            projectors[name] = UpdateProjector(None, 0, {"kept_fixed": "a bias shifts every output"})
            continue
        if attribute != "weight":
            raise EditError(f"nullspace: true projects weights; {name!r} is not one (set nullspace: false)")
        axis = input_axis(module, tensor)
        if module_name not in by_module:
            moment, tokens = input_second_moment(model, tokenizer, module, texts, settings, progress)
            if moment.shape[0] != tensor.shape[axis]:
                raise EditError(f"{name!r}: its inputs have {moment.shape[0]} features but the weight's input axis "
                                f"{tensor.shape[axis]}; set nullspace: false")
            projector, rank, left = null_space_projector(moment, settings.energy)
            by_module[module_name] = (projector, rank, left, tokens)
        projector, rank, left, tokens = by_module[module_name]
        projectors[name] = UpdateProjector(projector, axis, {
            "prompts": len(settings.prompts), "tokens": tokens, "dim": int(tensor.shape[axis]),
            "protected_rank": rank, "energy": settings.energy, "energy_left": round(left, 6),
            "answer_tokens": settings.answer_tokens, "positions": settings.positions})
    logger.info("DINM null space: %s in %.1f s", {n: p.record.get("protected_rank") for n, p in projectors.items()},
                time.perf_counter() - started)
    for projector in projectors.values():
        projector.record["seconds"] = round(time.perf_counter() - started, 4)
    return projectors
