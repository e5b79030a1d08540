"""``DeSteinEditor``: build DeStein steering vectors from toxic/non-toxic pairs and apply them.

``edit(model, tokenizer, requests=None)`` takes, as ``requests``:

- ``None`` (or an empty list): the pair file named by ``pairs.path``, else the shipped pairs;
- a path (``str`` / ``Path``) to a JSONL pair file;
- a list of pairs: ``{"toxic": ..., "nontoxic": ...}`` dicts, ``SteeringPair`` objects or
  ``(toxic, nontoxic)`` tuples;
- a list of SafeEdit-style requests (``EditRequest`` or EasyEdit dicts): each gives the pair
  (``ground_truth`` = unsafe response, ``target_new`` = safe response).

``pairs.num_pairs`` (m) pairs are drawn from the pool (0 = all). With ``vectors=`` (or the
``vectors`` hparam) saved vectors are applied and nothing is captured. The result is a
``HookEdit`` or a ``BiasFoldEdit``; both revert exactly and save as safetensors + JSON.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from registry.editor import Editor
from registry.edits import check_in_memory
from registry.errors import EditError, ManifestError
from registry.footprint import Footprint
from registry.inputs import InputField
from registry.requests import EditRequest, read_requests

from .edits import PAYLOAD, DeSteinEdit, SteerSettings, apply_steering
from .geometry import AttentionGeometry, resolve_geometry
from .hparams import DeSteinHyperParams
from .pairs import SteeringPair, build_texts, coerce_pairs, load_pairs, sample_pairs, shipped_pairs_path
from .vectors import HOOK_POINTS, SteeringVectors

logger = logging.getLogger(__name__)

PairsLike = Union[None, str, Path, Sequence[Any]]


class DeSteinEditor(Editor):
    """DeStein (arXiv 2404.10464): activation steering from toxic/non-toxic pairs, with head probes."""

    name = "DeStein"
    kind = "activations"
    hparams_class = DeSteinHyperParams
    hparams_package = "detox_plugins.hparams"

    hparams: DeSteinHyperParams

    #: One edit's inputs; with neither, the hparams' pairs.path or the shipped pairs.
    inputs = (
        InputField("pairs", "JSONL pair file {toxic, nontoxic} (a list of pairs in a pipeline step); omitted: the "
                   "hparams' pairs.path, else the shipped pairs.", path=True, metavar="FILE"),
        InputField("requests", "SafeEdit-style requests whose ground_truth (toxic) and target_new (non-toxic) "
                   "form the pairs: a list in a pipeline step, a JSON/JSONL file on the command line.",
                   path=True, metavar="FILE"),
    )

    def read_inputs(self, values: Mapping[str, Any]) -> PairsLike:
        """The pair source (``pairs`` or ``requests``), validated now; None = the hparams' default."""
        if values.get("pairs") is not None and values.get("requests") is not None:
            raise EditError("DeStein takes either 'pairs' or 'requests', not both")
        source = values.get("pairs") if values.get("pairs") is not None else values.get("requests")
        if isinstance(values.get("requests"), str):
            source = read_requests(values["requests"])
        if isinstance(source, Mapping):
            source = [source]
        if self.hparams.vectors:
            if source is not None:
                raise EditError(f"the hparams set vectors: {self.hparams.vectors}; remove 'pairs'/'requests' "
                                f"or set vectors: null to build new vectors")
            return None
        self.resolve_pairs(source)  # a bad file or pair fails now, before any model is touched
        return source

    def planned_footprint(self, model: Any, inputs: Any = None) -> Footprint:
        """A bias fold writes each steered o_proj's bias (and reads its weight); hooks steer the o_proj."""
        hp = self.hparams
        geometry = resolve_geometry(model, hp.attn_out_module_tmp, hp.num_heads)
        names = [geometry.template.format(layer) for layer in geometry.resolve_layers(hp.layers)]
        if hp.apply == "bias_fold":
            return Footprint.of(writes=[f"{n}.bias" for n in names], reads=[f"{n}.weight" for n in names])
        return Footprint.of(hooks=names)

    # ------------------------------------------------------------------ inputs
    def resolve_pairs(self, requests: PairsLike = None) -> tuple[list[SteeringPair], str]:
        """The m pairs to build vectors from, and a provenance string (validated; model untouched)."""
        cfg = self.hparams.pairs
        if requests is None or (isinstance(requests, (list, tuple)) and not requests):
            pool = load_pairs(cfg.path)
            source = str(cfg.path) if cfg.path else f"shipped:{shipped_pairs_path().name}"
        elif isinstance(requests, (str, Path)):
            pool = load_pairs(requests)
            source = str(requests)
        elif isinstance(requests, Mapping) or isinstance(requests, EditRequest):
            pool, source = self._pairs_from_items([requests])
        elif isinstance(requests, Sequence):
            pool, source = self._pairs_from_items(list(requests))
        else:
            raise EditError(f"DeStein requests must be None, a pair-file path or a list of pairs, got "
                            f"{type(requests).__name__}")
        return sample_pairs(pool, cfg.num_pairs, cfg.seed), source

    @staticmethod
    def _pairs_from_items(items: list[Any]) -> tuple[list[SteeringPair], str]:
        def is_safeedit(item: Any) -> bool:
            return isinstance(item, EditRequest) or (isinstance(item, Mapping) and "target_new" in item)

        if items and all(is_safeedit(i) for i in items):
            pairs = []
            for i, item in enumerate(items):
                request = EditRequest.from_any(item)
                if not request.ground_truth or not request.ground_truth.strip():
                    raise EditError(f"request {request.case_id or i}: DeStein needs 'ground_truth' (the unsafe "
                                    f"response) as the toxic side of the pair")
                pairs.append(SteeringPair(toxic=request.ground_truth, nontoxic=request.target_new,
                                          category=request.category, source="edit-request"))
            return coerce_pairs(pairs), "edit-requests"
        return coerce_pairs(items), "in-memory"

    def settings(self, geometry: AttentionGeometry) -> SteerSettings:
        hp = self.hparams
        return SteerSettings(fusion=hp.fusion, apply=hp.apply, alpha=hp.alpha,
                             layers=geometry.resolve_layers(hp.layers), weight=hp.probe.weight)

    # ------------------------------------------------------------------ vectors
    def build_vectors(self, model: Any, tokenizer: Any, pairs: Sequence[SteeringPair], *,
                      geometry: Optional[AttentionGeometry] = None, pair_source: str = "in-memory",
                      progress: Optional[bool] = None) -> SteeringVectors:
        """Capture the pairs on the (unsteered) model and fit the head probes."""
        from .capture import capture_activations
        from .probes import fit_head_probes, top_k_mask

        hp = self.hparams
        cfg = hp.pairs
        show = hp.progress if progress is None else progress
        if tokenizer is None:
            raise EditError("building DeStein vectors needs the tokenizer; pass it to edit()")
        geometry = geometry or resolve_geometry(model, hp.attn_out_module_tmp, hp.num_heads)
        site = hp.capture_site
        pairs = list(pairs)
        if not pairs:
            raise EditError("no steering pairs; pass pairs or a pair file")
        started = time.perf_counter()
        tox_texts, non_texts = build_texts(pairs, cfg.prefixes, cfg.strip)
        acts = capture_activations(model, tokenizer, tox_texts + non_texts, geometry, sites=(site,),
                                   last_k=cfg.last_k, batch_size=cfg.batch_size, progress=show,
                                   desc="DeStein capture")[site]
        m = len(pairs)
        toxic, nontoxic = acts[:m], acts[m:]
        diff = toxic - nontoxic
        v = diff.sum(0) if cfg.aggregate == "sum" else diff.mean(0)
        import torch

        acc = torch.zeros(geometry.num_layers, geometry.num_heads)
        mask = None
        probe_info: dict[str, Any] = {"kind": hp.probe.kind}
        if hp.probe.kind == "logistic":
            result = fit_head_probes(toxic, nontoxic, geometry.num_heads, hp.probe, seed=cfg.seed, progress=show)
            acc = result.acc
            if hp.probe.top_k is not None:
                mask = top_k_mask(acc, hp.probe.top_k, result.score)
            probe_info.update(split=hp.probe.split, train_frac=hp.probe.train_frac, top_k=hp.probe.top_k,
                              train_pairs=len(result.train_pairs), val_pairs=len(result.val_pairs),
                              mean_acc=round(float(acc.mean()), 4), max_acc=round(float(acc.max()), 4))
        config = getattr(model, "config", None)
        info = {
            "last_k": cfg.last_k, "prefixes": cfg.prefixes, "seed": cfg.seed, "pair_source": pair_source,
            "probe": probe_info, "model_id": getattr(config, "_name_or_path", None),
            "build_seconds": round(time.perf_counter() - started, 3),
        }
        logger.info("DeStein: built %s vectors from %d pairs in %.1f s", site, m, info["build_seconds"])
        return SteeringVectors(v=v, acc=acc, mask=mask, site=site, num_pairs=m, aggregate=cfg.aggregate, info=info)

    # ------------------------------------------------------------------ the edit
    def edit(self, model: Any, tokenizer: Any, requests: PairsLike = None, *,
             vectors: Optional[SteeringVectors] = None, progress: Optional[bool] = None) -> DeSteinEdit:
        """Build (or take) the vectors and steer ``model`` in place; see the module docstring."""
        hp = self.hparams
        geometry = resolve_geometry(model, hp.attn_out_module_tmp, hp.num_heads)
        settings = self.settings(geometry)
        # a fold writes each steered projection's bias from its weight; hooks place vectors beside it
        check_in_memory({f"{geometry.template.format(layer)}.weight": geometry.modules[layer].weight
                         for layer in settings.layers}, editor="DeStein")
        if vectors is None and hp.vectors:
            vectors = SteeringVectors.load(hp.vectors)
        pairs: list[SteeringPair] = []
        source = "vectors"
        if vectors is None:
            pairs, source = self.resolve_pairs(requests)
        elif requests:
            raise EditError("pass either steering pairs (requests) or vectors, not both")
        if vectors is not None and vectors.site != hp.capture_site:
            raise EditError(f"the vectors were captured at {vectors.site} but fusion {hp.fusion!r} with capture "
                            f"{hp.capture!r} needs {hp.capture_site}; set capture: {vectors.site} or rebuild")
        metadata = self.base_metadata(model, destein={})  # pre-edit fingerprint, before any change
        if vectors is None:
            vectors = self.build_vectors(model, tokenizer, pairs, geometry=geometry, pair_source=source,
                                         progress=progress)
        metadata["destein"] = vector_metadata(vectors)
        edit = apply_steering(model, vectors, settings, geometry, metadata)
        logger.info("DeStein: applied %r", edit)
        return edit

    @classmethod
    def apply_saved(cls, model: Any, saved: Any, tokenizer: Any = None, *,
                    alpha: Optional[float] = None) -> DeSteinEdit:
        """Re-apply a saved DeStein edit (``registry.load_edit(dir).apply(model)`` calls this)."""
        if saved.payload != PAYLOAD:
            raise ManifestError(f"{saved.path}: payload {saved.payload!r} is not {PAYLOAD!r}")
        manifest = saved.manifest
        info = manifest.get("destein")
        if not isinstance(info, Mapping):
            raise ManifestError(f"{saved.path}: the manifest has no 'destein' section; the save is damaged")
        hparams = manifest.get("hparams") or {}
        template = hparams.get("attn_out_module_tmp")
        num_heads = hparams.get("num_heads")
        settings_keys = {"fusion", "apply", "alpha", "layers", "weight", "op", "site"}
        vectors = SteeringVectors.from_tensors(
            {k: t for k, t in saved.tensors.items() if k in ("v", "acc", "mask")},
            {k: v for k, v in info.items() if k not in settings_keys}, str(saved.path))
        try:
            geometry = resolve_geometry(model, template, num_heads)
            settings = SteerSettings(fusion=str(info["fusion"]), apply=str(info["apply"]),
                                     alpha=info["alpha"] if alpha is None else alpha,
                                     layers=[int(x) for x in info["layers"]], weight=str(info["weight"]))
        except KeyError as exc:
            raise ManifestError(f"{saved.path}: the 'destein' section lacks {exc}; the save is damaged") from None
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{saved.path}: the 'destein' section is malformed ({exc}); the save is "
                                f"damaged") from None
        return apply_steering(model, vectors, settings, geometry, saved.metadata_for_apply())


def vector_metadata(vectors: SteeringVectors) -> dict[str, Any]:
    """The vector provenance recorded in the edit manifest (and mirrored in the vector file)."""
    return {"hook_point": HOOK_POINTS[vectors.site], "aggregate": vectors.aggregate,
            "num_pairs": vectors.num_pairs, "format_version": 1, **vectors.info}
