"""Hooks vs bias fold, exact revert, caching, padding, per-request alpha, dtypes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from detox_plugins.destein.edits import BiasFoldEdit, HookEdit
from registry.errors import EditError

from .conftest import editor, encode, hook_counts, tiny_llama_model

PROMPTS = ["you are a", "shut up and", "have a nice"]


def logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def greedy(model: Any, tok: Any, prompts: list[str], *, new: int = 6, use_cache: bool = True) -> list[list[int]]:
    batch = encode(tok, prompts, "left")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new, do_sample=False, use_cache=use_cache,
                             pad_token_id=tok.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(before: dict[str, torch.Tensor], model: Any) -> None:
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


@pytest.mark.parametrize("capture", ["head_input", "attn_output"])
def test_bias_fold_equals_hook(llama: Any, tok: Any, pairs: list, capture: str) -> None:
    batch = encode(tok, PROMPTS)
    base = logits(llama, batch)
    hook_editor = editor(fusion="additive", apply="hook", alpha=2.0, capture=capture)
    vectors = hook_editor.build_vectors(llama, tok, hook_editor.resolve_pairs(pairs)[0])
    with hook_editor.edit(llama, tok, vectors=vectors) as hooked:
        assert isinstance(hooked, HookEdit)
        steered_hook = logits(llama, batch)
    fold = editor(fusion="additive", apply="bias_fold", alpha=2.0, capture=capture).edit(llama, tok, vectors=vectors)
    assert isinstance(fold, BiasFoldEdit)
    steered_fold = logits(llama, batch)
    fold.revert()
    assert (steered_hook - base).abs().max() > 1e-3  # the steering does something
    torch.testing.assert_close(steered_fold, steered_hook, rtol=1e-5, atol=1e-5)


def test_revert_restores_llama_exactly_no_leaked_bias(llama: Any, tok: Any, pairs: list) -> None:
    before = state(llama)
    o_proj = llama.model.layers[0].self_attn.o_proj
    assert o_proj.bias is None and "bias" in o_proj._parameters
    edit = editor(fusion="additive", apply="bias_fold", alpha=1.0).edit(llama, tok, pairs)
    assert o_proj.bias is not None and any(k.endswith("o_proj.bias") for k in llama.state_dict())
    assert o_proj.bias.dtype == o_proj.weight.dtype and not o_proj.bias.requires_grad
    edit.revert()
    assert o_proj.bias is None and "bias" in o_proj._parameters
    assert not any(k.endswith("o_proj.bias") for k in llama.state_dict())
    assert_same_state(before, llama)
    with pytest.raises(EditError, match="already reverted"):
        edit.revert()


def test_revert_restores_existing_gpt2_bias_bit_exact(gpt2: Any, tok: Any, pairs: list) -> None:
    before = state(gpt2)
    batch = encode(tok, PROMPTS)
    base = logits(gpt2, batch)
    hooked = editor(fusion="additive", apply="hook", alpha=1.5).edit(gpt2, tok, pairs)
    steered_hook = logits(gpt2, batch)
    hooked.revert()
    fold = editor(fusion="additive", apply="bias_fold", alpha=1.5).edit(gpt2, tok, vectors=hooked.vectors)
    assert not torch.equal(gpt2.transformer.h[0].attn.c_proj.bias, before["transformer.h.0.attn.c_proj.bias"])
    torch.testing.assert_close(logits(gpt2, batch), steered_hook, rtol=1e-5, atol=1e-5)
    fold.revert()
    assert_same_state(before, gpt2)
    torch.testing.assert_close(logits(gpt2, batch), base, rtol=0, atol=0)


def test_fold_refuses_to_revert_over_a_later_change(llama: Any, tok: Any, pairs: list) -> None:
    edit = editor(fusion="additive", apply="bias_fold").edit(llama, tok, pairs)
    with torch.no_grad():
        llama.model.layers[1].self_attn.o_proj.bias.add_(1.0)
    with pytest.raises(EditError, match="changed after"):
        edit.revert()


def test_hooks_removed_after_exception_in_nested_contexts(llama: Any, tok: Any, pairs: list) -> None:
    batch = encode(tok, PROMPTS)
    base = logits(llama, batch)
    counts = hook_counts(llama)
    before = state(llama)
    additive = editor(fusion="additive", apply="hook", alpha=1.0)
    additive_vectors = additive.build_vectors(llama, tok, additive.resolve_pairs(pairs)[0])
    rotate = editor(fusion="rotate").edit(llama, tok, pairs)
    with pytest.raises(RuntimeError, match="boom"):
        with rotate:
            with additive.edit(llama, tok, vectors=additive_vectors) as inner:
                assert hook_counts(llama) == (counts[0] + 3, counts[1] + 3)
                with inner:  # re-entering an applied edit is allowed; the innermost exit reverts
                    raise RuntimeError("boom")
    assert hook_counts(llama) == counts
    assert not rotate.applied and not inner.applied
    assert_same_state(before, llama)
    torch.testing.assert_close(logits(llama, batch), base, rtol=0, atol=0)
    # a folded edit is restored on an exception too
    with pytest.raises(ValueError):
        with editor(fusion="additive", apply="bias_fold").edit(llama, tok, pairs):
            raise ValueError
    assert_same_state(before, llama)


def test_reapply_and_pause(llama: Any, tok: Any, pairs: list) -> None:
    batch = encode(tok, PROMPTS)
    base = logits(llama, batch)
    edit = editor(fusion="rotate", alpha=0.8).edit(llama, tok, pairs)
    steered = logits(llama, batch)
    with edit.paused():
        torch.testing.assert_close(logits(llama, batch), base, rtol=0, atol=0)
    edit.revert()
    with edit.reapply():
        torch.testing.assert_close(logits(llama, batch), steered, rtol=0, atol=0)
    torch.testing.assert_close(logits(llama, batch), base, rtol=0, atol=0)


@pytest.mark.parametrize("fusion", ["rotate", "additive"])
def test_a_gate_switches_the_hooks_at_every_forward(llama: Any, tok: Any, pairs: list, fusion: str) -> None:
    """strength.gate (a host's switch, e.g. EasyEdit2's original-output pass) is asked at each forward."""
    batch = encode(tok, PROMPTS)
    base = logits(llama, batch)
    with editor(fusion=fusion, alpha=0.8).edit(llama, tok, pairs) as edit:
        steered = logits(llama, batch)
        switch = {"on": False}
        edit.strength.gate = lambda: switch["on"]
        torch.testing.assert_close(logits(llama, batch), base, rtol=0, atol=0)
        switch["on"] = True
        torch.testing.assert_close(logits(llama, batch), steered, rtol=0, atol=0)
        with edit.paused():  # pausing still wins over an open gate
            torch.testing.assert_close(logits(llama, batch), base, rtol=0, atol=0)
    assert not torch.equal(steered, base)


@pytest.mark.parametrize("fusion,apply", [("rotate", "hook"), ("additive", "hook"), ("additive", "bias_fold")])
def test_cached_equals_uncached_greedy(llama: Any, tok: Any, pairs: list, fusion: str, apply: str) -> None:
    base = greedy(llama, tok, PROMPTS)
    with editor(fusion=fusion, apply=apply, alpha=1.0).edit(llama, tok, pairs):
        cached = greedy(llama, tok, PROMPTS, use_cache=True)
        uncached = greedy(llama, tok, PROMPTS, use_cache=False)
    assert cached == uncached
    assert cached != base  # the steering changes the continuation of the random model


@pytest.mark.parametrize("fusion,apply", [("rotate", "hook"), ("additive", "bias_fold")])
def test_left_padded_batch_equals_single_prompts(llama: Any, tok: Any, pairs: list, fusion: str, apply: str) -> None:
    prompts = ["hi", "you are a stupid", "shut up and go away now"]
    with editor(fusion=fusion, apply=apply, alpha=1.0).edit(llama, tok, pairs):
        batched = greedy(llama, tok, prompts)
        single = [greedy(llama, tok, [p])[0] for p in prompts]
    assert batched == single


@pytest.mark.parametrize("fusion", ["rotate", "additive"])
def test_per_request_alpha(llama: Any, tok: Any, pairs: list, fusion: str) -> None:
    batch = encode(tok, PROMPTS)
    base = logits(llama, batch)
    edit = editor(fusion=fusion, apply="hook", alpha=0.7).edit(llama, tok, pairs)
    uniform = logits(llama, batch)
    edit.set_alpha([0.0, 0.7, 0.0])
    mixed = logits(llama, batch)
    torch.testing.assert_close(mixed[0], base[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], uniform[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(EditError, match="batch has 2 rows"):
        logits(llama, encode(tok, PROMPTS[:2]))
    edit.set_alpha(0.0)
    torch.testing.assert_close(logits(llama, batch), base, rtol=0, atol=0)
    with pytest.raises(EditError, match="alpha"):
        edit.set_alpha("strong")
    edit.revert()


def test_bias_fold_alpha_rules(llama: Any, tok: Any, pairs: list) -> None:
    batch = encode(tok, PROMPTS)
    fold = editor(fusion="additive", apply="bias_fold", alpha=1.0).edit(llama, tok, pairs)
    with pytest.raises(EditError, match="one float alpha"):
        fold.set_alpha([1.0, 2.0, 3.0])
    fold.set_alpha(2.0)
    two = logits(llama, batch)
    fold.revert()
    with editor(fusion="additive", apply="hook", alpha=2.0).edit(llama, tok, vectors=fold.vectors):
        torch.testing.assert_close(logits(llama, batch), two, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fusion,apply", [("rotate", "hook"), ("additive", "hook"), ("additive", "bias_fold")])
def test_half_precision_paths_run_without_dtype_leaks(tok: Any, pairs: list, dtype: torch.dtype,
                                                      fusion: str, apply: str) -> None:
    model32 = tiny_llama_model()
    vectors = editor(fusion=fusion).build_vectors(model32, tok, editor().resolve_pairs(pairs)[0])
    batch = encode(tok, PROMPTS)
    with editor(fusion=fusion, apply=apply, alpha=1.0).edit(model32, tok, vectors=vectors):
        ref = logits(model32, batch)
    model = tiny_llama_model().to(dtype)
    before = state(model)
    seen: list[torch.dtype] = []
    handles = [layer.self_attn.o_proj.register_forward_hook(lambda m, a, o: seen.append(o.dtype))
               for layer in model.model.layers]
    try:
        with editor(fusion=fusion, apply=apply, alpha=1.0).edit(model, tok, vectors=vectors):
            out = logits(model, batch)
            if apply == "bias_fold":
                assert all(layer.self_attn.o_proj.bias.dtype == dtype for layer in model.model.layers)
    finally:
        for handle in handles:
            handle.remove()
    assert out.dtype == dtype and set(seen) == {dtype}
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)
    assert_same_state(before, model)


def test_top_k_restricts_additive_steering_to_selected_heads(llama: Any, tok: Any, pairs: list) -> None:
    from detox_plugins.destein.capture import capture_activations
    from detox_plugins.destein.geometry import resolve_geometry

    geometry = resolve_geometry(llama)
    module = geometry.modules[0]
    seen: dict[str, torch.Tensor] = {}

    def o_proj_input(name: str) -> None:  # registered after the edit's pre-hook, so it sees the shifted input
        handle = module.register_forward_pre_hook(lambda m, args: seen.__setitem__(name, args[0].detach().clone()))
        logits(llama, encode(tok, ["hello there"]))
        handle.remove()

    selected = editor(fusion="additive", probe={"top_k": 2}).edit(llama, tok, pairs)
    assert selected.vectors.mask is not None and int(selected.vectors.mask.sum()) == 2
    selected.revert()
    vectors = selected.vectors
    vectors.mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    mask = vectors.mask
    edit = editor(fusion="additive", apply="hook", alpha=3.0).edit(llama, tok, vectors=vectors)
    o_proj_input("steered")
    with pytest.raises(EditError, match="steered by a DeStein edit"):
        capture_activations(llama, tok, ["x"], geometry)
    with edit.paused():
        capture_activations(llama, tok, ["x"], geometry)
    edit.revert()
    o_proj_input("plain")
    diff = (seen["steered"] - seen["plain"])[0].reshape(-1, geometry.num_heads, geometry.head_dim)
    changed = diff.abs().amax(dim=(0, 2)) > 0
    assert torch.equal(changed, mask[0].bool())  # layer 0: exactly the selected heads move


def test_layers_subset_and_gpt2_rotate(gpt2: Any, tok: Any, pairs: list) -> None:
    counts = hook_counts(gpt2)
    edit = editor(fusion="rotate", layers=[-1]).edit(gpt2, tok, pairs)
    assert edit.settings.layers == [1]
    assert hook_counts(gpt2) == (counts[0] + 1, counts[1])
    edit.revert()
    assert hook_counts(gpt2) == counts
