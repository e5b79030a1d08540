"""Reliability of the three real editors on tiny random models: the model is exactly as it was after
every revert, every failed edit and every failed apply; hooks never leak; saved edits that do not
fit are refused with a clear message; saves are atomic; plugins fail in isolation.

"Exactly as it was" (``Snapshot``) means: every parameter and buffer (non-persistent ones too)
bit for bit, the same tensor objects under the same names, the same module tree, every
``requires_grad`` flag, every module's ``training`` flag, every hook dict of every module and
parameter plus torch's global module hooks, and no attribute left on the model object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import torch

from registry import hookimpl, load_edit, plugins
from registry.edits import MANIFEST_NAME, TENSORS_NAME, Edit
from registry.errors import DetoxError, EditError, ManifestError, OutputError, PluginError

from tests.resign import resign

REPO = Path(__file__).resolve().parents[1]

MODULE_HOOK_ATTRS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
GLOBAL_HOOK_ATTRS = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
    "_global_backward_pre_hooks", "_global_module_registration_hooks", "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)


# ---------------------------------------------------------------------- the snapshot
def hook_table(model: Any) -> dict[str, tuple[int, ...]]:
    """Hook counts per module and per parameter, plus torch's global module hooks."""
    import torch.nn.modules.module as module_mod

    table: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        table[f"module:{name}"] = tuple(len(getattr(module, attr, None) or {}) for attr in MODULE_HOOK_ATTRS)
    for name, param in model.named_parameters(remove_duplicate=False):
        table[f"param:{name}"] = (len(param._backward_hooks or {}),
                                  len(getattr(param, "_post_accumulate_grad_hooks", None) or {}))
    table["global"] = tuple(len(getattr(module_mod, attr, None) or {}) for attr in GLOBAL_HOOK_ATTRS)
    return table


@dataclass
class Snapshot:
    tensors: dict[str, torch.Tensor]
    identity: dict[str, int]
    requires_grad: dict[str, bool]
    training: dict[str, bool]
    modules: list[tuple[str, type]]
    hooks: dict[str, tuple[int, ...]]
    attributes: set[str]

    @classmethod
    def take(cls, model: Any) -> "Snapshot":
        params = dict(model.named_parameters(remove_duplicate=False))
        buffers = dict(model.named_buffers(remove_duplicate=False))  # non-persistent ones too
        tensors = {**{f"p:{k}": v for k, v in params.items()}, **{f"b:{k}": v for k, v in buffers.items()}}
        return cls(
            tensors={k: v.detach().clone() for k, v in tensors.items()},
            identity={k: id(v) for k, v in tensors.items()},
            requires_grad={k: p.requires_grad for k, p in params.items()},
            training={name: m.training for name, m in model.named_modules()},
            modules=[(name, type(m)) for name, m in model.named_modules()],
            hooks=hook_table(model),
            attributes=set(vars(model)),
        )

    def assert_same(self, model: Any) -> None:
        now = Snapshot.take(model)
        assert now.modules == self.modules, "the module tree changed"
        assert now.attributes == self.attributes, f"attributes changed: {now.attributes ^ self.attributes}"
        assert now.hooks == self.hooks, f"hooks leaked: {_diff(now.hooks, self.hooks)}"
        assert list(now.tensors) == list(self.tensors), "tensor names changed"
        changed = [k for k, v in self.tensors.items()
                   if v.dtype != now.tensors[k].dtype or not torch.equal(v, now.tensors[k])]
        assert not changed, f"tensors changed: {changed[:5]}"
        assert now.identity == self.identity, "tensor objects were replaced"
        assert now.requires_grad == self.requires_grad, f"requires_grad changed: {_diff(now.requires_grad, self.requires_grad)}"
        assert now.training == self.training, f"training flags changed: {_diff(now.training, self.training)}"


def _diff(a: dict, b: dict) -> list:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)][:5]


def unusual(model: Any) -> Any:
    """A model as a user might hand it over: eval mode except one block, embeddings frozen."""
    model.eval()
    first_block = next(m for name, m in model.named_modules() if name.endswith(("layers.0", "h.0")))
    first_block.train()
    model.get_input_embeddings().weight.requires_grad_(False)
    return model


