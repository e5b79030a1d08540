"""The cached lower stack: same logits and loss as a full forward, fewer blocks run."""

from __future__ import annotations

import pytest
import torch

from detox_plugins.dinm.inputs import in_context_sequence
from detox_plugins.dinm.losses import masked_nll
from detox_plugins.dinm.runner import EditForward, find_stack

from .helpers import CASE, tiny_model


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2"])
def test_cached_logits_and_loss_match_the_full_forward(arch: str, tok) -> None:
    model = tiny_model(arch)
    stack = find_stack(model)
    assert stack is not None and stack.cacheable and stack.num_layers == 4
    seq = in_context_sequence(tok, CASE["prompt"], CASE["target_new"])
    full = model(input_ids=seq.input_ids, use_cache=False).logits[0]
    full_loss = masked_nll(full[seq.positions], seq.targets, seq.weights)
    for start in range(4):
        runner = EditForward(model, stack, start)
        assert runner.cached
        prepared = runner.prepare(seq.input_ids)
        assert prepared.cached
        every = torch.arange(seq.length)
        torch.testing.assert_close(runner.logits(prepared, every), full, rtol=1e-5, atol=1e-5)
        loss = masked_nll(runner.logits(prepared, seq.positions), seq.targets, seq.weights)
        torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-5)
        assert runner.upper_fraction == pytest.approx((4 - start) / 4)


def test_gradients_match_the_full_forward(tok) -> None:
    model = tiny_model("llama")
    weight = model.model.layers[2].mlp.down_proj.weight
    for p in model.parameters():
        p.requires_grad_(False)
    weight.requires_grad_(True)
    seq = in_context_sequence(tok, CASE["prompt"], CASE["target_new"])
    masked_nll(model(input_ids=seq.input_ids).logits[0][seq.positions], seq.targets, seq.weights).backward()
    expected = weight.grad.clone()
    weight.grad = None
    runner = EditForward(model, find_stack(model), 2)
    prepared = runner.prepare(seq.input_ids)
    masked_nll(runner.logits(prepared, seq.positions), seq.targets, seq.weights).backward()
    torch.testing.assert_close(weight.grad, expected, rtol=1e-5, atol=1e-6)


def test_disabled_or_outside_the_stack_runs_the_full_model(tok) -> None:
    model = tiny_model("llama")
    seq = in_context_sequence(tok, CASE["prompt"], CASE["target_new"])
    full = model(input_ids=seq.input_ids).logits[0]
    for runner in (EditForward(model, find_stack(model), 1, enabled=False), EditForward(model, find_stack(model), None)):
        assert not runner.cached and runner.upper_fraction == 1.0
        torch.testing.assert_close(runner.logits(runner.prepare(seq.input_ids), seq.positions), full[seq.positions])


def test_layer_of_parameter_names() -> None:
    stack = find_stack(tiny_model("gpt2"))
    assert stack.layer_of("transformer.h.3.mlp.c_proj.bias") == 3
    assert stack.layer_of("transformer.wte.weight") is None
    stack = find_stack(tiny_model("llama"))
    assert stack.layer_of("model.layers.1.mlp.down_proj.weight") == 1
    assert stack.layer_of("base_model.model.model.layers.2.mlp.down_proj.weight") == 2


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_block_inputs_kept_from_localization_give_the_same_edit(arch: str, tok) -> None:
    from detox_plugins.dinm.editor import DINMEditor

    from .helpers import hparams

    model = tiny_model(arch)
    located = DINMEditor(hparams(arch)).edit(model, tok, [CASE])  # reuses the localization pass
    layer = located.metadata["layers"]
    reused = {k: v.clone() for k, v in located.deltas.items()}
    located.revert()
    for overrides in ({"layers": layer}, {"layers": layer, "cache_lower_layers": False}):
        fixed = DINMEditor(hparams(arch, **overrides)).edit(model, tok, [CASE])  # its own capture pass
        for name, delta in fixed.deltas.items():
            torch.testing.assert_close(reused[name], delta, rtol=1e-4, atol=1e-7)
        fixed.revert()


MLP_OUT = {"llama": "model.layers.{}.mlp.down_proj.weight", "mistral": "model.layers.{}.mlp.down_proj.weight",
           "gpt2": "transformer.h.{}.mlp.c_proj.weight"}


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2"])
def test_sub_block_path_matches_the_full_forward_in_logits_and_gradients(arch: str, tok) -> None:
    model = tiny_model(arch)
    stack = find_stack(model)
    seq = in_context_sequence(tok, CASE["prompt"], CASE["target_new"])
    for p in model.parameters():
        p.requires_grad_(False)
    for start in range(stack.num_layers):
        name = MLP_OUT[arch].format(start)
        weight = dict(model.named_parameters())[name]
        weight.requires_grad_(True)
        full = model(input_ids=seq.input_ids, use_cache=False).logits[0]
        masked_nll(full[seq.positions], seq.targets, seq.weights).backward()
        expected = weight.grad.clone()
        weight.grad = None

        runner = EditForward(model, stack, start, trained=[name])
        prepared = runner.prepare(seq.input_ids)
        assert runner.module is not None and prepared.sub_block, f"block {start} should run as residual + module"
        torch.testing.assert_close(runner.logits(prepared, seq.positions), full[seq.positions].detach(),
                                   rtol=1e-5, atol=1e-5)
        masked_nll(runner.logits(prepared, seq.positions), seq.targets, seq.weights).backward()
        torch.testing.assert_close(weight.grad, expected, rtol=1e-4, atol=1e-6)
        weight.grad = None
        weight.requires_grad_(False)


def test_a_module_whose_output_is_not_added_to_the_mlp_residual_runs_the_whole_block(tok) -> None:
    model = tiny_model("llama")
    stack = find_stack(model)
    seq = in_context_sequence(tok, CASE["prompt"], CASE["target_new"])
    full = model(input_ids=seq.input_ids, use_cache=False).logits[0]
    # o_proj feeds the attention residual, not the MLP one: the self-check must refuse the shortcut.
    runner = EditForward(model, stack, 3, trained=["model.layers.3.self_attn.o_proj.weight"])
    assert runner.module is not None
    prepared = runner.prepare(seq.input_ids)
    assert prepared.cached and not prepared.sub_block
    torch.testing.assert_close(runner.logits(prepared, seq.positions), full[seq.positions], rtol=1e-5, atol=1e-5)
    # Tensors of two modules in one block: no single module, the whole block runs.
    two = EditForward(model, stack, 2, trained=["model.layers.2.mlp.down_proj.weight", "model.layers.2.mlp.up_proj.weight"])
    assert two.module is None
