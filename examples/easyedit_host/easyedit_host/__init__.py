"""easyedit-host: importing EasyEdit (``easyeditor``) into this process: where it is found, and the one compatibility
patch it needs on a CPU-only torch. The only module of this project that touches the host's environment.

``EASYEDIT_PATH`` (a folder holding ``easyeditor/``, e.g. a checkout of github.com/zjunlp/EasyEdit)
is put first on ``sys.path``; without it an installed ``easyeditor`` is used.

Patch (applied only when needed, listed in ``APPLIED``):

- ``torchvision-cpu-ops``: EasyEdit's package import pulls timm and its BLIP-2 code, which import
  torchvision. The only torchvision wheel that matches torch 2.13 on PyPI (0.28.0) is built against
  CUDA torch: its ``_C`` extension cannot load next to the CPU build (it links ``libtorch_cuda.so``),
  and its ``_meta_registrations`` then fails on import registering a fake kernel for the missing
  ``torchvision::nms`` / ``torchvision::qnms`` operators. The patch declares those two operator
  schemas (no kernel), so torchvision's Python modules import; its compiled vision ops stay
  unavailable, and nothing EasyEdit's text editors run uses them.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

logger = logging.getLogger(__name__)

PATH_ENV = "EASYEDIT_PATH"
#: The patches applied in this process, by name (see the module doc).
APPLIED: list[str] = []
_TORCHVISION_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def easyedit_path() -> Path | None:
    value = os.environ.get(PATH_ENV)
    return Path(value).expanduser().resolve() if value else None


def import_easyeditor() -> Any:
    """``easyeditor``, imported once (from ``$EASYEDIT_PATH`` when set), patched only where needed."""
    if "easyeditor" in sys.modules:
        return sys.modules["easyeditor"]
    path = easyedit_path()
    if path is not None:
        if not (path / "easyeditor" / "__init__.py").is_file():
            raise ImportError(f"{PATH_ENV}={path} holds no easyeditor/ package; point it at an EasyEdit checkout")
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    if importlib.util.find_spec("easyeditor") is None:
        raise ImportError(f"easyeditor is not importable; install it or set {PATH_ENV} to an EasyEdit checkout")
    _patch_torchvision_ops()
    return importlib.import_module("easyeditor")


def _patch_torchvision_ops() -> None:
    """Declare torchvision's two operators that its import needs when its ``_C`` extension cannot load."""
    if "torchvision" in sys.modules or "torchvision-cpu-ops" in APPLIED:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    folder = Path(list(spec.submodule_search_locations)[0])
    extension = next((folder / f"_C{s}" for s in importlib.machinery.EXTENSION_SUFFIXES
                      if (folder / f"_C{s}").is_file()), None)
    if extension is not None:
        try:
            torch.ops.load_library(str(extension))
            return  # a matching build: nothing to patch
        except (OSError, RuntimeError) as exc:
            reason = " ".join(str(exc).split())[:160]
    else:
        reason = "no _C extension"
    for name, schema in _TORCHVISION_SCHEMAS.items():
        try:
            torch.library.define(f"torchvision::{name}", schema)
        except RuntimeError:  # already declared
            pass
    APPLIED.append("torchvision-cpu-ops")
    logger.info("patched torchvision-cpu-ops (torchvision's _C cannot load: %s)", reason)


__all__ = ["APPLIED", "PATH_ENV", "easyedit_path", "import_easyeditor"]
