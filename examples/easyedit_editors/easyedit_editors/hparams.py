"""Hyperparameters of EasyEdit's ROME, MEMIT and FT, field for field as EasyEdit's own classes declare them,
so EasyEdit's YAML files load unchanged (``registry.from_hparams(path)``) and validate like every other editor's.

``alg_name``, ``model_name``, ``device``, ``dtype``, ``model_parallel`` and ``seed`` come from
``registry.HyperParams``. The editor hands EasyEdit its own hparams object built from these fields
(``EasyEditHyperParams.host_values``), with ``device`` set to where the loaded model is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Literal, Union

from registry import HyperParams, HyperParamsError

HOST_ONLY = "Read by EasyEdit's own host when it loads a model; unused when this editor edits a loaded model."
FACT_TOKENS = ("last", "subject_first", "subject_last", "subject_first_after_last")


def _field(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class EasyEditHyperParams(HyperParams):
    """What every EasyEdit algorithm here shares: the edited layers and where the model's parts are."""

    layers: List[int] = field(default_factory=lambda: [4], metadata={"help": "Indices of the edited layers."})
    rewrite_module_tmp: str = _field("model.layers.{}.mlp.down_proj",
                                     "The edited module (ROME, MEMIT) or tensor name part (FT), '{}' = the layer.")
    layer_module_tmp: str = _field("model.layers.{}", "A decoder block, '{}' = the layer.")
    mlp_module_tmp: str = _field("model.layers.{}.mlp", "A block's MLP, '{}' = the layer.")
    attn_module_tmp: str = _field("model.layers.{}.self_attn", "A block's attention, '{}' = the layer.")
    ln_f_module: str = _field("model.norm", "The final norm before the output head.")
    lm_head_module: str = _field("lm_head", "The output head (its weight maps hidden states to the vocabulary).")
    max_length: int = _field(40, "Longest tokenized input EasyEdit builds, in tokens.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layers or min(self.layers) < 0:
            raise HyperParamsError(f"layers must be a non-empty list of indices >= 0, got {self.layers}; fix 'layers'")
        if "{}" not in self.rewrite_module_tmp:
            raise HyperParamsError(f"rewrite_module_tmp needs '{{}}' for the layer, got {self.rewrite_module_tmp!r}")

    def host_values(self, host_class: type) -> dict[str, Any]:
        """The values EasyEdit's ``host_class`` (a dataclass) takes: its fields that this object has."""
        import dataclasses

        return {f.name: getattr(self, f.name) for f in dataclasses.fields(host_class) if hasattr(self, f.name)}


@dataclass
class KeyValueHyperParams(EasyEditHyperParams):
    """ROME and MEMIT: an MLP output matrix is a key-value memory; the key is the subject's hidden state at
    ``rewrite_module_tmp``'s input, the value is optimised so the model states ``target_new``."""

    fact_token: Literal["last", "subject_first", "subject_last", "subject_first_after_last"] = _field(
        "subject_last", "Which token of the prompt carries the key: the subject's last token (the papers') or others.")
    v_num_grad_steps: int = _field(25, "Adam steps that optimise the value vector.")
    v_lr: float = _field(5e-1, "Learning rate of the value optimisation.")
    v_loss_layer: int = _field(29, "Layer whose output is read for the target's loss (the last block).")
    v_weight_decay: float = _field(1e-3, "Weight decay on the value change.")
    clamp_norm_factor: float = _field(4.0, "The value change is clamped to this many times the original value's norm.")
    kl_factor: float = _field(0.0625, "Weight of the KL term that keeps the subject's other facts ('{} is a').")
    mom2_adjustment: bool = _field(False, (
        "Whiten the key with the inverse second moment of the layer's inputs (ROME's C^-1 k); needs the stats "
        "file (`detox easyedit-stats`). MEMIT always uses the second moment."))
    mom2_dataset: str = _field("local_text", (
        "Name of the text the second moment was computed on: part of the stats file's path. EasyEdit downloads "
        "'wikipedia'/'wikitext' when the file is missing; this editor never does, it refuses instead."))
    mom2_n_samples: int = _field(100000, "Number of texts the second moment covers: part of the file name and checked.")
    mom2_dtype: Literal["float64", "float32", "float16"] = _field("float32", "Precision of the second moment.")
    stats_dir: str = _field("./data/stats", (
        "Folder of the second-moment files, EasyEdit's layout. '~' and environment variables are expanded; "
        "$DETOX_CACHE defaults to ~/.cache/detox-plugins."))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.v_num_grad_steps < 1 or self.v_lr <= 0:
            raise HyperParamsError(f"need v_num_grad_steps >= 1 and v_lr > 0, got {self.v_num_grad_steps} and "
                                   f"{self.v_lr}; fix them in the {self.alg_name} hparams")
        if self.mom2_n_samples < 1:
            raise HyperParamsError(f"mom2_n_samples must be >= 1, got {self.mom2_n_samples}")

    def host_values(self, host_class: type) -> dict[str, Any]:
        """As the base, with ``stats_dir`` expanded: EasyEdit reads the folder as it is given."""
        values = super().host_values(host_class)
        if "stats_dir" in values:
            values["stats_dir"] = str(self.resolved_stats_dir())
        return values

    def resolved_stats_dir(self) -> Path:
        """``stats_dir`` with ``~`` and variables expanded (``$DETOX_CACHE`` defaults to the model cache)."""
        from registry.models import CACHE_ENV, cache_dir

        environ = {**os.environ, CACHE_ENV: str(cache_dir())}
        text = os.path.expanduser(self.stats_dir)
        for name in sorted(environ, key=len, reverse=True):
            text = text.replace("${" + name + "}", environ[name]).replace("$" + name, environ[name])
        return Path(text)


@dataclass
class ROMEHyperParams(KeyValueHyperParams):
    """EasyEdit's ROMEHyperParams: one rank-one update of each layer's MLP output matrix per fact."""

    context_template_length_params: List[List[int]] = field(
        default_factory=lambda: [[5, 10], [10, 10]],
        metadata={"help": "[[tokens, count], ...] of the sampled prefixes the key and value are averaged over."})
    fp16: bool = _field(False, HOST_ONLY)


@dataclass
class MEMITHyperParams(KeyValueHyperParams):
    """EasyEdit's MEMITHyperParams: many facts at once, the change spread over several layers."""

    layer_selection: Literal["all", "random"] = _field("all", "Which of the layers are edited (EasyEdit: all).")
    mom2_update_weight: float = _field(15000.0, "Weight of the second moment against the new keys (higher: smaller change).")
    mom2_adjustment: bool = _field(True, "Unused by MEMIT, which always uses the second moment (kept so its files load).")
    batch_size: int = _field(1, HOST_ONLY)


@dataclass
class FTHyperParams(EasyEditHyperParams):
    """EasyEdit's FTHyperParams: fine-tune the named tensors of ``layers`` on (prompt, target_new)."""

    rewrite_module_tmp: str = _field("model.layers.{}.mlp.down_proj.weight",
                                     "Tuned tensors: every parameter whose name contains rewrite_module_tmp.format(layer).")
    num_steps: int = _field(25, "Epochs over the requests.")
    lr: float = _field(5e-4, "Adam learning rate.")
    weight_decay: float = _field(0.0, "Adam weight decay.")
    kl_factor: float = _field(0.0, "Unused by EasyEdit's FT (kept so its files load).")
    norm_constraint: Union[bool, float] = _field(False, "false, or eps: each entry kept within W0 +- eps.")
    objective_optimization: Literal["prompt_last", "target_new"] = _field("prompt_last", (
        "prompt_last: FT-L, every target token scored at the prompt's last position; target_new: FT-M, the "
        "usual next-token loss on the target."))
    batch_size: int = _field(64, "Requests per optimiser step.")

    def __post_init__(self) -> None:
        super().__post_init__()
        eps = self.norm_constraint
        if self.num_steps < 1 or self.lr <= 0:
            raise HyperParamsError(f"need num_steps >= 1 and lr > 0, got {self.num_steps} and {self.lr}; fix the FT hparams")
        if eps is True or (eps is not False and eps <= 0):
            raise HyperParamsError(f"norm_constraint must be false or > 0, got {eps!r}; fix the FT hparams")
        if self.batch_size < 1:
            raise HyperParamsError(f"batch_size must be >= 1, got {self.batch_size}")


__all__ = ["EasyEditHyperParams", "FTHyperParams", "KeyValueHyperParams", "MEMITHyperParams", "ROMEHyperParams"]
