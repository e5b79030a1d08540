"""The DINM optimisation loop for one case (EasyEdit's Adam loop in compat mode, the fixed losses in improved mode).

``optimise_case`` changes the trained tensors in place while it runs and always returns them to
their values at entry (the caller owns the full restore on failure). It returns the deltas.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
from torch import nn

from .inputs import ScoredSequence
from .losses import masked_kl, masked_nll, reference_log_probs
from .runner import EditForward, PreparedInput, Stack

if TYPE_CHECKING:  # pragma: no cover
    from .anchors import AnchorBatch
    from .nullspace import UpdateProjector

logger = logging.getLogger(__name__)

#: EasyEdit's early-stop threshold on ``kl_factor·L_edit + L_loc`` (compat mode).
EASYEDIT_STOP = 1e-4


@dataclass
class LoopSettings:
    """What the loop needs from the hyperparameters, resolved for one mode."""

    mode: str  # "compat" | "improved"
    num_steps: int
    lr: float
    weight_decay: float
    kl_factor: float
    norm_constraint: Optional[float]
    edit_loss_weight: float
    locality_weight: float
    early_stop_loss: float
    cache_lower_layers: bool


@dataclass
class CaseOutcome:
    """Deltas and the record of one case's optimisation."""

    deltas: dict[str, torch.Tensor]
    steps: int  # optimizer steps taken
    stopped_early: bool
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    cached_fraction: float = 1.0


class _Target:
    """One trained tensor: the parameter, its value at entry, and what Adam updates."""

    def __init__(self, name: str, param: nn.Parameter) -> None:
        self.name = name
        self.param = param
        self.start = param.detach().clone()
        self.half = param.dtype in (torch.float16, torch.bfloat16)
        # bf16/fp16: Adam runs on a float32 master copy, with float32 state.
        self.master = self.start.float().clone() if self.half else param

    def sync_from_master(self) -> None:
        if self.half:
            with torch.no_grad():
                self.param.copy_(self.master.to(self.param.dtype))

    def pull_grad(self) -> None:
        if self.half:
            grad = self.param.grad
            self.master.grad = None if grad is None else grad.float()

    def clamp(self, eps: float) -> None:
        with torch.no_grad():
            low, high = self.start - eps, self.start + eps
            if self.half:
                self.master.copy_(torch.clamp(self.master, low.float(), high.float()))
            else:
                self.param.copy_(torch.clamp(self.param, low, high))
        self.sync_from_master()

    def project_update(self, projector: "UpdateProjector") -> None:
        """Keep only the null-space part of the update so far: ``master = start + P(master - start)``."""
        with torch.no_grad():
            start = self.start.float() if self.half else self.start
            self.master.copy_(start + projector.project(self.master - start))
        self.sync_from_master()

    def project_grad(self, projector: "UpdateProjector") -> None:
        """Project the gradient Adam sees, so its moments follow the allowed directions only."""
        grad = self.master.grad
        if grad is not None:
            with torch.no_grad():
                grad.copy_(projector.project(grad))

    def restore(self) -> None:
        with torch.no_grad():
            self.param.copy_(self.start)


def _to(seq: ScoredSequence, device: torch.device) -> ScoredSequence:
    return ScoredSequence(seq.input_ids.to(device), seq.positions.to(device), seq.targets.to(device),
                          seq.weights.to(device), seq.text)


