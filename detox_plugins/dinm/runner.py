"""Forward passes for the edit loop, with the frozen lower stack computed once (DINM.md §12.4).

The input of the lowest edited block depends on no trained parameter, so it is captured once per
edit (under ``no_grad``) with a forward pre-hook on that block, together with every other argument
the model passes to its blocks (attention mask, rotary embeddings, position ids). Each optimisation
step then runs only that block and the ones above it, the final norm, and the output head at the
positions the loss reads.

Known layouts: Llama, Mistral, Qwen2/3 (``model.model.layers`` + ``model.model.norm``) and GPT-2
(``transformer.h`` + ``transformer.ln_f``). Any other causal LM gets a full forward per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: model_type -> (path of the block list, path of the final norm)
STACK_LAYOUTS: dict[str, tuple[str, str]] = {
    "llama": ("model.layers", "model.norm"),
    "mistral": ("model.layers", "model.norm"),
    "qwen2": ("model.layers", "model.norm"),
    "qwen3": ("model.layers", "model.norm"),
    "gpt2": ("transformer.h", "transformer.ln_f"),
}


def _get_module(root: nn.Module, path: str) -> Optional[nn.Module]:
    module: Any = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


@dataclass(frozen=True)
class Stack:
    """Where a causal LM keeps its blocks, final norm and output head."""

    blocks_path: str
    blocks: nn.ModuleList
    norm: Optional[nn.Module]  # None: layout unknown, only ``blocks`` is usable (for hooks)
    head: Optional[nn.Module]

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def cacheable(self) -> bool:
        return self.norm is not None and self.head is not None

    def layer_of(self, param_name: str) -> Optional[int]:
        """The block index a parameter belongs to, or None when it lives outside the blocks."""
        prefix = self.blocks_path + "."
        position = param_name.find(prefix)
        while position != -1:
            if position == 0 or param_name[position - 1] == ".":
                rest = param_name[position + len(prefix):]
                index = rest.split(".", 1)[0]
                if index.isdigit():
                    return int(index)
            position = param_name.find(prefix, position + 1)
        return None


def find_stack(model: nn.Module) -> Optional[Stack]:
    """The block stack of ``model``: exact for known layouts, a best guess (hooks only) otherwise."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layout = STACK_LAYOUTS.get(model_type)
    if layout is not None:
        blocks = _get_module(model, layout[0])
        norm = _get_module(model, layout[1])
        if isinstance(blocks, nn.ModuleList) and norm is not None and isinstance(head, nn.Module):
            return Stack(layout[0], blocks, norm, head)
    # Unknown layout: the longest ModuleList is the block stack; usable for hooks, not for caching.
    best: Optional[tuple[str, nn.ModuleList]] = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None or len(best[1]) == 0:
        return None
    return Stack(best[0], best[1], None, None)


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the block inputs are recorded."""


@dataclass
class PreparedInput:
    """One tokenized sequence, with the inputs of the first trained block when cached."""

    input_ids: torch.Tensor  # [1, n]
    attention_mask: torch.Tensor  # [1, n]
    hidden: Optional[torch.Tensor] = None  # input of block ``start``
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def cached(self) -> bool:
        return self.hidden is not None


class EditForward:
    """Computes output logits at chosen positions, running only blocks ``start..L-1`` when possible.

    ``start`` is the lowest block holding a trained parameter; ``start=None`` (a trained tensor
    outside the blocks) or ``enabled=False`` means a full forward on every call.
    """

    def __init__(self, model: nn.Module, stack: Optional[Stack], start: Optional[int], *, enabled: bool = True) -> None:
        self.model = model
        self.stack = stack
        self.start = start
        self.cached = bool(enabled and stack is not None and stack.cacheable and start is not None)
        if enabled and not self.cached:
            model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            reason = ("a trained tensor lies outside the block stack" if stack is not None and stack.cacheable
                      else f"no cached runner for model_type {model_type!r}")
            logger.info("DINM: full forward each step (%s); the result is the same, only slower", reason)

    @property
    def upper_fraction(self) -> float:
        """Share of the blocks each step runs (1.0 without the cache)."""
        if not self.cached or self.stack is None or self.start is None:
            return 1.0
        return (self.stack.num_layers - self.start) / self.stack.num_layers

    @torch.no_grad()
    def prepare(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> PreparedInput:
        """Record the inputs of block ``start`` for this sequence (one truncated no-grad forward)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prepared = PreparedInput(input_ids=input_ids, attention_mask=attention_mask)
        if not self.cached:
            return prepared
        assert self.stack is not None and self.start is not None
        block = self.stack.blocks[self.start]

        def capture(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            prepared.hidden = hidden.detach()
            prepared.args = tuple(args[1:])
            prepared.kwargs = dict(kwargs)
            raise _Captured

        handle = block.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Captured:
            pass
        finally:
            handle.remove()
        if prepared.hidden is None:  # the model never called the block: fall back for this input
            logger.warning("DINM: block %d was not called in the forward pass; using full forwards", self.start)
            self.cached = False
        return prepared

    def adopt(self, input_ids: torch.Tensor, captured: tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]
              ) -> PreparedInput:
        """A prepared input from block ``start``'s inputs recorded by an earlier forward of the same
        sequence (localization), saving the capture pass."""
        hidden, args, kwargs = captured
        prepared = PreparedInput(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        if self.cached:
            prepared.hidden, prepared.args, prepared.kwargs = hidden, tuple(args), dict(kwargs)
        return prepared

    def logits(self, prepared: PreparedInput, positions: torch.Tensor) -> torch.Tensor:
        """Output logits ``[len(positions), vocab]`` of sequence 0 at ``positions``."""
        if not prepared.cached or not self.cached:
            out = self.model(input_ids=prepared.input_ids, attention_mask=prepared.attention_mask, use_cache=False)
            return out.logits[0, positions]
        assert self.stack is not None and self.stack.norm is not None and self.stack.head is not None
        hidden = prepared.hidden
        for block in self.stack.blocks[self.start:]:
            out = block(hidden, *prepared.args, **prepared.kwargs)
            hidden = out[0] if isinstance(out, (tuple, list)) else out
        hidden = self.stack.norm(hidden)
        return self.stack.head(hidden[0, positions])