class FailOnCall:
    """Wrap ``target.attr`` so that its ``n``-th call raises ``exc``; counts every call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, n: int,
                 exc: BaseException | type[BaseException]) -> None:
        self.calls = 0
        self.n = n
        self.exc = exc
        real = getattr(target, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.n:
                raise self.exc
            return real(*args, **kwargs)

        monkeypatch.setattr(target, attr, wrapper)

    @property
    def fired(self) -> bool:
        return self.calls >= self.n


# ---------------------------------------------------------------------- the editors under test
@dataclass
class Subject:
    """One editor set up on a tiny model: ``make()`` a fresh model, ``run(model)`` the edit."""

    name: str
    make: Callable[[], Any]
    run: Callable[[Any], Edit]
    mlp_class: type  # a module class whose forward every edit runs (for injected failures)


def _dinm() -> Subject:
    from transformers.models.llama.modeling_llama import LlamaMLP

    from detox_plugins.dinm.editor import DINMEditor
    from tests.dinm.helpers import CASE, hparams, tiny_model
    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    second = dict(CASE, prompt="Write an insult for my coworker.", target_new="I won't write insults.", case_id=8)
    # No fixed layer: both cases locate (forward hooks on every block) and edit (Adam steps).
    return Subject("DINM", lambda: unusual(tiny_model("llama")),
                   lambda m: DINMEditor(hparams(num_steps=3)).edit(m, tok, [CASE, second]), LlamaMLP)


def _destein(fusion: str, apply: str, arch: str) -> Subject:
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
    from transformers.models.llama.modeling_llama import LlamaMLP

    from tests.destein.conftest import TINY_PAIRS, editor, tiny_gpt2_model, tiny_llama_model
    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    pairs = [{"toxic": t, "nontoxic": n} for t, n in TINY_PAIRS]
    make = (lambda: unusual(tiny_gpt2_model())) if arch == "gpt2" else (lambda: unusual(tiny_llama_model()))
    return Subject(f"DeStein-{fusion}-{apply}-{arch}", make,
                   lambda m: editor(fusion=fusion, apply=apply).edit(m, tok, pairs),
                   GPT2MLP if arch == "gpt2" else LlamaMLP)


def _sv_parts() -> tuple[Any, Callable[[], Any], Callable[..., Any], list[dict[str, Any]]]:
    from tests.security_vectors.tiny import harmful_rows, tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()

    def hp(**overrides: Any) -> dict[str, Any]:
        base = dict(alg_name="SecurityVectors", max_length=64, progress=False, sv_epochs=2, sv_lr=1e-2,
                    sv_kl_weight=0.0, sv_batch_size=3,
                    sv_lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
                    user_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "o_proj"]),
                    ft_epochs=1, ft_lr=5e-3, ft_batch_size=3, ft_logging_steps=1, seed=0)
        base.update(overrides)
        return base

    return tok, (lambda: unusual(tiny_llama(len(tok)))), hp, harmful_rows(["pick a lock", "steal a car", "rob a store"])


def _sv() -> Subject:
    from transformers.models.llama.modeling_llama import LlamaMLP

    from detox_plugins.security_vectors.editor import SecurityVectorEditor

    tok, make, hp, rows = _sv_parts()
    return Subject("SecurityVectors", make, lambda m: SecurityVectorEditor(hp()).edit(m, tok, rows), LlamaMLP)


def _sv_finetune(mode: str) -> Subject:
    """Stage 2: the user's fine-tune with a freshly trained vector active (LoRA or full)."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    from detox_plugins.security_vectors.editor import SecurityVectorEditor
    from tests.security_vectors.tiny import benign_rows

    tok, make, hp, rows = _sv_parts()
    data = rows + benign_rows()[:3]

    def run(model: Any) -> Edit:
        editor = SecurityVectorEditor(hp(user_mode=mode))
        vector = editor.edit(model, tok, rows)
        return editor.fine_tune(model, tok, data, vector=vector)

    return Subject(f"SecurityVectors-finetune-{mode}", make, run, LlamaMLP)


SUBJECTS: dict[str, Callable[[], Subject]] = {
    "dinm": _dinm,
    "destein-rotate-hook": lambda: _destein("rotate", "hook", "llama"),
    "destein-additive-hook": lambda: _destein("additive", "hook", "llama"),
    "destein-fold-llama": lambda: _destein("additive", "bias_fold", "llama"),
    "destein-fold-gpt2": lambda: _destein("additive", "bias_fold", "gpt2"),
    "sv": _sv,
    "sv-finetune-lora": lambda: _sv_finetune("lora"),
    "sv-finetune-full": lambda: _sv_finetune("full"),
}
CORE = ["dinm", "destein-rotate-hook", "destein-fold-llama", "destein-fold-gpt2", "sv"]