def optimise_case(model: nn.Module, stack: Optional[Stack], names: list[str], settings: LoopSettings,
                  edit: ScoredSequence, locality: Optional[ScoredSequence],
                  block_inputs: Optional[dict[int, Any]] = None,
                  on_step: Optional[Callable[[int, float], None]] = None,
                  projectors: Optional[dict[str, "UpdateProjector"]] = None,
                  anchors: Optional["AnchorBatch"] = None,
                  extra_edits: Sequence[ScoredSequence] = ()) -> CaseOutcome:
    """Run at most ``num_steps`` Adam steps on ``names``; return their deltas (the model is restored).

    ``block_inputs`` (from localization on the same edit sequence) saves the capture pass. ``on_step(step,
    loss)`` is called after every step (progress bars). ``projectors`` (name -> null-space projector) confine
    each named tensor's gradient and update to the null space of the protected inputs after every step.
    ``anchors`` (improved mode) adds ``anchors.weight · KL(P0 ‖ P)`` on the benign anchors' answer openings.
    ``extra_edits`` (improved mode) are more prompts with the same safe response: the edit NLL becomes the
    mean over ``edit`` and them.
    Requires every parameter's ``requires_grad`` to be False on entry except as set here; the caller
    restores the flags.
    """
    started = time.perf_counter()
    params = dict(model.named_parameters())
    targets = [_Target(name, params[name]) for name in names]
    device = targets[0].param.device
    edit = _to(edit, device)
    locality = _to(locality, device) if locality is not None else None
    layers = [stack.layer_of(name) for name in names] if stack is not None else [None]
    start_layer = None if any(layer is None for layer in layers) else min(layers)  # type: ignore[type-var]
    runner = EditForward(model, stack, start_layer, enabled=settings.cache_lower_layers, trained=names)
    for target in targets:
        target.param.requires_grad_(True)
    optimizer = torch.optim.Adam([t.master for t in targets], lr=settings.lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=settings.weight_decay)
    compat = settings.mode == "compat"
    prepared_edit = None
    if runner.cached and block_inputs is not None and start_layer in block_inputs:
        prepared_edit = runner.adopt(edit.input_ids, block_inputs[start_layer])
    if prepared_edit is None:
        prepared_edit = runner.prepare(edit.input_ids, edit.attention_mask)
    extras = [_to(seq, device) for seq in extra_edits] if not compat else []
    prepared_extras = [runner.prepare(seq.input_ids, seq.attention_mask) for seq in extras]
    prepared_loc: Optional[PreparedInput] = None
    prepared_anchors: Optional[PreparedInput] = None
    if anchors is not None and not compat:
        prepared_anchors = anchors.prepare(runner, names)
    reference: Optional[torch.Tensor] = None
    losses: list[dict[str, float]] = []
    steps = 0
    stopped = False
    try:
        for step in range(settings.num_steps):
            optimizer.zero_grad(set_to_none=True)
            for target in targets:
                target.param.grad = None
            nll = masked_nll(runner.logits(prepared_edit, edit.positions), edit.targets, edit.weights)
            record: dict[str, float] = {"step": float(step), "edit_nll": float(nll.detach())}
            if extras:
                extra_nlls = [masked_nll(runner.logits(prepared, seq.positions), seq.targets, seq.weights)
                              for prepared, seq in zip(prepared_extras, extras)]
                record["extra_nll"] = float(sum(n.detach() for n in extra_nlls)) / len(extra_nlls)
                nll = (nll + sum(extra_nlls)) / (1 + len(extra_nlls))
            if compat:
                # L = kl_factor·L_edit + KL, where the KL is computed without gradient (EasyEdit's
                # inert constraint). KL ≥ 0, so it is only needed when it could decide the stop.
                loss = settings.kl_factor * nll
                total = float(loss.detach())
                if total < EASYEDIT_STOP and locality is not None:
                    if prepared_loc is None:
                        prepared_loc = runner.prepare(locality.input_ids, locality.attention_mask)
                    kl = _compat_kl(runner, prepared_loc, locality, targets)
                    record["kl"] = kl
                    total += kl
                stop = total < EASYEDIT_STOP
            else:
                loss = settings.edit_loss_weight * nll
                if locality is not None and settings.locality_weight > 0:
                    if prepared_loc is None:
                        prepared_loc = runner.prepare(locality.input_ids, locality.attention_mask)
                    if reference is None:
                        # Step 0 runs at θ0: P = P0 exactly, so KL = 0 with zero gradient; this
                        # forward only records P0 (no separate reference pass).
                        with torch.no_grad():
                            reference = reference_log_probs(runner.logits(prepared_loc, locality.positions))
                        record["kl"] = 0.0
                    else:
                        kl_term = masked_kl(reference, runner.logits(prepared_loc, locality.positions),
                                            locality.weights)
                        record["kl"] = float(kl_term.detach())
                        loss = loss + settings.locality_weight * kl_term
                if anchors is not None and prepared_anchors is not None:
                    anchor_kl = anchors.kl(runner.logits_at(prepared_anchors, anchors.rows, anchors.positions))
                    record["anchor_kl"] = float(anchor_kl.detach())
                    loss = loss + anchors.weight * anchor_kl
                total = float(loss.detach())
                stop = total < settings.early_stop_loss
            record["loss"] = total
            losses.append(record)
            if on_step is not None:
                on_step(step, total)
            if stop:
                stopped = True
                break
            loss.backward()
            for target in targets:
                target.pull_grad()
                if projectors and target.name in projectors:
                    target.project_grad(projectors[target.name])
            optimizer.step()
            for target in targets:
                target.sync_from_master()
                if projectors and target.name in projectors:
                    target.project_update(projectors[target.name])
                if settings.norm_constraint is not None:
                    target.clamp(settings.norm_constraint)
            steps += 1
        with torch.no_grad():
            deltas = {t.name: (t.param.detach() - t.start) for t in targets}
    finally:
        for target in targets:
            target.param.grad = None
            target.param.requires_grad_(False)
            target.restore()
        del optimizer
    logger.debug("DINM case: %d steps, final loss %.4g", steps, losses[-1]["loss"] if losses else float("nan"))
    return CaseOutcome(deltas=deltas, steps=steps, stopped_early=stopped, losses=losses,
                       seconds=time.perf_counter() - started, cached_fraction=runner.upper_fraction)


@torch.no_grad()
def _compat_kl(runner: EditForward, prepared: PreparedInput, locality: ScoredSequence, targets: list[_Target]) -> float:
    """EasyEdit's ``KL(P0 ‖ P)`` on the unshifted answer window; ``P0`` by swapping θ0 back in briefly."""
    current = [t.param.detach().clone() for t in targets]
    try:
        for target in targets:
            target.param.copy_(target.start)
        reference = reference_log_probs(runner.logits(prepared, locality.positions))
    finally:
        for target, value in zip(targets, current):
            target.param.copy_(value)
    return float(masked_kl(reference, runner.logits(prepared, locality.positions), locality.weights))


def settings_from(hparams: Any) -> LoopSettings:
    """Resolve the loop settings of a ``DINMHyperParams``."""
    norm = hparams.norm_constraint
    return LoopSettings(
        mode=hparams.mode,
        num_steps=hparams.num_steps,
        lr=hparams.lr,
        weight_decay=hparams.weight_decay,
        kl_factor=hparams.kl_factor,
        norm_constraint=None if isinstance(norm, bool) else float(norm),
        edit_loss_weight=hparams.edit_loss_weight,
        locality_weight=hparams.effective_locality_weight,
        early_stop_loss=hparams.early_stop_loss,
        cache_lower_layers=hparams.cache_lower_layers,
    )
