"""DeStein as an EasyEdit2 steering method, registered in ``steer``'s own tables (EasyEdit's files unchanged).

Use::

    import easyedit_host
    easyedit_host.import_steer()                 # steer.utils.alg_dict importable (patch steer-reexports)
    from easyedit_host import steer_destein
    steer_destein.register()                     # HYPERPARAMS_CLASS_DICT, METHODS_CLASS_DICT, REQUIRED_DATASET_METHODS

after which a YAML with ``alg_name: destein`` runs through EasyEdit2's ``BaseVectorGenerator`` and
``BaseVectorApplier`` like its own methods. The vectors are built by our ``DeSteinEditor.build_vectors``
from the host's steering pairs, and the applier installs our DeStein ``HookEdit`` on the host's model.

How the host's own mechanism switches the edit: EasyEdit2 wraps every decoder layer in a
``BlockOutputWrapper`` whose ``intervention_dict`` holds each method's run-time intervention. The
applier puts a ``DeSteinMarker`` (an identity intervention) into the dict of every steered layer and
gates our hooks on it: they steer only while every marker sits in its layer's dict. So

- the "original output" (``ori_generate``, with ``generate_orig_output``) is unsteered: the host empties
  those dicts while it generates it, and puts them back after;
- ``reset_all()`` removes the edit completely: it clears the dicts, the markers are dropped, and the
  marker's finalizer reverts our edit (its hooks removed; nothing else was changed), so the model's
  parameters, buffers and hook count are exactly the unedited ones.

What cannot be done without forking EasyEdit2: ``reset("destein")`` raises ``Method destein not
supported to reset`` (its method list is a literal in ``BaseModelWrapper.reset``); use ``reset_all()``
or ``remove_destein(pipeline)``. A bias fold (``apply: bias_fold``) writes weights, which neither of the
host's switches can undo, so only ``apply: hook`` is accepted here.

Import this module after ``easyedit_host.import_steer()``: it subclasses the host's ``HyperParams``.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

from detox_plugins.destein.editor import DeSteinEditor
from detox_plugins.destein.edits import HookEdit, check_compatible
from detox_plugins.destein.geometry import resolve_geometry
from detox_plugins.destein.hparams import DeSteinHyperParams
from detox_plugins.destein.pairs import SteeringPair, pair_from_mapping, sample_pairs
from detox_plugins.destein.vectors import VECTOR_FILE, SteeringVectors
from detox_plugins.evaluation.errors import DatasetError
from registry.errors import EditError, HyperParamsError, PluginError

try:
    from steer.utils.hparams import HyperParams as SteerHyperParams
except ImportError as exc:  # the upstream import failure, before easyedit_host.import_steer() patched it
    raise ImportError(f"EasyEdit2's steer package does not import ({exc}); call easyedit_host.import_steer() "
                      f"before importing easyedit_host.steer_destein") from exc

logger = logging.getLogger(__name__)

#: The method's key in EasyEdit2's tables and YAML ``alg_name``.
NAME = "destein"
#: Where the generator writes the vectors, under ``steer_vector_output_dir`` (EasyEdit2 adds the dataset name).
VECTOR_FOLDER = "destein_vector"


# ---------------------------------------------------------------------- hyperparameters
@dataclass
class DeSteinSteerHyperParams(SteerHyperParams):
    """The DeStein keys both phases read (top level of the YAML); EasyEdit2's common keys come from its base."""

    alg_name: str = NAME
    layers: Union[str, List[int]] = "all"
    fusion: str = "rotate"
    capture: Optional[str] = None
    attn_out_module_tmp: Optional[str] = None
    num_heads: Optional[int] = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.alg_name != NAME:
            raise HyperParamsError(f"alg_name is {self.alg_name!r}; this class reads alg_name: {NAME}")
        self.destein_hparams()  # a bad key or value fails while the host loads the YAML

    def destein_keys(self) -> dict[str, Any]:
        """This phase's keys in our ``DeSteinHyperParams`` layout."""
        return {"alg_name": "DeStein", "model_name": str(self.model_name_or_path), "seed": self.seed,
                "layers": self.layers, "fusion": self.fusion, "capture": self.capture,
                "attn_out_module_tmp": self.attn_out_module_tmp, "num_heads": self.num_heads,
                "progress": self.progress}

    def destein_hparams(self) -> DeSteinHyperParams:
        """Our DeStein hparams, validated (errors name the key and the fix)."""
        return DeSteinHyperParams.from_dict(self.destein_keys(), source=f"EasyEdit2 {NAME} hparams")


