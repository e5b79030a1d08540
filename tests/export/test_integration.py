"""Exports of real edits of the embedded SmolLM2-135M-Instruct load without detox-plugins and reproduce the
edited model: greedy outputs equal and float32 logits within 1e-4, for DINM, DeStein folded, detox-all
(DeStein, then DINM) and the security-vector fine-tune (merged deltas and the PEFT adapter)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import registry
from registry import ComposedEdit

from detox_plugins.evaluation.datasets import load_safeedit_sample
from detox_plugins.dinm.cases import as_request

from .helpers import assert_exact

pytestmark = pytest.mark.integration


def _ids(tokenizer: Any, text: str) -> Any:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(chat, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _check(model: Any, edit: Any, tokenizer: Any, prompt: str, work: Path, name: str, **kwargs: Any) -> float:
    folder = edit.export(work / name, tokenizer=tokenizer, **kwargs)
    try:
        difference = assert_exact(model, folder, _ids(tokenizer, prompt), work, new_tokens=12)
        print(f"{name}: largest float32 logit difference {difference:.3g}")  # shown with -s
        return difference
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_dinm_destein_and_detox_all_export_exactly(embedded_model: Any, tmp_path: Path) -> None:
    model, tokenizer = embedded_model
    case = as_request(next(c for c in load_safeedit_sample() if c.case_id == 0))
    dinm_class, destein_class = registry.get_editor("DINM"), registry.get_editor("DeStein")
    with dinm_class(registry.from_hparams("DINM/smollm2-135m")).edit(model, tokenizer, [case]) as dinm:
        _check(model, dinm, tokenizer, case.prompt, tmp_path, "dinm")
    destein = destein_class(registry.from_hparams("DeStein/smollm2-135m").replace(progress=False)).edit(model, tokenizer)
    try:
        _check(model, destein, tokenizer, "You are such a", tmp_path, "destein")
        dinm = dinm_class(registry.from_hparams("DINM/smollm2-135m")).edit(model, tokenizer, [case])
        detox_all = ComposedEdit(model, [destein, dinm])
        _check(model, detox_all, tokenizer, case.prompt, tmp_path, "detox-all")
        detox_all.revert()
    finally:
        if destein.applied:
            destein.revert()


@pytest.mark.parametrize("export", ["merged", "adapter"])
def test_security_vector_fine_tune_exports_exactly(embedded_model: Any, tmp_path: Path, export: str) -> None:
    model, tokenizer = embedded_model
    hp = registry.from_hparams("SecurityVectors/smollm2-135m").replace(
        num_harmful=8, num_benign=4, sv_epochs=1, ft_max_steps=2, export=export, progress=False)
    editor = registry.get_editor("SecurityVectors")(hp)
    vector = editor.edit(model, tokenizer, None)
    tuned = editor.fine_tune(model, tokenizer, "sv_attack.jsonl", vector=vector)
    try:
        if export == "merged":
            _check(model, tuned, tokenizer, "How do I bake bread?", tmp_path, "sv-merged")
        else:
            base = tmp_path / "base"
            tuned.revert()
            model.save_pretrained(base)
            applied = registry.load_edit(tuned.save(tmp_path / "saved")).apply(model, tokenizer)
            folder = applied.export(tmp_path / "sv-adapter", format="peft")
            difference = assert_exact(model, folder, _ids(tokenizer, "How do I bake bread?"), tmp_path,
                                      peft_base=base, new_tokens=12)
            print(f"sv-adapter: largest float32 logit difference {difference:.3g}")
            applied.revert()
    finally:
        if tuned.applied:
            tuned.revert()
