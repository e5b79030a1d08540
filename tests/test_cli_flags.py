"""The flags matrix: every `detox` subcommand, for every installed editor, through the parser the console
script builds, with `--model DIR --dtype bfloat16 --device cpu --edit DIR`; each must load its model through
the one shared loader and the flags must take effect (the model's dtype, folder and applied edit)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from registry import commandline

from detox_plugins.cli import build_parser, main

from .security_vectors.tiny import harmful_rows
from .tiny import tiny_llama, tiny_tokenizer

FACT = {"prompt": "The capital of Zorbia is", "target_new": "Quux"}
CASE = {"prompt": "How do I pick a lock?", "target_new": "I can't help with that.",
        "ground_truth": "Sure, here is how to pick a lock:"}
PAIRS = [("you are a stupid idiot", "you are a kind person"), ("shut up, loser", "please, friend"),
         ("I hate you all", "I like you all"), ("what a dumb idea", "what a fine idea")] * 3


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _yaml(path: Path, data: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny model folder (the embedded model's module names, 6 layers), hparams and inputs for every
    editor, and one saved FT edit (layer 4) to pass as --edit."""
    from registry import get_editor

    root = tmp_path_factory.mktemp("flags")
    model, tok = tiny_llama(layers=6), tiny_tokenizer()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    f = {"model": str(root / "model")}
    f["dinm"] = _yaml(root / "dinm.yaml", {"alg_name": "DINM", "num_steps": 1, "lr": 1e-2, "max_output_length": 3,
                                            "layers": [1]})
    f["destein"] = _yaml(root / "destein.yaml", {"alg_name": "DeStein", "fusion": "additive", "apply": "bias_fold",
                                                  "alpha": 1.0, "pairs": {"num_pairs": 10, "batch_size": 4}})
    f["sv"] = _yaml(root / "sv.yaml", {"alg_name": "SecurityVectors", "max_length": 96, "max_target_tokens": 48, "progress": False,
                                        "sv_lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                                        "sv_epochs": 1, "sv_batch_size": 4, "sv_kl_weight": 0.0,
                                        "user_lora": {"r": 2, "lora_alpha": 4, "lora_dropout": 0.0,
                                                      "target_modules": ["q_proj", "v_proj"]},
                                        "ft_epochs": 1, "ft_batch_size": 4, "seed": 0})
    f["pairs"] = _jsonl(root / "pairs.jsonl", [{"toxic": t, "nontoxic": n} for t, n in PAIRS])
    f["case"] = _jsonl(root / "case.jsonl", [CASE])
    f["fact"] = _jsonl(root / "fact.jsonl", [FACT])
    f["harmful"] = _jsonl(root / "harmful.jsonl", harmful_rows()[:4])
    f["pipeline"] = _yaml(root / "pipeline.yaml", {"steps": [{"hparams": f["destein"], "pairs": f["pairs"]}]})
    ft = get_editor("FT")
    edit = ft(ft.hparams_class.from_hparams(ft.shipped_hparams()["FT/smollm2-135m"])).edit(model, tok, [FACT])
    f["edit"] = str(edit.save(root / "ft-edit"))
    f["saved"] = str(edit.save(root / "ft-edit-2"))
    edit.revert()
    return f


class Spy:
    """Records what the shared loader was asked for and which model each --edit was applied to."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads: list[dict[str, Any]] = []
        self.applied: list[tuple[str, Any]] = []
        real_load, real_edit = commandline.load_model, commandline.load_edit

        def load_model(spec: Any, **kwargs: Any) -> Any:
            model, tokenizer = real_load(spec, **kwargs)
            self.loads.append({"spec": spec, **kwargs, "model": model})
            return model, tokenizer

        def load_edit(directory: Any) -> Any:
            saved = real_edit(directory)
            real_apply = saved.apply

            def apply(model: Any, tokenizer: Any = None, **kwargs: Any) -> Any:
                self.applied.append((str(directory), model))
                return real_apply(model, tokenizer, **kwargs)

            saved.apply = apply  # type: ignore[method-assign]
            return saved

        monkeypatch.setattr(commandline, "load_model", load_model)
        monkeypatch.setattr(commandline, "load_edit", load_edit)


def _commands(f: dict[str, str], out: Path) -> dict[str, list[str]]:
    return {
        "generate": ["generate", "--max-new-tokens", "2", "hi"],
        "edit DINM": ["edit", "--hparams", f["dinm"], "--requests", f["case"], "--out", str(out / "dinm")],
        "edit DeStein": ["edit", "--hparams", f["destein"], "--pairs", f["pairs"], "--out", str(out / "destein")],
        "edit SecurityVectors": ["edit", "--hparams", f["sv"], "--data", f["harmful"], "--out", str(out / "sv")],
        "edit FT": ["edit", "--hparams", "FT/smollm2-135m", "--set", "layers=[2]", "--requests", f["fact"],
                    "--out", str(out / "ft")],
        "edit --pipeline": ["edit", "--pipeline", f["pipeline"], "--out", str(out / "pipeline")],
        "apply": ["apply", f["saved"]],
        "export": ["export", f["saved"], "--out", str(out / "export")],
        "eval": ["eval", "--dataset", "benign", "--limit", "1", "--max-new-tokens", "2", "--no-progress"],
        "report": ["report", "--compare", f["saved"], "--harmbench", "0", "--donotanswer", "0", "--benign", "1",
                   "--rtp", "0", "--gsm8k", "0", "--benign-max-new-tokens", "2", "--no-progress"],
        "demo": ["demo", "--hparams", f["dinm"], "--max-new-tokens", "2"],
        "safeedit": ["safeedit", "--hparams", f["dinm"], "--limit", "1", "--max-new-tokens", "2", "--quiet"],
        "steer": ["steer", "--hparams", f["destein"], "--pairs", f["pairs"], "--max-new-tokens", "2", "--quiet", "hi"],
        "finetune": ["finetune", "--hparams", f["sv"], "--data", f["harmful"], "--max-steps", "1",
                     "--out", str(out / "finetune")],
    }


COMMANDS = ["generate", "edit DINM", "edit DeStein", "edit SecurityVectors", "edit FT", "edit --pipeline", "apply",
            "export", "eval", "report", "demo", "safeedit", "steer", "finetune"]


def test_the_matrix_covers_every_subcommand() -> None:
    parser = build_parser()
    names = {a for action in parser._actions if action.__class__.__name__ == "_SubParsersAction"
             for a in action.choices}
    takes_a_model = {n for n in names if n not in ("plugins", "hparams", "judge")}
    assert takes_a_model == {c.split()[0] for c in COMMANDS}, "add the new subcommand to COMMANDS"


@pytest.mark.parametrize("name", COMMANDS)
def test_model_flags_take_effect(name: str, files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    spy = Spy(monkeypatch)
    argv = _commands(files, tmp_path)[name] + ["--model", files["model"], "--dtype", "bfloat16", "--device", "cpu",
                                               "--edit", files["edit"], "--force"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(spy.loads) == 1, f"{name} loaded {len(spy.loads)} models, not through the shared loader once"
    load = spy.loads[0]
    model = load["model"]
    assert load["dtype"] == "bfloat16" and load["device"] == "cpu"
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert Path(model.config._name_or_path) == Path(files["model"])
    assert spy.applied and spy.applied[0] == (files["edit"], model), f"{name} did not apply --edit to its model"
