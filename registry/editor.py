"""The editor contract: ``Editor``, the one class a plugin subclasses.

Required: the class attributes ``name``, ``kind`` and ``hparams_class``, and ``edit``. Everything
else is optional and declared here with its default; docs/ARCHITECTURE.md lists it in one table.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Union

from .edits import PARAMETER_DELTA, Edit, ParameterEdit, SavedPayload
from .errors import EditError, HyperParamsError, ManifestError
from .fingerprint import model_fingerprint
from .footprint import Footprint
from .hparams import HyperParams, shipped_in_package
from .inputs import REQUESTS_INPUT, InputField
from .origins import origin_of
from .requests import EditRequest, normalise_requests, read_requests  # EditRequest: re-exported

KINDS = ("weights", "activations", "training")
#: The folder of an ``hparams_package`` that holds pipeline files (registry.pipeline), not hparams.
PIPELINES_FOLDER = "pipelines"


class Editor(abc.ABC):
    """Base class of every editor. Subclasses set ``name``, ``kind``, ``hparams_class`` and implement ``edit``.

    The optional members come in three groups:

    - **where it lives**: ``aliases``, ``hparams_package`` (shipped YAML), ``easyedit_overrides``;
    - **its inputs** (one concept): ``inputs`` declares them (pipeline keys and ``detox edit`` flags
      alike), ``read_inputs`` validates them into the value ``edit`` receives;
    - **what it touches** (one concept, a ``Footprint``): ``planned_footprint`` predicts it before the
      edit; the edit reports its own through ``Edit.footprint``; stacking is the footprint's
      ``stackable``.

    ``apply_saved`` re-applies a saved edit; the default handles ``ParameterEdit`` deltas.
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # one of KINDS
    hparams_class: ClassVar[type[HyperParams]]
    aliases: ClassVar[tuple[str, ...]] = ()
    #: Dotted package holding shipped YAML as ``<ALG>/<model>.yaml`` (found by `--hparams ALG/model`)
    #: and pipelines as ``pipelines/<name>.yaml``.
    hparams_package: ClassVar[Optional[str]] = None
    #: The inputs of one edit: the keys of a pipeline step (besides hparams/override/name) and the
    #: flags ``detox edit --hparams <this editor>`` adds. The default: EasyEdit request dicts.
    inputs: ClassVar[tuple[InputField, ...]] = (REQUESTS_INPUT,)
    #: Hparams fields the EasyEdit bridge (``registry.easyedit``) sets because EasyEdit's host already
    #: did that part before calling ``apply_<alg>_to_model`` (DINM: ``{"use_suffix": False}``).
    easyedit_overrides: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, hparams: Union[HyperParams, Mapping[str, Any], str, Path, None] = None) -> None:
        self.hparams = self.coerce_hparams(hparams)

    @classmethod
    def shipped_hparams(cls) -> dict[str, Path]:
        """``{"ALG/model": path}`` for the files in this editor's ``hparams_package``."""
        return shipped_in_package(cls.hparams_package, skip=(PIPELINES_FOLDER,))

    @classmethod
    def coerce_hparams(cls, hparams: Union[HyperParams, Mapping[str, Any], str, Path, None]) -> HyperParams:
        """This editor's hparams from an instance, a mapping, a file, or a name it ships (``None``: defaults)."""
        if hparams is None:
            return cls.hparams_class.from_dict({"alg_name": cls.name}, source=f"{cls.name} defaults")
        if isinstance(hparams, cls.hparams_class):
            result = hparams
        elif isinstance(hparams, HyperParams):
            raise HyperParamsError(
                f"{cls.__name__} needs {cls.hparams_class.__name__}, got {type(hparams).__name__}"
            )
        elif isinstance(hparams, Mapping):
            result = cls.hparams_class.from_dict(hparams)
        else:
            result = cls.hparams_class.from_hparams(hparams, shipped=cls.shipped_hparams())
        names = {cls.name.lower(), *(a.lower() for a in cls.aliases)}
        if result.alg_name.lower() not in names:
            raise HyperParamsError(
                f"alg_name {result.alg_name!r} does not match editor {cls.name!r}; set alg_name: {cls.name}"
            )
        return result

    @abc.abstractmethod
    def edit(self, model: Any, tokenizer: Any, requests: Any) -> Edit:
        """Change ``model`` in place and return the handle that reverts, saves and re-applies it.

        ``requests`` is what ``read_inputs`` returned (the default: a list of ``EditRequest``), or
        EasyEdit request dicts when a Python caller or the EasyEdit bridge calls it directly."""

    def base_metadata(self, model: Any, **extra: Any) -> dict[str, Any]:
        """What every saved edit records: editor, versions, hparams and the pre-edit model fingerprint."""
        distribution, version = origin_of(type(self))
        config = getattr(model, "config", None)
        return {
            "editor": self.name,
            "kind": self.kind,
            "distribution": distribution,
            "editor_version": version,
            "hparams": self.hparams.to_dict(),
            "model": {
                "fingerprint": model_fingerprint(model),
                "name_or_path": getattr(config, "_name_or_path", None),
                "model_type": getattr(config, "model_type", None),
            },
            **extra,
        }

    # ------------------------------------------------------------------ inputs
    def read_inputs(self, values: Mapping[str, Any]) -> Any:
        """Validate one edit's inputs (``values`` has only keys of ``inputs``; path inputs are already
        resolved) without touching a model; the result goes to ``edit``. Files are read here, so a bad
        file fails before a model loads. The default reads ``requests`` as EasyEdit request dicts."""
        requests = values.get("requests")
        if requests is None:
            raise EditError(f"{self.name} needs 'requests' (a list of EasyEdit request dicts with prompt "
                                f"and target_new; on the command line --requests FILE)")
        return read_requests(requests)

    # ------------------------------------------------------------------ footprint
    def planned_footprint(self, model: Any, inputs: Any = None) -> Optional[Footprint]:
        """What ``edit`` would change on ``model``, predicted from the hparams (and inputs) without
        changing anything; ``None`` = cannot say (the edit's own footprint is checked right after)."""
        return None

    # ------------------------------------------------------------------ saved edits
    @classmethod
    def apply_saved(cls, model: Any, saved: SavedPayload, tokenizer: Any = None) -> Edit:
        """Re-apply a saved edit of this editor to ``model``. The default handles parameter deltas."""
        if saved.payload != PARAMETER_DELTA:
            raise ManifestError(
                f"{saved.path}: payload {saved.payload!r} is not supported by {cls.__name__}.apply_saved"
            )
        footprint = saved.saved_footprint()
        return ParameterEdit.apply_deltas(model, saved.tensors, metadata=saved.metadata_for_apply(),
                                          stackable=bool(footprint and footprint.stackable))


__all__ = ["KINDS", "PIPELINES_FOLDER", "EditRequest", "Editor", "normalise_requests"]
