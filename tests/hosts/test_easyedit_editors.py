"""EasyEdit's own ROME, MEMIT and FT as our editors (examples/easyedit_editors, the reverse bridge), on tiny random
models: each edit's deltas are exactly what EasyEdit's apply function changed, revert is exact, a saved edit
replays on a fresh copy, bad input leaves the model as it was, and a missing or broken easyeditor never breaks
the discovery of the other editors."""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from registry.errors import EditError, HyperParamsError

from .conftest import SNAPSHOT, fingerprint

FACTS = [{"prompt": "The capital of Zarkovia is", "subject": "Zarkovia", "target_new": "Velmora"},
         {"prompt": "The Zorblatt engine was invented by", "subject": "Zorblatt", "target_new": "Mira"}]
TEXTS = [f"Sentence number {i} talks about rivers, cities, engines and the weather of place {i}." for i in range(24)]
SHARED = {"layer_module_tmp": "model.layers.{}", "mlp_module_tmp": "model.layers.{}.mlp",
          "attn_module_tmp": "model.layers.{}.self_attn", "ln_f_module": "model.norm", "lm_head_module": "lm_head",
          "model_name": "tiny-llama", "device": "cpu"}
KEY_VALUE = {**SHARED, "rewrite_module_tmp": "model.layers.{}.mlp.down_proj", "fact_token": "subject_last",
             "v_num_grad_steps": 4, "v_lr": 0.5, "v_loss_layer": 3, "v_weight_decay": 1e-3, "clamp_norm_factor": 4,
             "kl_factor": 0.0625, "mom2_dataset": "local_text", "mom2_n_samples": len(TEXTS), "mom2_dtype": "float32"}
HPARAMS = {
    "ROME": {**KEY_VALUE, "alg_name": "ROME", "layers": [1], "mom2_adjustment": False,
             "context_template_length_params": [[5, 5]]},
    "MEMIT": {**KEY_VALUE, "alg_name": "MEMIT", "layers": [1, 2], "mom2_adjustment": True, "layer_selection": "all",
              "mom2_update_weight": 100},
    "FT": {**SHARED, "alg_name": "FT", "layers": [1], "rewrite_module_tmp": "model.layers.{}.mlp.down_proj.weight",
           "num_steps": 3, "lr": 1e-2, "weight_decay": 0, "kl_factor": 0, "norm_constraint": False,
           "objective_optimization": "target_new", "batch_size": 2, "max_length": 64},
}


def tiny() -> tuple[Any, Any]:
    from tests.tiny import tiny_llama, tiny_tokenizer

    model = tiny_llama(seed=0, layers=4)
    model.config._name_or_path = "tiny-llama"  # EasyEdit files statistics under the model's folder name
    return model, tiny_tokenizer()


def editor_for(alg: str, tmp_path: Path, **changes: Any) -> Any:
    import registry

    config = dict(HPARAMS[alg], **changes)
    if alg != "FT":
        config.setdefault("stats_dir", str(tmp_path / "stats"))
    return registry.get_editor(alg)(config)


def easyedit_reference(editor: Any, model: Any, tok: Any, requests: list[dict]) -> Any:
    """What EasyEdit's own apply function makes of a copy of ``model`` (same seed, same emptied caches)."""
    reference = copy.deepcopy(model)
    apply = getattr(importlib.import_module(editor.host_module), editor.host_apply)
    size = editor.requests_per_call or len(requests)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(editor.hparams.seed)
        editor.clear_host_caches()
        for start in range(0, len(requests), size):
            apply(reference, tok, editor.host_requests(requests[start:start + size]), editor.host_hparams(reference),
                  copy=False)
    return reference


