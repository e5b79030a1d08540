"""Discovery of editor plugins through the ``model_editors`` entry-point group.

Loaded once, lazily. One plugin that fails to import, registers a non-editor, a duplicate name or
a bad command is recorded and skipped; the others still load. ``MODEL_EDITORS_STRICT=1`` re-raises
instead, ``MODEL_EDITORS_LOAD=a,b`` loads only those distributions (empty = none) and
``MODEL_EDITORS_TRACE=1`` logs every hook call (logger ``registry.plugins``, level INFO).
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Optional

import pluggy

from . import hookspecs
from .command import Command
from .editor import KINDS, Editor
from .errors import EditorNotFoundError, PluginError
from .hparams import HyperParams
from .origins import IN_PROCESS, forget_origins, record_origin, set_lookup

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
ENV_LOAD = "MODEL_EDITORS_LOAD"
ENV_STRICT = "MODEL_EDITORS_STRICT"
ENV_TRACE = "MODEL_EDITORS_TRACE"


#: Subcommands the ``detox`` host defines itself; a plugin command may not take these names.
RESERVED_COMMANDS = frozenset({"plugins", "hparams", "generate", "edit", "apply", "export", "eval", "judge",
                               "report"})


@dataclass(frozen=True)
class CommandInfo:
    """One plugin command and where it comes from."""

    command: Command
    distribution: str
    version: str
    plugin: str


@dataclass(frozen=True)
class EditorInfo:
    """One row of ``list_editors()``: a registered editor or a plugin that failed."""

    name: str
    kind: Optional[str]
    distribution: str
    version: str
    plugin: str
    aliases: tuple[str, ...] = ()
    error: Optional[str] = None
    editor_class: Optional[type] = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "distribution": self.distribution,
            "version": self.version,
            "plugin": self.plugin,
            "aliases": list(self.aliases),
            "status": "ok" if self.error is None else "error",
            "error": self.error,
        }


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


class EditorRegistry:
    """A plugin manager plus the table of editors its plugins registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._lock = threading.RLock()
        self._entry_points_loaded = False
        self._origins: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self._load_failures: dict[str, EditorInfo] = {}
        self._editors: Optional[dict[str, EditorInfo]] = None
        self._register_failures: dict[str, EditorInfo] = {}
        self._commands: Optional[dict[str, CommandInfo]] = None
        self._command_failures: dict[str, EditorInfo] = {}
        self._collecting = False
        set_lookup(self._record_origins)  # base_metadata may ask before the table was built
        self.tracing = _truthy(os.environ.get(ENV_TRACE))
        if self.tracing:
            self.pm.trace.root.setwriter(lambda msg: logger.info("pluggy: %s", msg.rstrip()))
            self.pm.enable_tracing()

    # ------------------------------------------------------------------ settings
    @property
    def strict(self) -> bool:
        return _truthy(os.environ.get(ENV_STRICT))

    @staticmethod
    def _allowed() -> Optional[set[str]]:
        raw = os.environ.get(ENV_LOAD)
        if raw is None:
            return None
        return {_normalise(part) for part in raw.split(",") if part.strip()}

    # ------------------------------------------------------------------ loading
    def load_entry_points(self) -> None:
        with self._lock:
            if self._entry_points_loaded:
                return
            self._entry_points_loaded = True
            allowed = self._allowed()
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                dist_name, version = _dist_of(ep)
                if allowed is not None and _normalise(dist_name) not in allowed and _normalise(ep.name) not in allowed:
                    continue
                if self.pm.is_blocked(ep.name):
                    continue
                if self.pm.get_plugin(ep.name) is not None:
                    owner = self._origins.get(ep.name, (IN_PROCESS, ""))[0]
                    if owner != dist_name:
                        self._fail_load(ep.name, dist_name, version, PluginError(
                            f"entry point {ep.name!r} of {dist_name} clashes with the plugin of the same "
                            f"name from {owner}; rename one entry point"))
                    continue
                try:
                    plugin = ep.load()
                    self._check_hook_names(plugin, ep.name)
                    self.pm.register(plugin, name=ep.name)
                    self._origins[ep.name] = (dist_name, version)
                    self._trace("loaded plugin %r from %s %s", ep.name, dist_name, version)
                except Exception as exc:  # one bad plugin never breaks the others
                    if self.pm.get_plugin(ep.name) is not None:
                        self.pm.unregister(name=ep.name)
                    self._fail_load(ep.name, dist_name, version, exc)
            try:
                self.pm.check_pending()
            except pluggy.PluginValidationError as exc:
                if self.strict:
                    raise PluginError(str(exc)) from exc
                logger.warning("editor plugin hook check failed: %s", exc)
            self._editors = None

    def _fail_load(self, plugin: str, dist: str, version: str, exc: BaseException) -> None:
        if self.strict:
            raise PluginError(f"editor plugin {plugin!r} from {dist} failed to load: {_one_line(exc)}") from exc
        logger.warning("Skipped editor plugin %r from %s: %s", plugin, dist, _one_line(exc))
        self._load_failures[plugin] = EditorInfo(
            name=plugin, kind=None, distribution=dist, version=version, plugin=plugin, error=_one_line(exc)
        )

    def _check_hook_names(self, plugin: Any, plugin_name: str) -> None:
        """Misspelled hook names fail loudly (pluggy's check_pending, attributed to this plugin)."""
        known = {name for name in dir(self.pm.hook) if not name.startswith("_")}
        for attr in dir(plugin):
            if attr.startswith("_"):
                continue
            try:
                opts = self.pm.parse_hookimpl_opts(plugin, attr)
            except Exception:  # noqa: BLE001 - odd attributes are not hooks
                continue
            if opts is not None and attr not in known and not opts.get("optionalhook"):
                close = difflib.get_close_matches(attr, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise PluginError(f"plugin {plugin_name!r} implements unknown hook {attr!r}{hint}")

    # ------------------------------------------------------------------ in-process plugins
    def register_plugin(self, plugin: Any, name: str, distribution: str = IN_PROCESS, version: str = "") -> None:
        """Register a plugin object directly (tests, notebooks); it is treated like an entry point."""
        with self._lock:
            self._check_hook_names(plugin, name)
            self.pm.register(plugin, name=name)
            self._origins[name] = (distribution, version)
            self._editors = None
            self._commands = None

    def unregister_plugin(self, name: str) -> None:
        with self._lock:
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
            self._origins.pop(name, None)
            self._load_failures.pop(name, None)
            self._editors = None
            self._commands = None

    # ------------------------------------------------------------------ editors
    def editors(self) -> dict[str, EditorInfo]:
        """Lower-case name (and alias) -> EditorInfo, building the table on first use."""
        self.load_entry_points()
        with self._lock:
            if self._editors is None:
                self._editors, self._register_failures = self._collect()
            return self._editors

    def _trace(self, message: str, *args: Any) -> None:
        if self.tracing:
            logger.info("trace: " + message, *args)

    def _call_each(self, hook_name: str, entries: Callable[[Any, str, str, str], list[tuple[str, Any]]],
                   clash: Callable[[str, Any, str], str], failures: dict[str, "EditorInfo"]) -> dict[str, Any]:
        """Call every plugin's ``hook_name(register=...)`` on its own, so one failure cannot abort the
        others; return the table of what they registered (registration order: first wins).

        ``entries(obj, plugin, dist, version)`` validates one registered object into ``(key, info)``
        rows; a key already taken raises ``clash(key, owner, dist)``. A plugin's rows count only when
        its hook returns: a plugin that fails half-way registers nothing."""
        table: dict[str, Any] = {}
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            plugin_name = impl.plugin_name
            dist, version = self._origins.get(plugin_name, (IN_PROCESS, ""))
            mine: dict[str, Any] = {}

            def register(obj: Any, _plugin: str = plugin_name, _dist: str = dist, _version: str = version,
                         _mine: dict[str, Any] = mine) -> None:
                for key, info in entries(obj, _plugin, _dist, _version):
                    owner = table.get(key) or _mine.get(key)
                    if owner is not None:
                        raise PluginError(clash(key, owner, _dist))
                    _mine[key] = info

            self._trace("calling %s of plugin %r (%s %s)", hook_name, plugin_name, dist, version)
            try:
                impl.function(**{name: register for name in impl.argnames if name == "register"})
            except Exception as exc:
                self._trace("%s of plugin %r failed: %s", hook_name, plugin_name, _one_line(exc))
                if self.strict:
                    raise PluginError(
                        f"editor plugin {plugin_name!r} from {dist} failed to register: {_one_line(exc)}"
                    ) from exc
                logger.warning("Skipped editor plugin %r from %s: %s", plugin_name, dist, _one_line(exc))
                failures[plugin_name] = EditorInfo(
                    name=plugin_name, kind=None, distribution=dist, version=version,
                    plugin=plugin_name, error=_one_line(exc),
                )
                continue
            self._trace("%s of plugin %r returned", hook_name, plugin_name)
            table.update(mine)
        return table

    def _record_origins(self, _editor_class: type) -> None:
        """Build the editor table (which records every registered class's origin), unless building it."""
        if not self._collecting:
            self.editors()

    def _collect(self) -> tuple[dict[str, EditorInfo], dict[str, EditorInfo]]:
        self._collecting = True
        try:
            return self._collect_editors()
        finally:
            self._collecting = False

    def _collect_editors(self) -> tuple[dict[str, EditorInfo], dict[str, EditorInfo]]:
        failures: dict[str, EditorInfo] = {}

        def entries(editor_class: Any, plugin: str, dist: str, version: str) -> list[tuple[str, EditorInfo]]:
            info = _validate_editor(editor_class, dist, version, plugin)
            self._trace("plugin %r registers editor %r", plugin, info.name)
            return [(key.lower(), info) for key in (info.name, *info.aliases)]

        def clash(key: str, owner: EditorInfo, dist: str) -> str:
            return (f"Editor {key!r} from {dist} is already registered by {owner.distribution} "
                    f"(plugin {owner.plugin!r}); rename it or drop the alias.")

        table = self._call_each("register_editors", entries, clash, failures)
        for info in table.values():
            record_origin(info.editor_class, info.distribution, info.version)
        return table, failures

    # ------------------------------------------------------------------ commands
    def commands(self) -> dict[str, "CommandInfo"]:
        """Command name -> CommandInfo for every ``detox`` subcommand a plugin registered."""
        self.load_entry_points()
        with self._lock:
            if self._commands is None:
                self._commands, self._command_failures = self._collect_commands()
            return self._commands

    def _collect_commands(self) -> tuple[dict[str, "CommandInfo"], dict[str, EditorInfo]]:
        failures: dict[str, EditorInfo] = {}

        def entries(command: Any, plugin: str, dist: str, version: str) -> list[tuple[str, CommandInfo]]:
            if not isinstance(command, Command):
                raise PluginError(f"register() got {command!r}, which is not a registry.Command")
            command.validate()
            self._trace("plugin %r registers command %r", plugin, command.name)
            if command.name in RESERVED_COMMANDS:
                raise PluginError(f"command {command.name!r} from {dist} is already provided by the host; rename it")
            return [(command.name, CommandInfo(command, dist, version, plugin))]

        def clash(key: str, owner: CommandInfo, dist: str) -> str:
            return f"command {key!r} from {dist} is already provided by {owner.distribution}; rename it"

        return self._call_each("register_commands", entries, clash, failures), failures

    def failures(self) -> list[EditorInfo]:
        """Plugins that failed to load, to register their editors, or to register their commands."""
        self.editors()
        self.commands()
        seen = {**self._load_failures, **self._register_failures}
        extra = {k: v for k, v in self._command_failures.items() if k not in seen}
        return list(seen.values()) + list(extra.values())

    def list_editors(self) -> list[EditorInfo]:
        """Every editor once (aliases folded), then every failed plugin."""
        seen: dict[int, EditorInfo] = {}
        for info in self.editors().values():
            seen.setdefault(id(info), info)
        ok = sorted(seen.values(), key=lambda i: i.name.lower())
        return ok + self.failures()

    def get_editor(self, name: str) -> type:
        if not isinstance(name, str) or not name.strip():
            raise EditorNotFoundError("editor name is empty; pass one of the names `detox plugins` lists")
        table = self.editors()
        info = table.get(name.strip().lower())
        if info is not None and info.editor_class is not None:
            return info.editor_class
        names = sorted({i.name for i in table.values()})
        close = difflib.get_close_matches(name.lower(), list(table), n=1, cutoff=0.4)
        hint = f" Did you mean {table[close[0]].name!r}?" if close else ""
        broken = [f.plugin for f in self.failures()]
        extra = f" Plugins that failed to load: {', '.join(broken)} (see `detox plugins`)." if broken else ""
        raise EditorNotFoundError(
            f"unknown editor {name!r}; available: {', '.join(names) or 'none'}.{hint}{extra}"
        )


def _validate_editor(editor_class: Any, dist: str, version: str, plugin: str) -> EditorInfo:
    if not isinstance(editor_class, type) or not issubclass(editor_class, Editor):
        raise PluginError(f"register() got {editor_class!r}, which is not a subclass of registry.Editor")
    name = getattr(editor_class, "name", None)
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise PluginError(f"{editor_class.__name__}.name must be a non-empty string, got {name!r}")
    kind = getattr(editor_class, "kind", None)
    if kind not in KINDS:
        raise PluginError(f"{editor_class.__name__}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    hp = getattr(editor_class, "hparams_class", None)
    if not isinstance(hp, type) or not issubclass(hp, HyperParams):
        raise PluginError(f"{editor_class.__name__}.hparams_class must be a HyperParams subclass, got {hp!r}")
    aliases = tuple(getattr(editor_class, "aliases", ()) or ())
    return EditorInfo(name=name, kind=kind, distribution=dist, version=version, plugin=plugin,
                      aliases=aliases, editor_class=editor_class)


def _dist_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return (ep.module.split(".")[0], "")
    return (dist.metadata["Name"] or dist.name, dist.version or "")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"


# ---------------------------------------------------------------------- the process-wide registry
_REGISTRY: Optional[EditorRegistry] = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> EditorRegistry:
    """The process-wide registry, created on first use (no work at import time)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = EditorRegistry()
        return _REGISTRY


def reset_registry() -> None:
    """Forget every loaded plugin; the next call discovers entry points again (tests)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        _REGISTRY = None
    forget_origins()


def get_plugin_manager() -> pluggy.PluginManager:
    return get_registry().pm


def load_editors() -> dict[str, type]:
    """Discover plugins (once) and return ``{name: EditorClass}`` for every registered editor."""
    return {info.name: info.editor_class for info in get_registry().list_editors() if info.error is None}


def list_editors() -> list[EditorInfo]:
    return get_registry().list_editors()


def get_editor(name: str) -> type:
    return get_registry().get_editor(name)


def list_commands() -> list[CommandInfo]:
    """Every ``detox`` subcommand the installed plugins add, by name."""
    return sorted(get_registry().commands().values(), key=lambda info: info.command.name)