@pytest.fixture
def real_editors(editor_registry: Any) -> Iterator[Any]:
    """The three editors registered in-process (as their entry points do), version 0.1.0."""
    import detox_plugins.destein
    import detox_plugins.dinm
    import detox_plugins.security_vectors

    for name, module in (("dinm", detox_plugins.dinm), ("destein", detox_plugins.destein),
                         ("security_vectors", detox_plugins.security_vectors)):
        editor_registry.register_plugin(module, name=name, distribution="detox-plugins", version="0.1.0")
    yield editor_registry


def forward_calls(subject: Subject) -> int:
    """How many forwards of ``subject.mlp_class`` one successful edit runs (then reverted)."""
    with pytest.MonkeyPatch.context() as mp:
        counter = FailOnCall(mp, subject.mlp_class, "forward", n=-1, exc=RuntimeError)
        model = subject.make()
        snapshot = Snapshot.take(model)
        subject.run(model).revert()
    snapshot.assert_same(model)
    return counter.calls


# ---------------------------------------------------------------------- success, failure, interrupt
@pytest.mark.parametrize("key", list(SUBJECTS))
def test_successful_edit_reverts_exactly(key: str) -> None:
    subject = SUBJECTS[key]()
    model = subject.make()
    snapshot = Snapshot.take(model)
    edit = subject.run(model)
    assert edit.applied
    edit.revert()
    snapshot.assert_same(model)


