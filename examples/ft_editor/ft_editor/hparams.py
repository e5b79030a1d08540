"""FT-L hyperparameters: EasyEdit's ``FTHyperParams`` field for field, so its FT YAML files load unchanged."""

from dataclasses import dataclass, field
from typing import List, Literal, Union

from registry import HyperParams, HyperParamsError


UNUSED = "Not read by FT; an EasyEdit field, kept so its files load."


def _field(default: object, text: str) -> object:
    return field(default=default, metadata={"help": text})


@dataclass
class FTHyperParams(HyperParams):
    """alg_name, model_name, device, dtype, model_parallel and seed come from ``registry.HyperParams``."""

    layers: List[int] = field(default_factory=lambda: [4], metadata={"help": "Layers whose weight is tuned."})
    num_steps: int = _field(8, "Adam steps at most (EasyEdit stops once the loss is below 1e-2).")
    lr: float = _field(1e-2, "Adam learning rate.")
    weight_decay: float = _field(0.0, "Adam weight decay.")
    kl_factor: float = _field(0.0, "Unused, as in EasyEdit's FT (kept so its files load).")
    norm_constraint: Union[bool, float] = _field(1e-2, "false, or eps: clamp the weight to W0 ± eps after each step.")
    objective_optimization: Literal["target_new", "prompt_last"] = _field("target_new", (
        "target_new: NLL of the target tokens after the prompt; prompt_last: EasyEdit's original FT-L, "
        "every target token scored at the prompt's last position."))
    rewrite_module_tmp: str = _field("model.layers.{}.mlp.down_proj.weight", (
        "Tuned tensor(s): every parameter whose name contains rewrite_module_tmp.format(layer)."))
    layer_module_tmp: str = _field("model.layers.{}", UNUSED)
    mlp_module_tmp: str = _field("model.layers.{}.mlp", UNUSED)
    attn_module_tmp: str = _field("model.layers.{}.self_attn", UNUSED)
    ln_f_module: str = _field("model.norm", UNUSED)
    lm_head_module: str = _field("lm_head", UNUSED)
    batch_size: int = _field(1, "Requests per optimizer step.")
    max_length: int = _field(128, "Longest prompt + target_new, in tokens.")

    def __post_init__(self) -> None:
        super().__post_init__()
        eps = self.norm_constraint
        for bad, message in [
            (not self.layers or min(self.layers) < 0, f"layers must be a non-empty list of indices >= 0: {self.layers}"),
            (self.num_steps < 1 or self.lr <= 0, f"need num_steps >= 1 and lr > 0, got {self.num_steps} and {self.lr}"),
            (self.batch_size < 1 or self.max_length < 2, "need batch_size >= 1 and max_length >= 2"),
            ("{}" not in self.rewrite_module_tmp, f"rewrite_module_tmp needs '{{}}': {self.rewrite_module_tmp!r}"),
            (eps is True or (eps is not False and eps <= 0), f"norm_constraint must be false or > 0, got {eps!r}"),
        ]:
            if bad:
                raise HyperParamsError(f"{message}; fix it in the FT hparams")
