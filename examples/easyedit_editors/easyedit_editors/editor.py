"""EasyEdit's algorithms (ROME, MEMIT, FT) as ``model_editors`` editors: not built yet.

``editor_classes`` returns no editor, so installing this distribution registers nothing; today it
carries ``host`` (importing EasyEdit with its compatibility patch), which the real-host tests use.
"""

from __future__ import annotations

from typing import Any


def editor_classes(easyeditor: Any) -> list[type]:
    """The editor classes built from ``easyeditor``'s ALG_DICT; none yet (see the module doc)."""
    return []
