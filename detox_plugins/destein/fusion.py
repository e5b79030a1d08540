"""The two DeStein fusion ops and the hooks / bias fold that apply them.

``rotate`` (released code): at every position, with ``a`` the attention output of a layer
and ``u`` its unit steering vector, ``a' = ‖a‖ · normalize(â − α u)``: norm-preserving, computed in
float32 with 8 tensor ops and one cast back. ``additive`` (the paper): ``h + α·δ`` on the o_proj
input (``δ = −p ⊙ v̄``, per head), which after the linear o_proj is the constant ``W_o δ``: folded
into the o_proj bias at zero run-time cost, or applied by a hook when α varies per request.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any, Callable, Optional, Sequence, Union

from registry.errors import EditError

logger = logging.getLogger(__name__)

EPS = 1e-12  # torch.nn.functional.normalize's default, as in the released op

AlphaLike = Union[float, int, Sequence[float], Any]


def rotate(a: Any, u: Any, alpha: Union[float, Any], eps: float = EPS) -> Any:
    """``‖a‖ · normalize(â − α u)`` over the last dim, in float32, returned in ``a``'s dtype.

    ``u`` is a float32 unit vector [D]; ``alpha`` a float or a float32 tensor broadcastable to
    ``a[..., :1]`` (per-request strengths, e.g. [B, 1, 1]). Zero vectors stay zero.
    """
    import torch

    x = a if a.dtype == torch.float32 else a.float()
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    unit = x / norm.clamp_min(eps)
    if isinstance(alpha, float):
        moved = torch.sub(unit, u, alpha=alpha)
    else:
        moved = torch.addcmul(unit, alpha, u, value=-1.0)
    moved_norm = torch.linalg.vector_norm(moved, dim=-1, keepdim=True)
    out = moved * (norm / moved_norm.clamp_min(eps))
    return out if out.dtype == a.dtype else out.to(a.dtype)


def validate_alpha(alpha: AlphaLike) -> Union[float, Any]:
    """A float, or a 1-D float32 tensor of per-request strengths; anything else raises EditError."""
    import torch

    if isinstance(alpha, bool):
        raise EditError(f"alpha must be a number or a 1-D sequence of numbers, got {alpha!r}")
    if isinstance(alpha, numbers.Real):
        value = float(alpha)
        if value != value or value in (float("inf"), float("-inf")):
            raise EditError(f"alpha must be finite, got {alpha!r}")
        return value
    if isinstance(alpha, torch.Tensor):
        tensor = alpha.detach()
        if tensor.dim() == 0:
            return validate_alpha(float(tensor))
    elif isinstance(alpha, (list, tuple)):
        if not alpha or not all(isinstance(a, numbers.Real) and not isinstance(a, bool) for a in alpha):
            raise EditError(f"per-request alpha must be a non-empty list of numbers, got {alpha!r}")
        tensor = torch.tensor([float(a) for a in alpha])
    else:
        raise EditError(f"alpha must be a number or a 1-D sequence of numbers (one per request), "
                        f"got {type(alpha).__name__} {alpha!r}")
    numeric = tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)
    if tensor.dim() != 1 or tensor.numel() == 0 or not numeric:
        raise EditError(f"per-request alpha must be a 1-D tensor of numbers, got shape {tuple(tensor.shape)} "
                        f"dtype {tensor.dtype}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise EditError("per-request alpha has non-finite values")
    return tensor


class Strength:
    """The shared, mutable α of one edit's hooks (a float, or one value per batch row).

    ``gate``, when set, is asked at every forward: the hooks steer only while it returns True (a host
    that switches steering off and on by its own state, e.g. EasyEdit2's original-output pass, sets it).
    """

    def __init__(self, alpha: AlphaLike) -> None:
        self.value: Union[float, Any] = validate_alpha(alpha)
        self.paused = False
        self.gate: Optional[Callable[[], bool]] = None
        self.version = 0
        self._rows: dict[Any, Any] = {}

    def set(self, alpha: AlphaLike) -> None:
        self.value = validate_alpha(alpha)
        self.version += 1
        self._rows.clear()

    @property
    def per_request(self) -> bool:
        return not isinstance(self.value, float)

    def rows(self, batch: int, device: Any, ndim: int) -> Any:
        """The per-request α as a float32 [B, 1, ..., 1] tensor on ``device``."""
        values = self.value
        if values.numel() != batch:
            raise EditError(f"per-request alpha has {values.numel()} values but the batch has {batch} rows; "
                            f"pass one alpha per row (or a single float)")
        key = (device, ndim)
        cached = self._rows.get(key)
        if cached is None:
            cached = values.to(device).reshape((batch,) + (1,) * (ndim - 1))
            self._rows[key] = cached
        return cached

    def inactive(self) -> bool:
        if self.paused or (isinstance(self.value, float) and self.value == 0.0):
            return True
        return self.gate is not None and not self.gate()


class RotateHook:
    """Forward hook: rotate the module's output (a tensor, or element 0 of a tuple)."""

    def __init__(self, u: Any, strength: Strength) -> None:
        self.u = u
        self.strength = strength

    def __call__(self, module: Any, args: tuple, output: Any) -> Any:
        if self.strength.inactive():
            return None
        out = output[0] if isinstance(output, tuple) else output
        alpha = self.strength.value
        if not isinstance(alpha, float):
            alpha = self.strength.rows(out.shape[0], out.device, out.dim())
        new = rotate(out, self.u, alpha)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new


class AddHook:
    """Adds ``α·δ`` to the module's input (``pre=True``, a forward pre-hook) or output."""

    def __init__(self, delta: Any, strength: Strength, *, pre: bool) -> None:
        self.delta = delta  # float32 [D]
        self.strength = strength
        self.pre = pre
        self._scaled: Optional[tuple] = None  # (version, dtype, device, tensor)

    def _shift(self, x: Any) -> Any:
        import torch

        alpha = self.strength.value
        if isinstance(alpha, float):
            cache = self._scaled
            if cache is None or cache[0] != self.strength.version or cache[1] != x.dtype or cache[2] != x.device:
                scaled = (self.delta.to(x.device) * alpha).to(x.dtype)  # one rounding, computed once per α
                self._scaled = cache = (self.strength.version, x.dtype, x.device, scaled)
            return x + cache[3]
        rows = self.strength.rows(x.shape[0], x.device, x.dim())
        if x.dtype == torch.float32:
            return torch.addcmul(x, rows, self.delta)
        return (x.float() + rows * self.delta).to(x.dtype)

    def __call__(self, module: Any, args: tuple, output: Any = None) -> Any:
        if self.strength.inactive():
            return None
        if self.pre:
            return (self._shift(args[0]),) + tuple(args[1:])
        if isinstance(output, tuple):
            return (self._shift(output[0]),) + tuple(output[1:])
        return self._shift(output)


# ---------------------------------------------------------------------- bias fold
def project_shift(module: Any, delta: Any) -> Any:
    """``W δ`` in float32 for an ``nn.Linear`` (weight [out, in]) or a ``Conv1D`` (weight [in, out])."""
    import torch
    import torch.nn as nn

    weight = module.weight.detach()
    delta = delta.to(weight.device)
    if isinstance(module, nn.Linear):
        return torch.nn.functional.linear(delta, weight.float())
    if type(module).__name__ == "Conv1D":
        return delta @ weight.float()
    raise EditError(f"bias_fold supports nn.Linear and Conv1D projections, not {type(module).__name__}; "
                    f"use apply: hook")


class BiasFold:
    """One module's folded bias: the original (or None) and the value written."""

    def __init__(self, module: Any, shift: Any) -> None:
        self.module = module
        self.shift = shift  # float32 [out], the shift at alpha = 1
        self.had_bias = getattr(module, "bias", None) is not None
        self.original = module.bias.detach().clone() if self.had_bias else None
        self.written: Optional[Any] = None

    def fold(self, alpha: float) -> None:
        import torch
        import torch.nn as nn

        weight = self.module.weight
        base = self.original.float() if self.had_bias else torch.zeros(self.shift.shape, device=weight.device)
        dtype = self.original.dtype if self.had_bias else weight.dtype
        value = (base + alpha * self.shift.to(base.device)).to(dtype)  # float32 sum, one rounding
        with torch.no_grad():
            if self.had_bias:
                self.module.bias.copy_(value)
            else:
                self.module.bias = nn.Parameter(value, requires_grad=False)
        self.written = value.detach().clone()

    def restore(self) -> None:
        import torch

        bias = getattr(self.module, "bias", None)
        if bias is None or self.written is None or not torch.equal(bias.detach(), self.written):
            raise EditError(
                f"the o_proj bias of {type(self.module).__name__} changed after the DeStein fold; "
                f"revert the later edits first (newest first)")
        with torch.no_grad():
            if self.had_bias:
                bias.copy_(self.original)
            else:
                self.module.bias = None  # back to a registered-but-absent bias, as before
        self.written = None
