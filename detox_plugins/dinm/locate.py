"""Toxic-layer localization: EasyEdit's, and a fixed version.

``locate_easyedit`` reproduces EasyEdit: one batch ``[y+, y-]`` of the responses alone, padded on the
tokenizer's own side,
``output_hidden_states``, the Frobenius distance of the whole padded ``[n, d]`` matrices for
``hidden_states[1..L]`` (the last one post-final-norm), argmax minus one; ties keep the lowest.

``locate_blocks`` is the fixed version: the raw output of every block, collected with forward hooks
(never the post-norm final state), mean-pooled over the response tokens only (each sequence runs
alone, so no padding enters), optionally after the prompt; score ``‖μ+ − μ−‖₂``, or that divided by the mean norm of
``μ±`` (``relative_l2``), since the residual stream grows with depth, or ``separability``: the squared
distance of the means divided by the two responses' token spread at that layer
(``‖μ+ − μ−‖² / (tr Σ+ + tr Σ−)``), which does not grow with the residual norm.

``locate_by_attribution`` asks which edited module carries the unsafe answer: per block, the
gradient × activation of the edited module's output for the gap between the unsafe and the safe
response's mean token log-likelihood (a first-order estimate of how much that module's output raises
the unsafe answer over the safe one); the block with the largest share is edited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .inputs import ScoredSequence
from .runner import BlockRecord, BlockRecorder, Stack, run_until_stopped

logger = logging.getLogger(__name__)


@dataclass
class Localization:
    """The located layer, its per-layer scores and how they were computed."""

    layer: int
    scores: list[float] = field(default_factory=list)
    method: str = "easyedit"
    #: What every block saw of the edit sequence (inputs, MLP residual, trained-module input), when captured.
    block_inputs: Optional[dict[int, BlockRecord]] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "method": self.method, "scores": [round(s, 6) for s in self.scores]}


def _joined(head: BlockRecord, tail: BlockRecord) -> BlockRecord:
    """One record of a sequence run as a prefix pass plus a cached continuation."""
    def cat(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if a is None or b is None else torch.cat([a, b], dim=1)

    hidden = cat(head.hidden, tail.hidden)
    assert hidden is not None
    return BlockRecord(hidden, (), {}, residual=cat(head.residual, tail.residual),
                       module_input=cat(head.module_input, tail.module_input),
                       output=cat(head.output, tail.output), replayable=False)


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
    """EasyEdit's ``_locate_toxic_layer`` for one case: the [safe, unsafe] batch padded on the tokenizer's
    own ``padding_side`` (EasyEdit calls ``tokenizer(texts, padding=True, truncation=True)``), so the
    layer picked depends on the tokenizer, as it does in EasyEdit (SmolLM2's pads on the right)."""
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
    left = getattr(tokenizer, "padding_side", "right") == "left"
    for i, ids in enumerate(rows):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[i, span] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, span] = 1
    device = _device(model)
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states
    scores = [float(torch.dist(hidden[i][0].float(), hidden[i][1].float(), p=2)) for i in range(1, len(hidden))]
    return Localization(_argmax_first(scores), scores, "easyedit")


#: Keep every block's record of the edit sequence (to skip the cache pass) only below this size.
CAPTURE_LIMIT_BYTES = 512 * 2**20


def shared_prefix_length(safe: ScoredSequence, unsafe: ScoredSequence) -> int:
    """Tokens both sequences start with, up to the first token either scores (the prompt)."""
    a, b = safe.input_ids[0], unsafe.input_ids[0]
    n = min(len(a), len(b))
    differs = (a[:n] != b[:n]).nonzero()
    common = int(differs[0]) if len(differs) else n
    masks = [seq.response_mask() for seq in (safe, unsafe)]
    if not all(bool(mask.any()) for mask in masks):
        return 0  # a sequence pools over every token: nothing may be skipped
    return min([common] + [int(mask.nonzero()[0]) for mask in masks])


#: Share the prompt's forward pass between the two responses only when it is at least this long.
MIN_SHARED_PREFIX = 8


