"""The EasyEdit bridge: any registered editor as EasyEdit's ``apply_<alg>_to_model``.

EasyEdit keeps its algorithms in a hard-coded table (``easyeditor/util/alg_dict.py``:
``ALG_DICT = {"ROME": apply_rome_to_model, ...}``) and calls each one as::

    model, weights_copy = apply_fn(model, tok, requests, hparams, copy=False,
                                   return_orig_weights=False, keep_original_weight=False, **kwargs)

``apply_fn(name)`` builds that function for an editor found through the plugin registry, and
``install(ALG_DICT)`` adds every registered editor to such a table. The flags mean what they mean
in EasyEdit's own ``apply_rome_to_model``:

- ``copy``: deep-copy the model first and edit the copy (the caller's model is untouched);
- ``return_orig_weights``: collect ``{name: original tensor clone}`` of every tensor the edit
  changed in place;
- ``keep_original_weight``: EasyEdit's editor sets it when it will put those originals back after
  evaluating; without it ``weights_copy`` is emptied (``{}``), exactly as EasyEdit does. So
  ``weights_copy`` holds tensors only when **both** flags are set.

``weights_copy`` is a :class:`WeightsCopy`: a plain ``dict`` (EasyEdit's restore loop
``for k, v in weights_copy.items(): get_parameter(model, k)[...] = v`` works on it) that also
carries the :class:`~registry.edits.Edit` as ``weights_copy.edit``, whatever the flags. Edits that
change no existing tensor in place (DeStein's forward hooks, a bias folded into a module that had
none, security-vector LoRA adapters) leave the dict empty: EasyEdit's restore loop cannot undo
them, so call ``weights_copy.restore()`` (= ``weights_copy.edit.revert()``) instead.

What a host does with the result is checked here, not left to chance:

- ``return_orig_weights=True`` means the caller will undo the edit by copying ``weights_copy`` back
  (both EasyEdit hosts pass it and do exactly that). An edit that loop cannot undo (forward hooks,
  adapters, tensors the model did not have: DeStein's hooks, security vectors) is refused with a
  one-line ``EditError`` before the model changes (and reverted if only the applied edit shows it),
  instead of staying applied and piling up case after case.
- After the host's loop has put every original back, ``weights_copy.applied`` and
  ``weights_copy.edit.applied`` are False and ``restore()`` is a logged no-op.
- A request whose ``ground_truth`` is ``'<|endoftext|>'`` (the old BaseEditor's placeholder for
  "none given") is refused: DINM would locate its layer with it.

``hparams`` may be the editor's own ``HyperParams``, a mapping, a YAML/JSON path or shipped name
(``"DINM/smollm2-135m"``), or an EasyEdit hparams object (a dataclass or any object whose
attributes are the fields). Attributes only the host reads (``HOST_FIELDS``: ``max_length``,
``max_output_length``, ``fp16``, ...) are not passed on, and a ``model_name`` that is the host's
preloaded ``(model, tokenizer)`` is recorded as the model's own config name. Requests are EasyEdit's
request dicts or ``registry.EditRequest`` s. Extra keyword arguments EasyEdit passes
(``train_ds``, ...) are accepted and ignored.

Editors may set ``easyedit_overrides`` (a mapping of hparams fields) for what EasyEdit's host
already did before calling the algorithm: DINM sets ``use_suffix: false`` because EasyEdit's
``SafetyEditor`` appends the suffix to the prompts itself.

This module imports no torch or transformers until a function built here runs.
"""

from __future__ import annotations

import copy as copy_module
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping, Optional, Union

from .compose import leaf_edits
from .editor import Editor
from .edits import Edit
from .errors import EditError, HyperParamsError
from .footprint import Footprint, canonical_name
from .hparams import HyperParams
from .plugins import get_editor, load_editors

logger = logging.getLogger(__name__)

#: The signature every function built here has (EasyEdit's apply_<alg>_to_model).
ApplyFn = Callable[..., tuple[Any, "WeightsCopy"]]

