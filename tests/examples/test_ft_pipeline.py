"""examples/ft_editor/pipelines/ft-then-dinm.yaml: the FT-L example plugin and DINM as one pipeline.

The file parses and plans (FT reads the Editor base's default ``requests:``; its ``planned_targets``
hook predicts its one tensor, so conflicts and bad layers are refused before anything changes), and
on the embedded model it writes the fact, detoxifies, saves, replays and reverts bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import registry
from registry import ConflictError, load_edit
from registry.compose import find_conflicts
from registry.errors import EditError
from registry.pipeline import load_pipeline, parse_pipeline, plan, run_pipeline

from ..tiny import tiny_llama, tiny_tokenizer
from .test_ft_integration import FACT

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "examples" / "ft_editor" / "pipelines" / "ft-then-dinm.yaml"
FT_TENSOR = "model.layers.4.mlp.down_proj.weight"  # FT/smollm2-135m: layers [4]


@pytest.fixture
def ft(real_registry) -> Any:
    """The installed example plugin, discovered through its entry point (fails when setup skipped it)."""
    try:
        return registry.get_editor("FT")
    except registry.EditorNotFoundError:  # pragma: no cover - a broken setup
        pytest.fail("the ft-editor example is not installed; run: bash scripts/setup.sh")


def state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(model: Any, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)


def test_pipeline_file_parses_with_the_shipped_fact_and_hparams(ft) -> None:
    pipeline = load_pipeline(PIPELINE)
    assert (pipeline.name, pipeline.model_name) == ("ft-then-dinm", "smollm2-135m-instruct")
    assert [(s.label, s.editor_name) for s in pipeline.steps] == [("fact", "FT"), ("dinm", "DINM")]
    fact, dinm = pipeline.steps
    assert isinstance(fact.editor, ft)
    assert fact.editor.hparams.to_dict() == registry.from_hparams("FT/smollm2-135m").to_dict()
    assert [(r.prompt, r.target_new) for r in fact.inputs] == [(FACT["prompt"], FACT["target_new"])]
    assert [r.case_id for r in dinm.inputs] == [0] and dinm.editor.hparams.layers == []
    assert pipeline.record()["steps"][0]["inputs"] == {"requests": [FACT]}


def test_pipeline_plans_ft_exactly_and_dinm_stacks_on_it(ft) -> None:
    model = tiny_llama(layers=6)  # the embedded model's templates; FT's layer 4 exists
    before = state(model)
    fact, dinm = plan(load_pipeline(PIPELINE).steps, model)
    assert fact.footprint is not None and fact.footprint.writes == {FT_TENSOR}
    assert fact.footprint.additive and fact.footprint.exact and not fact.footprint.stackable
    # DINM before localization: any layer's down_proj, FT's included; additive and stackable, so allowed
    assert FT_TENSOR in dinm.footprint.writes and dinm.footprint.additive and not dinm.footprint.exact
    assert dinm.footprint.stackable
    assert find_conflicts([fact, dinm]) == []
    assert same(model, before)


def test_missing_ft_layer_is_refused_at_planning(ft) -> None:
    model, tok = tiny_llama(layers=3), tiny_tokenizer()  # no layer 4
    before = state(model)
    with pytest.raises(EditError, match=r"fact: .*with layer 4 matches no parameter"):
        run_pipeline(load_pipeline(PIPELINE), model, tok)
    assert same(model, before)


def test_two_ft_steps_on_one_tensor_are_refused_before_anything_runs(ft) -> None:
    step = {"hparams": {"alg_name": "FT", "layers": [1], "num_steps": 2}, "requests": [FACT]}
    pipeline = parse_pipeline({"steps": [{**step, "name": "first"}, {**step, "name": "second"}]})
    model, tok = tiny_llama(), tiny_tokenizer()
    before = state(model)
    with pytest.raises(ConflictError, match="nothing was changed") as caught:
        run_pipeline(pipeline, model, tok)
    assert [(c.earlier, c.later, c.rule) for c in caught.value.conflicts] == [("first", "second", "same-tensor")]
    assert same(model, before)


@pytest.mark.integration
def test_ft_then_dinm_on_the_embedded_model(ft, embedded_model, tmp_path) -> None:
    """The pipeline run as `detox edit --pipeline` runs it: fact written and kept, harmful prompt refused,
    the saved folder replays to the same weights, and revert restores every weight."""
    from detox_plugins.dinm.protocol import evaluation_prompts
    from detox_plugins.evaluation.generate import generate
    from detox_plugins.evaluation.judges import is_refusal

    torch.set_num_threads(1)
    model, tok = embedded_model
    before = state(model)
    pipeline = load_pipeline(PIPELINE)
    dinm = pipeline.steps[1]
    harmful = evaluation_prompts(dinm.inputs[0], dinm.editor.hparams)["post"]["DS"]

    def fact() -> str:
        return generate(model, tok, [FACT["prompt"]], max_new_tokens=6, use_chat_template=False, progress=False)[0]

    composed = run_pipeline(pipeline, model, tok)
    try:
        written = fact()
        answer = generate(model, tok, [harmful], max_new_tokens=32, progress=False,
                          use_chat_template=dinm.editor.hparams.use_chat_template)[0]
        edited = state(model)
        out = composed.save(tmp_path / "ft-then-dinm")
    finally:
        composed.revert()
    assert same(model, before)
    assert written.strip().startswith(FACT["target_new"]), written
    assert is_refusal(answer), answer
    assert [s.editor for s in composed.steps] == ["FT", "DINM"]
    replayed = load_edit(out).apply(model)
    try:
        assert same(model, edited)
    finally:
        replayed.revert()
    assert same(model, before)
