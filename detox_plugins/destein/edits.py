"""The revertible DeStein edits: ``HookEdit`` (forward hooks) and ``BiasFoldEdit`` (o_proj bias).

Both are ``registry.edits.Edit`` handles with payload ``destein_vectors``: ``revert()`` removes
exactly their hooks or restores the original bias bit for bit (or removes the bias where the model
had none), ``with edit:`` reverts on exit even after an exception, and ``save(dir)`` writes the
vectors (safetensors) and settings (JSON) that ``DeSteinEditor.apply_saved`` re-applies.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

from registry.edits import Edit
from registry.errors import EditError
from registry.footprint import Footprint

from .fusion import AddHook, AlphaLike, BiasFold, RotateHook, Strength, project_shift, validate_alpha
from .geometry import AttentionGeometry
from .vectors import OPS, VECTOR_FILE, SteeringVectors

logger = logging.getLogger(__name__)

PAYLOAD = "destein_vectors"


@dataclass
class SteerSettings:
    """How vectors are applied: fusion, apply mode, strength, layers and head weighting."""

    fusion: str  # rotate | additive
    apply: str  # hook | bias_fold
    alpha: float
    layers: list[int]
    weight: str  # one_plus_acc | acc | binary

    def to_dict(self) -> dict[str, Any]:
        return {"fusion": self.fusion, "apply": self.apply, "alpha": self.alpha,
                "layers": list(self.layers), "weight": self.weight}


def check_compatible(vectors: SteeringVectors, geometry: AttentionGeometry) -> None:
    """Raise EditError unless the vectors fit the model's layers, heads and widths."""
    width = geometry.dim(vectors.site)
    if (vectors.num_layers, vectors.dim, vectors.num_heads) != (geometry.num_layers, width, geometry.num_heads):
        raise EditError(
            f"the DeStein vectors ({vectors.num_layers} layers × {vectors.dim}, {vectors.num_heads} heads, site "
            f"{vectors.site}) do not fit this model ({geometry.num_layers} layers × {width}, "
            f"{geometry.num_heads} heads); rebuild them on this model")


