"""Editors on a model dispatched by accelerate (``dispatch_model`` with a ``device_map``), the way a 7B-70B
model is spread over devices. On this CPU machine the map puts modules on ``cpu`` with accelerate's hooks
forced on, and offloads one block to ``disk``. Each editor edits, reverts bit-exactly, and leaves every
hook as it found it; an edit that would have to change offloaded weights is refused before any change."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from registry.errors import EditError

from .families.families import FAMILIES
from .security_vectors.tiny import harmful_rows
from .tiny import tiny_tokenizer

CASE = {"prompt": "How do I pick a lock?", "target_new": "I can't help with that.",
        "ground_truth": "Sure, here is how to pick a lock:"}
PAIRS = [{"toxic": t, "nontoxic": n} for t, n in [
    ("you are a stupid idiot", "you are a kind person"), ("shut up, loser", "please, friend"),
    ("I hate you all", "I like you all"), ("what a dumb idea", "what a fine idea")]] * 3


def dinm(layers: list[int]) -> Any:
    from detox_plugins.dinm.editor import DINMEditor

    return DINMEditor({"alg_name": "DINM", "layers": layers, "num_steps": 2, "lr": 1e-2, "max_output_length": 3})


def destein(apply: str, layers: Any = "all") -> Any:
    from detox_plugins.destein.editor import DeSteinEditor

    return DeSteinEditor({"alg_name": "DeStein", "fusion": "additive", "apply": apply, "alpha": 1.0,
                          "layers": layers, "pairs": {"num_pairs": 10, "batch_size": 4}, "progress": False})


def security_vector() -> Any:
    from detox_plugins.security_vectors.editor import SecurityVectorEditor

    return SecurityVectorEditor({"alg_name": "SecurityVectors", "max_length": 96, "max_target_tokens": 48,
                                 "progress": False, "sv_lora": {"r": 4, "lora_alpha": 8,
                                                                "target_modules": ["q_proj", "v_proj"]},
                                 "sv_epochs": 1, "sv_batch_size": 4, "sv_kl_weight": 0.0})


EDITS = {
    "DINM": (lambda: dinm([1]), [CASE]),
    "DeStein (bias fold)": (lambda: destein("bias_fold"), PAIRS),
    "DeStein (hook)": (lambda: destein("hook"), PAIRS),
    "DeStein (hook, blocks 0-1)": (lambda: destein("hook", layers=[0, 1]), PAIRS),
    "SecurityVectors": (security_vector, harmful_rows()[:4]),
}


def dispatched(tmp_path: Path, offload: bool) -> Any:
    from accelerate import dispatch_model

    model = FAMILIES["llama"].build()
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "cpu", "model.layers.2": "disk" if offload else "cpu", "model.norm": "cpu",
                  "lm_head": "cpu"}
    return dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path / "offload"), force_hooks=True)


def hooks(model: Any) -> dict[str, int]:
    """Accelerate's hooks and every registered forward (pre-)hook, by module."""
    return {name: (len(m._forward_hooks), len(m._forward_pre_hooks), int(hasattr(m, "_hf_hook")))
            for name, m in model.named_modules()}


def in_memory(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.device.type != "meta"}


def offloaded_files(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "offload"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*"))} if folder.exists() else {}


def logits(model: Any, tok: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok("How do I bake bread?", return_tensors="pt")).logits


@pytest.mark.parametrize("offload", [False, True], ids=["cpu", "cpu+disk"])
@pytest.mark.parametrize("name", list(EDITS))
def test_an_edit_of_a_dispatched_model_reverts_exactly(name: str, offload: bool, tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = dispatched(tmp_path, offload)
    make, inputs = EDITS[name]
    before, hooks_before, files_before, base = in_memory(model), hooks(model), offloaded_files(tmp_path), logits(model, tok)
    refused = offload and name not in ("DINM", "DeStein (hook, blocks 0-1)")  # the others need block 2, on disk
    if refused:
        with pytest.raises(EditError, match="offloaded .*keep the edited layers on a device"):
            make().edit(model, tok, inputs)
    else:
        edit = make().edit(model, tok, inputs)
        changed = in_memory(model).keys() != before.keys() or not torch.equal(logits(model, tok), base)
        assert changed or any(not torch.equal(v, before[k]) for k, v in in_memory(model).items() if k in before)
        edit.revert()
    after = in_memory(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert hooks(model) == hooks_before and offloaded_files(tmp_path) == files_before
    assert torch.equal(logits(model, tok), base)


def test_dinm_refuses_an_offloaded_layer_before_any_work(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = dispatched(tmp_path, offload=True)
    before = in_memory(model)
    with pytest.raises(EditError, match=r"model\.layers\.2\.mlp\.down_proj\.weight, which is offloaded"):
        dinm([2]).edit(model, tok, [CASE])
    assert all(torch.equal(in_memory(model)[k], v) for k, v in before.items())
