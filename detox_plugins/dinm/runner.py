"""Forward passes for the edit loop, with the frozen lower stack computed once.

The input of the lowest edited block depends on no trained parameter, so it is captured once per
edit (under ``no_grad``) with a forward pre-hook on that block, together with every other argument
the model passes to its blocks (attention mask, rotary embeddings, position ids). Each optimisation
step then runs only that block and the ones above it, the final norm, and the output head at the
positions the loss reads.

When the trained tensors of that block all belong to one module of its MLP sub-layer (DINM's
``mlp.down_proj`` / GPT-2's ``mlp.c_proj``), more is frozen: the attention sub-layer, the residual
stream entering the MLP and the trained module's own input do not depend on the trained weight.
They are recorded too, and a step computes the block as ``residual + module(module_input)``; when
the block is the last one, only at the positions the loss reads (every later operation is
position-wise). A self-check against the recorded block output guards the assumption (a layout
whose MLP output is transformed before the residual add falls back to running the whole block).

Known layouts: Llama, Mistral, Qwen2/3 (``model.model.layers`` + ``model.model.norm``) and GPT-2
(``transformer.h`` + ``transformer.ln_f``). Any other causal LM gets a full forward per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: model_type -> (path of the block list, path of the final norm, the norm inside a block whose
#: input is the residual stream that the MLP output is added to)
STACK_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "llama": ("model.layers", "model.norm", "post_attention_layernorm"),
    "mistral": ("model.layers", "model.norm", "post_attention_layernorm"),
    "qwen2": ("model.layers", "model.norm", "post_attention_layernorm"),
    "qwen3": ("model.layers", "model.norm", "post_attention_layernorm"),
    "gpt2": ("transformer.h", "transformer.ln_f", "ln_2"),
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
    mlp_norm_attr: Optional[str] = None  # the pre-MLP norm's attribute name inside each block

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
            return Stack(layout[0], blocks, norm, head, layout[2])
    # Unknown layout: the longest ModuleList is the block stack; usable for hooks, not for caching.
    best: Optional[tuple[str, nn.ModuleList]] = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None or len(best[1]) == 0:
        return None
    return Stack(best[0], best[1], None, None)


def depends_on(stack: Optional[Stack], kept: str, changed: str) -> bool:
    """Whether a record made for tensor ``kept`` (the inputs of its module: block inputs, the residual and
    the module's own input) may change when tensor ``changed`` moves: a change in a lower block, or in
    another module of the same block, or anything outside the known block stack."""
    layer = stack.layer_of(changed) if stack is not None else None
    kept_layer = stack.layer_of(kept) if stack is not None else None
    if layer is None or kept_layer is None:
        return True
    same_module = kept.rpartition(".")[0] == changed.rpartition(".")[0]
    return layer < kept_layer or (layer == kept_layer and not same_module)


def trained_module(model: nn.Module, stack: Optional[Stack], layer: int, names: Sequence[str]) -> Optional[nn.Module]:
    """The one module of block ``layer``'s MLP sub-layer that owns every trained tensor of that
    block (``names``), or None when they are spread over several modules or the layout is unknown."""
    if stack is None or stack.mlp_norm_attr is None or not 0 <= layer < stack.num_layers:
        return None
    block = stack.blocks[layer]
    paths = {name.rsplit(".", 1)[0] for name in names if stack.layer_of(name) == layer}
    if len(paths) != 1 or not isinstance(getattr(block, stack.mlp_norm_attr, None), nn.Module):
        return None
    try:
        module = model.get_submodule(paths.pop())
    except AttributeError:
        return None
    norm = getattr(block, stack.mlp_norm_attr)
    inside = any(m is module for m in block.modules())
    return module if inside and module is not norm else None


class _Captured(Exception):
    """Raised by a hook to stop the forward pass once what is needed has been recorded."""


@dataclass
class BlockRecord:
    """What one block saw in a forward pass of one sequence (all detached)."""

    hidden: torch.Tensor  # the block's input
    args: tuple[Any, ...]  # every other argument the model passed to it
    kwargs: dict[str, Any]
    residual: Optional[torch.Tensor] = None  # the residual stream entering its MLP sub-layer
    module_input: Optional[torch.Tensor] = None  # the input of the trained module
    output: Optional[torch.Tensor] = None  # the block's output hidden states
    #: False when ``args``/``kwargs`` do not cover the whole sequence (a prefix pass plus a cached
    #: continuation): then the block and those above cannot be replayed from this record.
    replayable: bool = True


class BlockRecorder:
    """Hooks that record a :class:`BlockRecord` for each of ``layers`` during a forward pass.

    ``modules`` maps a layer to the trained module inside it whose input is also recorded (with the
    residual at the block's pre-MLP norm). ``stop_after`` ends the forward pass right after that
    block's output is recorded (use :func:`run_until_stopped`).
    """

    def __init__(self, stack: Stack, layers: Sequence[int], modules: Optional[dict[int, nn.Module]] = None,
                 *, stop_after: Optional[int] = None) -> None:
        self.stack = stack
        self.layers = list(layers)
        self.modules = dict(modules or {})
        self.stop_after = stop_after
        self.records: dict[int, BlockRecord] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "BlockRecorder":
        try:
            for layer in self.layers:
                self._hook_layer(layer)
            if self.stop_after is not None:
                self._handles.append(self.stack.blocks[self.stop_after].register_forward_hook(_stop))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook_layer(self, layer: int) -> None:
        block = self.stack.blocks[layer]

        def on_input(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            self.records[layer] = BlockRecord(hidden.detach(), tuple(args[1:]), rest)

        def on_output(_module: nn.Module, _args: Any, output: Any) -> None:
            record = self.records.get(layer)
            if record is not None:
                record.output = (output[0] if isinstance(output, (tuple, list)) else output).detach()

        self._handles.append(block.register_forward_pre_hook(on_input, with_kwargs=True))
        self._handles.append(block.register_forward_hook(on_output))
        module = self.modules.get(layer)
        if module is None or self.stack.mlp_norm_attr is None:
            return

        def on_residual(_module: nn.Module, args: tuple[Any, ...]) -> None:
            record = self.records.get(layer)
            if record is not None and args:
                record.residual = args[0].detach()

        def on_module_input(_module: nn.Module, args: tuple[Any, ...]) -> None:
            record = self.records.get(layer)
            if record is not None and args:
                record.module_input = args[0].detach()

        norm = getattr(block, self.stack.mlp_norm_attr)
        self._handles.append(norm.register_forward_pre_hook(on_residual))
        self._handles.append(module.register_forward_pre_hook(on_module_input))


def _stop(_module: nn.Module, _args: Any, _output: Any) -> None:
    raise _Captured


def run_until_stopped(model: nn.Module, **inputs: Any) -> None:
    """A no-output forward pass that may be ended early by a :class:`BlockRecorder`'s ``stop_after``."""
    inputs.setdefault("use_cache", False)
    try:
        model(**inputs)
    except _Captured:
        pass


@dataclass
class PreparedInput:
    """One tokenized sequence, with the inputs of the first trained block when cached."""

    input_ids: torch.Tensor  # [1, n]
    attention_mask: torch.Tensor  # [1, n]
    hidden: Optional[torch.Tensor] = None  # input of block ``start``
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    residual: Optional[torch.Tensor] = None  # set when block ``start`` runs as residual + module
    module_input: Optional[torch.Tensor] = None

    @property
    def cached(self) -> bool:
        return self.hidden is not None

    @property
    def sub_block(self) -> bool:
        return self.residual is not None and self.module_input is not None


class EditForward:
    """Computes output logits at chosen positions, running only blocks ``start..L-1`` when possible.

    ``start`` is the lowest block holding a trained parameter; ``start=None`` (a trained tensor
    outside the blocks) or ``enabled=False`` means a full forward on every call. ``trained`` (the
    trained parameter names) enables the sub-block path when they all sit in one MLP module of
    block ``start``.
    """

    def __init__(self, model: nn.Module, stack: Optional[Stack], start: Optional[int], *, enabled: bool = True,
                 trained: Sequence[str] = ()) -> None:
        self.model = model
        self.stack = stack
        self.start = start
        self.cached = bool(enabled and stack is not None and stack.cacheable and start is not None)
        self.module = trained_module(model, stack, start, trained) if self.cached and start is not None else None
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

    @property
    def last_block(self) -> bool:
        return self.stack is not None and self.start == self.stack.num_layers - 1

    @torch.no_grad()
    def prepare(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> PreparedInput:
        """Record the inputs of block ``start`` for this sequence (one truncated no-grad forward)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not self.cached:
            return PreparedInput(input_ids=input_ids, attention_mask=attention_mask)
        assert self.stack is not None and self.start is not None
        modules = {self.start: self.module} if self.module is not None else {}
        with BlockRecorder(self.stack, [self.start], modules, stop_after=self.start) as recorder:
            run_until_stopped(self.model, input_ids=input_ids, attention_mask=attention_mask)
        record = recorder.records.get(self.start)
        if record is None:  # the model never called the block: fall back for this input
            logger.warning("DINM: block %d was not called in the forward pass; using full forwards", self.start)
            self.cached = False
            return PreparedInput(input_ids=input_ids, attention_mask=attention_mask)
        return self._from_record(input_ids, attention_mask, record)

    def adopt(self, input_ids: torch.Tensor, record: BlockRecord) -> Optional[PreparedInput]:
        """A prepared input from block ``start``'s record made by an earlier forward of the same
        sequence (localization), saving the capture pass; None when the record cannot serve (then
        call :meth:`prepare`)."""
        prepared = self._from_record(input_ids, torch.ones_like(input_ids), record)
        if self.cached and not record.replayable and not (prepared.sub_block and self.last_block):
            return None
        return prepared

    @torch.no_grad()
    def _from_record(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, record: BlockRecord) -> PreparedInput:
        prepared = PreparedInput(input_ids=input_ids, attention_mask=attention_mask)
        if not self.cached:
            return prepared
        prepared.hidden, prepared.args, prepared.kwargs = record.hidden, tuple(record.args), dict(record.kwargs)
        if self.module is None or record.residual is None or record.module_input is None or record.output is None:
            return prepared
        rebuilt = record.residual + self.module(record.module_input)
        scale = float(record.output.abs().max()) or 1.0
        if rebuilt.shape == record.output.shape and torch.allclose(rebuilt, record.output, rtol=1e-5, atol=1e-6 * scale):
            prepared.residual, prepared.module_input = record.residual, record.module_input
        else:
            logger.info("DINM: block %d's output is not residual + %s(input); running the whole block each step",
                        self.start, type(self.module).__name__)
        return prepared

    def logits(self, prepared: PreparedInput, positions: torch.Tensor) -> torch.Tensor:
        """Output logits ``[len(positions), vocab]`` of sequence 0 at ``positions``."""
        return self.logits_at(prepared, torch.zeros_like(positions), positions)

    def logits_at(self, prepared: PreparedInput, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Output logits ``[k, vocab]`` at ``(rows[i], positions[i])`` of a prepared batch (right-padded:
        under causal attention a real token never sees the pads after it)."""
        if not prepared.cached or not self.cached:
            out = self.model(input_ids=prepared.input_ids, attention_mask=prepared.attention_mask, use_cache=False)
            return out.logits[rows, positions]
        assert self.stack is not None and self.stack.norm is not None and self.stack.head is not None
        assert self.start is not None
        if prepared.sub_block and self.module is not None:
            assert prepared.residual is not None and prepared.module_input is not None
            if self.last_block:  # everything after the trained module is position-wise
                picked = prepared.residual[rows, positions] + self.module(prepared.module_input[rows, positions])
                return self.stack.head(self.stack.norm(picked))
            hidden = prepared.residual + self.module(prepared.module_input)
            upper = self.stack.blocks[self.start + 1:]
        else:
            hidden = prepared.hidden
            upper = self.stack.blocks[self.start:]
        for block in upper:
            out = block(hidden, *prepared.args, **prepared.kwargs)
            hidden = out[0] if isinstance(out, (tuple, list)) else out
        hidden = self.stack.norm(hidden)
        return self.stack.head(hidden[rows, positions])