class DeSteinEdit(Edit):
    """Common part of both DeStein edits: the vectors, the settings, save and re-apply."""

    payload = PAYLOAD

    def __init__(self, model: Any, metadata: Mapping[str, Any], vectors: SteeringVectors,
                 settings: SteerSettings, geometry: AttentionGeometry) -> None:
        super().__init__(model, metadata)
        self.vectors = vectors
        self.settings = settings
        self.geometry = geometry
        self.applied = False
        self._install()
        self.applied = True

    # ------------------------------------------------------------------ subclass hooks
    def _install(self) -> None:
        raise NotImplementedError

    @property
    def alpha(self) -> Union[float, Any]:
        raise NotImplementedError

    def set_alpha(self, alpha: AlphaLike) -> None:
        """Change the strength in place (hooks: any α; bias fold: a float, refolded)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared behaviour
    def reapply(self) -> "DeSteinEdit":
        """Install the edit again after ``revert()``; returns self (usable as a context manager)."""
        if self.applied:
            raise EditError(f"this {self.editor} edit is already applied; revert it first")
        self._install()
        self.applied = True
        return self

    def tensors(self) -> dict[str, Any]:
        include_u = self.settings.weight if self.settings.fusion == "rotate" else None
        return self.vectors.tensors(include_u=include_u)

    def module_names(self) -> list[str]:
        """Names of the steered projection modules (one per steered layer)."""
        return [self.geometry.template.format(layer) for layer in self.settings.layers]

    def footprint(self) -> Footprint:
        """What registry.compose checks for conflicts: the hooked modules (a BiasFoldEdit overrides)."""
        return Footprint.of(hooks=self.module_names())

    def summary(self) -> list[str]:
        """Fusion, strength, layers, vectors and probes, for ``detox edit``."""
        vectors, info = self.vectors, self.vectors.info
        lines = [f"fusion     {self.settings.fusion} / {self.settings.apply}, alpha {self.alpha}, "
                 f"{len(self.settings.layers)} layers",
                 f"vectors    {vectors.site} [{vectors.num_layers} x {vectors.dim}], {vectors.num_pairs} pairs "
                 f"({info.get('pair_source')}), built in {info.get('build_seconds')} s"]
        probe = info.get("probe") or {}
        if probe.get("kind") == "logistic":
            lines.append(f"probes     mean held-out acc {probe.get('mean_acc')}, top_k {probe.get('top_k')}")
        return lines

    def _destein_metadata(self) -> dict[str, Any]:
        alpha = self.alpha
        settings = self.settings.to_dict()
        settings["alpha"] = alpha if isinstance(alpha, float) else [float(a) for a in alpha]
        return {**dict(self.metadata.get("destein") or {}), **settings,
                "op": OPS[self.settings.fusion], "site": self.vectors.site}

    def manifest(self) -> dict[str, Any]:
        manifest = super().manifest()
        manifest["destein"] = self._destein_metadata()
        return manifest

    def write_extra(self, directory: Path) -> list[str]:
        """The standalone vector file (key fields mirrored in its safetensors ``__metadata__``)."""
        meta = self._destein_metadata()
        model = self.metadata.get("model") or {}
        include_u = self.settings.weight if self.settings.fusion == "rotate" else None
        self.vectors.save(directory / VECTOR_FILE, include_u=include_u, op=meta["op"],
                          model_id=model.get("name_or_path"), model_fingerprint=model.get("fingerprint"),
                          model_revision=model.get("revision"), fusion=meta["fusion"], alpha=meta["alpha"],
                          weight=meta["weight"], editor=self.editor)
        return [VECTOR_FILE]

    def __repr__(self) -> str:
        state = "applied" if self.applied else "reverted"
        return (f"{type(self).__name__}({self.settings.fusion}/{self.settings.apply}, alpha={self.alpha}, "
                f"{len(self.settings.layers)} layers, {state})")


class HookEdit(DeSteinEdit):
    """DeStein applied through forward hooks (rotate, or additive with a pre-hook / post-hook)."""

    def export_config(self) -> dict[str, Any]:
        raise EditError(
            f"DeStein with apply: hook (fusion {self.settings.fusion}) steers activations at run time, which no "
            f"weights can hold; for a checkpoint use fusion: additive with apply: bias_fold, or serve this edit "
            f"with detox (load_edit(DIR).apply(model))")

    def __init__(self, model: Any, metadata: Mapping[str, Any], vectors: SteeringVectors,
                 settings: SteerSettings, geometry: AttentionGeometry) -> None:
        self.strength = Strength(settings.alpha)
        self.handles: list[Any] = []
        super().__init__(model, metadata, vectors, settings, geometry)

    def _make_hooks(self) -> list[tuple[Any, Any, str]]:
        """(module, hook, 'pre'|'post') per steered layer; vectors precomputed once in float32."""
        s = self.settings
        out = []
        if s.fusion == "rotate":
            units = self.vectors.rotate_units(s.weight)
            for layer in s.layers:
                module = self.geometry.modules[layer]
                device = module.weight.device if hasattr(module, "weight") else units.device
                out.append((module, RotateHook(units[layer].to(device), self.strength), "post"))
        else:
            shifts = self.vectors.additive_shift(s.weight)
            pre = self.vectors.site == "head_input"
            for layer in s.layers:
                module = self.geometry.modules[layer]
                device = module.weight.device if hasattr(module, "weight") else shifts.device
                out.append((module, AddHook(shifts[layer].to(device), self.strength, pre=pre),
                            "pre" if pre else "post"))
        return out

    def _install(self) -> None:
        hooks = self._make_hooks()
        handles = []
        try:
            for module, hook, where in hooks:
                if where == "pre":
                    handles.append(module.register_forward_pre_hook(hook))
                else:
                    handles.append(module.register_forward_hook(hook))
        except BaseException:
            for handle in handles:
                handle.remove()
            raise
        self.handles = handles

    def _revert(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @property
    def alpha(self) -> Union[float, Any]:
        return self.strength.value

    def set_alpha(self, alpha: AlphaLike) -> None:
        """Set α: a float, or one value per batch row (the batch size must then match at run time)."""
        self.strength.set(alpha)

    @contextlib.contextmanager
    def paused(self) -> Iterator["HookEdit"]:
        """Temporarily run the model unsteered (the hooks stay installed and pass through)."""
        previous = self.strength.paused
        self.strength.paused = True
        try:
            yield self
        finally:
            self.strength.paused = previous


class BiasFoldEdit(DeSteinEdit):
    """Additive DeStein folded into each steered layer's o_proj bias: zero run-time cost."""

    def __init__(self, model: Any, metadata: Mapping[str, Any], vectors: SteeringVectors,
                 settings: SteerSettings, geometry: AttentionGeometry) -> None:
        if settings.fusion != "additive":
            raise EditError("only fusion 'additive' can be folded into a bias; use apply: hook for rotate")
        value = validate_alpha(settings.alpha)
        if not isinstance(value, float):
            raise EditError("bias_fold needs one float alpha for the whole batch; use apply: hook for "
                            "per-request alpha")
        self._alpha = value
        self.folds: list[BiasFold] = []
        self._shifts: Optional[dict[int, Any]] = None
        super().__init__(model, metadata, vectors, settings, geometry)

    def _layer_shifts(self) -> dict[int, Any]:
        """c_l in float32: W_o δ_l for head-input vectors, δ_l for attention-output vectors."""
        if self._shifts is None:
            import torch

            deltas = self.vectors.additive_shift(self.settings.weight)
            shifts = {}
            with torch.no_grad():
                for layer in self.settings.layers:
                    module = self.geometry.modules[layer]
                    if self.vectors.site == "head_input":
                        shifts[layer] = project_shift(module, deltas[layer])
                    else:
                        shifts[layer] = deltas[layer].to(module.weight.device)
            self._shifts = shifts
        return self._shifts

    def _install(self) -> None:
        folds: list[BiasFold] = []
        try:
            for layer, shift in self._layer_shifts().items():
                fold = BiasFold(self.geometry.modules[layer], shift)
                fold.fold(self._alpha)
                folds.append(fold)
        except BaseException:
            for fold in reversed(folds):
                fold.restore()
            raise
        self.folds = folds

    def _revert(self) -> None:
        import torch

        for fold in self.folds:  # check every layer first, so a failed revert changes nothing
            bias = getattr(fold.module, "bias", None)
            if bias is None or fold.written is None or not torch.equal(bias.detach(), fold.written):
                raise EditError("an o_proj bias changed after this DeStein fold was applied; revert the "
                                "later edits first (newest first)")
        for fold in reversed(self.folds):
            fold.restore()
        self.folds = []

    def original_tensors(self) -> dict[str, Any]:
        """The original biases this fold overwrote (layers whose o_proj had no bias add one: absent)."""
        names = {id(module): name for name, module in self.model.named_modules()}
        return {f"{names[id(fold.module)]}.bias": fold.original for fold in self.folds
                if fold.had_bias and id(fold.module) in names}

    @property
    def alpha(self) -> float:
        return self._alpha

    def export_config(self) -> dict[str, Any]:
        """Nothing when every folded projection had a bias; else the config flag that gives the attention
        projections biases (``attention_bias``: Llama, Qwen3, Gemma 2/3, OLMo 2, Granite); the other q/k/v
        biases that flag adds are written as zeros. Refused where the architecture has no such flag."""
        if all(fold.had_bias for fold in self.folds):
            return {}
        config = self.model.config
        if hasattr(config, "attention_bias"):
            return {"attention_bias": True}
        raise EditError(
            f"a {config.model_type} checkpoint cannot hold this DeStein fold: the attention output projection has "
            f"no bias and the {type(config).__name__} has no flag (such as attention_bias) that adds one; serve the "
            f"edit with detox (load_edit(DIR).apply(model)), or use a family with attention_bias (Llama, Qwen3, "
            f"Gemma 2/3, OLMo 2, Granite) or one whose projection has a bias (GPT-2, OPT, GPT-NeoX)")

    def footprint(self) -> Footprint:
        """The folded biases are written; they were computed from each o_proj's weight (W_o·δ)."""
        names = self.module_names()
        return Footprint.of(writes=[f"{n}.bias" for n in names], reads=[f"{n}.weight" for n in names])

    def set_alpha(self, alpha: AlphaLike) -> None:
        """Refold with a new float α (the bias is restored, then folded again)."""
        value = validate_alpha(alpha)
        if not isinstance(value, float):
            raise EditError("bias_fold needs one float alpha for the whole batch; use apply: hook for "
                            "per-request alpha")
        if self.applied:
            self._revert()
            self._alpha = value
            self._install()
        else:
            self._alpha = value


def apply_steering(model: Any, vectors: SteeringVectors, settings: SteerSettings,
                   geometry: AttentionGeometry, metadata: Mapping[str, Any]) -> DeSteinEdit:
    """Check the vectors against the model, then install the edit the settings ask for."""
    check_compatible(vectors, geometry)
    for layer in settings.layers:
        if not 0 <= layer < geometry.num_layers:
            raise EditError(f"layer {layer} is out of range (0..{geometry.num_layers - 1}); fix 'layers'")
    if settings.apply == "bias_fold":
        return BiasFoldEdit(model, metadata, vectors, settings, geometry)
    if settings.apply != "hook":
        raise EditError(f"unknown apply mode {settings.apply!r}; choose hook or bias_fold")
    if settings.fusion not in ("rotate", "additive"):
        raise EditError(f"unknown fusion {settings.fusion!r}; choose rotate or additive")
    if settings.fusion == "rotate" and vectors.site != "attn_output":
        raise EditError("fusion 'rotate' needs attention-output vectors (capture: attn_output)")
    return HookEdit(model, metadata, vectors, settings, geometry)
