"""``Footprint``: what one edit changes and what its result depends on (the conflict checks read it).

An editor predicts a footprint before it runs (``Editor.planned_footprint``) and an applied edit
reports its own (``Edit.footprint``); ``registry.compose`` compares them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

_BASE_LAYER = re.compile(r"\.base_layer(?=\.|$)")


def canonical_name(name: str) -> str:
    """A tensor/module name as it reads without adapter wrappers (peft's ``.base_layer`` removed)."""
    return _BASE_LAYER.sub("", name)


def natural_sorted(names: Iterable[str]) -> list[str]:
    """Sorted with digit runs compared as numbers: ``layers.8`` before ``layers.10``."""
    return sorted(names, key=lambda n: [(0, int(p), "") if p.isdigit() else (1, 0, p)
                                        for p in re.split(r"(\d+)", n)])


@dataclass(frozen=True)
class Footprint:
    """What one edit changes, and what its result depends on. Names are canonical (no ``.base_layer``).

    ``writes``: tensors (parameters/buffers, also ones the edit creates) whose values it changes.
    ``reads``: tensors its result was computed from and stays tied to (a DeStein bias fold is
    ``W_o·δ``: it reads ``o_proj.weight``). ``hooks``: modules it steers with forward hooks.
    ``wraps``: modules an adapter it attaches replaces with a wrapper. ``additive``: its writes are
    ``W0 + Δ`` deltas (``ParameterEdit``). ``stackable``: it may write a tensor that an earlier
    additive edit already wrote, its delta computed on the weights that edit left (sequential DINM
    edits of one MLP matrix). ``exact``: False for a prediction that is a superset (e.g. DINM before
    localization: every layer it might pick).
    """

    writes: frozenset[str] = frozenset()
    reads: frozenset[str] = frozenset()
    hooks: frozenset[str] = frozenset()
    wraps: frozenset[str] = frozenset()
    additive: bool = False
    stackable: bool = False
    exact: bool = True

    @classmethod
    def of(cls, *, writes: Iterable[str] = (), reads: Iterable[str] = (), hooks: Iterable[str] = (),
           wraps: Iterable[str] = (), additive: bool = False, stackable: bool = False,
           exact: bool = True) -> "Footprint":
        """A footprint with every name made canonical."""
        def names(values: Iterable[str]) -> frozenset[str]:
            return frozenset(canonical_name(str(v)) for v in values)

        return cls(names(writes), names(reads), names(hooks), names(wraps), additive, stackable, exact)

    @classmethod
    def from_dict(cls, data: Any) -> "Footprint":
        """The inverse of ``to_dict`` (a saved edit's manifest records its footprint)."""
        if not isinstance(data, dict):
            return cls(exact=False)
        lists = {key: [str(n) for n in data.get(key) or [] if isinstance(n, str)]
                 for key in ("writes", "reads", "hooks", "wraps")}
        return cls.of(**lists, additive=data.get("additive") is True, stackable=data.get("stackable") is True,
                      exact=data.get("exact") is not False)

    def merged(self, other: "Footprint") -> "Footprint":
        return Footprint(self.writes | other.writes, self.reads | other.reads, self.hooks | other.hooks,
                         self.wraps | other.wraps, self.additive and other.additive,
                         self.stackable and other.stackable, self.exact and other.exact)

    def to_dict(self) -> dict[str, Any]:
        """Names in natural order (layers.2 before layers.10)."""
        return {"writes": natural_sorted(self.writes), "reads": natural_sorted(self.reads),
                "hooks": natural_sorted(self.hooks), "wraps": natural_sorted(self.wraps),
                "additive": self.additive, "stackable": self.stackable, "exact": self.exact}