@dataclass
class DeSteinGenerateHyperParams(DeSteinSteerHyperParams):
    """``generate:`` keys: our ``pairs:`` and ``probe:`` sections, and EasyEdit2's output settings."""

    pairs: Mapping[str, Any] = field(default_factory=dict)
    probe: Mapping[str, Any] = field(default_factory=dict)
    steer_train_dataset: Union[str, List[str], None] = None
    steer_vector_output_dir: str = "vectors"
    save_vectors: bool = True

    def destein_keys(self) -> dict[str, Any]:
        return {**super().destein_keys(), "pairs": self.pairs or {}, "probe": self.probe or {}}


@dataclass
class DeSteinApplyHyperParams(DeSteinSteerHyperParams):
    """``apply:`` keys: the strength, and where saved vectors are read when none are passed."""

    alpha: float = 0.45
    apply: str = "hook"
    steer_vector_load_dir: Optional[str] = None

    def destein_keys(self) -> dict[str, Any]:
        return {**super().destein_keys(), "alpha": self.alpha, "apply": self.apply}

    def destein_hparams(self) -> DeSteinHyperParams:
        hp = super().destein_hparams()
        if hp.apply != "hook":
            raise HyperParamsError(
                f"EasyEdit2 {NAME} hparams: apply: {hp.apply} writes the o_proj biases, which EasyEdit2's "
                f"original-output pass and reset_all() cannot switch off; set apply: hook")
        return hp


# ---------------------------------------------------------------------- the host's dataset
def pairs_from_dataset(dataset: Iterable[Any], dataset_name: Optional[str] = None) -> list[SteeringPair]:
    """DeStein pairs from EasyEdit2 steering items: ``question`` + ``not_matching`` (the behaviour steered
    away from) is the toxic side, ``question`` + ``matching`` the non-toxic side; items with ``toxic`` /
    ``nontoxic`` are taken as they are."""
    where = dataset_name or "the dataset"
    pairs = []
    for i, item in enumerate(dataset):
        if not isinstance(item, Mapping):
            raise DatasetError(f"{where} item {i}: expected a mapping with question/matching/not_matching, "
                               f"got {type(item).__name__}")
        if "toxic" in item or "nontoxic" in item:
            record = {k: item[k] for k in ("toxic", "nontoxic", "category", "id") if k in item}
        else:
            for key in ("matching", "not_matching"):
                if not isinstance(item.get(key), str) or not item[key].strip():
                    raise DatasetError(f"{where} item {i}: {key!r} must be a non-empty string (matching: the "
                                       f"response steered towards, not_matching: the one steered away from)")
            question = item.get("question") or ""
            if not isinstance(question, str):
                raise DatasetError(f"{where} item {i}: 'question' must be a string, got {question!r}")
            record = {"toxic": f"{question} {item['not_matching']}".strip(),
                      "nontoxic": f"{question} {item['matching']}".strip()}
        pairs.append(pair_from_mapping(record, f"{where} item {i}"))
    if not pairs:
        raise DatasetError(f"{where} holds no steering pairs; DeStein needs question/matching/not_matching items")
    return pairs


# ---------------------------------------------------------------------- the host's model wrapper
def decoder_layers(pipeline: Any) -> Any:
    """The host's wrapped decoder layers (``BlockOutputWrapper``s), as its own methods reach them."""
    return pipeline._decoder_layers()


def projection_template(pipeline: Any) -> str:
    """The name template of each layer's attention output projection inside the host's wrappers, e.g.
    ``model.layers.{}.block.self_attn.attn.o_proj`` (the host wraps each layer and its attention)."""
    from steer.models.model_wrapper import AttnWrapper

    layers = decoder_layers(pipeline)
    prefix = next((name for name, module in pipeline.model.named_modules() if module is layers), None)
    first = layers[0] if len(layers) else None
    block = getattr(first, "block", None)
    attention = next((n for n, c in block.named_children() if isinstance(c, AttnWrapper)), None) if block else None
    inner = getattr(block, attention).attn if attention else None
    projection = next((n for n in ("o_proj", "out_proj", "c_proj", "dense") if hasattr(inner, n)), None)
    if prefix is None or projection is None:
        raise EditError(f"cannot find the attention output projection inside EasyEdit2's wrapped "
                        f"{type(first).__name__} layers; set attn_out_module_tmp in the hparams (e.g. "
                        f"'model.layers.{{}}.block.self_attn.attn.o_proj')")
    return f"{prefix}.{{}}.block.{attention}.attn.{projection}"


