"""Where each layer's attention output projection lives, and its dimensions.

H = ``num_attention_heads`` and d_h = ``o_proj.in_features / H`` (GQA-safe: the projection's input
is the concatenation of the *query* heads whatever the KV head count).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from registry.errors import EditError

#: Attention output projection per ``config.model_type``; ``{}`` is the layer index.
MODULE_TEMPLATES: dict[str, str] = {
    **{t: "model.layers.{}.self_attn.o_proj" for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
        "gemma3_text", "olmo", "olmo2", "granite", "phi3", "smollm3", "cohere", "starcoder2", "stablelm",
    )},
    "gpt2": "transformer.h.{}.attn.c_proj",
    "gptj": "transformer.h.{}.attn.out_proj",
    "gpt_neox": "gpt_neox.layers.{}.attention.dense",
    "opt": "model.decoder.layers.{}.self_attn.out_proj",
    "mpt": "transformer.blocks.{}.attn.out_proj",
    "falcon": "transformer.h.{}.self_attention.dense",
    "phi": "model.layers.{}.self_attn.dense",
    "bloom": "transformer.h.{}.self_attention.dense",
}

_AUTO = re.compile(
    r"^(?P<stem>.*\.)(?P<idx>\d+)\.(self_attn|attn|attention|self_attention)\.(o_proj|out_proj|c_proj|dense)$")


@dataclass
class AttentionGeometry:
    """The projection modules of every layer and the dimensions steering needs."""

    template: str
    modules: list[Any]
    num_heads: int
    in_features: int
    out_features: int

    @property
    def num_layers(self) -> int:
        return len(self.modules)

    @property
    def head_dim(self) -> int:
        return self.in_features // self.num_heads

    def dim(self, site: str) -> int:
        """Vector width at a capture site: o_proj output (attn_output) or input (head_input)."""
        return self.out_features if site == "attn_output" else self.in_features

    def resolve_layers(self, layers: Union[str, Sequence[int]]) -> list[int]:
        """Sorted, de-duplicated layer indices; negative indices count from the end."""
        if isinstance(layers, str):
            return list(range(self.num_layers))
        out = set()
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise EditError(f"layer indices must be integers, got {layer!r}; fix 'layers'")
            index = layer + self.num_layers if layer < 0 else layer
            if not 0 <= index < self.num_layers:
                raise EditError(
                    f"layer {layer} is out of range for a model with {self.num_layers} layers; fix 'layers'")
            out.add(index)
        return sorted(out)


def projection_dims(module: Any) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or a transformers ``Conv1D``."""
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return int(module.weight.shape[0]), int(module.nf)
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    raise EditError(
        f"cannot read the dimensions of {type(module).__name__}; point attn_out_module_tmp at the "
        f"attention output projection (an nn.Linear or Conv1D)")


def find_template(model: Any) -> str:
    """The module-name template of the attention output projection of ``model``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in MODULE_TEMPLATES:
        return MODULE_TEMPLATES[model_type]
    stems = {}
    for name, _ in model.named_modules():
        match = _AUTO.match(name)
        if match:
            stems.setdefault(name[: match.start("idx")] + "{}" + name[match.end("idx"):], 0)
    if len(stems) == 1:
        return next(iter(stems))
    raise EditError(
        f"cannot locate the attention output projection of model type {model_type!r}; set "
        f"attn_out_module_tmp in the hparams (e.g. 'model.layers.{{}}.self_attn.o_proj')")


def resolve_geometry(model: Any, template: Optional[str] = None, num_heads: Optional[int] = None) -> AttentionGeometry:
    """Resolve the projections of every layer; errors name the template and the fix."""
    template = template or find_template(model)
    config = getattr(model, "config", None)
    num_layers = getattr(config, "num_hidden_layers", None)
    modules = []
    index = 0
    while True:
        try:
            modules.append(model.get_submodule(template.format(index)))
        except AttributeError:
            break
        index += 1
    if not modules:
        raise EditError(
            f"the model has no module {template.format(0)!r}; fix attn_out_module_tmp ({template!r})")
    if num_layers is not None and len(modules) != num_layers:
        raise EditError(
            f"template {template!r} matched {len(modules)} modules but the model has {num_layers} layers; "
            f"fix attn_out_module_tmp")
    dims = {projection_dims(m) for m in modules}
    if len(dims) != 1:
        raise EditError(f"the projections matched by {template!r} differ in shape ({sorted(dims)}); "
                        f"per-layer shapes are not supported")
    in_features, out_features = dims.pop()
    heads = num_heads or getattr(config, "num_attention_heads", None)
    if not heads:
        raise EditError("the model config has no num_attention_heads; set num_heads in the hparams")
    heads = int(heads)
    if in_features % heads or out_features % heads:
        raise EditError(
            f"o_proj dims {in_features}->{out_features} are not divisible by num_heads={heads}; "
            f"set num_heads in the hparams")
    return AttentionGeometry(template=template, modules=modules, num_heads=heads,
                             in_features=in_features, out_features=out_features)
