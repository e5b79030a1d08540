"""The second hook: plugins add `detox` subcommands (``register_commands``), isolated like editors, and
``MODEL_EDITORS_TRACE=1`` traces every hook call."""

from __future__ import annotations

import argparse
import logging

import pytest

import registry
from registry import Command, hookimpl, plugins
from registry.errors import PluginError

from detox_plugins.cli import build_parser, main

from .scale_editor import ScalePlugin


def _hello(args: argparse.Namespace) -> int:
    print(f"hello {args.name} from a plugin; model flag {args.model!r}")
    return 0


HELLO = Command("hello", "Say hello (a plugin command).", _hello,
                lambda parser: parser.add_argument("--name", default="world"),
                examples=("detox hello --name you",))


class CommandsPlugin:
    """A plugin whose register_commands registers the given objects."""

    def __init__(self, *commands: object) -> None:
        self.commands = commands

    @hookimpl
    def register_commands(self, register):
        for command in self.commands:
            register(command)


def HelloPlugin() -> CommandsPlugin:  # noqa: N802 - reads like the plugin class it stands for
    return CommandsPlugin(HELLO)


@pytest.fixture
def hello_registry(editor_registry):
    editor_registry.register_plugin(ScalePlugin(), name="scale-plugin", distribution="scale-dist", version="1.2.3")
    editor_registry.register_plugin(HelloPlugin(), name="hello-plugin", distribution="hello-dist", version="0.2")
    return editor_registry


def test_hook_register_commands_adds_a_subcommand_with_the_shared_model_flags(hello_registry, capsys):
    assert [(c.command.name, c.distribution, c.version) for c in registry.list_commands()] == [
        ("hello", "hello-dist", "0.2")]
    parser = build_parser()
    assert "hello" in parser.format_help() and "[hello-dist]" in parser.format_help()
    assert main(["hello", "--name", "you", "--model", "m"]) == 0
    assert capsys.readouterr().out.strip() == "hello you from a plugin; model flag 'm'"
    with pytest.raises(SystemExit):
        main(["hello", "--help"])
    text = capsys.readouterr().out
    assert "added by hello-dist 0.2" in text and "--dtype" in text and "--edit DIR" in text


@pytest.mark.parametrize("command,fragment", [
    (Command("Bad Name", "x", _hello, examples=("detox x",)), "lower-case letters"),
    (Command("ok", "", _hello, examples=("detox ok",)), "one-line summary"),
    (Command("ok", "x", _hello), "at least one example"),
    (Command("edit", "x", _hello, examples=("detox edit",)), "already provided by the host"),
    ("not a command", "not a registry.Command"),
])
def test_a_bad_command_is_isolated_and_reported(editor_registry, command, fragment):
    editor_registry.register_plugin(HelloPlugin(), name="hello-plugin", distribution="hello-dist", version="0.2")
    editor_registry.register_plugin(CommandsPlugin(command), name="bad-plugin", distribution="bad-dist", version="1")
    assert [c.command.name for c in registry.list_commands()] == ["hello"]
    failure = next(f for f in editor_registry.failures() if f.plugin == "bad-plugin")
    assert fragment in failure.error
    assert "hello" in build_parser().format_help()  # the others still load


def test_two_plugins_with_one_command_name_keep_the_first(editor_registry):
    editor_registry.register_plugin(HelloPlugin(), name="hello-plugin", distribution="hello-dist", version="0.2")
    editor_registry.register_plugin(CommandsPlugin(HELLO), name="twin", distribution="twin-dist", version="1")
    assert [c.distribution for c in registry.list_commands()] == ["hello-dist"]
    assert "already provided by hello-dist" in next(f for f in editor_registry.failures() if f.plugin == "twin").error


def test_strict_mode_raises_for_a_bad_command(editor_registry, monkeypatch):
    monkeypatch.setenv(plugins.ENV_STRICT, "1")
    editor_registry.register_plugin(CommandsPlugin(Command("x y", "x", _hello, examples=("detox x",))),
                                    name="bad-plugin", distribution="bad-dist", version="1")
    with pytest.raises(PluginError, match="lower-case letters"):
        registry.list_commands()


def test_trace_logs_every_hook_call(monkeypatch, caplog):
    monkeypatch.setenv(plugins.ENV_LOAD, "")
    monkeypatch.setenv(plugins.ENV_TRACE, "1")
    plugins.reset_registry()
    try:
        reg = plugins.get_registry()
        reg.register_plugin(ScalePlugin(), name="scale-plugin", distribution="scale-dist", version="1.2.3")
        reg.register_plugin(HelloPlugin(), name="hello-plugin", distribution="hello-dist", version="0.2")
        with caplog.at_level(logging.INFO, logger="registry.plugins"):
            reg.editors()
            reg.commands()
    finally:
        plugins.reset_registry()
    text = "\n".join(r.getMessage() for r in caplog.records)
    for expected in ("calling register_editors of plugin 'scale-plugin' (scale-dist 1.2.3)",
                     "plugin 'scale-plugin' registers editor 'Scale'",
                     "register_editors of plugin 'scale-plugin' returned",
                     "calling register_commands of plugin 'hello-plugin' (hello-dist 0.2)",
                     "plugin 'hello-plugin' registers command 'hello'"):
        assert expected in text, expected
