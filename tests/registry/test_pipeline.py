"""Pipelines and composition from hparams: parsing and its errors, runs on tiny models, conflict
checks before anything changes, all-or-nothing failures, save/load/apply, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import registry
from registry import compose, load_edit
from registry.compose import ConflictError
from registry.errors import DetoxError, EditError, HyperParamsError
from registry.hookspecs import hookimpl
from registry.pipeline import load_pipeline, parse_pipeline, run_pipeline

from ..dinm.helpers import CASE
from ..tiny import tiny_llama, tiny_tokenizer
from .scale_editor import ScaleEditor
from .test_edits import assert_same_state, state

PAIRS = [
    {"toxic": "you are a stupid idiot", "nontoxic": "you are a kind person"},
    {"toxic": "shut up you dumb fool", "nontoxic": "please let me finish"},
    {"toxic": "I will hurt you badly", "nontoxic": "I will help you gladly"},
    {"toxic": "go to hell jerk", "nontoxic": "have a nice day friend"},
    {"toxic": "what a pathetic loser", "nontoxic": "what a brave effort"},
]


def dinm(**changes: Any) -> dict[str, Any]:
    return {"alg_name": "DINM", "lr": 1e-2, "num_steps": 2, **changes}


def destein(**changes: Any) -> dict[str, Any]:
    return {"alg_name": "DeStein", "fusion": "additive", "apply": "bias_fold", "progress": False,
            "pairs": {"num_pairs": 0, "batch_size": 4}, **changes}


def hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class FailingEditor(ScaleEditor):
    """Fails inside its edit (after validation): an EditError, or an interrupt."""

    name = "Failing"
    aliases = ()

    def edit(self, model: Any, tokenizer: Any, requests: Any) -> Any:
        if self.hparams.factor < 0:
            raise KeyboardInterrupt
        raise EditError("this step fails on purpose")


class TestPlugin:
    @hookimpl
    def register_editors(self, register):
        register(ScaleEditor)
        register(FailingEditor)


@pytest.fixture
def reg(real_registry):
    """The installed editors (DINM, DeStein, SecurityVectors) plus Scale and Failing, in-process."""
    real_registry.register_plugin(TestPlugin(), name="pipeline-test", distribution="pipeline-test", version="1.0")
    return real_registry


@pytest.fixture
def tok():
    return tiny_tokenizer()


# ---------------------------------------------------------------------- parsing
def test_shipped_pipelines_parse_and_name_their_steps(reg):
    shipped = registry.catalog.shipped_pipelines()
    assert {"detox-all", "sv-finetune-then-dinm"} <= set(shipped)
    assert not any("pipelines" in name for name in registry.shipped_hparams())  # not mistaken for hparams
    detox = load_pipeline("detox-all")
    assert [s.editor_name for s in detox.steps] == ["DeStein", "DINM"]
    assert detox.model_name == "smollm2-135m-instruct"
    assert [r.case_id for r in detox.steps[1].inputs] == [0]
    assert detox.steps[0].editor.hparams.apply == "bias_fold" and detox.steps[0].editor.hparams.progress is False
    assert detox.steps[0].editor.hparams.alpha == 0.5 and detox.steps[1].editor.hparams.num_steps == 20
    sv = load_pipeline("sv-finetune-then-dinm")
    assert [s.editor_name for s in sv.steps] == ["SecurityVectors", "DINM"]
    step = sv.steps[0].inputs
    assert (step.action, step.data, step.vector) == ("finetune", "sv_attack.jsonl", "train")


def test_a_pipeline_file_resolves_relative_paths_and_merges_overrides(reg, tmp_path):
    (tmp_path / "hp").mkdir()
    (tmp_path / "hp" / "steer.yaml").write_text(yaml.safe_dump(destein()))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"steps": [
        {"hparams": dinm(), "requests": [CASE], "name": "fix"},
        {"hparams": "hp/steer.yaml", "pairs": "pairs.jsonl", "override": {"alpha": 0.3, "pairs": {"seed": 7}}},
    ]}))
    pipeline = load_pipeline(tmp_path / "p")  # suffix optional
    assert pipeline.name == "p" and [s.label for s in pipeline.steps] == ["fix", "step 2 (DeStein)"]
    hp = pipeline.steps[1].editor.hparams
    assert hp.alpha == 0.3 and hp.pairs.seed == 7 and hp.pairs.batch_size == 4  # nested keys merge
    assert pipeline.steps[1].inputs == str(tmp_path / "pairs.jsonl")
    assert pipeline.steps[0].inputs[0].prompt == CASE["prompt"]


@pytest.mark.parametrize("data,fragment", [
    ({"step": []}, r"unknown pipeline key 'step'; did you mean 'steps'"),
    ({"alg_name": "DINM", "steps": [{}]}, r"unknown pipeline key 'alg_name'.*looks like a hyperparameter file"),
    ({"steps": []}, r"'steps' must be a non-empty list"),
    ({"steps": ["DINM/nope"]}, r"step 1: no hyperparameter file 'DINM/nope'"),
    ({"steps": [{"cases": "safeedit-sample"}]}, r"step 1: missing 'hparams'"),
    ({"steps": [{"hparams": {"alg_name": "DIMN"}}]}, r"unknown editor 'DIMN'.*Did you mean 'DINM'"),
    ({"steps": [{"hparams": {"lr": 1}}]}, r"have no 'alg_name'"),
    ({"steps": [{"hparams": dinm(), "case": "safeedit-sample"}]},
     r"unknown key 'case' for a DINM step; did you mean 'cases'"),
    ({"steps": [{"hparams": dinm(), "override": {"num_step": 3}}]},
     r"\+ override\): unknown key 'num_step' for DINMHyperParams; did you mean 'num_steps'"),
    ({"steps": [{"hparams": dinm(), "override": "lr=1"}]}, r"'override' must be a mapping"),
    ({"steps": [{"hparams": dinm()}]}, r"p\.yaml step 1 \(DINM\): DINM needs 'cases'"),
    ({"steps": [{"hparams": dinm(), "cases": "safeedit-sample", "case_id": 999}]}, r"no case with id '999'"),
    ({"steps": [{"hparams": dinm(), "cases": "safeedit-sample", "requests": [CASE]}]}, r"either 'cases' or"),
    ({"steps": [{"hparams": dinm(), "requests": [{"prompt": "x"}]}]}, r"missing target_new"),
    ({"steps": [{"hparams": destein(), "pairs": "no-such-pairs.jsonl"}]}, r"pair file .* does not exist"),
    ({"steps": [{"hparams": "SecurityVectors/smollm2-135m", "action": "finetune"}]}, r"needs 'data'"),
    ({"steps": [{"hparams": "SecurityVectors/smollm2-135m", "action": "train"}]}, r"'action' must be vector"),
    ({"steps": [{"hparams": "SecurityVectors/smollm2-135m", "action": "finetune", "data": "sv_attack.jsonl",
                 "vector": "no/such/folder"}]}, r"no/such/folder is not a folder"),
])
def test_bad_pipelines_raise_clear_errors(reg, data, fragment):
    with pytest.raises(DetoxError, match=fragment):
        parse_pipeline(data, source="p.yaml")


@pytest.mark.parametrize("text,fragment", [
    ("steps: [unclosed\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("- a\n", "expected a mapping"),
])
def test_pipeline_files_are_read_safely(reg, tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(HyperParamsError, match=fragment):
        load_pipeline(path)


def test_an_unknown_pipeline_name_suggests_the_closest(reg):
    with pytest.raises(HyperParamsError, match=r"no pipeline 'detox-al'.*Did you mean 'detox-all'"):
        load_pipeline("detox-al")


# ---------------------------------------------------------------------- composing from hparams
def test_compose_from_hparams_runs_in_order_and_reverts_bit_for_bit(reg, tok):
    model = tiny_llama()
    before = state(model)
    composed = compose([{"hparams": dinm(), "requests": [CASE]}, {"hparams": destein(), "pairs": PAIRS}],
                       model, tok)
    assert composed.metadata["step_labels"] == ["step 1 (DINM)", "step 2 (DeStein)"]
    rows = composed.describe()
    assert [r["payload"] for r in rows] == ["parameter_delta", "destein_vectors"]
    dinm_writes = rows[0]["footprint"]["writes"]
    assert len(dinm_writes) == 1 and dinm_writes[0].endswith("mlp.down_proj.weight")
    assert rows[1]["footprint"]["writes"] == [f"model.layers.{i}.self_attn.o_proj.bias" for i in range(3)]
    assert "model.layers.0.self_attn.o_proj.bias" in model.state_dict()  # the fold attached biases
    composed.revert()
    assert_same_state(model, before)
    assert hook_count(model) == 0


def test_dinm_may_edit_the_same_matrix_twice(reg, tok):
    """DINM declares stacking: two edits of one down_proj compose and revert exactly."""
    model = tiny_llama()
    before = state(model)
    step = {"hparams": dinm(layers=[1]), "requests": [CASE]}
    composed = compose([step, step], model, tok)
    first, second = composed.steps
    name = "model.layers.1.mlp.down_proj.weight"
    assert set(first.deltas) == set(second.deltas) == {name}
    assert torch.equal(model.state_dict()[name], first.originals[name] + first.deltas[name] + second.deltas[name])
    composed.revert()
    assert_same_state(model, before)


def test_applied_edits_then_steps(reg, tok, tmp_path):
    model = tiny_llama()
    before = state(model)
    applied = registry.get_editor("DINM")(dinm(layers=[0])).edit(model, tok, [CASE])
    composed = compose([applied, {"hparams": destein(fusion="rotate", apply="hook"), "pairs": PAIRS}], model, tok)
    assert [s.editor for s in composed.steps] == ["DINM", "DeStein"]
    assert composed.metadata["step_labels"] == ["edit 1 (DINM)", "step 2 (DeStein)"]
    assert hook_count(model) == 3
    edited = state(model)
    out = composed.save(tmp_path / "both")
    composed.revert()
    assert_same_state(model, before) and hook_count(model) == 0
    with pytest.raises(EditError, match="must come before the steps"):
        compose([{"hparams": dinm(), "requests": [CASE]}, applied], model, tok)

    replayed = load_edit(out).apply(model, tok)
    assert_same_state(model, edited)
    assert hook_count(model) == 3
    replayed.revert()
    assert_same_state(model, before)
    assert hook_count(model) == 0


# ---------------------------------------------------------------------- conflicts
def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(config).eval()


O_PROJ = "model.layers.{}.self_attn.o_proj.weight"
SV_FINETUNE = {"hparams": "SecurityVectors/smollm2-135m", "action": "finetune", "data": "sv_attack.jsonl"}


@pytest.mark.parametrize("steps,rule,fragment", [
    # a DeStein bias fold is W_o·δ: a later edit of o_proj.weight makes it stale
    ([{"hparams": destein(), "pairs": PAIRS}, {"hparams": dinm(layers=[1], rewrite_module_tmp=O_PROJ),
                                                "requests": [CASE]}],
     "reads", r"step 2 \(DINM\) changes model\.layers\.1\.self_attn\.o_proj\.weight, which step 1 \(DeStein\)'s "
              r"result was computed from"),
    # a DeStein hook edit under a later weight edit of the same module
    ([{"hparams": destein(fusion="rotate", apply="hook"), "pairs": PAIRS},
      {"hparams": dinm(layers=[1], rewrite_module_tmp=O_PROJ), "requests": [CASE]}],
     "hooked-module", r"of a module step 1 \(DeStein\) steers with forward hooks"),
    # an SV user adapter wraps q/k/v/o_proj; a later DINM edit of q_proj changes what it wraps
    ([{**SV_FINETUNE, "override": {"export": "adapter"}},
      {"hparams": dinm(layers=[0], rewrite_module_tmp="model.layers.{}.self_attn.q_proj.weight"),
       "requests": [CASE]}],
     "wrapped-module", r"inside a module that step 1 \(SecurityVectors\)'s adapter wraps"),
    # a security vector and a user adapter on the same modules
    ([{"hparams": "SecurityVectors/smollm2-135m"}, SV_FINETUNE],
     "two-adapters", r"both attach an adapter to model\.layers\.0\.self_attn\.q_proj"),
    # an adapter over a module a DeStein hook steers
    ([{"hparams": destein(fusion="rotate", apply="hook"), "pairs": PAIRS}, SV_FINETUNE],
     "adapter-over-hook", r"step 2 \(SecurityVectors\)'s adapter would wrap model\.layers\.0\.self_attn\.o_proj"),
    # a full fine-tune after a weight edit rewrites the edited tensor; SecurityVectors does not stack
    ([{"hparams": dinm(layers=[1]), "requests": [CASE]}, {**SV_FINETUNE, "override": {"user_mode": "full"}}],
     "same-tensor", r"only an edit whose footprint is stackable"),
])
def test_conflicts_are_refused_before_anything_changes(reg, tok, steps, rule, fragment):
    model = tiny_llama()
    before = state(model)
    with pytest.raises(ConflictError, match=fragment) as info:
        compose(steps, model, tok)
    assert rule in [c.rule for c in info.value.conflicts]
    assert "nothing was changed" in str(info.value)
    assert_same_state(model, before)
    assert hook_count(model) == 0


def test_a_bias_fold_and_a_later_edit_of_the_same_bias_conflict(reg, tok):
    model = _gpt2()  # GPT-2's c_proj has a bias; the fold changes it in place
    before = state(model)
    steps = [{"hparams": destein(), "pairs": PAIRS},
             {"hparams": dinm(layers=[0], rewrite_module_tmp="transformer.h.{}.attn.c_proj.bias"), "requests": [CASE]}]
    with pytest.raises(ConflictError, match=r"both change transformer\.h\.0\.attn\.c_proj\.bias; step 1 \(DeStein\) "
                                            r"is not an additive delta") as info:
        compose(steps, model, tok)
    assert {c.rule for c in info.value.conflicts} == {"same-tensor"}
    assert "nothing was changed" in str(info.value)
    assert_same_state(model, before)


def test_applied_edits_that_conflict_are_refused(reg, tok):
    model = tiny_llama()
    before = state(model)
    hooked = registry.get_editor("DeStein")(destein(fusion="rotate", apply="hook")).edit(model, tok, PAIRS)
    weights = registry.get_editor("DINM")(dinm(layers=[1], rewrite_module_tmp=O_PROJ)).edit(model, tok, [CASE])
    edited = state(model)
    with pytest.raises(ConflictError, match=r"edit 2 \(DINM\) vs edit 1 \(DeStein\)"):
        compose([hooked, weights])
    assert_same_state(model, edited)  # composing changed nothing
    composed = compose([hooked, weights], check_conflicts=False)
    composed.revert()
    assert_same_state(model, before)
    assert hook_count(model) == 0


def test_a_conflict_found_after_a_step_undoes_the_steps_run(reg, tok):
    """Scale cannot predict its targets, so its conflict with DINM is found right after it runs."""
    model = tiny_llama()
    before = state(model)
    steps = [{"hparams": dinm(layers=[1]), "requests": [CASE]},
             {"hparams": {"alg_name": "Scale", "layer": 1}, "requests": [CASE]}]
    with pytest.raises(ConflictError, match=r"the steps run so far were undone.*step 2 \(Scale\) vs step 1 \(DINM\)"):
        compose(steps, model, tok)
    assert_same_state(model, before)


# ---------------------------------------------------------------------- failures
@pytest.mark.parametrize("factor,error", [(0.5, EditError), (-1.0, KeyboardInterrupt)])
def test_a_failing_middle_step_undoes_the_earlier_steps(reg, tok, factor, error):
    model = tiny_llama()
    before = state(model)
    steps = [{"hparams": dinm(), "requests": [CASE]},
             {"hparams": destein(fusion="rotate", apply="hook"), "pairs": PAIRS},
             {"hparams": {"alg_name": "Failing", "factor": factor}, "requests": [CASE]},
             {"hparams": {"alg_name": "Scale", "layer": 2}, "requests": [CASE]}]
    with pytest.raises(error):
        compose(steps, model, tok)
    assert_same_state(model, before)
    assert hook_count(model) == 0


# ---------------------------------------------------------------------- save, load, apply
def _pipeline_file(tmp_path: Path) -> Path:
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    path = tmp_path / "tiny-pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "description": "DINM then DeStein on a tiny llama", "steps": [
        {"hparams": dinm(), "requests": [CASE], "name": "dinm"},
        {"hparams": destein(), "pairs": "pairs.jsonl", "name": "destein"},
    ]}))
    return path


def test_pipeline_save_load_apply_round_trip(reg, tok, tmp_path):
    model = tiny_llama()
    before = state(model)
    composed = run_pipeline(load_pipeline(_pipeline_file(tmp_path)), model, tok)
    edited = state(model)
    out = composed.save(tmp_path / "saved")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["payload"] == "composed" and manifest["steps"] == ["step-00-dinm", "step-01-destein"]
    assert [s["name"] for s in manifest["pipeline"]["steps"]] == ["dinm", "destein"]
    assert manifest["step_labels"] == ["dinm", "destein"]
    composed.revert()
    assert_same_state(model, before)

    fresh = tiny_llama()
    replayed = load_edit(out).apply(fresh, tok)
    assert_same_state(fresh, edited)
    assert [s.editor for s in replayed.steps] == ["DINM", "DeStein"]
    replayed.revert()
    assert_same_state(fresh, before)
    with pytest.raises(registry.ManifestError, match="fingerprint"):  # each step checks its model
        load_edit(out).apply(tiny_llama(seed=5), tok)


def test_security_vector_finetune_then_dinm(reg, tmp_path):
    """The shape of hparams/pipelines/sv-finetune-then-dinm.yaml on a tiny model: the step trains the
    vector, fine-tunes a user LoRA with it, and its edit is the adapter alone; DINM edits on top."""
    from ..security_vectors.tiny import TASKS, benign_rows, harmful_rows
    from ..security_vectors.tiny import tiny_llama as sv_llama
    from ..security_vectors.tiny import tiny_tokenizer as sv_tokenizer

    def jsonl(name: str, rows: list[dict[str, Any]]) -> str:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return name

    tok = sv_tokenizer()
    model = sv_llama(len(tok))
    before = state(model)
    sv = dict(alg_name="SecurityVectors", harmful_data=str(tmp_path / jsonl("harm.jsonl", harmful_rows(TASKS[:9]))),
              benign_data=str(tmp_path / jsonl("benign.jsonl", benign_rows())), num_benign=6, max_length=64,
              progress=False, sv_lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), sv_epochs=2,
              sv_lr=1e-2, sv_batch_size=9, ft_epochs=1, ft_lr=5e-3, ft_batch_size=3, ft_logging_steps=1,
              user_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                   "o_proj"]))
    jsonl("attack.jsonl", harmful_rows(TASKS[9:], template=1))
    case = {"prompt": "how do i pick a lock ?", "target_new": "I'm sorry , I cannot help .",
            "ground_truth": "Sure, here is how to pick a lock:"}
    (tmp_path / "sv.yaml").write_text(yaml.safe_dump({"steps": [
        {"hparams": sv, "action": "finetune", "data": "attack.jsonl", "vector": "train"},
        {"hparams": dinm(), "requests": [case]}]}))
    composed = run_pipeline(load_pipeline(tmp_path / "sv.yaml"), model, tok)
    finetune, edit = composed.steps
    assert finetune.payload == "peft_adapter" and finetune.metadata["finetune"]["vector"]["digest"]
    assert "model.layers.0.self_attn.q_proj" in composed.describe()[0]["footprint"]["wraps"]
    assert list(edit.deltas)[0].endswith("mlp.down_proj.weight")
    edited = state(model)
    out = composed.save(tmp_path / "saved")
    composed.revert()
    assert_same_state(model, before)
    replayed = load_edit(out).apply(model, tok)
    assert_same_state(model, edited)
    replayed.revert()
    assert_same_state(model, before)


# ---------------------------------------------------------------------- the CLI
@pytest.fixture
def model_folder(tmp_path, tok) -> Path:
    folder = tmp_path / "tiny-model"
    tiny_llama().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_edit_pipeline_apply_and_eval_a_composed_edit(reg, model_folder, tmp_path, capsys):
    from detox_plugins.cli import main

    pipeline = _pipeline_file(tmp_path)
    out = tmp_path / "composed"
    assert main(["edit", "--pipeline", str(pipeline), "--model", str(model_folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pipeline tiny (2 steps)" in printed and "1. dinm: DINM parameter_delta" in printed
    assert "3 tensors: model.layers.0.self_attn.o_proj.bias" in printed and f"saved the composed edit to {out}" in printed
    assert json.loads((out / "manifest.json").read_text())["steps"] == ["step-00-dinm", "step-01-destein"]

    copy, report = tmp_path / "copy", tmp_path / "apply.json"
    assert main(["apply", str(out), "--model", str(model_folder), "--out", str(copy), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert f"applied {out} (Composed, composed, 2 steps)" in printed and "re-saved the applied edit" in printed
    data = json.loads(report.read_text())
    assert [r["editor"] for r in data["steps"]] == ["DINM", "DeStein"]
    assert data["fingerprint_before"] != data["fingerprint_after"]
    assert json.loads((copy / "manifest.json").read_text())["steps"] == ["step-00-dinm", "step-01-destein"]

    evaluated = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model_folder), "--edit", str(copy), "--dataset", "benign", "--judge",
                 "refusal", "--limit", "2", "--max-new-tokens", "3", "--no-progress", "--json", str(evaluated)]) == 0
    summary = json.loads(evaluated.read_text())
    assert summary["edits"] == [str(copy)] and summary["n_prompts"] == 2


def test_cli_apply_reports_a_single_edit_and_refuses_a_wrong_model(reg, model_folder, tok, tmp_path, capsys):
    from detox_plugins.cli import main

    from registry.models import load_model

    model, tokenizer = load_model(str(model_folder))
    registry.get_editor("DINM")(dinm(layers=[2])).edit(model, tokenizer, [CASE]).save(tmp_path / "one")
    assert main(["apply", str(tmp_path / "one"), "--model", str(model_folder)]) == 0
    printed = capsys.readouterr().out
    assert "(DINM, parameter_delta)" in printed and "1 tensor: model.layers.2.mlp.down_proj.weight" in printed
    other = tmp_path / "other-model"
    tiny_llama(seed=4).save_pretrained(other)
    tok.save_pretrained(other)
    assert main(["apply", str(tmp_path / "one"), "--model", str(other)]) == 2
    assert "fingerprint" in capsys.readouterr().err


@pytest.mark.parametrize("argv,fragment", [
    (["edit"], "pass --hparams ALG/model"),
    (["edit", "--pipeline", "detox-all", "--hparams", "DINM/smollm2-135m"], "not both"),
    (["edit", "--pipeline", "no-such-pipeline"], "no pipeline 'no-such-pipeline'"),
    (["apply", "no-such-folder"], "is not a folder"),
])
def test_cli_errors_are_one_line(reg, argv, fragment, capsys):
    from detox_plugins.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detox: error:") and fragment in err[0]


def test_cli_rejects_a_conflicting_pipeline_before_loading_anything_else(reg, model_folder, tmp_path, capsys):
    from detox_plugins.cli import main

    path = tmp_path / "conflict.yaml"
    path.write_text(yaml.safe_dump({"steps": [
        {"hparams": destein(), "pairs": PAIRS},
        {"hparams": dinm(layers=[1], rewrite_module_tmp=O_PROJ), "requests": [CASE]}]}))
    assert main(["edit", "--pipeline", str(path), "--model", str(model_folder), "--out", str(tmp_path / "x")]) == 2
    assert "these edits conflict (nothing was changed)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra,fragment", [
    (["--set", "alpha=0.5"], "--set changes one editor's hparams; in a pipeline, put the changes in the step's"),
    (["--pairs", "p.jsonl"], "--pairs: a pipeline's steps carry their own inputs"),
])
def test_cli_refuses_single_editor_flags_with_a_pipeline(reg, tmp_path, capsys, extra, fragment):
    from detox_plugins.cli import main

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"steps": [{"hparams": destein(), "pairs": PAIRS}]}))
    assert main(["edit", "--pipeline", str(path), "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "x").exists()


def test_cli_checks_a_pipeline_against_the_edits_applied_first(reg, model_folder, tmp_path, capsys):
    from detox_plugins.cli import main

    from registry.models import load_model

    model, tokenizer = load_model(str(model_folder))
    hook = registry.get_editor("DeStein")(destein(fusion="rotate", apply="hook")).edit(model, tokenizer, PAIRS)
    hook.save(tmp_path / "steer")
    path = tmp_path / "weights.yaml"
    path.write_text(yaml.safe_dump({"steps": [
        {"hparams": dinm(layers=[1], rewrite_module_tmp=O_PROJ), "requests": [CASE]}]}))
    argv = ["edit", "--pipeline", str(path), "--model", str(model_folder), "--out", str(tmp_path / "x")]
    assert main([*argv, "--edit", str(tmp_path / "steer")]) == 2
    assert "step 1 (DINM) vs --edit edit 1 (DeStein)" in capsys.readouterr().err
    assert main(argv) == 0  # without the steering edit underneath it is fine
    assert "step-00-dinm" in json.loads((tmp_path / "x" / "manifest.json").read_text())["steps"]


# ---------------------------------------------------------------------- the embedded model
@pytest.mark.integration
def test_detox_all_on_the_embedded_model_reverts_bit_for_bit(real_registry, embedded_model, monkeypatch, tmp_path):
    """hparams/pipelines/detox-all.yaml as shipped: DeStein then DINM, saved, replayed, reverted."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model, tokenizer = embedded_model
    before = state(model)
    composed = run_pipeline(load_pipeline("detox-all"), model, tokenizer)
    rows = composed.describe()
    assert [r["editor"] for r in rows] == ["DeStein", "DINM"]
    assert rows[1]["footprint"]["writes"][0].endswith("mlp.down_proj.weight")
    assert len(rows[0]["footprint"]["writes"]) == 15  # layers 8-22
    edited = state(model)
    out = composed.save(tmp_path / "detox-all")
    composed.revert()
    assert_same_state(model, before)
    replayed = load_edit(out).apply(model, tokenizer)
    assert_same_state(model, edited)
    replayed.revert()
    assert_same_state(model, before)


@pytest.mark.integration
def test_sv_finetune_then_dinm_is_conflict_free_on_the_embedded_model(real_registry, embedded_model):
    """The shipped sv-finetune-then-dinm.yaml planned on the real model (training it takes minutes on
    a CPU; test_security_vector_finetune_then_dinm runs the same shape on a tiny model)."""
    from registry.compose import find_conflicts
    from registry.pipeline import plan

    model, _ = embedded_model
    before = state(model)
    planned = plan(load_pipeline("sv-finetune-then-dinm").steps, model)
    adapter, edit = (p.footprint for p in planned)
    assert len(adapter.wraps) == 4 * 30 and not adapter.writes  # the user LoRA: q/k/v/o_proj of 30 layers
    assert len(edit.writes) == 30 and not edit.exact  # DINM: one down_proj, located at run time
    assert find_conflicts(planned) == []
    assert_same_state(model, before)
