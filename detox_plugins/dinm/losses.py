"""The two DINM loss terms, computed in float32 on the logits of the scored positions."""

from __future__ import annotations

import torch


def masked_nll(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` over the positions whose weight is nonzero."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    weights = weights.to(picked.dtype)
    return -(picked * weights).sum() / weights.sum().clamp_min(1.0)


def reference_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Detached float32 log-probabilities: the unedited model's ``P0`` of the locality KL."""
    return torch.log_softmax(logits.detach().float(), dim=-1)


def masked_kl(reference: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over positions of ``KL(P0 ‖ P)``; ``reference`` holds ``log P0``."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    per_position = (reference.exp() * (reference - log_probs)).sum(dim=-1)
    weights = weights.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp_min(1.0)