def refuse_if_host_steered(pipeline: Any) -> None:
    """Vectors come from the unsteered model: refuse while any EasyEdit2 method steers this pipeline."""
    steered = sorted({key for layer in decoder_layers(pipeline)
                      for key in (*layer.add_activations_dict, *layer.intervention_dict)})
    if steered:
        raise EditError(f"the pipeline is steered by {', '.join(steered)}; call its reset_all() before building "
                        f"DeStein vectors")


def _load_pipeline(hparams: Any) -> Any:
    from steer.models.get_model import get_model

    pipeline, _ = get_model(hparams)
    return pipeline


# ---------------------------------------------------------------------- generate
def generate_destein_vectors(hparams: DeSteinGenerateHyperParams, dataset: Sequence[Any], model: Any = None,
                             dataset_name: Optional[str] = None) -> SteeringVectors:
    """EasyEdit2's ``train`` entry: DeStein vectors from the dataset's pairs, captured on the unsteered model
    (``model``: a host pipeline; else one is loaded from ``model_name_or_path``); saved as
    ``<steer_vector_output_dir>/destein_vector/destein.safetensors`` when ``save_vectors``."""
    hp = hparams.destein_hparams()
    pairs = sample_pairs(pairs_from_dataset(dataset, dataset_name), hp.pairs.num_pairs, hp.pairs.seed)
    pipeline = model if model is not None else _load_pipeline(hparams)
    refuse_if_host_steered(pipeline)
    editor = DeSteinEditor(hp.replace(attn_out_module_tmp=hp.attn_out_module_tmp or projection_template(pipeline)))
    vectors = editor.build_vectors(pipeline.model, pipeline.tokenizer, pairs,
                                   pair_source=f"easyedit2:{dataset_name or 'dataset'}")
    if hparams.save_vectors:
        path = vectors.save(Path(hparams.steer_vector_output_dir) / VECTOR_FOLDER / VECTOR_FILE,
                            model_id=str(hparams.model_name_or_path))
        logger.info("DeStein: vectors saved to %s", path)
    return vectors


# ---------------------------------------------------------------------- apply
class DeSteinMarker:
    """What EasyEdit2 sees in a steered layer's ``intervention_dict``: an identity intervention whose presence
    switches our hooks on, and whose release (the host dropping it) reverts the edit."""

    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.finalizer: Optional[weakref.finalize] = None

    def forward(self, output: Any, **kwargs: Any) -> Any:
        return output

    def __repr__(self) -> str:
        return f"DeSteinMarker(layer {self.layer})"


class HostBinding:
    """One DeStein edit bound to the host's layers: steering while every marker sits in its layer's dict;
    reverted as soon as any marker is released."""

    def __init__(self, edit: HookEdit, layers: Sequence[Any], indices: Sequence[int]) -> None:
        self.edit = edit
        self.released = False
        self.markers: list[tuple[Any, weakref.ref]] = []
        for index in indices:
            marker = DeSteinMarker(index)
            marker.finalizer = weakref.finalize(marker, self.release)
            marker.finalizer.atexit = False  # nothing to undo when the process ends
            layers[index].intervention_dict[NAME] = marker
            self.markers.append((layers[index], weakref.ref(marker)))
        edit.strength.gate = self.is_on

    def is_on(self) -> bool:
        return not self.released and all(layer.intervention_dict.get(NAME) is ref() for layer, ref in self.markers)

    def release(self) -> None:
        """Revert the edit (hooks removed) and take our remaining markers out of the host's dicts."""
        if self.released:
            return
        self.released = True
        self.edit.strength.gate = None
        if self.edit.applied:
            self.edit.revert()
        for layer, ref in self.markers:
            marker = ref()
            if marker is not None and layer.intervention_dict.get(NAME) is marker:
                del layer.intervention_dict[NAME]
        logger.info("DeStein: removed from the EasyEdit2 pipeline")


def destein_markers(pipeline: Any) -> list[DeSteinMarker]:
    """The markers of the DeStein edit this module applied to ``pipeline`` (none: not steered by it)."""
    markers = [layer.intervention_dict.get(NAME) for layer in decoder_layers(pipeline)]
    return [m for m in markers if isinstance(m, DeSteinMarker) and m.finalizer is not None]


