"""EasyEdit's calling convention for DINM (DINM.md §8), for code written against ``easyeditor``.

``apply_dinm_to_model(model, tok, requests, hparams, copy=False, return_orig_weights=False,
keep_original_weight=False, **kwargs) -> (model, weights_copy)`` edits in place (a deep copy first
when ``copy``); ``weights_copy = {name: W0.clone()}`` only when both ``return_orig_weights`` and
``keep_original_weight`` are set, else ``{}``. ``execute_dinm`` returns ``{name: Δ}`` and leaves the
model exactly as it was (unlike EasyEdit, the ``requires_grad`` flags too: D8).

As in EasyEdit, the request prompts are used as given: pass the suffixed prompts
(``prompts_with_systemPrompt``); no suffix is appended here. Unlike EasyEdit, ``layers: []`` locates
the toxic layer instead of failing on an empty parameter list.
"""

from __future__ import annotations

import copy as copy_module
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from .hparams import DINMHyperParams

RequestLike = Union[Mapping[str, Any], Any]


def coerce_hparams(hparams: Any) -> DINMHyperParams:
    """DINMHyperParams from ours, a mapping, a YAML path/name, or EasyEdit's own hparams object."""
    if isinstance(hparams, DINMHyperParams):
        return hparams
    if isinstance(hparams, (str, Path)):
        return DINMHyperParams.from_hparams(hparams)
    if isinstance(hparams, Mapping):
        return DINMHyperParams.from_dict(hparams)
    if dataclasses.is_dataclass(hparams) and not isinstance(hparams, type):
        data = {f.name: getattr(hparams, f.name) for f in dataclasses.fields(hparams)}
    else:
        data = dict(vars(hparams))
    return DINMHyperParams.from_dict(data, source=f"{type(hparams).__name__} object")


def _editor(hparams: Any) -> Any:
    from .editor import DINMEditor

    # The prompts arrive already suffixed (EasyEdit's prompts_with_systemPrompt).
    return DINMEditor(coerce_hparams(hparams).replace(use_suffix=False))


def execute_dinm(model: Any, tok: Any, requests: Sequence[RequestLike], hparams: Any, **kwargs: Any) -> dict[str, Any]:
    """``{parameter name: Δ}`` of one DINM edit over ``requests``; the model is left unchanged."""
    deltas, _ = _editor(hparams).compute_deltas(model, tok, list(requests))
    return deltas


def apply_dinm_to_model(
    model: Any,
    tok: Any,
    requests: Sequence[RequestLike],
    hparams: Any,
    copy: bool = False,
    return_orig_weights: bool = False,
    keep_original_weight: bool = False,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """EasyEdit's ``apply_dinm_to_model``: edit ``model`` in place (or a deep copy) and return
    ``(model, weights_copy)``."""
    import torch

    if copy:
        model = copy_module.deepcopy(model)
    deltas = execute_dinm(model, tok, requests, hparams)
    params = dict(model.named_parameters())
    weights_copy: dict[str, Any] = {}
    with torch.no_grad():
        for name, delta in deltas.items():
            param = params[name]
            if return_orig_weights and name not in weights_copy:
                weights_copy[name] = param.detach().clone()
            param.add_(delta.to(dtype=param.dtype, device=param.device))
    if not keep_original_weight:
        weights_copy = {}
    return model, weights_copy
