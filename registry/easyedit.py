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

``hparams`` may be the editor's own ``HyperParams``, a mapping, a YAML/JSON path or shipped name
(``"DINM/smollm2-135m"``), or an EasyEdit hparams object (a dataclass or any object whose
attributes are the fields). Requests are EasyEdit's request dicts or ``registry.EditRequest`` s.
Extra keyword arguments EasyEdit passes (``train_ds``, ...) are accepted and ignored.

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
from .errors import HyperParamsError
from .hparams import HyperParams
from .plugins import get_editor, load_editors

logger = logging.getLogger(__name__)

#: The signature every function built here has (EasyEdit's apply_<alg>_to_model).
ApplyFn = Callable[..., tuple[Any, "WeightsCopy"]]


class WeightsCopy(dict):
    """``{tensor name: original value}`` as EasyEdit's apply functions return it, plus the ``Edit``.

    ``edit`` is the applied edit (``None`` only for a copy built by hand); ``restore()`` reverts it,
    which also undoes edits that are not in-place tensor changes (hooks, adapters).
    """

    def __init__(self, values: Optional[Mapping[str, Any]] = None, edit: Optional[Edit] = None) -> None:
        super().__init__(values or {})
        self.edit = edit

    def restore(self) -> None:
        """Undo the edit exactly (``edit.revert()``), whatever kind of change it made."""
        if self.edit is None:
            raise HyperParamsError("this weights_copy holds no edit to restore")
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
    if hparams is None or isinstance(hparams, (HyperParams, str, Path)):
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
    data.setdefault("alg_name", editor_class.name)
    return editor_class.coerce_hparams(editor_class.hparams_class.from_dict(data, source=source))


def _with_overrides(editor_class: type[Editor], hp: HyperParams) -> HyperParams:
    overrides = dict(editor_class.easyedit_overrides or {})
    current = hp.to_dict()
    changes = {k: v for k, v in overrides.items() if current.get(k) != v}
    return hp.replace(**changes) if changes else hp


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
        if kwargs:
            logger.debug("%s: ignoring EasyEdit keyword argument(s) %s", editor_class.name, sorted(kwargs))
        if copy:
            model = copy_module.deepcopy(model)
        edit = editor_class(hp).edit(model, tok, requests)
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

    Keys are the editors' canonical names (EasyEdit looks up ``ALG_DICT[hparams.alg_name]``).
    An existing key is kept unless ``overwrite``. Returns the names added, in order.
    """
    classes = {n: get_editor(n) for n in names} if names is not None else load_editors()
    added = []
    for editor_class in sorted(set(classes.values()), key=lambda c: c.name.lower()):
        key = editor_class.name
        if key in alg_dict and not overwrite:
            logger.info("EasyEdit table already has %r; kept it (pass overwrite=True to replace)", key)
            continue
        alg_dict[key] = apply_fn(key)
        added.append(key)
    return added


__all__ = ["ApplyFn", "WeightsCopy", "alg_function_name", "apply_fn", "coerce_easyedit_hparams", "install",
           "original_tensors"]