def release_markers(markers: Sequence[DeSteinMarker]) -> None:
    for marker in markers:
        marker.finalizer()  # runs its binding's release once; later calls are no-ops


def remove_destein(pipeline: Any) -> bool:
    """Undo a DeStein edit this module applied to ``pipeline`` (what ``reset("destein")`` would do if the
    host allowed it); False when there was none."""
    markers = destein_markers(pipeline)
    release_markers(markers)
    return bool(markers)


def _read_vectors(hparams: DeSteinApplyHyperParams) -> SteeringVectors:
    if not hparams.steer_vector_load_dir:
        raise EditError(f"no DeStein vectors: pass them to apply (generate_vectors' result) or set "
                        f"steer_vector_load_dir to the folder holding {VECTOR_FILE} (the generator writes "
                        f"<steer_vector_output_dir>/<dataset>/{VECTOR_FOLDER})")
    return SteeringVectors.load(hparams.steer_vector_load_dir)


def apply_destein(hparams: DeSteinApplyHyperParams, pipline: Any = None, vector: Any = None) -> Any:
    """EasyEdit2's ``apply`` entry: steer the host's pipeline with our DeStein edit (a previous one is replaced)
    and return it. Bad hparams or vectors raise before the pipeline changes."""
    hp = hparams.destein_hparams()
    vectors = _read_vectors(hparams) if vector is None else vector
    if not isinstance(vectors, SteeringVectors):
        raise EditError(f"DeStein vectors must be the generator's SteeringVectors, got {type(vectors).__name__}")
    pipeline = pipline if pipline is not None else _load_pipeline(hparams)
    hp = hp.replace(attn_out_module_tmp=hp.attn_out_module_tmp or projection_template(pipeline))
    geometry = resolve_geometry(pipeline.model, hp.attn_out_module_tmp, hp.num_heads)
    check_compatible(vectors, geometry)
    if vectors.site != hp.capture_site:
        raise EditError(f"the vectors were captured at {vectors.site} but fusion {hp.fusion!r} needs "
                        f"{hp.capture_site}; use the same fusion/capture in generate and apply")
    indices = geometry.resolve_layers(hp.layers)
    previous = destein_markers(pipeline)  # replaced once the new edit is in place
    edit = DeSteinEditor(hp).edit(pipeline.model, pipeline.tokenizer, vectors=vectors)
    HostBinding(edit, decoder_layers(pipeline), indices)
    release_markers(previous)
    logger.info("DeStein: steering the EasyEdit2 pipeline (%s, alpha %s, %d layers)", hp.fusion, hp.alpha,
                len(indices))
    return pipeline


# ---------------------------------------------------------------------- the host's tables
def _tables() -> tuple[dict, dict, list]:
    import importlib

    alg_dict = importlib.import_module("steer.utils.alg_dict")
    generation = importlib.import_module("steer.vector_generators.vector_generators")
    return alg_dict.HYPERPARAMS_CLASS_DICT, alg_dict.METHODS_CLASS_DICT, generation.REQUIRED_DATASET_METHODS


def register(*, overwrite: bool = False) -> None:
    """Add DeStein to EasyEdit2's three tables (idempotent); another ``destein`` there is kept unless ``overwrite``."""
    hparams_table, methods_table, dataset_methods = _tables()
    ours = {"train": generate_destein_vectors, "apply": apply_destein}
    present = methods_table.get(NAME)
    if present is not None and present != ours and not overwrite:
        raise PluginError(f"EasyEdit2 already has a {NAME!r} method ({present.get('apply')}); pass overwrite=True "
                          f"to replace it")
    hparams_table[NAME] = {"train": DeSteinGenerateHyperParams, "apply": DeSteinApplyHyperParams}
    methods_table[NAME] = ours
    if NAME not in dataset_methods:
        dataset_methods.append(NAME)  # the generator is called with the dataset (steering pairs)


def unregister() -> None:
    """Take DeStein out of EasyEdit2's tables again."""
    hparams_table, methods_table, dataset_methods = _tables()
    hparams_table.pop(NAME, None)
    methods_table.pop(NAME, None)
    while NAME in dataset_methods:
        dataset_methods.remove(NAME)


__all__ = ["NAME", "DeSteinApplyHyperParams", "DeSteinGenerateHyperParams", "DeSteinMarker", "apply_destein",
           "destein_markers", "generate_destein_vectors", "pairs_from_dataset", "register", "remove_destein",
           "unregister"]
