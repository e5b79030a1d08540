"""``SteeringVectors``: the DeStein state (v, acc, mask) and its safetensors file.

File layout: tensors ``v`` [L, D], ``acc`` [L, H], optional ``mask`` [L, H] and ``u`` [L, D]
(the rotate units, for readers that want them precomputed); ``__metadata__`` holds
``format_version``, ``model_id``, ``model_revision``, ``hook_point``, ``op``, ``aggregate``,
``last_k``, ``prefixes``, ``num_pairs``, ``seed``, ``pair_source``, ``probe`` and
``package_version`` (each value JSON-encoded, as safetensors metadata is str -> str). Never pickle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from registry.errors import EditError, ManifestError

logger = logging.getLogger(__name__)

VECTOR_FORMAT_VERSION = 1
VECTOR_FILE = "destein.safetensors"
HOOK_POINTS = {"attn_output": "attn_out_post_proj", "head_input": "o_proj_in_per_head"}
SITES_BY_HOOK_POINT = {v: k for k, v in HOOK_POINTS.items()}
OPS = {"rotate": "rotate", "additive": "add"}


@dataclass
class SteeringVectors:
    """Per-layer toxic-minus-non-toxic vectors at one site, with per-head probe accuracies."""

    v: Any  # float32 [L, D]; points toward toxic
    acc: Any  # float32 [L, H]; held-out probe accuracy (0 without probes)
    site: str  # "attn_output" or "head_input"
    num_pairs: int
    aggregate: str = "sum"  # how v combines the m differences: sum or mean
    mask: Optional[Any] = None  # float32 [L, H] 0/1 top-k mask, or None (all heads)
    info: dict[str, Any] = field(default_factory=dict)  # provenance: last_k, prefixes, seed, pair_source, ...

    def __post_init__(self) -> None:
        if self.site not in HOOK_POINTS:
            raise EditError(f"unknown vector site {self.site!r}; expected one of {', '.join(HOOK_POINTS)}")
        if self.v.dim() != 2 or self.acc.dim() != 2 or self.v.shape[0] != self.acc.shape[0]:
            raise EditError(f"vectors must be v [L, D] and acc [L, H], got {tuple(self.v.shape)} and "
                            f"{tuple(self.acc.shape)}")
        if self.v.shape[1] % self.acc.shape[1]:
            raise EditError(f"v width {self.v.shape[1]} is not divisible by the {self.acc.shape[1]} heads of acc")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.acc.shape):
            raise EditError(f"mask shape {tuple(self.mask.shape)} differs from acc shape {tuple(self.acc.shape)}")
        if self.aggregate not in ("sum", "mean"):
            raise EditError(f"aggregate must be 'sum' or 'mean', got {self.aggregate!r}")
        if self.num_pairs < 1:
            raise EditError(f"num_pairs must be >= 1, got {self.num_pairs}")
        self.v = self.v.detach().float().cpu()
        self.acc = self.acc.detach().float().cpu()
        if self.mask is not None:
            self.mask = self.mask.detach().float().cpu()

    # ------------------------------------------------------------------ shapes
    @property
    def num_layers(self) -> int:
        return int(self.v.shape[0])

    @property
    def dim(self) -> int:
        return int(self.v.shape[1])

    @property
    def num_heads(self) -> int:
        return int(self.acc.shape[1])

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    # ------------------------------------------------------------------ derived vectors (float32)
    def mean_difference(self) -> Any:
        """v̄ [L, D]: the mean toxic − non-toxic difference."""
        return self.v / self.num_pairs if self.aggregate == "sum" else self.v.clone()

    def coefficients(self, weight: str) -> Any:
        """Per-slice coefficient [L, D]: the head coefficient p broadcast over each head's d_h values."""
        from .probes import head_weights

        p = head_weights(self.acc, weight, self.mask)
        return p.repeat_interleave(self.head_dim, dim=1)

    def rotate_units(self, weight: str = "one_plus_acc") -> Any:
        """u [L, D] = unit((p ⊗ 1) ⊙ v) per layer (released); an all-zero row stays zero."""
        w = self.v * self.coefficients(weight)
        norms = w.norm(dim=1, keepdim=True)
        return w / norms.clamp_min(1e-12)

    def additive_shift(self, weight: str = "one_plus_acc") -> Any:
        """δ [L, D] = −(p ⊗ 1) ⊙ v̄: the shift at α = 1, pointing away from toxic."""
        return -(self.coefficients(weight) * self.mean_difference())

    # ------------------------------------------------------------------ file
    def file_metadata(self, **extra: Any) -> dict[str, str]:
        from detox_plugins import __version__

        meta: dict[str, Any] = {
            "format": "destein-vectors",
            "format_version": VECTOR_FORMAT_VERSION,
            "hook_point": HOOK_POINTS[self.site],
            "aggregate": self.aggregate,
            "num_pairs": self.num_pairs,
            "package_version": __version__,
            **{k: v for k, v in self.info.items()},
            **extra,
        }
        # Every value is JSON (strings quoted), so numbers and strings round-trip unambiguously.
        return {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}

    def tensors(self, *, include_u: Optional[str] = None) -> dict[str, Any]:
        """``v``, ``acc``, ``mask`` (if any) and, when ``include_u`` names a weight, ``u``."""
        out = {"v": self.v.contiguous(), "acc": self.acc.contiguous()}
        if self.mask is not None:
            out["mask"] = self.mask.contiguous()
        if include_u:
            out["u"] = self.rotate_units(include_u).contiguous()
        return out

    def save(self, path: Union[str, Path], *, include_u: Optional[str] = None, **metadata: Any) -> Path:
        """Write a standalone vector file (safetensors; key fields mirrored in ``__metadata__``)."""
        from safetensors.torch import save_file

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors(include_u=include_u), str(target), metadata=self.file_metadata(**metadata))
        return target

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Any], metadata: Mapping[str, Any], where: str) -> "SteeringVectors":
        """Rebuild from tensors + metadata (values may be JSON strings, as in ``__metadata__``)."""
        meta = {k: _unjson(v) for k, v in metadata.items()}
        for key in ("v", "acc"):
            if key not in tensors:
                raise ManifestError(f"{where}: tensor {key!r} is missing; this is not a DeStein vector file")
        hook_point = meta.get("hook_point")
        if hook_point not in SITES_BY_HOOK_POINT:
            raise ManifestError(f"{where}: hook_point {hook_point!r} is not one of {', '.join(SITES_BY_HOOK_POINT)}")
        version = meta.get("format_version", VECTOR_FORMAT_VERSION)
        if not isinstance(version, int) or version > VECTOR_FORMAT_VERSION:
            raise ManifestError(f"{where}: vector format_version {version!r} is newer than this build "
                                f"({VECTOR_FORMAT_VERSION}); upgrade detox-plugins")
        known = {"format", "format_version", "hook_point", "aggregate", "num_pairs", "package_version"}
        try:
            return cls(v=tensors["v"], acc=tensors["acc"], mask=tensors.get("mask"),
                       site=SITES_BY_HOOK_POINT[hook_point], num_pairs=int(meta.get("num_pairs", 1)),
                       aggregate=str(meta.get("aggregate", "sum")),
                       info={k: v for k, v in meta.items() if k not in known})
        except EditError as exc:
            raise ManifestError(f"{where}: {exc}; the vectors are damaged or were not saved by DeStein") from None
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: malformed vector metadata ({exc}); the vectors are damaged") from None

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SteeringVectors":
        """Read a vector file, or the vector file inside a folder written by ``Edit.save``."""
        from safetensors import SafetensorError, safe_open

        file = Path(path).expanduser()
        if file.is_dir():
            file = file / VECTOR_FILE
        if not file.is_file():
            raise ManifestError(f"DeStein vector file {str(file)!r} does not exist; pass a .safetensors "
                                f"vector file or a folder saved by a DeStein edit")
        try:
            with safe_open(str(file), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ManifestError(f"{file} is not a valid safetensors file: {exc}") from None
        return cls.from_tensors(tensors, metadata, str(file))


def _unjson(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (json.JSONDecodeError, ValueError):
        return value