#: Attributes of an EasyEdit hparams object that only the host reads (BaseEditor, SafetyEditor and
#: their metrics): accepted and not passed on, unless the editor's own hparams declare them.
HOST_FIELDS = frozenset({
    "max_length", "max_output_length", "fp16", "batch_size", "evaluation_type", "model_parallel",
    "stats_dir", "results_dir", "suffix_system_prompt", "context_type", "api_key", "generation_conf",
    "layers",
})
#: EasyEdit's old BaseEditor (PyPI easyeditor 0.0.1.dev0) fills a missing ground truth with this token.
PLACEHOLDER_GROUND_TRUTH = "<|endoftext|>"


class WeightsCopy(dict):
    """``{tensor name: original value}`` as EasyEdit's apply functions return it, plus the ``Edit``.

    ``edit`` is the applied edit (``None`` only for a copy built by hand); ``restore()`` reverts it,
    which also undoes edits that are not in-place tensor changes (hooks, adapters).
    """

    def __init__(self, values: Optional[Mapping[str, Any]] = None, edit: Optional[Edit] = None) -> None:
        super().__init__(values or {})
        self.edit = edit

    @property
    def applied(self) -> bool:
        """Whether the model still holds the edit (False once ``restore()`` ran, and once the host's own
        restore loop has copied every original tensor back)."""
        return self.edit is not None and self.edit.applied

    def restore(self) -> None:
        """Undo the edit exactly (``edit.revert()``), whatever kind of change it made. After the host's
        restore loop already put the originals back it does nothing (logged)."""
        if self.edit is None:
            raise HyperParamsError("this weights_copy holds no edit to restore")
        if not self.edit.applied and not self.edit.restored_elsewhere():
            logger.info("this %s edit was already restored; nothing to do", self.edit.editor)
            return
        self.edit.revert()


def alg_function_name(name: str) -> str:
    """EasyEdit's naming: ``apply_<alg>_to_model`` with the name lower-cased (``DINM`` -> ``apply_dinm_to_model``)."""
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower() or "editor"
    return f"apply_{slug}_to_model"


def coerce_easyedit_hparams(editor_class: type, hparams: Any) -> HyperParams:
    """The editor's hparams from ours, a mapping, a path/shipped name or an EasyEdit hparams object.

    A missing ``alg_name`` defaults to the editor's name; the editor then checks that the name
    matches and validates every field (unknown keys name the closest field).
    """
    if hparams is None or isinstance(hparams, (str, Path)) or isinstance(hparams, editor_class.hparams_class):
        return editor_class.coerce_hparams(hparams)
    if isinstance(hparams, HyperParams):  # another editor's hparams: coerce_hparams names the mismatch
        return editor_class.coerce_hparams(hparams)
    if isinstance(hparams, Mapping):
        data = dict(hparams)
        source = "<dict>"
    elif dataclasses.is_dataclass(hparams) and not isinstance(hparams, type):
        data = {f.name: getattr(hparams, f.name) for f in dataclasses.fields(hparams)}
        source = f"{type(hparams).__name__} object"
    elif hasattr(hparams, "__dict__") and not isinstance(hparams, type):
        data = {k: v for k, v in vars(hparams).items() if not k.startswith("_")}
        source = f"{type(hparams).__name__} object"
    else:
        raise HyperParamsError(
            f"hparams must be {editor_class.hparams_class.__name__}, a dict, a YAML path or shipped name, "
            f"or an EasyEdit hparams object; got {type(hparams).__name__}"
        )
    data = _without_host_fields(editor_class, data, source)
    data.setdefault("alg_name", editor_class.name)
    return editor_class.coerce_hparams(editor_class.hparams_class.from_dict(data, source=source))


