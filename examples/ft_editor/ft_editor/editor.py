"""FT-L (EasyEdit's FT): write a fact by fine-tuning one MLP matrix, each entry kept within W0 ± eps.

The loss is the NLL of ``target_new`` given ``prompt``. Only the tensors named by ``rewrite_module_tmp``
train. The result is a ``registry.ParameterEdit`` (``W = W0 + delta``): revert, save, load and apply
come from the host.
"""

import logging
from typing import Any, Sequence

import torch

from registry import EditError, Editor, EditRequest, Footprint, ParameterEdit, normalise_requests

from .hparams import FTHyperParams

logger = logging.getLogger(__name__)
STOP_LOSS = 1e-2  # EasyEdit's FT stops stepping below this loss


class FTEditor(Editor):
    """Constrained fine-tuning of the ``rewrite_module_tmp`` weights of ``layers`` on (prompt, target_new)."""

    name = "FT"
    kind = "weights"
    hparams_class = FTHyperParams
    aliases = ("FT-L",)
    hparams_package = "ft_editor.hparams_files"  # hparams/FT/<model>.yaml, found as `FT/<model>`

    def edit(self, model: Any, tokenizer: Any, requests: Sequence[Any]) -> ParameterEdit:
        size = self.hparams.batch_size
        items = [request.validate() for request in normalise_requests(requests)]
        weights = self.target_weights(model)  # every check runs before anything changes
        batches = [self.encode(tokenizer, items[i:i + size]) for i in range(0, len(items), size)]
        metadata = self.base_metadata(model, tensors=sorted(weights))  # records the pre-edit fingerprint
        originals = {name: w.detach().clone() for name, w in weights.items()}
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        try:
            for name, p in model.named_parameters():
                p.requires_grad_(name in weights)
            losses = self.train(model, weights, originals, batches)
            deltas = {name: w.detach() - originals[name] for name, w in weights.items()}
        finally:  # success or failure (even Ctrl-C): W0 and the caller's requires_grad flags come back
            with torch.no_grad():
                for name, w in weights.items():
                    w.copy_(originals[name])
            for name, p in model.named_parameters():
                p.requires_grad_(flags[name])
        metadata["losses"] = {"first": losses[0], "last": losses[-1], "steps": len(losses)}
        logger.info("FT: loss %.4f -> %.4f in %d steps", losses[0], losses[-1], len(losses))
        return ParameterEdit.apply_deltas(model, deltas, metadata)  # W0 + delta, revertible bit for bit

    def planned_footprint(self, model: Any, inputs: Any = None) -> Footprint:
        """For pipelines: the tensors ``edit`` will change (as ``W0 + delta``), known before it runs, so
        conflicts are found first and a bad template fails before any step. ``requests:`` is the base's."""
        return Footprint.of(writes=self.target_weights(model), additive=True)

    def target_weights(self, model: Any) -> dict[str, torch.Tensor]:
        """Every parameter whose name contains ``rewrite_module_tmp.format(layer)`` (EasyEdit's rule)."""
        params, found = dict(model.named_parameters()), {}
        for layer in self.hparams.layers:
            key = self.hparams.rewrite_module_tmp.format(layer)
            hits = {name: p for name, p in params.items() if key in name}
            if not hits:
                example = next((n for n in params if n.endswith("weight")), "?")
                raise EditError(f"rewrite_module_tmp {self.hparams.rewrite_module_tmp!r} with layer {layer} matches "
                                f"no parameter of this model (names look like {example!r}); fix the template or layers")
            found.update(hits)
        return found

    def encode(self, tokenizer: Any, items: Sequence[EditRequest]) -> dict[str, torch.Tensor]:
        """Right-padded ``prompt + " " + target_new`` ids; ``labels`` are -100 except on the target."""
        rows = []
        for item in items:
            prompt = tokenizer(item.prompt)["input_ids"]
            target = tokenizer(" " + item.target_new.lstrip(" "), add_special_tokens=False)["input_ids"]
            if len(prompt) + len(target) > self.hparams.max_length:
                raise EditError(f"request {item.case_id!r}: prompt + target_new is {len(prompt) + len(target)} "
                                f"tokens, over max_length {self.hparams.max_length}; raise max_length")
            rows.append((prompt, target))
        pad = torch.nn.utils.rnn.pad_sequence
        ids = [torch.tensor(prompt + target) for prompt, target in rows]
        return {"input_ids": pad(ids, batch_first=True, padding_value=tokenizer.pad_token_id or 0),
                "attention_mask": pad([torch.ones_like(i) for i in ids], batch_first=True),
                "labels": pad([torch.tensor([-100] * len(p) + t) for p, t in rows], batch_first=True, padding_value=-100)}

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over requests of the mean target-token NLL (``objective_optimization`` says where it is scored)."""
        ids, mask, labels = (batch[k].to(model.device) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        scored = labels != -100
        if self.hparams.objective_optimization == "prompt_last":  # causal: that position never sees the target
            logp = logits[torch.arange(len(ids)), scored.int().argmax(dim=1) - 1].log_softmax(-1)
            return (-(logp.gather(1, labels.clamp(min=0)) * scored).sum(1) / scored.sum(1)).mean()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
        return (nll.sum(1) / scored.sum(1)).mean()  # ignored (-100) positions contribute 0

    def train(self, model: Any, weights: dict[str, torch.Tensor], originals: dict[str, torch.Tensor],
              batches: list[dict[str, torch.Tensor]]) -> list[float]:
        """EasyEdit's FT loop: Adam steps on each batch, then clamp to W0 ± norm_constraint; returns step losses."""
        hp, losses = self.hparams, []
        optimizer = torch.optim.Adam(list(weights.values()), lr=hp.lr, weight_decay=hp.weight_decay)
        with torch.enable_grad():  # the caller may be inside torch.no_grad()
            while len(losses) < hp.num_steps and (not losses or losses[-1] >= STOP_LOSS):
                losses.append(0.0)
                for batch in batches:
                    optimizer.zero_grad()
                    loss = self.loss(model, batch)
                    losses[-1] += loss.item() / len(batches)
                    if loss.item() >= STOP_LOSS:
                        loss.backward()
                        optimizer.step()
                    if hp.norm_constraint is not False:
                        with torch.no_grad():
                            for name, w in weights.items():
                                eps = hp.norm_constraint
                                w.copy_(w.clamp(originals[name] - eps, originals[name] + eps))
        return losses
