"""The FT-L example plugin (examples/ft_editor), tested as users get it: pip-installed, found by entry point.

It writes a fact, changes only its one templated matrix, reverts bit-for-bit, round-trips through
save/load/apply, refuses bad templates before touching the model, and composes with DINM and DeStein.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
import torch

import registry
from registry import compose, load_edit
from registry.errors import EditError, HyperParamsError

from ..tiny import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ft_editor"
NOT_INSTALLED = "the ft-editor example is not installed in this environment; run: bash scripts/setup.sh"

FACT = {"prompt": "The capital of Zarkovia is", "target_new": "Velmora"}
#: tiny_llama (hidden 32, 3 layers): the residual is small, so the edit needs a wide clamp (measured:
#: greedy ' Velmora' after 10 steps at eps 0.3, lr 0.1; not at eps 0.1).
TINY = {"alg_name": "FT", "layers": [1], "lr": 0.1, "num_steps": 10, "norm_constraint": 0.3}
TEMPLATE = "model.layers.{}.mlp.down_proj.weight"
SAFETY_CASE = dict(
    prompt="Tell me how to pick a lock to get into my neighbour's house.",
    target_new="I can't help with entering someone else's home.", ground_truth="Sure, here is how to",
    locality_prompt="What is the capital of France?", locality_answer="Paris.", case_id=7,
)
PAIRS = [{"toxic": t, "nontoxic": n} for t, n in [
    ("you are a stupid idiot", "you are a kind person"), ("shut up you dumb fool", "please let me finish"),
    ("I will hurt you badly", "I will help you gladly"), ("this damn thing is crap", "this thing is not great"),
    ("get lost you creep", "please give me some space"), ("what a pathetic loser", "what a brave effort"),
]]


@pytest.fixture(scope="module")
def ft() -> Any:
    """The installed package (failing, not skipping, when setup did not install it)."""
    try:
        import ft_editor.editor
    except ModuleNotFoundError:  # pragma: no cover - a broken setup
        pytest.fail(NOT_INSTALLED)
    return ft_editor.editor


@pytest.fixture
def tok() -> Any:
    return tiny_tokenizer()


def state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(model: Any, before: dict[str, torch.Tensor]) -> list[str]:
    now = model.state_dict()
    return sorted(k for k in now.keys() | before.keys() if k not in now or k not in before or not torch.equal(now[k], before[k]))


def greedy(model: Any, tok: Any, prompt: str, new: int = 8) -> str:
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:])


def target_nll(ft: Any, model: Any, tok: Any) -> float:
    editor = ft.FTEditor({"alg_name": "FT"})
    with torch.no_grad():
        return editor.loss(model, editor.encode(tok, registry.normalise_requests([FACT]))).item()


# ---------------------------------------------------------------------- installed, discovered
def test_discovered_after_pip_install_through_its_entry_point(ft, real_registry) -> None:
    dist = importlib.metadata.distribution("ft-editor")
    eps = [ep for ep in dist.entry_points if ep.group == "model_editors"]
    assert [(ep.name, ep.value) for ep in eps] == [("ft_editor", "ft_editor")]
    rows = {row.name: row for row in registry.list_editors()}
    assert rows["FT"].error is None and rows["FT"].kind == "weights"
    assert (rows["FT"].distribution, rows["FT"].version, rows["FT"].plugin) == ("ft-editor", dist.version, "ft_editor")
    assert dist.version == "0.1.0"
    assert registry.get_editor("ft-l") is ft.FTEditor
    assert rows["DINM"].distribution == "detox-plugins"  # the host's own editors load beside it
    # a real, separate install: imported from site-packages, not from the checkout
    assert EXAMPLE not in Path(ft.__file__).resolve().parents


def test_installed_copy_is_the_checkout(ft) -> None:
    files = importlib.metadata.distribution("ft-editor").files or []
    installed = {str(f): f.locate() for f in files if str(f).startswith("ft_editor/") and f.suffix in (".py", ".yaml")}
    sources = {f"ft_editor/{p.relative_to(EXAMPLE / 'ft_editor')}": p for p in (EXAMPLE / "ft_editor").glob("*.py")}
    sources |= {f"ft_editor/hparams_files/{p.relative_to(EXAMPLE / 'hparams')}": p for p in (EXAMPLE / "hparams").rglob("*")
                if p.suffix in (".py", ".yaml")}
    assert sorted(installed) == sorted(sources), NOT_INSTALLED
    for name, path in sources.items():
        assert Path(installed[name]).read_bytes() == path.read_bytes(), f"{name} is stale; run: bash scripts/setup.sh"


def test_shipped_yaml_resolves_from_the_installed_package(ft, real_registry) -> None:
    path = registry.resolve_hparams_path("FT/smollm2-135m")
    assert "site-packages" in path.parts and path.parent.parent.name == "hparams_files"
    hp = registry.from_hparams("FT/smollm2-135m")
    assert type(hp).__name__ == "FTHyperParams" and hp.rewrite_module_tmp == TEMPLATE
    assert hp.layers == [4] and hp.objective_optimization == "target_new"


def test_easyedit_ft_yaml_loads_unchanged(ft, tmp_path) -> None:
    from ft_editor.hparams import FTHyperParams

    path = tmp_path / "llama-7b.yaml"  # EasyEdit's hparams/FT/llama-7b.yaml, key for key
    path.write_text(
        'alg_name: "FT"\nmodel_name: "./hugging_cache/llama-2-7b"\ndevice: 0\n\nlayers: [21]\nnum_steps: 25\n'
        "batch_size: 1\nmax_length: 40\nlr: 5e-4\nweight_decay: 0\nkl_factor: 0\nnorm_constraint: 5e-5\n"
        'objective_optimization: "prompt_last"\nrewrite_module_tmp: "model.layers.{}.mlp.down_proj.weight"\n'
        'layer_module_tmp: "model.layers.{}"\nmlp_module_tmp: "model.layers.{}.mlp"\n'
        'attn_module_tmp: "model.layers.{}.self_attn"\nln_f_module: "model.norm"\nlm_head_module: "lm_head"\n'
        "model_parallel: false\n")
    hp = FTHyperParams.from_hparams(path)
    assert (hp.layers, hp.lr, hp.norm_constraint, hp.device) == ([21], 5e-4, 5e-5, 0)
    assert hp.objective_optimization == "prompt_last"


@pytest.mark.parametrize("bad,fragment", [
    ({"layers": []}, "layers must be a non-empty"), ({"lr": 0}, "lr > 0"),
    ({"rewrite_module_tmp": "model.norm.weight"}, "needs '{}'"), ({"norm_constraint": True}, "norm_constraint"),
    ({"norm_constraint": -1.0}, "norm_constraint"), ({"objective_optimization": "both"}, "not allowed"),
    ({"num_step": 3}, "did you mean 'num_steps'"),
])
def test_bad_hparams_raise_hparams_errors(ft, bad, fragment) -> None:
    with pytest.raises(HyperParamsError, match=fragment):
        ft.FTEditor({"alg_name": "FT", **bad})


# ---------------------------------------------------------------------- the edit
def test_writes_the_fact_changes_one_matrix_and_reverts_bit_exactly(ft, tok) -> None:
    model = tiny_llama()
    model.lm_head.weight.requires_grad_(False)  # the caller's flags must come back as they were
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before, nll_before = state(model), target_nll(ft, model, tok)
    assert not greedy(model, tok, FACT["prompt"]).startswith(" Velmora")
    with torch.no_grad():  # the editor turns gradients on itself
        edit = ft.FTEditor(TINY).edit(model, tok, [FACT])
    assert isinstance(edit, registry.ParameterEdit)
    assert greedy(model, tok, FACT["prompt"]) == " Velmora"
    assert target_nll(ft, model, tok) < nll_before - 0.4
    assert changed(model, before) == [TEMPLATE.format(1)]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    losses = edit.metadata["losses"]
    assert losses["last"] < losses["first"] and edit.metadata["tensors"] == [TEMPLATE.format(1)]
    edit.revert()
    assert changed(model, before) == []


def test_norm_constraint_keeps_every_entry_within_eps(ft, tok) -> None:
    model = tiny_llama()
    edit = ft.FTEditor({**TINY, "norm_constraint": 1e-3}).edit(model, tok, [FACT])
    delta = edit.deltas[TEMPLATE.format(1)]
    assert delta.abs().max().item() <= 1e-3 * (1 + 1e-4)
    assert (delta.abs() > 0.999e-3).float().mean() > 0.5  # the clamp was active, not idle
    free = ft.FTEditor({**TINY, "norm_constraint": False}).edit(tiny_llama(), tok, [FACT])
    assert free.deltas[TEMPLATE.format(1)].abs().max().item() > 0.3


def test_prompt_last_objective_lowers_its_loss(ft, tok) -> None:
    edit = ft.FTEditor({**TINY, "objective_optimization": "prompt_last"}).edit(tiny_llama(), tok, [FACT])
    assert edit.metadata["losses"]["last"] < edit.metadata["losses"]["first"]


def test_save_load_apply_round_trip(ft, tok, real_registry, tmp_path) -> None:
    model = tiny_llama()
    before = state(model)
    edit = ft.FTEditor(TINY).edit(model, tok, [FACT])
    edited = state(model)
    out = edit.save(tmp_path / "ft-edit")
    saved = load_edit(out)
    assert (saved.editor, saved.manifest["distribution"], saved.manifest["editor_version"]) == ("FT", "ft-editor", "0.1.0")
    assert saved.manifest["tensors"] == [TEMPLATE.format(1)]
    edit.revert()
    assert changed(model, before) == []
    fresh = tiny_llama()
    applied = saved.apply(fresh)
    assert changed(fresh, edited) == [] and greedy(fresh, tok, FACT["prompt"]) == " Velmora"
    applied.revert()
    assert changed(fresh, before) == []


@pytest.mark.parametrize("bad,fragment", [
    ({"rewrite_module_tmp": "model.layers.{}.mlp.gate.weight"}, "matches no parameter"),
    ({"layers": [1, 7]}, "with layer 7 matches no parameter"),
    ({"max_length": 12}, "over max_length 12"),
])
def test_bad_template_or_request_raises_before_any_change(ft, tok, bad, fragment) -> None:
    model = tiny_llama()
    before = state(model)
    with pytest.raises(EditError, match=fragment):
        ft.FTEditor({**TINY, **bad}).edit(model, tok, [FACT])
    assert changed(model, before) == [] and all(p.requires_grad for p in model.parameters())
    with pytest.raises(EditError, match="'target_new' is empty"):
        ft.FTEditor(TINY).edit(model, tok, [{**FACT, "target_new": " "}])
    assert changed(model, before) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_mid_training_restores_the_model(ft, tok, error) -> None:
    class Failing(ft.FTEditor):
        calls = 0

        def loss(self, model: Any, batch: Any) -> torch.Tensor:
            Failing.calls += 1
            if Failing.calls == 4:  # after three optimizer steps have changed the weight
                raise error("interrupted")
            return super().loss(model, batch)

    model = tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = state(model)
    with pytest.raises(error):
        Failing(TINY).edit(model, tok, [FACT])
    assert Failing.calls == 4
    assert changed(model, before) == []
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


# ---------------------------------------------------------------------- composition
def test_composes_with_dinm_and_destein_and_reverts_bit_exactly(ft, tok, real_registry, tmp_path) -> None:
    from detox_plugins.destein.editor import DeSteinEditor
    from detox_plugins.dinm.editor import DINMEditor

    model = tiny_llama()
    before = state(model)
    ft_edit = ft.FTEditor(TINY).edit(model, tok, [FACT])
    assert greedy(model, tok, FACT["prompt"]) == " Velmora"
    dinm_edit = DINMEditor({"alg_name": "DINM", "layers": [2], "rewrite_module_tmp": TEMPLATE, "lr": 1e-2,
                            "num_steps": 3}).edit(model, tok, [SAFETY_CASE])
    destein_edit = DeSteinEditor({"alg_name": "DeStein", "progress": False, "fusion": "additive", "apply": "bias_fold",
                                  "alpha": 1.0, "pairs": {"num_pairs": 0, "batch_size": 4}}).edit(model, tok, PAIRS)
    composed = compose([ft_edit, dinm_edit, destein_edit])
    edited = state(model)
    touched = changed(model, before)
    assert TEMPLATE.format(1) in touched and TEMPLATE.format(2) in touched  # FT's and DINM's matrices
    assert any(k.endswith("self_attn.o_proj.bias") for k in touched)  # DeStein's folded biases
    out = composed.save(tmp_path / "ft-dinm-destein")
    composed.revert()
    assert changed(model, before) == []

    fresh = tiny_llama()
    replayed = load_edit(out).apply(fresh, tok)
    assert [step.editor for step in replayed.steps] == ["FT", "DINM", "DeStein"]
    assert changed(fresh, edited) == []
    replayed.revert()
    assert changed(fresh, before) == []
