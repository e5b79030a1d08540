"""Plugin discovery: in-process registration, entry points, isolation, strict mode, duplicates."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import registry
from registry import hookimpl, plugins
from registry.errors import EditorNotFoundError, PluginError

from .scale_editor import ScaleEditor, ScalePlugin


@pytest.fixture
def scale_plugin(editor_registry):
    editor_registry.register_plugin(ScalePlugin(), name="scale-plugin", distribution="scale-dist", version="1.2.3")
    try:
        yield editor_registry
    finally:
        editor_registry.unregister_plugin("scale-plugin")


def test_hookimpl_is_exported_from_the_package_root():
    assert registry.hookimpl is hookimpl


def test_hook_register_editors_registers_an_in_process_plugin(scale_plugin):
    rows = registry.list_editors()
    assert [(r.name, r.kind, r.distribution, r.version, r.error) for r in rows] == [
        ("Scale", "weights", "scale-dist", "1.2.3", None)
    ]
    assert registry.load_editors() == {"Scale": ScaleEditor}


def test_get_editor_is_case_insensitive_and_knows_aliases(scale_plugin):
    assert registry.get_editor("scale") is ScaleEditor
    assert registry.get_editor("SCALE") is ScaleEditor
    assert registry.get_editor("Scaler") is ScaleEditor


def test_unknown_editor_lists_available_names_and_closest_match(scale_plugin):
    with pytest.raises(EditorNotFoundError, match=r"unknown editor 'scal'.*available: Scale.*Did you mean 'Scale'"):
        registry.get_editor("scal")


def test_unregistering_a_plugin_removes_its_editors(scale_plugin):
    scale_plugin.unregister_plugin("scale-plugin")
    assert registry.list_editors() == []


def test_plugin_raising_inside_register_editors_is_isolated(scale_plugin):
    class Broken:
        @hookimpl
        def register_editors(self, register):
            raise RuntimeError("boom while registering")

    scale_plugin.register_plugin(Broken(), name="broken", distribution="broken-dist")
    rows = {r.name: r for r in registry.list_editors()}
    assert rows["Scale"].error is None
    assert rows["broken"].distribution == "broken-dist"
    assert "boom while registering" in rows["broken"].error


def test_strict_mode_raises_for_a_failing_plugin(scale_plugin, monkeypatch):
    class Broken:
        @hookimpl
        def register_editors(self, register):
            raise RuntimeError("boom")

    monkeypatch.setenv(plugins.ENV_STRICT, "1")
    scale_plugin.register_plugin(Broken(), name="broken")
    with pytest.raises(PluginError, match="broken.*boom"):
        registry.list_editors()


def test_registering_a_non_editor_is_reported_and_skipped(scale_plugin):
    class NotAnEditor:
        @hookimpl
        def register_editors(self, register):
            register(dict)

    scale_plugin.register_plugin(NotAnEditor(), name="not-editor")
    rows = {r.name: r for r in registry.list_editors()}
    assert "not a subclass of registry.Editor" in rows["not-editor"].error
    assert rows["Scale"].error is None


def test_a_half_registered_plugin_keeps_none_of_its_editors(scale_plugin):
    class Other(ScaleEditor):
        name = "Other"
        aliases = ()

    class Half:
        @hookimpl
        def register_editors(self, register):
            register(Other)
            raise ValueError("second editor failed")

    scale_plugin.register_plugin(Half(), name="half")
    with pytest.raises(EditorNotFoundError):
        registry.get_editor("Other")


def test_duplicate_name_names_both_distributions(scale_plugin):
    class Copy(ScaleEditor):
        aliases = ()

    class Dup:
        @hookimpl
        def register_editors(self, register):
            register(Copy)

    scale_plugin.register_plugin(Dup(), name="dup", distribution="other-dist")
    rows = {r.name: r for r in registry.list_editors()}
    message = rows["dup"].error
    assert "'scale' from other-dist is already registered by scale-dist" in message
    assert "rename it" in message
    assert registry.get_editor("scale") is ScaleEditor


def test_misspelled_hook_name_fails_loudly(editor_registry):
    class Misspelled:
        @hookimpl
        def register_editor(self, register):  # missing "s"
            register(ScaleEditor)

    with pytest.raises(PluginError, match="unknown hook 'register_editor'.*register_editors"):
        editor_registry.register_plugin(Misspelled(), name="typo")


def test_default_on_register_argument_is_not_passed(editor_registry):
    """pluggy passes only arguments without defaults (on 1.6 such an argument stays None): such a plugin fails, visibly."""

    class WithDefault:
        @hookimpl
        def register_editors(self, register=None):
            register(ScaleEditor)

    editor_registry.register_plugin(WithDefault(), name="with-default")
    rows = {r.name: r for r in registry.list_editors()}
    assert rows["with-default"].error is not None and "NoneType" in rows["with-default"].error


def test_editor_class_attributes_are_validated(editor_registry):
    class BadKind(ScaleEditor):
        name = "BadKind"
        kind = "magic"
        aliases = ()

    class Plugin:
        @hookimpl
        def register_editors(self, register):
            register(BadKind)

    editor_registry.register_plugin(Plugin(), name="bad-kind")
    rows = {r.name: r for r in registry.list_editors()}
    assert "kind must be one of weights, activations, training" in rows["bad-kind"].error


# ---------------------------------------------------------------------- entry points (hermetic)
def _fake_distribution(root: Path, dist: str, module: str, body: str, version: str = "0.1") -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[model_editors]\n{module} = {module}\n")


FAKE_OK = """
    from dataclasses import dataclass
    from registry import Editor, HyperParams, hookimpl

    @dataclass
    class FakeHyperParams(HyperParams):
        pass

    class FakeEditor(Editor):
        name = "FakeDetox"
        kind = "activations"
        hparams_class = FakeHyperParams

        def edit(self, model, tokenizer, requests):
            raise NotImplementedError

    @hookimpl
    def register_editors(register):
        register(FakeEditor)
