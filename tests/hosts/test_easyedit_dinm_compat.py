"""Compat mode against EasyEdit's own DINM, not a re-implementation of it: the EasyEdit side of
benchmarks/easyedit_dinm.py (SafetyEditor's localization, then EasyEdit's apply_dinm_to_model and its
restore loop) and our compat edit on the same tiny Llama, for both padding sides of the tokenizer."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from .conftest import fingerprint

#: An unsafe response longer than the safe one, so that padding enters the localization batch.
UNSAFE = "Sure, here is how to pick the lock: first find a thin piece of metal and bend it"


@pytest.mark.parametrize("side", ["right", "left"])
def test_compat_locates_and_updates_like_easyedit(easyeditor, tmp_path, side) -> None:
    from registry import from_hparams
    from registry.requests import EditRequest
    from tests.benchmark_scripts import load_benchmark
    from tests.dinm.helpers import CASE, bos_tokenizer, tiny_model

    bench = load_benchmark("easyedit_dinm")
    model, tok = tiny_model("llama", layers=6), bos_tokenizer()
    tok.padding_side = side
    before = fingerprint(model)
    request = EditRequest(**{**CASE, "ground_truth": UNSAFE})
    compat = from_hparams(bench.COMPAT_HPARAMS).replace(num_steps=4)
    originals = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("mlp.down_proj.weight")}

    batches: list[dict[str, torch.Tensor]] = []  # the [safe, unsafe] localization batch each side feeds the model

    def record_batch(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[0] == 2:
            batches.append({k: kwargs[k].clone() for k in ("input_ids", "attention_mask")})

    easyedit = bench.EasyEditDINM(model, tok, compat, tmp_path)
    assert easyedit.editor.apply_algo.__module__ == "easyeditor.models.dinm.dinm_main"  # EasyEdit's own DINM
    handle = model.register_forward_pre_hook(record_batch, with_kwargs=True)
    try:
        _, their_layer, theirs = easyedit.edit(request)
        bench.check_restored(model, originals, "EasyEdit's DINM")
        _, our_layer, ours, _ = bench.run_ours(compat, model, tok, request, originals)
        bench.check_restored(model, originals, "compat")
    finally:
        handle.remove()

    (theirs_batch, ours_batch) = batches
    mask = theirs_batch["attention_mask"]
    padded_at = mask[:, -1] if side == "left" else mask[:, 0]
    assert bool((padded_at == 1).all()) and not bool((mask == 1).all())  # padded, on the tokenizer's side
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(ours_batch[key], theirs_batch[key]), key
    assert our_layer == their_layer
    comparison = bench.compare_deltas(ours, theirs)
    assert comparison.bit_equal, comparison
    assert fingerprint(model) == before
