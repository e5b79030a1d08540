"""mode: improved: in-context spans, chat template, differentiable KL, localization."""

from __future__ import annotations

import pytest
import torch

from detox_plugins.dinm.editor import DINMEditor
from detox_plugins.dinm.inputs import in_context_sequence
from detox_plugins.dinm.locate import locate_blocks
from detox_plugins.dinm.losses import masked_kl, reference_log_probs
from detox_plugins.dinm.runner import find_stack

from .helpers import CASE, bos_tokenizer, hparams, tiny_model


def test_in_context_span_scores_exactly_the_response() -> None:
    tok = bos_tokenizer()
    seq = in_context_sequence(tok, "Q?", "No.")
    prompt_ids = tok("Q?")["input_ids"]
    ids = seq.input_ids[0].tolist()
    assert ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode(seq.targets) == " No."  # a single space, no BOS label
    assert tok.bos_token_id not in seq.targets.tolist()
    assert seq.positions.tolist() == list(range(len(prompt_ids) - 1, len(ids) - 1))
    assert seq.targets.tolist() == ids[len(prompt_ids):]


def test_chat_template_span_includes_the_end_of_turn(tok) -> None:
    seq = in_context_sequence(tok, "Q?", "No.", chat_template=True)
    rendered = tok.apply_chat_template([{"role": "user", "content": "Q?"}], tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert seq.input_ids[0, : len(prompt_ids)].tolist() == prompt_ids
    assert tok.decode(seq.targets) == "No.<|im_end|>\n"


def test_truncation_keeps_the_rightmost_prompt_tokens(tok) -> None:
    seq = in_context_sequence(tok, "abcdefghij", "xyz", max_length=8)
    assert seq.length == 8
    assert tok.decode(seq.input_ids[0]) == "ghij xyz"


def test_the_kl_term_has_a_gradient() -> None:
    reference = reference_log_probs(torch.randn(3, 11))
    logits = torch.randn(3, 11, requires_grad=True)
    kl = masked_kl(reference, logits, torch.ones(3))
    kl.backward()
    assert kl.item() > 0 and logits.grad.abs().sum().item() > 0
    same = reference.clone().requires_grad_(True)
    assert masked_kl(reference, same, torch.ones(3)).item() == pytest.approx(0.0, abs=1e-6)


def test_locality_weight_shapes_the_update(tok) -> None:
    model = tiny_model("llama")
    deltas = {}
    for weight in (0.0, 1000.0):
        edit = DINMEditor(hparams(layers=[2], num_steps=4, lr=5e-2, locality_weight=weight)).edit(model, tok, [CASE])
        losses = edit.metadata["cases"][0]["losses"]
        if weight:
            assert losses[0]["kl"] == 0.0 and all(r["kl"] > 0 for r in losses[1:])
        deltas[weight] = next(iter(edit.deltas.values())).clone()
        edit.revert()
    assert not torch.allclose(deltas[0.0], deltas[1000.0])
    # The KL pulls the update towards smaller changes of the locality answer.
    assert (deltas[1000.0] - deltas[0.0]).norm() > 1e-3 * deltas[0.0].norm()


def test_localization_uses_raw_block_outputs_never_the_post_norm_state(tok) -> None:
    model = tiny_model("llama")
    stack = find_stack(model)
    safe = in_context_sequence(tok, CASE["prompt"], CASE["target_new"])
    unsafe = in_context_sequence(tok, CASE["prompt"], CASE["ground_truth"])
    found = locate_blocks(model, stack, tok, safe, unsafe)
    assert len(found.scores) == 4

    def pooled(seq):
        outputs = []
        hooks = [b.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
                 for b in stack.blocks]
        with torch.no_grad():
            hidden = model(input_ids=seq.input_ids, output_hidden_states=True).hidden_states
        for h in hooks:
            h.remove()
        mask = seq.response_mask()
        return [o[0][mask].mean(0) for o in outputs], [h[0][mask].mean(0) for h in hidden]

    (raw_safe, hid_safe), (raw_unsafe, hid_unsafe) = pooled(safe), pooled(unsafe)
    expected = [float((a - b).norm()) for a, b in zip(raw_safe, raw_unsafe)]
    assert found.scores == pytest.approx(expected, rel=1e-4)
    # Blocks 0..L-2 equal hidden_states[1..L-1]; the last block's raw output is not hidden_states[L].
    assert expected[:3] == pytest.approx([float((a - b).norm()) for a, b in zip(hid_safe[1:4], hid_unsafe[1:4])], rel=1e-4)
    assert expected[3] != pytest.approx(float((hid_safe[4] - hid_unsafe[4]).norm()), rel=1e-2)
    relative = locate_blocks(model, stack, tok, safe, unsafe, metric="relative_l2")
    scales = [0.5 * (float(a.norm()) + float(b.norm())) for a, b in zip(raw_safe, raw_unsafe)]
    assert relative.scores == pytest.approx([d / s for d, s in zip(expected, scales)], rel=1e-4)


def test_every_case_is_localized_in_improved_mode(tok) -> None:
    model = tiny_model("llama")
    other = dict(CASE, prompt="Write an insult for my coworker.", target_new="I won't write insults.", case_id=8)
    edit = DINMEditor(hparams(num_steps=1)).edit(model, tok, [CASE, other])
    assert all("localization" in c for c in edit.metadata["cases"])
    assert edit.metadata["cases"][0]["localization"]["method"] == "blocks/l2"
    edit.revert()


def test_half_precision_uses_a_float32_master(tok) -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    edit = DINMEditor(hparams(layers=[1], num_steps=2)).edit(model, tok, [CASE])
    weight = model.model.layers[1].mlp.down_proj.weight
    assert weight.dtype == torch.bfloat16 and not torch.equal(weight, before["model.layers.1.mlp.down_proj.weight"])
    edit.revert()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2"])
def test_sharing_the_prompt_pass_gives_the_same_scores_and_records(arch: str, tok) -> None:
    from detox_plugins.dinm.locate import MIN_SHARED_PREFIX, shared_prefix_length
    from detox_plugins.dinm.runner import trained_module

    model = tiny_model(arch)
    stack = find_stack(model)
    safe = in_context_sequence(tok, CASE["prompt"], CASE["target_new"])
    unsafe = in_context_sequence(tok, CASE["prompt"], CASE["ground_truth"])
    prefix = shared_prefix_length(safe, unsafe)
    assert prefix >= MIN_SHARED_PREFIX and prefix == int(safe.positions[0]) + 1
    name = "transformer.h.{}.mlp.c_proj.weight" if arch == "gpt2" else "model.layers.{}.mlp.down_proj.weight"
    modules = {i: trained_module(model, stack, i, [name.format(i)]) for i in range(stack.num_layers)}
    shared = locate_blocks(model, stack, tok, safe, unsafe, capture_inputs=True, trained_modules=modules)
    whole = locate_blocks(model, stack, tok, safe, unsafe, capture_inputs=True, trained_modules=modules,
                          share_prefix=False)
    assert shared.scores == pytest.approx(whole.scores, rel=1e-4)
    for index in range(stack.num_layers):
        a, b = shared.block_inputs[index], whole.block_inputs[index]
        assert not a.replayable and b.replayable
        for field in ("hidden", "residual", "module_input", "output"):
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-5)