"""

FAKE_BROKEN = """
    import module_that_does_not_exist_anywhere
"""


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "fake-detox", "fake_detox", FAKE_OK)
    _fake_distribution(tmp_path, "fake-broken", "fake_broken", FAKE_BROKEN, version="2.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_discovery_and_isolation(fake_dists, real_registry):
    rows = {r.name: r for r in registry.list_editors()}
    assert rows["FakeDetox"].distribution == "fake-detox"
    assert rows["FakeDetox"].version == "0.1"
    assert rows["FakeDetox"].kind == "activations"
    assert rows["fake_broken"].distribution == "fake-broken"
    assert "ModuleNotFoundError" in rows["fake_broken"].error
    assert registry.get_editor("fakedetox").__name__ == "FakeEditor"


def test_entry_point_failure_raises_in_strict_mode(fake_dists, real_registry, monkeypatch):
    monkeypatch.setenv(plugins.ENV_STRICT, "1")
    with pytest.raises(PluginError, match="fake_broken.*fake-broken"):
        registry.list_editors()


def test_allow_list_limits_loading_to_named_distributions(fake_dists, real_registry, monkeypatch):
    monkeypatch.setenv(plugins.ENV_LOAD, "fake-detox")
    assert [r.name for r in registry.list_editors()] == ["FakeDetox"]


def test_empty_allow_list_loads_nothing(fake_dists, real_registry, monkeypatch):
    monkeypatch.setenv(plugins.ENV_LOAD, "")
    assert registry.list_editors() == []


def test_entry_points_load_once(fake_dists, real_registry):
    registry.list_editors()
    loaded = set(real_registry.pm.list_name_plugin())
    registry.list_editors()
    assert set(real_registry.pm.list_name_plugin()) == loaded


def test_our_own_editors_are_entry_point_plugins(real_registry):
    rows = {r.name: r for r in registry.list_editors()}
    assert rows["DINM"].distribution == "detox-plugins"
    assert rows["DINM"].kind == "weights"
    assert rows["DINM"].error is None