def _without_host_fields(editor_class: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` without what only EasyEdit's host reads (``HOST_FIELDS`` the editor does not declare)
    and without a ``model_name`` that is not a string (the host's preloaded ``(model, tokenizer)``)."""
    declared = {f.name for f in dataclasses.fields(editor_class.hparams_class)}
    declared |= set(editor_class.hparams_class.key_aliases) | set(editor_class.hparams_class.ignored_keys)
    dropped = sorted(k for k in data if k in HOST_FIELDS and k not in declared)
    if "model_name" in data and not isinstance(data["model_name"], (str, Path)):
        dropped.append("model_name")
    if dropped:
        logger.debug("%s: %s: not passed to the editor (EasyEdit host field(s) %s)", editor_class.name, source,
                     ", ".join(dropped))
    return {k: v for k, v in data.items() if k not in dropped}


def _with_overrides(editor_class: type[Editor], hp: HyperParams) -> HyperParams:
    overrides = dict(editor_class.easyedit_overrides or {})
    current = hp.to_dict()
    changes = {k: v for k, v in overrides.items() if current.get(k) != v}
    return hp.replace(**changes) if changes else hp


def _with_model_name(hp: HyperParams, given: Any, model: Any) -> HyperParams:
    """A preloaded model (EasyEdit's ``model_name=(model, tok)``) is recorded by its own config name."""
    raw = given.get("model_name") if isinstance(given, Mapping) else getattr(given, "model_name", None)
    if raw is None or isinstance(raw, (str, Path)) or isinstance(given, HyperParams):
        return hp
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return hp.replace(model_name=str(name)) if isinstance(name, str) and name else hp


def refuse_placeholder_ground_truth(editor: str, requests: Any) -> None:
    """EasyEdit's old BaseEditor passes ``ground_truth='<|endoftext|>'`` when none was given; an editor
    would take it for the unsafe response (DINM would locate its layer with it). Refused."""
    items = requests if isinstance(requests, (list, tuple)) else [requests]
    for i, request in enumerate(items):
        truth = request.get("ground_truth") if isinstance(request, Mapping) else getattr(request, "ground_truth", None)
        truths = truth if isinstance(truth, (list, tuple)) else [truth]
        if any(isinstance(t, str) and t.strip() == PLACEHOLDER_GROUND_TRUTH for t in truths):
            raise EditError(
                f"{editor}: request {i} has ground_truth {PLACEHOLDER_GROUND_TRUTH!r}, EasyEdit BaseEditor's "
                f"placeholder for 'none given', not an unsafe response; pass ground_truth= explicitly"
            )


def refuse_unrestorable(editor: str, footprint: Optional[Footprint], model: Any,
                        originals: Optional[Mapping[str, Any]] = None) -> None:
    """Raise ``EditError`` (one line) when copying ``weights_copy`` back, as EasyEdit's hosts do, could not
    undo this edit: it hooks or wraps modules, or writes tensors the model does not have (or, after the
    edit, that are not among ``originals``). ``footprint=None`` before the edit: checked after it."""
    if footprint is None:
        if originals is None:
            return
        raise EditError(f"{editor}: the edit does not report what it changed, so EasyEdit's restore loop "
                        f"(weights_copy) may not undo it; call it with return_orig_weights=False and use "
                        f"weights_copy.restore()")
    existing = {canonical_name(n) for n, _ in model.named_parameters()}
    existing |= {canonical_name(n) for n, _ in model.named_buffers()}
    reasons = []
    if footprint.hooks:
        reasons.append(f"it adds forward hooks ({len(footprint.hooks)} modules)")
    if footprint.wraps:
        reasons.append(f"it wraps {len(footprint.wraps)} modules in adapters")
    if originals is None:
        new = sorted(footprint.writes - existing) if footprint.exact else []
    else:
        new = sorted(footprint.writes - {canonical_name(n) for n in originals})
    if new:
        reasons.append(f"it creates tensors the model did not have ({new[0]}{', ...' if len(new) > 1 else ''})")
    if reasons:
        raise EditError(
            f"{editor}: EasyEdit's restore loop (copying weights_copy back) cannot undo this edit: "
            f"{'; '.join(reasons)}; call it with return_orig_weights=False and undo it with weights_copy.restore()"
        )


def original_tensors(edit: Edit) -> dict[str, Any]:
    """Pre-edit values of the existing tensors ``edit`` changed in place (steps of a composed edit
    merged, the earliest original kept)."""
    merged: dict[str, Any] = {}
    for step in leaf_edits([edit]):
        for name, value in step.original_tensors().items():
            merged.setdefault(name, value)
    return merged


def apply_fn(name: Union[str, type]) -> ApplyFn:
    """EasyEdit's ``apply_<alg>_to_model`` for the registered editor ``name``, or for an ``Editor``
    class given directly (an editor's own module uses that, without the registry; see the module doc).

    The editor is looked up now, so an unknown name fails here (``EditorNotFoundError``) rather
    than inside EasyEdit's edit loop. A failing edit raises and leaves the model as it was.
    """
    editor_class = name if isinstance(name, type) else get_editor(name)

    def apply_to_model(model: Any, tok: Any, requests: Any, hparams: Any, copy: bool = False,
                       return_orig_weights: bool = False, keep_original_weight: bool = False,
                       **kwargs: Any) -> tuple[Any, WeightsCopy]:
        hp = _with_overrides(editor_class, coerce_easyedit_hparams(editor_class, hparams))
        hp = _with_model_name(hp, hparams, model)
        refuse_placeholder_ground_truth(editor_class.name, requests)
        if kwargs:
            logger.debug("%s: ignoring EasyEdit keyword argument(s) %s", editor_class.name, sorted(kwargs))
        editor = editor_class(hp)
        if return_orig_weights:  # the caller will undo the edit by copying weights_copy back
            refuse_unrestorable(editor.name, editor.planned_footprint(model, None), model)
        if copy:
            model = copy_module.deepcopy(model)
        edit = editor.edit(model, tok, requests)
        if return_orig_weights:
            try:
                refuse_unrestorable(editor.name, edit.footprint(), model, originals=original_tensors(edit))
            except EditError:
                edit.revert()
                raise
        values: dict[str, Any] = {}
        if return_orig_weights and keep_original_weight:
            values = {k: v.detach().clone() for k, v in original_tensors(edit).items()}
        return model, WeightsCopy(values, edit=edit)

    apply_to_model.__name__ = apply_to_model.__qualname__ = alg_function_name(editor_class.name)
    apply_to_model.__doc__ = (
        f"EasyEdit's {alg_function_name(editor_class.name)} for the {editor_class.name} editor "
        f"({editor_class.__module__}.{editor_class.__qualname__}); see registry.easyedit."
    )
    apply_to_model.editor_class = editor_class  # type: ignore[attr-defined]
    return apply_to_model


def install(alg_dict: MutableMapping[str, Any], *, overwrite: bool = False,
            names: Optional[list[str]] = None) -> list[str]:
    """Add every registered editor (or only ``names``) to an EasyEdit-style algorithm table.

    Keys are the editors' canonical names (EasyEdit looks up ``ALG_DICT[hparams.alg_name]``, and
    ``SafetyEditor`` treats the key ``DINM`` specially, so an editor cannot be installed under another
    key). An existing entry that is not already ours is kept unless ``overwrite``, with a warning
    naming the function kept (EasyEdit's own table has a ``DINM``: install ours with
    ``install(ALG_DICT, overwrite=True, names=["DINM"])``). Returns the names added, in order.
    """
    classes = {n: get_editor(n) for n in names} if names is not None else load_editors()
    added = []
    for editor_class in sorted(set(classes.values()), key=lambda c: c.name.lower()):
        key = editor_class.name
        current = alg_dict.get(key)
        if key in alg_dict and getattr(current, "editor_class", None) is editor_class:
            continue  # ours already
        if key in alg_dict and not overwrite:
            where = f"{getattr(current, '__module__', '?')}.{getattr(current, '__qualname__', type(current).__name__)}"
            logger.warning("EasyEdit table already has %r (%s); kept it, so %r runs that, not %s from %s; "
                           "pass overwrite=True, names=[%r] to install ours", key, where, key,
                           editor_class.__qualname__, editor_class.__module__, key)
            continue
        alg_dict[key] = apply_fn(key)
        added.append(key)
    return added


__all__ = ["HOST_FIELDS", "PLACEHOLDER_GROUND_TRUTH", "ApplyFn", "WeightsCopy", "alg_function_name", "apply_fn",
           "coerce_easyedit_hparams", "install", "original_tensors", "refuse_placeholder_ground_truth",
           "refuse_unrestorable"]