def test_shared_prefix_records_serve_only_the_last_block_sub_block_path(tok) -> None:
    from detox_plugins.dinm.runner import EditForward, trained_module

    model = tiny_model("llama")
    stack = find_stack(model)
    safe = in_context_sequence(tok, CASE["prompt"], CASE["target_new"])
    unsafe = in_context_sequence(tok, CASE["prompt"], CASE["ground_truth"])
    names = {i: [f"model.layers.{i}.mlp.down_proj.weight"] for i in range(4)}
    modules = {i: trained_module(model, stack, i, n) for i, n in names.items()}
    found = locate_blocks(model, stack, tok, safe, unsafe, capture_inputs=True, trained_modules=modules)
    full = model(input_ids=safe.input_ids, use_cache=False).logits[0, safe.positions]
    last = EditForward(model, stack, 3, trained=names[3]).adopt(safe.input_ids, found.block_inputs[3])
    assert last is not None and last.sub_block
    runner = EditForward(model, stack, 3, trained=names[3])
    torch.testing.assert_close(runner.logits(last, safe.positions), full, rtol=1e-5, atol=1e-5)
    # A lower block would need the attention arguments of the whole sequence: the record refuses.
    assert EditForward(model, stack, 1, trained=names[1]).adopt(safe.input_ids, found.block_inputs[1]) is None


def test_an_edit_of_the_last_block_is_the_same_from_shared_records_or_its_own_pass(tok) -> None:
    from detox_plugins.dinm.optimize import optimise_case, settings_from
    from detox_plugins.dinm.runner import trained_module

    model = tiny_model("llama")
    stack = find_stack(model)
    safe = in_context_sequence(tok, CASE["prompt"], CASE["target_new"])
    unsafe = in_context_sequence(tok, CASE["prompt"], CASE["ground_truth"])
    locality = in_context_sequence(tok, CASE["locality_prompt"], CASE["locality_answer"])
    names = ["model.layers.3.mlp.down_proj.weight"]
    found = locate_blocks(model, stack, tok, safe, unsafe, capture_inputs=True,
                          trained_modules={3: trained_module(model, stack, 3, names)})
    from detox_plugins.dinm.hparams import DINMHyperParams

    settings = settings_from(DINMHyperParams.from_dict(hparams(num_steps=3, lr=1e-2)))
    for p in model.parameters():
        p.requires_grad_(False)
    reused = optimise_case(model, stack, names, settings, safe, locality, block_inputs=found.block_inputs)
    own = optimise_case(model, stack, names, settings, safe, locality)
    assert float(reused.deltas[names[0]].norm()) > 0
    torch.testing.assert_close(reused.deltas[names[0]], own.deltas[names[0]], rtol=1e-4, atol=1e-7)
