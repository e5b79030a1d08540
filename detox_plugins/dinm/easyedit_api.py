"""EasyEdit's calling convention for DINM (``apply_dinm_to_model``, ``execute_dinm``), for code written
against ``easyeditor``.

``apply_dinm_to_model(model, tok, requests, hparams, copy=False, return_orig_weights=False,
keep_original_weight=False, **kwargs) -> (model, weights_copy)`` edits in place (a deep copy first
when ``copy``); ``weights_copy = {name: W0.clone()}`` only when both ``return_orig_weights`` and
``keep_original_weight`` are set, else ``{}``. It is the generic bridge
(``registry.easyedit.apply_fn``) built for ``DINMEditor`` directly, so it works without the plugin
registry. ``execute_dinm`` returns ``{name: Δ}`` and leaves the model exactly as it was (unlike
EasyEdit, which leaves them set, the ``requires_grad`` flags too).

As in EasyEdit, the request prompts are used as given: pass the suffixed prompts
(``prompts_with_systemPrompt``); no suffix is appended here (``DINMEditor.easyedit_overrides``).
Unlike EasyEdit, ``layers: []`` locates the toxic layer instead of failing on an empty parameter list.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

from .hparams import DINMHyperParams

RequestLike = Union[Mapping[str, Any], Any]


def coerce_hparams(hparams: Any) -> DINMHyperParams:
    """DINMHyperParams from ours, a mapping, a YAML path/name, or EasyEdit's own hparams object."""
    from registry.easyedit import coerce_easyedit_hparams

    from .editor import DINMEditor

    hp = coerce_easyedit_hparams(DINMEditor, hparams)
    assert isinstance(hp, DINMHyperParams)
    return hp


def execute_dinm(model: Any, tok: Any, requests: Sequence[RequestLike], hparams: Any, **kwargs: Any) -> dict[str, Any]:
    """``{parameter name: Δ}`` of one DINM edit over ``requests``; the model is left unchanged."""
    from .editor import DINMEditor

    editor = DINMEditor(coerce_hparams(hparams).replace(**DINMEditor.easyedit_overrides))
    deltas, _ = editor.compute_deltas(model, tok, list(requests))
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
    from registry.easyedit import apply_fn

    from .editor import DINMEditor

    return apply_fn(DINMEditor)(model, tok, requests, hparams, copy=copy, return_orig_weights=return_orig_weights,
                                keep_original_weight=keep_original_weight, **kwargs)