def _cache_keyword(model: nn.Module) -> Optional[str]:
    """The keyword the model's forward takes a KV cache under (``cache`` in transformers 5, else
    ``past_key_values``), or None."""
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def _new_cache() -> Optional[Any]:
    try:
        from transformers import DynamicCache
    except ImportError:  # pragma: no cover - every supported transformers has it
        return None
    return DynamicCache()


def _pooling_weights(seq: ScoredSequence, device: torch.device) -> torch.Tensor:
    weights = seq.response_mask().float()
    if float(weights.sum()) == 0:
        weights = torch.ones(seq.length)  # nothing scored: pool over every token
    return (weights / weights.sum()).to(device)


@torch.no_grad()
def locate_blocks(model: nn.Module, stack: Stack, tokenizer: Any, safe: ScoredSequence, unsafe: ScoredSequence,
                  *, metric: str = "l2", candidates: Optional[list[int]] = None,
                  capture_inputs: bool = False, trained_modules: Optional[dict[int, nn.Module]] = None,
                  share_prefix: bool = True) -> Localization:
    """Per-instance localization on raw block outputs, pooled over each sequence's scored tokens.

    No padding enters: the prompt the two sequences share runs once (``share_prefix``; its KV cache
    is then continued by each response alone), or each sequence runs whole. Passes stop after the
    last block (the final norm and the output head are never computed). With ``capture_inputs``,
    what every block saw of ``safe`` (its inputs, and for the blocks in ``trained_modules`` the
    residual entering the MLP and that module's input) is kept in ``block_inputs``, so that the
    edit, whose input is the same sequence, starts from the located block without another pass.
    Records built from a shared prefix are marked not replayable (their attention arguments cover
    only the response), which only the last-block sub-block path can use.
    """
    device = _device(model)
    hidden_size = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
    intermediate = int(getattr(getattr(model, "config", None), "intermediate_size", 0) or 4 * hidden_size)
    per_layer = safe.length * (4 * max(hidden_size, 1) + (intermediate if trained_modules else 0)) * 4
    keep = capture_inputs and stack.num_layers * per_layer <= CAPTURE_LIMIT_BYTES
    last = stack.num_layers - 1
    means: dict[int, list[torch.Tensor]] = {}
    square_norms: dict[int, list[torch.Tensor]] = {}  # pooled ‖h‖², for the token spread
    spread_needed = metric == "separability"

    def run(ids: torch.Tensor, weights: Optional[torch.Tensor], record: bool, **extra: Any) -> dict[int, BlockRecord]:
        """One pass over ``ids``; block outputs pooled with ``weights`` (None: not pooled)."""
        handles = []
        if weights is not None:
            def make_hook(index: int):
                def hook(_module: nn.Module, _args: Any, output: Any) -> None:
                    states = (output[0] if isinstance(output, (tuple, list)) else output)[0].float()
                    means.setdefault(index, []).append(weights @ states)
                    if spread_needed:
                        square_norms.setdefault(index, []).append(weights @ states.pow(2).sum(-1))
                return hook
            handles = [block.register_forward_hook(make_hook(i)) for i, block in enumerate(stack.blocks)]
        recorder = BlockRecorder(stack, range(stack.num_layers) if record else [], trained_modules, stop_after=last)
        try:
            with recorder:
                run_until_stopped(model, input_ids=ids.to(device), **extra)
        finally:
            for handle in handles:
                handle.remove()
        return recorder.records

    prefix = shared_prefix_length(safe, unsafe) if share_prefix else 0
    keyword = _cache_keyword(model) if prefix >= MIN_SHARED_PREFIX else None
    cache = _new_cache() if keyword is not None else None
    captured: dict[int, BlockRecord] = {}
    if cache is not None and keyword is not None:
        import copy

        head = run(safe.input_ids[:, :prefix], None, keep, **{keyword: cache, "use_cache": True})
        safe_cache = copy.deepcopy(cache)
        tail = run(safe.input_ids[:, prefix:], _pooling_weights(safe, device)[prefix:], keep,
                   **{keyword: safe_cache, "use_cache": True})
        run(unsafe.input_ids[:, prefix:], _pooling_weights(unsafe, device)[prefix:], False,
            **{keyword: cache, "use_cache": True})
        del safe_cache, cache
        if keep:
            captured = {index: _joined(head[index], tail[index]) for index in head if index in tail}
    else:
        for row, seq in enumerate((safe, unsafe)):
            records = run(seq.input_ids, _pooling_weights(seq, device), keep and row == 0,
                          attention_mask=seq.attention_mask.to(device), use_cache=False)
            if keep and row == 0:
                captured = records
    layers = candidates if candidates is not None else sorted(means)
    scores = []
    for index in layers:
        mu = means[index]
        distance = torch.linalg.vector_norm(mu[0] - mu[1])
        if metric == "relative_l2":
            scale = 0.5 * (torch.linalg.vector_norm(mu[0]) + torch.linalg.vector_norm(mu[1]))
            distance = distance / scale.clamp_min(1e-12)
        elif metric == "separability":
            spread = sum((square_norms[index][row] - mu[row].pow(2).sum()).clamp_min(0.0) for row in (0, 1))
            distance = distance.pow(2) / torch.as_tensor(spread).clamp_min(1e-12)
        scores.append(float(distance))
    layer = layers[_argmax_first(scores)]
    return Localization(layer, scores, f"blocks/{metric}", block_inputs=captured or None)


