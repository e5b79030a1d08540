"""A small but real editor for host tests: scales one MLP down-projection by (1 + factor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from registry import Editor, HyperParams, ParameterEdit, hookimpl, normalise_requests
from registry.errors import EditError


@dataclass
class ScaleHyperParams(HyperParams):
    layer: int = field(default=0, metadata={"help": "Layer whose down_proj is scaled."})
    factor: float = field(default=0.5, metadata={"help": "Relative change of the weight."})
    template: str = field(default="model.layers.{}.mlp.down_proj.weight", metadata={"help": "Tensor name."})


class ScaleEditor(Editor):
    name = "Scale"
    kind = "weights"
    hparams_class = ScaleHyperParams
    aliases = ("scaler",)
    #: Whether its deltas may stack on a tensor an earlier additive edit changed (the footprint says so).
    stacks: ClassVar[bool] = False

    def edit(self, model: Any, tokenizer: Any, requests: Sequence[Any]) -> ParameterEdit:
        normalise_requests(requests)
        name = self.hparams.template.format(self.hparams.layer)
        params = dict(model.named_parameters())
        if name not in params:
            raise EditError(f"template {self.hparams.template!r} matches no parameter of the model")
        metadata = self.base_metadata(model, layer=self.hparams.layer)
        delta = params[name].detach() * self.hparams.factor
        return ParameterEdit.apply_deltas(model, {name: delta}, metadata, stackable=self.stacks)


class ScalePlugin:
    @hookimpl
    def register_editors(self, register):
        register(ScaleEditor)
