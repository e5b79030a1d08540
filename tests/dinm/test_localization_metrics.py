"""The two localization scores that do not grow with depth: separability and attribution."""

from __future__ import annotations

import pytest
import torch

from detox_plugins.dinm.editor import DINMEditor
from detox_plugins.dinm.inputs import in_context_sequence
from detox_plugins.dinm.locate import locate_blocks, locate_by_attribution
from detox_plugins.dinm.runner import find_stack

from .helpers import CASE, hparams, same_state, state, tiny_model


def _sequences(tok):
    return (in_context_sequence(tok, CASE["prompt"], CASE["target_new"]),
            in_context_sequence(tok, CASE["prompt"], CASE["ground_truth"]))


def _block_outputs(model, stack, seq):
    outputs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outputs.append((o[0] if isinstance(o, tuple) else o)[0]))
             for b in stack.blocks]
    with torch.no_grad():
        model(input_ids=seq.input_ids)
    for h in hooks:
        h.remove()
    mask = seq.response_mask()
    return [o[mask].float() for o in outputs]


def test_separability_is_the_mean_distance_over_the_token_spread(tok) -> None:
    model = tiny_model("llama")
    stack = find_stack(model)
    safe, unsafe = _sequences(tok)
    found = locate_blocks(model, stack, tok, safe, unsafe, metric="separability")
    expected = []
    for a, b in zip(_block_outputs(model, stack, safe), _block_outputs(model, stack, unsafe)):
        spread = ((a - a.mean(0)) ** 2).sum(-1).mean() + ((b - b.mean(0)) ** 2).sum(-1).mean()
        expected.append(float((a.mean(0) - b.mean(0)).pow(2).sum() / spread))
    assert found.scores == pytest.approx(expected, rel=1e-3)
    assert found.layer == max(range(len(expected)), key=expected.__getitem__)


def test_separability_does_not_grow_when_a_block_output_is_scaled(tok) -> None:
    """Scaling the last block's output (what the growing residual norm does) scales l2, not separability."""
    model = tiny_model("llama")
    stack = find_stack(model)
    safe, unsafe = _sequences(tok)
    before = locate_blocks(model, stack, tok, safe, unsafe, metric="separability").scores
    l2_before = locate_blocks(model, stack, tok, safe, unsafe).scores
    hook = stack.blocks[-1].register_forward_hook(
        lambda m, a, o: ((o[0] * 50,) + tuple(o[1:])) if isinstance(o, tuple) else o * 50)
    try:
        after = locate_blocks(model, stack, tok, safe, unsafe, metric="separability").scores
        l2_after = locate_blocks(model, stack, tok, safe, unsafe).scores
    finally:
        hook.remove()
    assert l2_after[-1] == pytest.approx(50 * l2_before[-1], rel=1e-3)
    assert after[-1] == pytest.approx(before[-1], rel=1e-3)


def test_attribution_scores_only_modules_that_contribute(tok) -> None:
    """With every down_proj zero but one, only that block's edited module has a non-zero score, and no
    parameter gets a gradient or a changed requires_grad flag."""
    model = tiny_model("llama")
    stack = find_stack(model)
    with torch.no_grad():
        for i, block in enumerate(stack.blocks):
            if i != 2:
                block.mlp.down_proj.weight.zero_()
            else:
                block.mlp.down_proj.weight.mul_(20)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modules = {i: block.mlp.down_proj for i, block in enumerate(stack.blocks)}
    safe, unsafe = _sequences(tok)
    found = locate_by_attribution(model, stack, safe, unsafe, modules=modules)
    assert [s == 0.0 for s in found.scores] == [True, True, False, True]
    assert found.method == "attribution"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    # Swapping the two responses flips the sign of every score.
    swapped = locate_by_attribution(model, stack, unsafe, safe, modules=modules)
    assert swapped.scores == pytest.approx([-s for s in found.scores], rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("metric", ["separability", "attribution"])
def test_editor_locates_with_the_new_metrics_and_reverts_exactly(tok, metric) -> None:
    model = tiny_model("llama")
    before = state(model)
    edit = DINMEditor(hparams(localize_metric=metric, use_chat_template=False)).edit(model, tok, [CASE])
    record = edit.metadata["cases"][0]
    assert record["localization"]["method"] == ("attribution" if metric == "attribution" else f"blocks/{metric}")
    assert record["layers"] == [record["localization"]["layer"]]
    assert not same_state(model, before)
    edit.revert()
    assert same_state(model, before)


def test_an_unknown_metric_is_refused_with_the_choices() -> None:
    from registry.errors import HyperParamsError

    with pytest.raises(HyperParamsError, match="attribution"):
        DINMEditor(hparams(localize_metric="fisher"))
