"""``SVGuard``: keeps the security vector frozen and bit-identical through a ``Trainer`` run.

Defence in depth (on top of the re-freeze after every peft call): ``set_adapter`` and leaving
``disable_adapter()`` unfreeze the vector silently, so the guard

- ``on_train_begin``: re-freezes, checks that no vector tensor is in the optimizer (one built before
  the freeze would train it) and takes a snapshot of the vector;
- ``on_step_begin``: re-freezes and asserts the freeze (it runs after every other callback);
- ``on_pre_optimizer_step``: rejects any gradient on the vector;
- ``on_step_end`` / ``on_train_end``: asserts the vector is bit-identical to the snapshot.

Any violation raises :class:`~registry.errors.EditError`, which stops training. Importing this
module imports transformers; the package imports it only when a fine-tune starts.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from registry.errors import EditError

from . import adapters


def unwrap_model(model: Any) -> Any:
    """The bare model inside DDP/accelerate wrappers (``.module``)."""
    inner = getattr(model, "module", None)
    while inner is not None and inner is not model and hasattr(inner, "named_modules"):
        model, inner = inner, getattr(inner, "module", None)
    return model


class SVGuard(TrainerCallback):
    """Keep adapter ``adapter`` (the security vector) frozen and unchanged while training."""

    def __init__(self, adapter: str) -> None:
        self.adapter = adapter
        self.snapshot: dict[str, Any] = {}
        self.steps_checked = 0

    def _params(self, model: Any) -> dict[str, Any]:
        params = adapters.adapter_parameters(unwrap_model(model), self.adapter)
        if not params:
            raise EditError(f"SVGuard: the model has no adapter {self.adapter!r} to guard")
        return params

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        bare = unwrap_model(model)
        adapters.freeze(bare, self.adapter)
        adapters.assert_frozen(bare, self.adapter)
        params = self._params(bare)
        ids = {id(p) for p in params.values()}
        if optimizer is not None:
            leaked = sum(id(p) in ids for group in optimizer.param_groups for p in group["params"])
            if leaked:
                raise EditError(
                    f"SVGuard: {leaked} tensors of the security vector {self.adapter!r} are in the optimizer; "
                    f"freeze the vector before the Trainer builds its optimizer"
                )
        # ZeRO-3 leaves empty placeholders on each rank; those cannot be compared (unverified setup).
        self.snapshot = {n: p.detach().clone() for n, p in params.items() if p.numel() > 0}

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        bare = unwrap_model(model)
        adapters.freeze(bare, self.adapter)  # set_adapter or leaving disable_adapter() may have unfrozen it
        adapters.assert_frozen(bare, self.adapter)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        for name, param in self._params(model).items():
            if param.grad is not None and bool(param.grad.ne(0).any()):
                raise EditError(f"SVGuard: the security vector got a gradient ({name}); it must stay frozen")

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.check_unchanged(model)
        self.steps_checked += 1

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.check_unchanged(model)

    def check_unchanged(self, model: Any) -> None:
        import torch

        params = self._params(model)
        for name, before in self.snapshot.items():
            if not torch.equal(params[name].detach(), before):
                raise EditError(
                    f"SVGuard: security-vector tensor {name} changed during training; the vector must stay "
                    f"bit-identical (is it in the optimizer or trainable?)"
                )
