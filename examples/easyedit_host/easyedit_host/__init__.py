"""easyedit-host: importing EasyEdit (``easyeditor``) and EasyEdit2 (``steer``) into this process: where they
are found, and the compatibility patches they need. The only package of this project that touches the host's
environment (``easyedit_host.steer_destein`` registers DeStein as an EasyEdit2 steering method).

``EASYEDIT_PATH`` (a folder holding ``easyeditor/`` and ``steer/``, e.g. a checkout of
github.com/zjunlp/EasyEdit) is put first on ``sys.path``; without it installed packages are used.

Patches (applied only when needed, listed in ``APPLIED``):

- ``torchvision-cpu-ops``: EasyEdit's package import pulls timm and its BLIP-2 code, which import
  torchvision. The only torchvision wheel that matches torch 2.13 on PyPI (0.28.0) is built against
  CUDA torch: its ``_C`` extension cannot load next to the CPU build (it links ``libtorch_cuda.so``),
  and its ``_meta_registrations`` then fails on import registering a fake kernel for the missing
  ``torchvision::nms`` / ``torchvision::qnms`` operators. The patch declares those two operator
  schemas (no kernel), so torchvision's Python modules import; its compiled vision ops stay
  unavailable, and nothing EasyEdit's text editors run uses them.
- ``steer-reexports``: ``steer.utils.alg_dict`` (EasyEdit2's method tables, imported by every hparams class
  through ``steer.utils``) does ``from ..vector_generators import SaeFeatureHyperParams, ...`` and
  ``from ..vector_appliers import ApplySaeFeatureHyperParams, ...``, but both package ``__init__``s were made
  "lightweight" upstream and re-export nothing, so the import fails with ``cannot import name
  'SaeFeatureHyperParams'``. The patch gives the two packages a module ``__getattr__`` that imports a missing
  name from the one submodule of theirs that defines it (found by its ``def``/``class`` line), exactly
  where the tables expect it; EasyEdit's files are not changed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

logger = logging.getLogger(__name__)

PATH_ENV = "EASYEDIT_PATH"
#: The patches applied in this process, by name (see the module doc).
APPLIED: list[str] = []
#: The two EasyEdit2 packages whose names ``steer.utils.alg_dict`` imports.
_STEER_PACKAGES = ("steer.vector_generators", "steer.vector_appliers")
_TORCHVISION_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def easyedit_path() -> Path | None:
    value = os.environ.get(PATH_ENV)
    return Path(value).expanduser().resolve() if value else None


def _host_package_on_path(package: str) -> None:
    """Put ``$EASYEDIT_PATH`` first on ``sys.path`` (when set) and check that ``package`` is importable."""
    path = easyedit_path()
    if path is not None:
        if not (path / package / "__init__.py").is_file():
            raise ImportError(f"{PATH_ENV}={path} holds no {package}/ package; point it at an EasyEdit checkout")
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"{package} is not importable; install it or set {PATH_ENV} to an EasyEdit checkout")


def import_easyeditor() -> Any:
    """``easyeditor``, imported once (from ``$EASYEDIT_PATH`` when set), patched only where needed."""
    if "easyeditor" in sys.modules:
        return sys.modules["easyeditor"]
    _host_package_on_path("easyeditor")
    _patch_torchvision_ops()
    return importlib.import_module("easyeditor")


def import_steer() -> Any:
    """EasyEdit2's ``steer`` package with its method tables (``steer.utils.alg_dict``) importable; patched only
    where needed (``steer-reexports``). Returns ``steer.utils.alg_dict``."""
    _host_package_on_path("steer")
    _patch_torchvision_ops()
    try:
        return importlib.import_module("steer.utils.alg_dict")
    except ImportError as exc:
        if exc.name not in _STEER_PACKAGES or "steer-reexports" in APPLIED:
            raise
        reason = str(exc)
    _patch_steer_reexports()
    logger.info("patched steer-reexports (%s)", reason)
    return importlib.import_module("steer.utils.alg_dict")


def _patch_steer_reexports() -> None:
    """Let ``steer.vector_generators`` and ``steer.vector_appliers`` resolve the names their ``__init__`` no
    longer re-exports, from the submodule that defines each one."""
    for name in _STEER_PACKAGES:
        package = importlib.import_module(name)
        if not hasattr(package, "__getattr__"):
            package.__getattr__ = _submodule_lookup(name, Path(package.__file__).parent)
    APPLIED.append("steer-reexports")


def _submodule_lookup(package: str, folder: Path) -> Any:
    def lookup(attribute: str) -> Any:
        if not attribute.startswith("_"):
            pattern = re.compile(rf"^(?:def|class)\s+{re.escape(attribute)}\b", re.MULTILINE)
            for file in sorted(folder.glob("*/*.py")):
                if pattern.search(file.read_text(encoding="utf-8")):
                    module = importlib.import_module(f"{package}.{file.parent.name}.{file.stem}")
                    return getattr(module, attribute)
        raise AttributeError(f"module {package!r} has no attribute {attribute!r}")
    return lookup


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


__all__ = ["APPLIED", "PATH_ENV", "easyedit_path", "import_easyeditor", "import_steer"]