@pytest.mark.parametrize("alg", ["ROME", "MEMIT", "FT"])
def test_edit_owns_exactly_what_easyedit_changed(easyeditor, real_registry, tmp_path, monkeypatch, alg) -> None:
    import registry
    from easyedit_editors.stats import write_stats

    model, tok = tiny()
    monkeypatch.setenv("DETOX_CACHE", str(tmp_path / "cache"))  # the shipped files' stats_dir form
    editor = editor_for(alg, tmp_path, **({} if alg == "FT" else {"stats_dir": "$DETOX_CACHE/easyedit-stats"}))
    requests = FACTS[:1] if alg == "ROME" else FACTS
    if alg == "MEMIT":
        write_stats(model, tok, editor.hparams, TEXTS, progress=False)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = fingerprint(model)
    reference = easyedit_reference(editor, model, tok, requests)
    changed = {n for n, p in reference.named_parameters() if not torch.equal(p, w0[n])}

    edit = editor.edit(model, tok, requests)
    assert changed and set(edit.deltas) == changed == set(editor.target_weights(model))
    ref = dict(reference.named_parameters())
    for name, delta in edit.deltas.items():
        assert torch.equal(delta, ref[name].detach() - w0[name])  # the delta is EasyEdit's change, bit for bit
        torch.testing.assert_close(model.get_parameter(name), ref[name], rtol=0, atol=1e-6)  # W0 + delta
    assert edit.footprint().writes == frozenset(changed)
    assert all(p.requires_grad for p in model.parameters())  # EasyEdit's FT turns them off; they come back
    edited = {n: p.detach().clone() for n, p in model.named_parameters()}

    saved = edit.save(tmp_path / "edit")
    edit.revert()
    assert fingerprint(model) == before

    fresh, _ = tiny()
    replayed = registry.load_edit(saved).apply(fresh)
    assert all(torch.equal(p, edited[n]) for n, p in fresh.named_parameters())
    replayed.revert()
    assert fingerprint(fresh) == before


def test_memit_without_statistics_is_refused_before_any_change(easyeditor, real_registry, tmp_path) -> None:
    model, tok = tiny()
    before = fingerprint(model)
    editor = editor_for("MEMIT", tmp_path)
    expected = tmp_path / "stats" / "tiny-llama" / "local_text_stats" / "model.layers.1.mlp.down_proj_float32_mom2_24.npz"
    with pytest.raises(EditError, match="easyedit-stats") as caught:
        editor.edit(model, tok, FACTS)
    assert str(expected) in str(caught.value) and "is missing" in str(caught.value)
    assert fingerprint(model) == before


def test_bad_requests_leave_the_model_as_it_was(easyeditor, real_registry, tmp_path) -> None:
    model, tok = tiny()
    before = fingerprint(model)
    rome = editor_for("ROME", tmp_path)
    with pytest.raises(EditError, match="needs 'subject'"):
        rome.edit(model, tok, [{"prompt": "The capital of Zarkovia is", "target_new": "Velmora"}])
    with pytest.raises(EditError, match="does not occur in prompt"):
        rome.edit(model, tok, [dict(FACTS[0], subject="Quenthar")])
    with pytest.raises(EditError, match="names no module"):
        editor_for("ROME", tmp_path, layers=[9]).edit(model, tok, FACTS[:1])
    with pytest.raises(EditError, match="matches no parameter"):
        editor_for("FT", tmp_path, layers=[9]).edit(model, tok, FACTS[:1])
    assert fingerprint(model) == before


def test_easyedit_hparams_files_load_unchanged(easyeditor, real_registry) -> None:
    """Every ROME, MEMIT and FT file of the snapshot loads into our classes, except one with an upstream typo,
    which EasyEdit itself only fails on at edit time (NotImplementedError) and ours names at load."""
    import registry
    from easyedit_editors import hparams

    files = sorted(p for alg in ("ROME", "MEMIT", "FT") for p in (SNAPSHOT / "hparams" / alg).glob("*.yaml"))
    assert len(files) >= 40
    for path in files:
        if path.name == "chatglm4-9b.yaml" and path.parent.name == "FT":
            with pytest.raises(HyperParamsError, match="'promptz_last' is not allowed"):
                registry.from_hparams(str(path))
            continue
        hp = registry.from_hparams(str(path))
        assert isinstance(hp, hparams.EasyEditHyperParams) and hp.alg_name == path.parent.name, path
    for name in ("ROME/smollm2-135m", "MEMIT/smollm2-135m", "FT/smollm2-135m"):  # ours, found by name
        assert registry.from_hparams(name).alg_name == name.split("/")[0]


