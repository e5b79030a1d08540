"""Activation capture with forward hooks on each layer's attention output projection.

Two sites: ``attn_output`` (the projection's output, just before the residual add; released-code
compatible) and ``head_input`` (the projection's input, i.e. the concatenated per-head attention
outputs; the paper's form). Each text is summarised by the mean over its last ``k`` REAL tokens,
found through the attention mask, so a right-padded batch gives the per-text result.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from registry.errors import EditError

from detox_plugins.evaluation.errors import DatasetError

from .geometry import AttentionGeometry

logger = logging.getLogger(__name__)

SITES = ("attn_output", "head_input")


def last_k_weights(attention_mask: Any, k: int) -> Any:
    """[B, T] float weights averaging the last ``k`` real tokens of each row (any padding side)."""
    real = attention_mask.bool()
    after = real.flip(-1).long().cumsum(-1).flip(-1)  # real tokens at or after each position
    selected = (real & (after <= k)).float()
    return selected / selected.sum(-1, keepdim=True).clamp_min(1.0)


def _refuse_if_steered(geometry: AttentionGeometry) -> None:
    """Vectors must come from the unsteered model: refuse while a DeStein hook is active on it."""
    from .fusion import AddHook, RotateHook

    for module in geometry.modules:
        hooks = list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values())
        if any(isinstance(h, (AddHook, RotateHook)) and not h.strength.inactive() for h in hooks):
            raise EditError("the model is steered by a DeStein edit; revert it (or capture inside "
                            "edit.paused()) before building new vectors")


def _tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    rows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if not ids:
            raise DatasetError(f"text {text!r} tokenizes to nothing; remove it from the pairs")
        rows.append(list(ids))
    return rows


def capture_activations(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    geometry: AttentionGeometry,
    *,
    sites: Sequence[str] = ("attn_output",),
    last_k: int = 8,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "capture",
) -> dict[str, Any]:
    """``{site: float32 tensor [N, L, D]}``: the last-k mean at every layer for every text (on CPU).

    Texts are tokenised one by one with the tokenizer's default special tokens and right-padded by
    hand, so the tokenizer's padding side does not matter. The model must be unsteered.
    """
    import torch
    from tqdm.auto import tqdm

    for site in sites:
        if site not in SITES:
            raise EditError(f"unknown capture site {site!r}; choose one of {', '.join(SITES)}")
    if last_k < 1:
        raise EditError(f"last_k must be >= 1, got {last_k}")
    _refuse_if_steered(geometry)
    rows = _tokenize(tokenizer, texts)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    device = next(model.parameters()).device
    num_layers = geometry.num_layers
    results: dict[str, list[Any]] = {site: [] for site in sites}
    current: dict[str, list[Any]] = {site: [None] * num_layers for site in sites}
    weights: dict[str, Any] = {}

    def pooled(x: Any) -> Any:
        w = weights["w"]
        if w.device != x.device:
            w = w.to(x.device)
        return torch.einsum("bt,btd->bd", w, x.float()).cpu()

    def make_pre(layer: int) -> Any:
        def hook(module: Any, args: tuple) -> None:
            current["head_input"][layer] = pooled(args[0])
        return hook

    def make_post(layer: int) -> Any:
        def hook(module: Any, args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            current["attn_output"][layer] = pooled(out)
        return hook

    handles = []
    modes = [(m, m.training) for m in model.modules()]  # per module: a mixed model stays mixed
    try:
        for layer, module in enumerate(geometry.modules):
            if "head_input" in sites:
                handles.append(module.register_forward_pre_hook(make_pre(layer)))
            if "attn_output" in sites:
                handles.append(module.register_forward_hook(make_post(layer)))
        model.eval()
        starts = range(0, len(rows), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc=desc, disable=not progress):
                chunk = rows[start:start + batch_size]
                width = max(len(r) for r in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, r in enumerate(chunk):
                    ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
                    mask[i, :len(r)] = 1
                weights["w"] = last_k_weights(mask, last_k).to(device)
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                for site in sites:
                    missing = [i for i, t in enumerate(current[site]) if t is None]
                    if missing:
                        raise EditError(
                            f"no activation was captured at layer(s) {missing} ({site}); the module "
                            f"template {geometry.template!r} is not on the forward path")
                    results[site].append(torch.stack(current[site], dim=1))
                    current[site] = [None] * num_layers
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode
    return {site: torch.cat(chunks, dim=0) for site, chunks in results.items()}
