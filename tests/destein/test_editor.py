"""Hparams, the editor contract, bad inputs, save/load round trip and the fingerprint check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from detox_plugins.destein.editor import DeSteinEditor
from detox_plugins.destein.hparams import DeSteinHyperParams
from detox_plugins.destein.vectors import VECTOR_FILE, SteeringVectors
from registry.saved import load_edit
from registry.errors import EditError, HyperParamsError, ManifestError
from detox_plugins.evaluation.errors import DatasetError

from .conftest import editor, encode, hook_counts, tiny_llama_model

HPARAMS_DIR = Path(__file__).resolve().parents[2] / "hparams" / "DeStein"


@pytest.mark.parametrize("path", sorted(HPARAMS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_yaml_round_trips(path: Path) -> None:
    hp = DeSteinHyperParams.from_hparams(path)
    again = DeSteinHyperParams.from_dict(hp.to_dict())
    assert again == hp and hp.alg_name == "DeStein"


def test_shipped_yaml_set() -> None:
    assert {p.stem for p in HPARAMS_DIR.glob("*.yaml")} >= {"smollm2-135m", "llama-7b", "gpt2-large"}
    gpt2 = DeSteinHyperParams.from_hparams(HPARAMS_DIR / "gpt2-large.yaml")
    assert (gpt2.fusion, gpt2.alpha, gpt2.pairs.num_pairs, gpt2.pairs.last_k) == ("rotate", 0.45, 20, 8)
    assert DeSteinHyperParams.from_hparams(HPARAMS_DIR / "llama-7b.yaml").pairs.num_pairs == 40


@pytest.mark.parametrize("config,match", [
    ({"fusion": "multiply"}, "fusion"),
    ({"alpha": "strong"}, "alpha"),
    ({"alpha": True}, "alpha"),
    ({"fusion": "rotate", "apply": "bias_fold"}, "not affine"),
    ({"fusion": "rotate", "capture": "head_input"}, "capture"),
    ({"layers": "some"}, "layers"),
    ({"pairs": {"last_k": 0}}, "last_k"),
    ({"probe": {"top_k": 0}}, "top_k"),
    ({"probe": {"wieght": "acc"}}, "did you mean 'weight'"),
    ({"positions": "generated"}, "positions"),
])
def test_bad_hparams_raise_clear_errors(config: dict, match: str) -> None:
    with pytest.raises(HyperParamsError, match=match):
        DeSteinHyperParams.from_dict({"alg_name": "DeStein", **config})


def test_editor_class_contract() -> None:
    assert (DeSteinEditor.name, DeSteinEditor.kind) == ("DeStein", "activations")
    assert DeSteinEditor.hparams_class is DeSteinHyperParams
    assert DeSteinEditor.hparams_package == "detox_plugins.hparams"
    assert DeSteinEditor().hparams.capture_site == "attn_output"
    for f in __import__("dataclasses").fields(DeSteinHyperParams):
        assert f.metadata.get("help"), f.name


def test_plugin_registers_through_the_hook(destein_registry: Any) -> None:
    assert destein_registry.get_editor("destein") is DeSteinEditor


def test_bad_inputs_fail_before_touching_the_model(llama: Any, tok: Any, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    counts = hook_counts(llama)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"toxic": "x"}\n')
    with pytest.raises(DatasetError, match="nontoxic"):
        editor().edit(llama, tok, str(bad))
    with pytest.raises(DatasetError, match="nontoxic"):
        editor(pairs={"path": str(bad)}).edit(llama, tok)
    with pytest.raises(DatasetError, match="num_pairs"):
        editor(pairs={"num_pairs": 50}).edit(llama, tok, [("a", "b")])
    with pytest.raises(EditError, match="out of range"):
        editor(layers=[7]).edit(llama, tok, [("a", "b")])
    with pytest.raises(EditError, match="requests must be"):
        editor().edit(llama, tok, 42)
    with pytest.raises(HyperParamsError, match="fusion"):
        editor(fusion="scale")
    assert hook_counts(llama) == counts
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())


def test_safeedit_requests_become_pairs(llama: Any, tok: Any) -> None:
    requests = [{"prompt": "q", "target_new": "I will not say that.", "ground_truth": "you stupid idiot"},
                {"prompt": "q2", "target_new": "Let us be kind.", "ground_truth": "shut up moron"}]
    pairs, source = editor().resolve_pairs(requests)
    assert source == "edit-requests" and pairs[0].toxic == "you stupid idiot"
    with pytest.raises(EditError, match="ground_truth"):
        editor().resolve_pairs([{"prompt": "q", "target_new": "ok"}])


@pytest.mark.parametrize("fusion,apply", [("rotate", "hook"), ("additive", "bias_fold")])
def test_save_load_round_trip(destein_registry: Any, llama: Any, tok: Any, pairs: list, tmp_path: Path,
                              fusion: str, apply: str) -> None:
    batch = encode(tok, ["you are a", "hello"])
    with torch.no_grad():
        base = llama(**batch).logits
    edit = editor(fusion=fusion, apply=apply, alpha=1.2, probe={"top_k": 6}).edit(llama, tok, pairs)
    with torch.no_grad():
        steered = llama(**batch).logits
    folder = edit.save(tmp_path / "edit")
    edit.revert()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["payload"] == "destein_vectors" and manifest["editor"] == "DeStein"
    assert manifest["destein"]["fusion"] == fusion and manifest["destein"]["alpha"] == 1.2
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))
    saved = load_edit(folder)
    expected = {"v", "acc", "mask"} | ({"u"} if fusion == "rotate" else set())
    assert set(saved.tensors) == expected
    assert torch.equal(saved.tensors["v"], edit.vectors.v) and torch.equal(saved.tensors["mask"], edit.vectors.mask)
    # the standalone vector file mirrors the key fields in __metadata__
    from safetensors import safe_open

    with safe_open(str(folder / VECTOR_FILE), framework="pt") as handle:
        meta = {k: json.loads(v) for k, v in handle.metadata().items()}
    assert meta["hook_point"] == ("attn_out_post_proj" if fusion == "rotate" else "o_proj_in_per_head")
    assert meta["op"] == ("rotate" if fusion == "rotate" else "add") and meta["num_pairs"] == 10
    assert meta["last_k"] == 8 and meta["prefixes"] == "destein" and meta["format_version"] == 1
    reloaded = SteeringVectors.load(folder)
    assert torch.equal(reloaded.acc, edit.vectors.acc) and reloaded.site == edit.vectors.site
    # load + apply on the same model reproduces the steered logits, and reverts cleanly
    again = saved.apply(llama, tok)
    with again:
        with torch.no_grad():
            torch.testing.assert_close(llama(**batch).logits, steered, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(llama(**batch).logits, base, rtol=0, atol=0)
    # the vectors hparam applies the saved vectors without capturing
    with editor(fusion=fusion, apply=apply, alpha=1.2, vectors=str(folder)).edit(llama, None):
        with torch.no_grad():
            torch.testing.assert_close(llama(**batch).logits, steered, rtol=1e-6, atol=1e-6)


def test_fingerprint_mismatch_is_refused(destein_registry: Any, llama: Any, tok: Any, pairs: list,
                                         tmp_path: Path) -> None:
    edit = editor().edit(llama, tok, pairs)
    folder = edit.save(tmp_path / "edit")
    edit.revert()
    other = tiny_llama_model(seed=1)
    counts = hook_counts(other)
    with pytest.raises(ManifestError, match="fingerprint"):
        load_edit(folder).apply(other)
    assert hook_counts(other) == counts
    load_edit(folder).apply(other, force=True).revert()  # --force applies anyway


def test_vectors_for_another_architecture_are_refused(gpt2: Any, llama: Any, tok: Any, pairs: list) -> None:
    vectors = editor().build_vectors(gpt2, tok, editor().resolve_pairs(pairs)[0])  # 2 layers; llama has 3
    with pytest.raises(EditError, match="do not fit"):
        editor().edit(llama, tok, vectors=vectors)
    with pytest.raises(EditError, match="captured at"):
        editor(fusion="additive").edit(llama, tok, vectors=editor().build_vectors(
            llama, tok, editor().resolve_pairs(pairs)[0]))
