"""mode: compat against a hand-written reference of EasyEdit's DINM."""

from __future__ import annotations

import copy

import pytest
import torch

from detox_plugins.dinm.editor import DINMEditor
from detox_plugins.dinm.hparams import EASYEDIT_SUFFIX
from detox_plugins.dinm.inputs import compat_edit_sequence
from tests.tiny import tiny_tokenizer

from .helpers import CASE, bos_tokenizer, hparams, tiny_model


def reference_layer(model, tok, safe: str, unsafe: str) -> int:
    """EasyEdit's localization, written out: the tokenizer's own padded [y+, y-] batch (its padding side),
    Frobenius distance per hidden state."""
    batch = tok([safe, unsafe], return_tensors="pt", padding=True, truncation=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    best, best_value = None, float("-inf")
    for i in range(1, len(hidden)):
        value = torch.dist(hidden[i][0], hidden[i][1], p=2).item()
        if value > best_value:
            best, best_value = i, value
    return best - 1


def reference_deltas(model, tok, case, names, *, lr, steps, kl_factor=0.1) -> dict[str, torch.Tensor]:
    """EasyEdit's update loop written out by hand on a copy of the model (no KL: it is inert)."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in names)
    originals = {n: params[n].detach().clone() for n in names}
    optimizer = torch.optim.Adam([params[n] for n in names], lr=lr, weight_decay=0.0)
    target = " " + case["target_new"]
    text = case["prompt"] + " " + EASYEDIT_SUFFIX + " " + target
    inputs = tok(text, return_tensors="pt")
    labels = tok(target, return_tensors="pt")["input_ids"]
    labels = labels.masked_fill(labels == tok.pad_token_id, -100)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        pred = logits[:, :-1][:, -labels.size(1):].float()
        valid = labels != -100
        picked = pred.log_softmax(-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        nll = -(picked * valid).sum() / valid.sum()
        loss = kl_factor * nll
        if loss.item() < 1e-4:
            break
        loss.backward()
        optimizer.step()
    return {n: params[n].detach() - originals[n] for n in names}


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2"])
def test_localization_and_updates_match_easyedit(arch: str) -> None:
    tok = tiny_tokenizer() if arch == "gpt2" else bos_tokenizer()
    model = tiny_model(arch)
    expected_layer = reference_layer(model, tok, CASE["target_new"], CASE["ground_truth"])
    assert expected_layer == 3  # the post-norm final state wins on a random model (EasyEdit ranks it among the raw ones)
    editor = DINMEditor(hparams(arch, mode="compat", num_steps=3, lr=1e-3))
    edit = editor.edit(model, tok, [CASE])
    info = edit.metadata["cases"][0]
    assert info["localization"]["layer"] == expected_layer and info["layers"] == [expected_layer]
    assert info["steps"] == 3
    names = info["tensors"]
    if arch == "gpt2":  # Conv1D: the template matches weight and bias
        assert names == ["transformer.h.3.mlp.c_proj.bias", "transformer.h.3.mlp.c_proj.weight"]
    else:
        assert names == ["model.layers.3.mlp.down_proj.weight"]
    ours = edit.deltas
    edit.revert()
    reference = reference_deltas(model, tok, CASE, names, lr=1e-3, steps=3)
    for name in names:
        assert rel_error(ours[name], reference[name]) <= 1e-4, name


def test_one_step_at_a_lower_layer_matches_by_hand() -> None:
    tok, model = bos_tokenizer(), tiny_model("llama")
    editor = DINMEditor(hparams(mode="compat", num_steps=1, lr=5e-4, layers=[1]))
    edit = editor.edit(model, tok, [CASE])
    name = "model.layers.1.mlp.down_proj.weight"
    assert sorted(edit.deltas) == [name]
    ours = edit.deltas[name].clone()
    edit.revert()
    assert rel_error(ours, reference_deltas(model, tok, CASE, [name], lr=5e-4, steps=1)[name]) <= 1e-4


def test_easyedit_labels_include_bos_and_the_double_space() -> None:
    tok = bos_tokenizer()
    seq = compat_edit_sequence(tok, "Q?", "No.")
    assert seq.text == "Q?  No."
    assert seq.targets.tolist() == tok(" No.")["input_ids"]
    assert seq.targets[0].item() == tok.bos_token_id  # label 0 is BOS, as in EasyEdit
    n = seq.length
    assert seq.positions.tolist() == list(range(n - 1 - len(seq.targets), n - 1))


def test_early_stop_uses_the_total_loss_and_computes_the_kl_only_then() -> None:
    tok, model = bos_tokenizer(), tiny_model("llama")
    editor = DINMEditor(hparams(mode="compat", kl_factor=1e-9, layers=[2]))
    edit = editor.edit(model, tok, [CASE])
    info = edit.metadata["cases"][0]
    assert info["steps"] == 0 and info["stopped_early"]
    assert "kl" in info["losses"][0] and info["losses"][0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(float(d.abs().max()) == 0.0 for d in edit.deltas.values())
    edit.revert()
    # With EasyEdit's kl_factor the KL is never needed, so it is never computed.
    edit = DINMEditor(hparams(mode="compat", layers=[2])).edit(model, tok, [CASE])
    assert all("kl" not in r for r in edit.metadata["cases"][0]["losses"])
    edit.revert()


def test_sticky_layer_lives_in_the_editor_not_the_hparams(tok) -> None:
    model = tiny_model("llama")
    editor = DINMEditor(hparams(mode="compat", num_steps=1))
    first = editor.edit(model, tok, [CASE])
    first.revert()
    layer = first.metadata["layers"]
    assert editor.sticky_layers == layer and editor.hparams.layers == []
    no_unsafe = {k: v for k, v in CASE.items() if k != "ground_truth"}
    second = editor.edit(model, tok, [no_unsafe])  # no localization needed any more
    assert second.metadata["layers"] == layer and "localization" not in second.metadata["cases"][0]
    second.revert()


@pytest.mark.parametrize("side", ["left", "right"])
def test_compat_localization_pads_on_the_tokenizers_own_side(side) -> None:
    """The batch EasyEdit builds is the tokenizer's own (padding=True): ours equals it on both sides,
    and so does the layer picked."""
    from detox_plugins.dinm import locate

    tok = tiny_tokenizer()
    tok.padding_side = side
    model = tiny_model("llama")
    safe, unsafe = CASE["target_new"], CASE["ground_truth"] + " and more words to make it longer"
    seen = {}
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    try:
        found = locate.locate_easyedit(model, tok, safe, unsafe)
    finally:
        handle.remove()
    expected = tok([safe, unsafe], return_tensors="pt", padding=True, truncation=True)
    assert torch.equal(seen["input_ids"], expected["input_ids"])
    assert torch.equal(seen["attention_mask"], expected["attention_mask"])
    assert found.layer == reference_layer(model, tok, safe, unsafe)