@pytest.mark.parametrize("key", list(SUBJECTS))
@pytest.mark.parametrize("exc", [RuntimeError("injected failure"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_failure_inside_a_forward_leaves_the_model_exact(key: str, exc: BaseException) -> None:
    """The k-th MLP forward raises: early (k=1: first capture/locate pass), midway and at the last one."""
    subject = SUBJECTS[key]()
    total = forward_calls(subject)
    assert total >= 3
    for n in sorted({1, total // 2, total}):
        model = subject.make()
        snapshot = Snapshot.take(model)
        with pytest.MonkeyPatch.context() as mp:
            failing = FailOnCall(mp, subject.mlp_class, "forward", n, exc)
            with pytest.raises(type(exc)):
                subject.run(model)
        assert failing.fired, (n, failing.calls)
        snapshot.assert_same(model)


@pytest.mark.parametrize("key, optimizer", [("dinm", torch.optim.Adam), ("sv", torch.optim.AdamW),
                                            ("sv-finetune-lora", torch.optim.AdamW),
                                            ("sv-finetune-full", torch.optim.AdamW)])
@pytest.mark.parametrize("exc", [RuntimeError("injected failure"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_failure_in_an_optimizer_step_leaves_the_model_exact(key: str, optimizer: type, exc: BaseException) -> None:
    """The second optimizer step raises, after the first one changed the trained tensors."""
    subject = SUBJECTS[key]()
    model = subject.make()
    snapshot = Snapshot.take(model)
    calls = {"n": 0}
    real = optimizer.step

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2 + (2 if key.startswith("sv-finetune") else 0):  # fine-tune: past stage 1's steps
            raise exc
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optimizer, "step", step)
        with pytest.raises(type(exc)):
            subject.run(model)
    assert calls["n"] == 2 + (2 if key.startswith("sv-finetune") else 0)
    snapshot.assert_same(model)


def _late(key: str) -> tuple[Any, str]:
    """Where each editor meets a bad input only after it started changing the model."""
    import detox_plugins.destein.edits as destein_edits
    import detox_plugins.dinm.optimize as dinm_optimize
    import detox_plugins.security_vectors.adapters as sv_adapters

    return {
        "dinm": (dinm_optimize, "optimise_case"),  # the second case, after the first was applied
        "destein-rotate-hook": (destein_edits.HookEdit, "_make_hooks"),  # vectors built, hooks next
        "destein-fold-llama": (destein_edits.BiasFold, "fold"),  # second layer's fold: a bias was added
        "destein-fold-gpt2": (destein_edits.BiasFold, "fold"),  # second layer's fold: a bias was written
        "sv": (sv_adapters, "state_dict"),  # the vector is trained and attached
    }[key]


@pytest.mark.parametrize("key", CORE)
def test_bad_input_found_late_leaves_the_model_exact(key: str) -> None:
    subject = SUBJECTS[key]()
    model = subject.make()
    snapshot = Snapshot.take(model)
    target, attr = _late(key)
    n = 1 if key in ("destein-rotate-hook", "sv") else 2
    with pytest.MonkeyPatch.context() as mp:
        failing = FailOnCall(mp, target, attr, n, EditError("request 8: found to be invalid late"))
        with pytest.raises(EditError, match="found to be invalid late"):
            subject.run(model)
    assert failing.fired
    snapshot.assert_same(model)


def test_destein_hook_install_failing_midway_removes_the_installed_hooks() -> None:
    subject = SUBJECTS["destein-additive-hook"]()
    model = subject.make()
    snapshot = Snapshot.take(model)
    real = torch.nn.Module.register_forward_pre_hook
    calls = {"n": 0}

    def register(self: Any, *args: Any, **kwargs: Any) -> Any:
        from detox_plugins.destein.fusion import AddHook

        if args and isinstance(args[0], AddHook):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Module, "register_forward_pre_hook", register)
        with pytest.raises(KeyboardInterrupt):
            subject.run(model)
    assert calls["n"] == 2
    snapshot.assert_same(model)


# ---------------------------------------------------------------------- hooks never leak
def test_hooks_never_leak_over_a_sequence_of_edits(real_editors: Any, tmp_path: Path) -> None:
    """DeStein (the hook editor) and DINM (hooks while locating) stacked, failed, saved, re-applied."""
    from detox_plugins.destein.edits import HookEdit

    destein = SUBJECTS["destein-rotate-hook"]()
    dinm = SUBJECTS["dinm"]()
    from tests.dinm.helpers import tiny_model

    model = unusual(tiny_model("llama"))
    start = Snapshot.take(model)
    steps: list[str] = []

    def check(label: str) -> None:
        steps.append(label)
        assert hook_table(model) == start.hooks, f"hooks leaked after {label}"

    steer = destein.run(model)
    assert isinstance(steer, HookEdit) and hook_table(model) != start.hooks
    steer.save(tmp_path / "steer")
    with steer.paused():
        fix = dinm.run(model)  # DINM on the steered model: its locate hooks come and go
    assert hook_table(model) != start.hooks
    fix.save(tmp_path / "fix")
    fix.revert()
    steer.revert()
    check("edit, stack, revert")
    with pytest.raises(RuntimeError):
        with destein.run(model):
            raise RuntimeError("evaluation crashed")
    check("exception inside `with edit:`")
    with pytest.MonkeyPatch.context() as mp:
        failing = FailOnCall(mp, destein.mlp_class, "forward", 3, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            destein.run(model)
        failing.calls, failing.n = 0, 5
        with pytest.raises(KeyboardInterrupt):
            dinm.run(model)
        assert failing.fired
    check("interrupted edits")
    again = load_edit(tmp_path / "steer").apply(model)
    again.set_alpha(0.1)
    again.revert()
    again.reapply()
    fixed = load_edit(tmp_path / "fix").apply(model, force=True)
    fixed.revert()
    again.revert()
    check("apply saved, set_alpha, reapply, revert")
    _damage(tmp_path / "steer", "v", lambda t: t[:-1])
    with pytest.raises(DetoxError):
        load_edit(tmp_path / "steer").apply(model)
    check("failed apply")
    start.assert_same(model)
    assert len(steps) == 5


# ---------------------------------------------------------------------- failed applies of saved edits
def _damage(folder: Path, key: Optional[str], change: Callable[[torch.Tensor], Optional[torch.Tensor]],
            *, manifest_shapes: bool = True, manifest_lists: bool = True) -> str:
    """Rewrite one tensor of a saved edit (``None`` from ``change`` drops it); keep the manifest's shapes
    and tensor list consistent unless told not to. Returns the tensor's name."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / TENSORS_NAME))
    name = key if key is not None else sorted(tensors)[0]
    new = change(tensors[name].clone())
    if new is None:
        del tensors[name]
    else:
        tensors[name] = new.contiguous()
    save_file(tensors, str(folder / TENSORS_NAME))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    if manifest_lists:
        manifest["tensors"] = sorted(tensors)
    if manifest_shapes:
        manifest["tensor_shapes"] = {k: list(v.shape) for k, v in tensors.items()}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    resign(folder)  # damage that passes the digest check reaches the checks behind it
    return name


def _edit_manifest(folder: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    change(manifest)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    resign(folder)


def _wider(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, t[..., :1]], dim=-1) if t.dim() else t.reshape(1)


def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def _set(path: list[str], value: Any) -> Callable[[dict], None]:
    def change(manifest: dict) -> None:
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


#: (damage id, how to damage the folder, fragment of the message)
DAMAGES: list[tuple[str, Callable[[Path], Any], str]] = [
    ("wrong-shape", lambda f: _damage(f, None, _wider), "shape|fit|divisible"),
    ("shape-differs-from-manifest", lambda f: _damage(f, None, _wider, manifest_shapes=False), "damaged"),
    ("nan", lambda f: _damage(f, None, _nan), "NaN"),
    ("missing-tensor", lambda f: _damage(f, None, lambda t: None, manifest_lists=False), "do not match"),
    ("editor-not-installed", lambda f: _edit_manifest(f, _set(["editor"], "Nope")), "not installed"),
    ("incompatible-version", lambda f: _edit_manifest(f, _set(["editor_version"], "1.0.0")), "incompatible"),
    ("other-fingerprint", lambda f: _edit_manifest(f, _set(["model", "fingerprint"], "0" * 16)), "fingerprint"),
]

#: Editor-specific damage to the manifest's own sections.
SECTION_DAMAGES: dict[str, list[tuple[str, Callable[[dict], None]]]] = {
    "destein-rotate-hook": [("layers-not-ints", _set(["destein", "layers"], ["x"])),
                            ("layers-out-of-range", _set(["destein", "layers"], [99])),
                            ("no-alpha", lambda m: m["destein"].pop("alpha")),
                            ("num-pairs-garbage", _set(["destein", "num_pairs"], "many")),
                            ("fusion-unknown", _set(["destein", "fusion"], "multiply"))],
    "destein-fold-gpt2": [("alpha-garbage", _set(["destein", "alpha"], "strong"))],
    "sv": [("lora-r-garbage", _set(["adapter", "lora_config", "r"], "x")),
           ("lora-targets-unknown", _set(["adapter", "lora_config", "target_modules"], ["nope_proj"])),
           ("lora-config-not-a-dict", _set(["adapter", "lora_config"], [1, 2]))],
}


@pytest.fixture(scope="module")
def saved_edits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved edit per core subject (made once; every test copies the folder it damages)."""
    from registry import plugins as plugin_module

    import detox_plugins.destein
    import detox_plugins.dinm
    import detox_plugins.security_vectors

    old = os.environ.get(plugin_module.ENV_LOAD)
    os.environ[plugin_module.ENV_LOAD] = ""
    plugin_module.reset_registry()
    registry = plugin_module.get_registry()
    for name, module in (("dinm", detox_plugins.dinm), ("destein", detox_plugins.destein),
                         ("security_vectors", detox_plugins.security_vectors)):
        registry.register_plugin(module, name=name, distribution="detox-plugins", version="0.1.0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folders = {}
    try:
        root = tmp_path_factory.mktemp("saved")
        for key in CORE:
            subject = SUBJECTS[key]()
            model = subject.make()
            edit = subject.run(model)
            folders[key] = edit.save(root / key)
            edit.revert()
    finally:
        torch.set_num_threads(threads)
        plugin_module.reset_registry()
        if old is None:
            os.environ.pop(plugin_module.ENV_LOAD, None)
        else:
            os.environ[plugin_module.ENV_LOAD] = old
    return folders


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / folder.name))


@pytest.mark.parametrize("key", CORE)
def test_saved_edit_round_trip_is_exact(key: str, saved_edits: dict[str, Path], real_editors: Any) -> None:
    subject = SUBJECTS[key]()
    model = subject.make()
    snapshot = Snapshot.take(model)
    applied = load_edit(saved_edits[key]).apply(model)
    applied.revert()
    snapshot.assert_same(model)


@pytest.mark.parametrize("key", CORE)
@pytest.mark.parametrize("damage, how, fragment", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_damaged_saved_edit_is_refused_and_the_model_is_exact(key: str, damage: str, how: Callable[[Path], Any],
                                                             fragment: str, saved_edits: dict[str, Path],
                                                             real_editors: Any, tmp_path: Path) -> None:
    folder = _copy(saved_edits[key], tmp_path)
    how(folder)
    subject = SUBJECTS[key]()
    model = subject.make()
    snapshot = Snapshot.take(model)
    with pytest.raises(DetoxError, match=fragment) as info:
        load_edit(folder).apply(model)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    snapshot.assert_same(model)


@pytest.mark.parametrize("key, damage, change",
                         [(k, name, change) for k, items in SECTION_DAMAGES.items() for name, change in items],
                         ids=[f"{k}-{name}" for k, items in SECTION_DAMAGES.items() for name, _ in items])
def test_damaged_manifest_sections_are_refused(key: str, damage: str, change: Callable[[dict], None],
                                               saved_edits: dict[str, Path], real_editors: Any,
                                               tmp_path: Path) -> None:
    folder = _copy(saved_edits[key], tmp_path)
    _edit_manifest(folder, change)
    subject = SUBJECTS[key]()
    model = subject.make()
    snapshot = Snapshot.take(model)
    with pytest.raises(DetoxError):
        load_edit(folder).apply(model)
    snapshot.assert_same(model)


def test_a_saved_edit_for_another_architecture_is_refused(saved_edits: dict[str, Path], real_editors: Any) -> None:
    """Each editor's saved edit on a model of other widths (forced past the fingerprint check)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    wider = unusual(LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2)))
    snapshot = Snapshot.take(wider)
    for key in CORE:
        with pytest.raises(DetoxError, match="shape|fit|another") as info:
            load_edit(saved_edits[key]).apply(wider, force=True)
        assert "rebuild" in str(info.value) or "another" in str(info.value), (key, str(info.value))
        snapshot.assert_same(wider)


# ---------------------------------------------------------------------- atomic saves
@pytest.mark.parametrize("key", CORE)
@pytest.mark.parametrize("where", ["tensors", "extra"])
@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "interrupt"])
def test_a_crash_mid_save_leaves_no_folder(key: str, where: str, exc: BaseException, real_editors: Any,
                                           tmp_path: Path) -> None:
    """A new save crashes: nothing is left. A save over an existing edit crashes: the old one still loads."""
    import safetensors.torch

    subject = SUBJECTS[key]()
    model = subject.make()
    edit = subject.run(model)
    old = edit.save(tmp_path / "old")
    old_manifest = (old / MANIFEST_NAME).read_text()
    with pytest.MonkeyPatch.context() as mp:
        if where == "tensors":
            failing = FailOnCall(mp, safetensors.torch, "save_file", 1, exc)
        else:
            failing = FailOnCall(mp, type(edit), "write_extra", 1, exc)
        expected = OutputError if isinstance(exc, OSError) else type(exc)  # a disk fault: one line naming the path
        with pytest.raises(expected):
            edit.save(tmp_path / "new")
        failing.calls = 0
        with pytest.raises(expected):
            edit.save(old, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert (old / MANIFEST_NAME).read_text() == old_manifest
    load_edit(old)
    edit.revert()


def test_a_process_killed_mid_save_leaves_nothing_that_loads(tmp_path: Path) -> None:
    """No cleanup runs after ``os._exit``: the staging folder stays, hidden and without a manifest."""
    script = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
os.environ["MODEL_EDITORS_LOAD"] = ""
import safetensors.torch
from registry import plugins
from tests.registry.scale_editor import ScaleEditor, ScalePlugin
from tests.tiny import tiny_llama
plugins.get_registry().register_plugin(ScalePlugin(), name="scale")
edit = ScaleEditor({{"alg_name": "Scale"}}).edit(tiny_llama(), None, [{{"prompt": "q", "target_new": "a"}}])
real = safetensors.torch.save_file
def save_then_die(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    with open(filename, "r+b") as handle:
        handle.truncate(100)
    os._exit(3)
safetensors.torch.save_file = save_then_die
edit.save({str(tmp_path / "edit")!r})
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    left = [p for p in tmp_path.iterdir() if p.name != ".edit.lock"]  # a dead holder's lock blocks no one
    assert not (tmp_path / "edit").exists()
    assert len(left) == 1 and left[0].name.startswith(".edit.tmp-")
    assert (left[0] / TENSORS_NAME).is_file() and not (left[0] / MANIFEST_NAME).exists()
    with pytest.raises(ManifestError, match="has no manifest.json"):
        load_edit(left[0])
    with pytest.raises(ManifestError, match="is not a folder"):
        load_edit(tmp_path / "edit")


# ---------------------------------------------------------------------- plugins
class _NotAnEditor:
    @hookimpl
    def register_editors(self, register: Any) -> None:
        register(dict)


class _Duplicate:
    @hookimpl
    def register_editors(self, register: Any) -> None:
        from tests.registry.scale_editor import ScaleEditor

        class Copy(ScaleEditor):
            aliases = ()

        register(Copy)


class _Raising:
    @hookimpl
    def register_editors(self, register: Any) -> None:
        raise ImportError("No module named 'torch_nonexistent'")


@pytest.mark.parametrize("plugin, fragment", [(_NotAnEditor(), "not a subclass of registry.Editor"),
                                              (_Duplicate(), "already registered by scale-dist"),
                                              (_Raising(), "torch_nonexistent")],
                         ids=["non-editor", "duplicate", "raising"])
def test_bad_plugins_are_skipped_and_reported_or_raise_in_strict_mode(editor_registry: Any, plugin: Any,
                                                                      fragment: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.registry.scale_editor import ScaleEditor, ScalePlugin

    import registry

    editor_registry.register_plugin(ScalePlugin(), name="scale-plugin", distribution="scale-dist", version="1.0")
    editor_registry.register_plugin(plugin, name="bad", distribution="bad-dist")
    rows = {r.name: r for r in registry.list_editors()}
    assert rows["Scale"].error is None and registry.get_editor("Scale") is ScaleEditor
    assert rows["bad"].distribution == "bad-dist" and fragment in rows["bad"].error
    monkeypatch.setenv(plugins.ENV_STRICT, "1")
    plugins.reset_registry()
    strict = plugins.get_registry()
    strict.register_plugin(ScalePlugin(), name="scale-plugin", distribution="scale-dist", version="1.0")
    strict.register_plugin(plugin, name="bad", distribution="bad-dist")
    with pytest.raises(PluginError, match=f"bad.*{fragment}"):
        strict.list_editors()


# ---------------------------------------------------------------------- untrusted inputs: remote code
CUSTOM_CONFIG = '''from transformers import LlamaConfig


class DetoxCustomConfig(LlamaConfig):
    model_type = "detox_custom"
'''
CUSTOM_MODELING = '''import os
from pathlib import Path

from transformers import LlamaForCausalLM

from .configuration_custom import DetoxCustomConfig

Path(os.environ["DETOX_TEST_REMOTE_CODE_MARKER"]).write_text("the model folder's code ran")


class DetoxCustomForCausalLM(LlamaForCausalLM):
    config_class = DetoxCustomConfig
'''


def _custom_code_folder(folder: Path) -> Path:
    """A local model folder whose config needs its own modelling code (``auto_map``)."""
    from tests.tiny import tiny_llama, tiny_tokenizer

    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="detox_custom", architectures=["DetoxCustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.DetoxCustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.DetoxCustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_custom.py").write_text(CUSTOM_MODELING)
    return folder


def test_trust_remote_code_is_off_unless_the_yaml_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.dynamic_module_utils as dynamic

    from registry.errors import ModelLoadError
    from registry.hparams import HyperParams
    from registry.models import load_model

    modules = tmp_path / "hf_modules"
    monkeypatch.syspath_prepend(str(tmp_path))  # sys.path is restored after the test
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(modules))  # not the user's ~/.cache
    marker = tmp_path / "ran"
    monkeypatch.setenv("DETOX_TEST_REMOTE_CODE_MARKER", str(marker))
    folder = _custom_code_folder(tmp_path / "custom-model")

    assert HyperParams.from_dict({"alg_name": "X"}).trust_remote_code is False
    off = tmp_path / "off.yaml"
    off.write_text(f"alg_name: X\nmodel_name: {folder}\n")
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_model(HyperParams.from_hparams(off))
    with pytest.raises(ModelLoadError):
        load_model(str(folder))  # a plain path: no hparams, no remote code either
    assert not marker.exists()

    on = tmp_path / "on.yaml"
    on.write_text(f"alg_name: X\nmodel_name: {folder}\ntrust_remote_code: true\n")
    model, _ = load_model(HyperParams.from_hparams(on))
    assert type(model).__name__ == "DetoxCustomForCausalLM" and marker.exists()
