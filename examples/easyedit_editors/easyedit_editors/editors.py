"""EasyEdit's ROME, MEMIT and FT as editors: which EasyEdit function runs, which tensors it writes, what it needs."""

from __future__ import annotations

from typing import Any, ClassVar

from registry import EditError

from .algorithm import EasyEditAlgorithm
from .hparams import FTHyperParams, KeyValueHyperParams, MEMITHyperParams, ROMEHyperParams
from .stats import check_stats, edited_module


class KeyValueAlgorithm(EasyEditAlgorithm):
    """ROME and MEMIT: write ``rewrite_module_tmp.format(layer).weight`` of each layer, located by the subject."""

    needs_subject = True
    hparams: KeyValueHyperParams
    uses_stats: ClassVar[bool] = True

    def target_weights(self, model: Any) -> dict[str, Any]:
        found = {}
        for layer in self.hparams.layers:
            module = edited_module(model, self.hparams, layer)
            found[f"{self.hparams.rewrite_module_tmp.format(layer)}.weight"] = module.weight
        return found

    def check_ready(self, model: Any) -> None:
        if self.uses_stats:
            check_stats(model, self.hparams)


class ROMEEditor(KeyValueAlgorithm):
    """EasyEdit's ROME (``apply_rome_to_model``): a rank-one update of one MLP output matrix per fact."""

    name = "ROME"
    hparams_class = ROMEHyperParams
    hparams: ROMEHyperParams
    host_module = "easyeditor.models.rome.rome_main"
    host_apply = "apply_rome_to_model"
    host_hparams_class = "ROMEHyperParams"
    requests_per_call = 1  # EasyEdit's ROME edits with the first request of a call only
    host_caches = {"easyeditor.models.rome.rome_main": {"CONTEXT_TEMPLATES_CACHE": None},
                   "easyeditor.models.rome.compute_u": {"inv_mom2_cache": {}}}

    @property
    def uses_stats(self) -> bool:  # type: ignore[override]
        return self.hparams.mom2_adjustment


class MEMITEditor(KeyValueAlgorithm):
    """EasyEdit's MEMIT (``apply_memit_to_model``): many facts at once, spread over several layers."""

    name = "MEMIT"
    hparams_class = MEMITHyperParams
    hparams: MEMITHyperParams
    host_module = "easyeditor.models.memit.memit_main"
    host_apply = "apply_memit_to_model"
    host_hparams_class = "MEMITHyperParams"
    host_caches = {"easyeditor.models.memit.memit_main": {"CONTEXT_TEMPLATES_CACHE": None, "COV_CACHE": {}}}

    def check_ready(self, model: Any) -> None:
        """EasyEdit's MEMIT reads ``<lm_head_module>.weight`` as a parameter of its own: a tied output head
        (SmolLM2, Gemma, GPT-2) has none, its weight is the embedding's."""
        name = f"{self.hparams.lm_head_module}.weight"
        if name not in dict(model.named_parameters()):
            embeddings = model.get_input_embeddings()
            tied = next((n for n, p in model.named_parameters() if p is embeddings.weight), None)
            fix = f"set lm_head_module: {tied.rsplit('.', 1)[0]!r} (the tied output head's weight)" if tied else \
                "point lm_head_module at the output head"
            raise EditError(f"MEMIT reads {name!r}, which is not a parameter of this model; {fix}")
        super().check_ready(model)


class FTEditor(EasyEditAlgorithm):
    """EasyEdit's FT (``apply_ft_to_model``): fine-tune every parameter whose name contains the template."""

    name = "FT"
    hparams_class = FTHyperParams
    hparams: FTHyperParams
    host_module = "easyeditor.models.ft.ft_main"
    host_apply = "apply_ft_to_model"
    host_hparams_class = "FTHyperParams"

    def target_weights(self, model: Any) -> dict[str, Any]:
        """EasyEdit's rule: every parameter whose name contains one layer's ``rewrite_module_tmp``."""
        keys = {layer: self.hparams.rewrite_module_tmp.format(layer) for layer in self.hparams.layers}
        found = {n: p for n, p in model.named_parameters() if any(k in n for k in keys.values())}
        unmatched = [layer for layer, key in keys.items() if not any(key in n for n in found)]
        if unmatched:
            raise EditError(f"rewrite_module_tmp {self.hparams.rewrite_module_tmp!r} matches no parameter for "
                            f"layer(s) {unmatched} (the model has {len(found)} matches for the others); fix the "
                            f"template or layers")
        return found