def _mean_log_likelihood(model: nn.Module, seq: ScoredSequence, device: torch.device) -> torch.Tensor:
    """The mean log-probability of ``seq``'s scored tokens (a differentiable scalar)."""
    logits = model(input_ids=seq.input_ids.to(device), use_cache=False).logits[0].float()
    log_probs = torch.log_softmax(logits[seq.positions.to(device)], dim=-1)
    picked = log_probs.gather(-1, seq.targets.to(device).unsqueeze(-1)).squeeze(-1)
    weights = seq.weights.to(device)
    return (picked * weights).sum() / weights.sum().clamp_min(1.0)


def locate_by_attribution(model: nn.Module, stack: Stack, safe: ScoredSequence, unsafe: ScoredSequence, *,
                          modules: Optional[dict[int, nn.Module]] = None) -> Localization:
    """The block whose edited module's output most raises the unsafe response over the safe one.

    For each sequence, one forward and one backward pass of its mean token log-likelihood ``ℓ``; the
    score of block ``i`` is ``Σ_t ∂ℓ_unsafe/∂o_t · o_t − Σ_t ∂ℓ_safe/∂o_t · o_t`` over the output
    ``o`` of ``modules[i]`` (the module the edit trains; the whole block where none is given). No
    parameter receives a gradient: the input embeddings are made to require one instead, and the
    model's ``requires_grad`` flags are left as they were.
    """
    device = _device(model)
    watched = dict(modules) if modules else dict(enumerate(stack.blocks))
    layers = sorted(watched)
    embeddings = model.get_input_embeddings()
    contributions: list[torch.Tensor] = []
    for seq in (safe, unsafe):
        outputs: dict[int, torch.Tensor] = {}

        def make_hook(index: int):
            def hook(_module: nn.Module, _args: Any, output: Any) -> None:
                outputs[index] = output[0] if isinstance(output, (tuple, list)) else output
            return hook

        def needs_grad(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            return output.detach().requires_grad_(True)

        handles = [watched[i].register_forward_hook(make_hook(i)) for i in layers]
        handles.append(embeddings.register_forward_hook(needs_grad))
        try:
            with torch.enable_grad():
                likelihood = _mean_log_likelihood(model, seq, device)
                tensors = [outputs[i] for i in layers]
                grads = torch.autograd.grad(likelihood, tensors, allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
        contributions.append(torch.stack([
            (g.float() * t.detach().float()).sum() if g is not None else torch.zeros((), device=device)
            for g, t in zip(grads, tensors)]))
    scores = [float(v) for v in (contributions[1] - contributions[0])]
    return Localization(layers[_argmax_first(scores)], scores, "attribution")
