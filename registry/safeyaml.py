"""``load(text, source)``: PyYAML's safe loader, bounded and strict.

- Aliases are bounded: at most ``MAX_ALIASES`` per document, and the document expanded (every alias
  counted as the node it stands for) at most ``MAX_NODES`` nodes. A "billion laughs" file is refused
  while it is composed, before anything walks the expansion. Recursive aliases are refused.
- A key given twice in one mapping is refused with both line numbers (``<<`` merge keys excepted).
- Errors are ``HyperParamsError`` naming the source and the line; no value is ever printed in full.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import HyperParamsError, shown

MAX_ALIASES = 100
MAX_NODES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLRefusedError(HyperParamsError):
    """Well-formed YAML that is refused: too many aliases, an expansion past the bound, a recursive alias,
    a duplicate key. Unlike a syntax error it is never read as plain text instead (``detox edit --set``)."""


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with alias and size bounds and duplicate-key refusal (``YAMLRefusedError``)."""

    def __init__(self, stream: Any, source: str = "<yaml>") -> None:
        super().__init__(stream)
        self.source = source
        self._aliases = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YAMLRefusedError(
                    f"{self.source} line {event.start_mark.line + 1}: more than {MAX_ALIASES} YAML aliases (*name); "
                    f"write the values out instead of repeating anchors")
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise YAMLRefusedError(
                    f"{self.source} line {event.start_mark.line + 1}: alias *{shown(event.anchor, 40)} refers to "
                    f"the node that contains it (a recursive alias); remove it")
            return node
        node = super().compose_node(parent, index)
        if isinstance(node, ScalarNode):
            size = 1
        elif isinstance(node, SequenceNode):
            size = 1 + sum(self._sizes.get(id(child), 1) for child in node.value)
        elif isinstance(node, MappingNode):
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        else:  # pragma: no cover - PyYAML has only these three
            size = 1
        if size > MAX_NODES:
            raise YAMLRefusedError(
                f"{self.source} line {node.start_mark.line + 1}: the document expands to more than {MAX_NODES} "
                f"values (YAML anchors and aliases); write it out without repeated aliases")
        self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG or not isinstance(key_node, ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise YAMLRefusedError(
                        f"{self.source} line {line}: duplicate key {shown(key_node.value, 60)} (first given on "
                        f"line {seen[key]}); keep one of them")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load(text: str, source: str = "<yaml>") -> Any:
    """Parse one YAML document with ``BoundedSafeLoader``; every failure is one ``HyperParamsError`` line."""
    loader: "BoundedSafeLoader | None" = None
    try:
        loader = BoundedSafeLoader(text, source)  # the reader checks the characters here already
        return loader.get_single_data()
    except HyperParamsError:
        raise
    # Untrusted text: PyYAML's safe constructors can also raise ValueError (a date 2001-13-01, an int
    # past Python's digit limit), AttributeError (!!timestamp x) or RecursionError (deep nesting).
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        text = str(problem)
        text = text if len(text) <= 120 else text[:117] + "..."
        raise HyperParamsError(f"{source}{where}: not valid YAML: {text}") from None
    finally:
        if loader is not None:
            loader.dispose()