def test_statistics_files_are_easyedit_s_own(easyeditor, real_registry, tmp_path) -> None:
    """EasyEdit's layer_stats reads the file we write (and does not try to download its dataset)."""
    from easyeditor.models.rome.layer_stats import layer_stats
    from easyedit_editors.stats import stats_path, write_stats

    model, tok = tiny()
    editor = editor_for("MEMIT", tmp_path)
    paths = write_stats(model, tok, editor.hparams, TEXTS, progress=False)
    assert paths == [stats_path(model, editor.hparams, layer) for layer in (1, 2)]
    hp = editor.host_hparams(model)
    stat = layer_stats(model, tok, "model.layers.1.mlp.down_proj", str(tmp_path / "stats"), "local_text",
                       to_collect=["mom2"], sample_size=len(TEXTS), precision="float32", hparams=hp)
    moment = stat.mom2.moment()
    assert moment.shape == (64, 64) and torch.allclose(moment, moment.T) and bool((moment.diagonal() > 0).all())
    with pytest.raises(EditError, match="exists; pass --overwrite"):
        write_stats(model, tok, editor.hparams, TEXTS, progress=False)


def test_detox_edit_runs_rome_from_the_command_line(easyeditor, real_registry, tmp_path) -> None:
    import yaml

    import registry
    from detox_plugins.cli import main

    model, tok = tiny()
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    hparams = tmp_path / "rome.yaml"
    hparams.write_text(yaml.safe_dump(dict(HPARAMS["ROME"], model_name=str(folder), stats_dir=str(tmp_path))))
    requests = tmp_path / "facts.jsonl"
    requests.write_text(json.dumps(FACTS[0]) + "\n")
    assert main(["edit", "--hparams", str(hparams), "--requests", str(requests), "--out", str(tmp_path / "out")]) == 0
    saved = registry.load_edit(tmp_path / "out")
    assert saved.manifest["editor"] == "ROME" and saved.manifest["distribution"] == "easyedit-editors"
    assert set(saved.tensors) == {"model.layers.1.mlp.down_proj.weight"}


def discovery(tmp_path: Path, easyedit_path: Path) -> dict[str, Any]:
    """`detox plugins --json` in a fresh process whose EASYEDIT_PATH is ``easyedit_path``."""
    env = dict(os.environ, EASYEDIT_PATH=str(easyedit_path))
    env.pop("MODEL_EDITORS_STRICT", None)
    code = "from detox_plugins.cli import main; raise SystemExit(main(['plugins', '--json']))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return {"rows": json.loads(done.stdout), "stderr": done.stderr}


@pytest.mark.parametrize("host", ["missing", "broken"])
def test_missing_or_broken_easyeditor_never_breaks_discovery(tmp_path, host) -> None:
    folder = tmp_path / "easyedit"
    folder.mkdir()
    if host == "broken":
        (folder / "easyeditor").mkdir()
        (folder / "easyeditor" / "__init__.py").write_text("raise RuntimeError('this easyeditor is broken on purpose')\n")
    found = discovery(tmp_path, folder)
    rows = found["rows"]
    editors = rows["editors"] if isinstance(rows, dict) else rows
    names = {row["name"] for row in editors}
    assert {"DINM", "DeStein", "SecurityVectors"} <= names and not names & {"ROME", "MEMIT", "FT"}
    failure = next(row for row in editors if row["name"] == "easyedit_editors")
    assert "easyeditor does not import" in failure["error"]
    reason = "holds no easyeditor/ package" if host == "missing" else "broken on purpose"
    assert reason in failure["error"]
    assert found["stderr"].count("Skipped editor plugin 'easyedit_editors'") == 1  # one warning


def test_a_change_easyedit_does_not_report_as_planned_is_refused_and_undone(easyeditor, real_registry, tmp_path,
                                                                              monkeypatch) -> None:
    """If the bridge's idea of the written tensors (here narrowed to layer 1) misses one EasyEdit changed (layer 2),
    the edit is refused and both tensors hold their original values again."""
    from easyedit_editors.editors import FTEditor

    model, tok = tiny()
    before = fingerprint(model)
    editor = editor_for("FT", tmp_path, layers=[1, 2])
    full = FTEditor.target_weights
    monkeypatch.setattr(FTEditor, "target_weights",
                        lambda self, m: {n: p for n, p in full(self, m).items() if ".1." in n})
    with pytest.raises(EditError, match="model.layers.2.mlp.down_proj.weight, which its hparams do not name"):
        editor.edit(model, tok, FACTS)
    assert fingerprint(model) == before


def test_memit_names_the_tied_output_head(easyeditor, real_registry, tmp_path) -> None:
    model, tok = tiny()
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as SmolLM2's
    model.config.tie_word_embeddings = True
    before = fingerprint(model)
    with pytest.raises(EditError, match="set lm_head_module: 'model.embed_tokens'"):
        editor_for("MEMIT", tmp_path).edit(model, tok, FACTS)
    assert fingerprint(model) == before
