"""The vector stays frozen and bit-identical through peft's unfreezing calls and makes harmful gradients vanish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from detox_plugins.security_vectors import adapters
from detox_plugins.security_vectors.data import CausalCollator, encode_rows, load_rows
from detox_plugins.security_vectors.editor import SecurityVector
from detox_plugins.security_vectors.hparams import SecurityVectorHyperParams
from detox_plugins.security_vectors.training import make_guard, train_user
from registry.errors import EditError

from .conftest import SV_TASKS
from .tiny import harmful_rows


def _with_two_adapters(model: Any, vector_dir: Path, hp: SecurityVectorHyperParams) -> None:
    vector = SecurityVector.from_any(vector_dir)
    adapters.attach(model, "sv", vector.config, vector.tensors)
    adapters.attach(model, "user", hp.user_lora.to_lora_config())
    adapters.activate(model, ["sv", "user"], frozen=["sv"])


def _requires_grad(model: Any, adapter: str) -> set[bool]:
    return {p.requires_grad for p in adapters.adapter_parameters(model, adapter).values()}


def test_attach_leaves_the_vector_frozen_and_inactive(make_model, trained_vector) -> None:
    model = make_model()
    vector = SecurityVector.from_any(trained_vector)
    adapters.attach(model, "sv", vector.config, vector.tensors)
    assert _requires_grad(model, "sv") == {False}
    assert adapters.active_adapters(model) == []
    adapters.attach(model, "user", vector.config)  # adding an adapter must not unfreeze the vector (older peft did)
    assert _requires_grad(model, "sv") == {False}


def test_set_adapter_unfreezes_and_activate_refreezes(make_model, trained_vector, hparams) -> None:
    from peft.functional import set_adapter

    hp = SecurityVectorHyperParams.from_dict(hparams())
    model = make_model()
    _with_two_adapters(model, trained_vector, hp)
    assert _requires_grad(model, "sv") == {False}
    assert _requires_grad(model, "user") == {True}
    set_adapter(model, ["sv", "user"])  # canary: raw peft marks every listed adapter trainable
    assert _requires_grad(model, "sv") == {True}, "peft no longer unfreezes on set_adapter; revisit the re-freeze"
    adapters.activate(model, ["sv", "user"], frozen=["sv"])
    assert _requires_grad(model, "sv") == {False}


def test_peft_model_round_trips_are_refrozen_by_the_guard(make_model, trained_vector, hparams) -> None:
    from peft import PeftModel

    hp = SecurityVectorHyperParams.from_dict(hparams())
    pm = PeftModel.from_pretrained(make_model(), str(trained_vector / "adapter"), adapter_name="sv",
                                   is_trainable=False)
    assert _requires_grad(pm, "sv") == {False}
    pm.add_adapter("user", hp.user_lora.to_lora_config())
    with pytest.raises((TypeError, ValueError)):  # PeftModel.set_adapter takes one name
        pm.set_adapter(["sv", "user"])
    pm.base_model.set_adapter(["sv", "user"])
    assert _requires_grad(pm, "sv") == {True}  # canary: set_adapter unfreezes
    guard = make_guard("sv")
    guard.on_step_begin(None, None, None, model=pm)
    assert _requires_grad(pm, "sv") == {False}
    with pm.disable_adapter():
        pass
    assert _requires_grad(pm, "sv") == {True}, "leaving disable_adapter() no longer unfreezes; revisit the ban on it"
    guard.on_step_begin(None, None, None, model=pm)
    assert _requires_grad(pm, "sv") == {False}
    assert pm.get_model_status().requires_grad["sv"] is False


def test_layer_toggles_are_refrozen_by_the_guard(make_model, trained_vector, hparams) -> None:
    hp = SecurityVectorHyperParams.from_dict(hparams())
    model = make_model()
    _with_two_adapters(model, trained_vector, hp)
    for _, layer in adapters.tuner_layers(model):  # what disable_adapter()/enable_adapter_layers do
        layer.enable_adapters(False)
        layer.enable_adapters(True)
    assert _requires_grad(model, "sv") == {True}  # canary: leaving disable_adapter() unfreezes
    make_guard("sv").on_step_begin(None, None, None, model=model)
    assert _requires_grad(model, "sv") == {False}


def test_guard_rejects_a_vector_in_the_optimizer_or_with_a_gradient(make_model, trained_vector, hparams) -> None:
    import torch

    hp = SecurityVectorHyperParams.from_dict(hparams())
    model = make_model()
    _with_two_adapters(model, trained_vector, hp)
    guard = make_guard("sv")
    leaked = torch.optim.AdamW(list(adapters.adapter_parameters(model, "sv").values()))
    with pytest.raises(EditError, match="in the optimizer"):
        guard.on_train_begin(None, None, None, model=model, optimizer=leaked)
    guard.on_train_begin(None, None, None, model=model,
                         optimizer=torch.optim.AdamW(list(adapters.adapter_parameters(model, "user").values())))
    first = next(iter(adapters.adapter_parameters(model, "sv").values()))
    first.grad = torch.ones_like(first)
    with pytest.raises(EditError, match="got a gradient"):
        guard.on_pre_optimizer_step(None, None, None, model=model)
    first.grad = None
    with torch.no_grad():
        first.add_(1e-3)
    with pytest.raises(EditError, match="changed during training"):
        guard.on_step_end(None, None, None, model=model)


def test_vector_bit_identical_after_adamw_steps_despite_a_saboteur(make_model, tokenizer, trained_vector,
                                                                   hparams, attack_rows) -> None:
    import torch
    from peft.functional import set_adapter
    from transformers import TrainerCallback

    class Saboteur(TrainerCallback):
        """Re-runs set_adapter before every step, which unfreezes the vector."""

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            set_adapter(model, ["sv", "user"])

    hp = SecurityVectorHyperParams.from_dict(hparams(ft_weight_decay=0.1, ft_epochs=3))
    model = make_model()
    _with_two_adapters(model, trained_vector, hp)
    before_sv = {k: v.clone() for k, v in adapters.state_dict(model, "sv").items()}
    before_user = {k: v.clone() for k, v in adapters.state_dict(model, "user").items()}
    rows = encode_rows(load_rows(attack_rows), tokenizer, max_length=64, use_chat_template=True)
    stats = train_user(model, tokenizer, rows, hp, guard_adapter="sv", callbacks=[Saboteur()])
    assert stats.steps >= 6 and stats.guard_steps_checked == stats.steps
    after_sv = adapters.state_dict(model, "sv")
    assert all(torch.equal(before_sv[k], after_sv[k]) for k in before_sv)
    after_user = adapters.state_dict(model, "user")
    assert any(not torch.equal(before_user[k], after_user[k]) for k in before_user)
    assert _requires_grad(model, "sv") == {False}


def test_harmful_gradient_is_much_smaller_with_the_vector(make_model, tokenizer, trained_vector, hparams) -> None:
    import torch

    hp = SecurityVectorHyperParams.from_dict(hparams())
    model = make_model()
    _with_two_adapters(model, trained_vector, hp)
    rows = encode_rows(load_rows(harmful_rows(SV_TASKS), harmful=True), tokenizer, max_length=64,
                       use_chat_template=True)
    batch = CausalCollator(tokenizer.pad_token_id)([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])
    user = adapters.adapter_parameters(model, "user")

    def grad_norm(active: list[str]) -> float:
        adapters.activate(model, active, frozen=["sv"])
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        return float(torch.sqrt(sum((p.grad ** 2).sum() for p in user.values() if p.grad is not None)))

    with_vector = grad_norm(["sv", "user"])
    without = grad_norm(["user"])
    assert with_vector < 0.1 * without, (with_vector, without)
