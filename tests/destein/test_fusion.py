"""The rotate op against a float64 numpy reference of the released op, and alpha validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detox_plugins.destein.fusion import rotate, validate_alpha
from registry.errors import EditError


def reference_rotate(a: np.ndarray, u: np.ndarray, alpha: float, eps: float = 1e-12) -> np.ndarray:
    """The released op in float64: ‖a‖ · normalize(normalize(a) − α u), F.normalize semantics."""
    a = a.astype(np.float64)
    u = u.astype(np.float64)
    norm = np.linalg.norm(a, axis=-1, keepdims=True)
    unit = a / np.maximum(norm, eps)
    moved = unit - alpha * u
    return norm * moved / np.maximum(np.linalg.norm(moved, axis=-1, keepdims=True), eps)


def closed_form(a: np.ndarray, u: np.ndarray, alpha: float) -> np.ndarray:
    """(a − α‖a‖u) / sqrt(1 − 2α cosθ + α²), valid for non-zero a and a non-degenerate rotation."""
    norm = np.linalg.norm(a, axis=-1, keepdims=True)
    cos = (a @ u)[..., None] / norm
    return (a - alpha * norm * u) / np.sqrt(1 - 2 * alpha * cos + alpha**2)


def unit(d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(d)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.45, 1.0, 2.5, -0.4])
def test_rotate_matches_reference_on_random_inputs(alpha: float) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5, 64)) * rng.uniform(0.01, 50, size=(3, 5, 1))
    u = unit(64, 1)
    got = rotate(torch.tensor(a, dtype=torch.float32), torch.tensor(u, dtype=torch.float32), alpha)
    want = reference_rotate(a, u, alpha)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    if alpha not in (0.0,):
        np.testing.assert_allclose(want, closed_form(a, u, alpha), rtol=1e-9)
    # norm preserving
    np.testing.assert_allclose(np.linalg.norm(got.numpy(), axis=-1), np.linalg.norm(a, axis=-1), rtol=1e-5)


def test_rotate_edge_cases_zero_vectors_and_parallel() -> None:
    u = unit(16, 2)
    a = np.stack([np.zeros(16), 3.0 * u, -2.0 * u, 1e-20 * u, unit(16, 3)])
    for alpha in (0.45, 1.0, 0.0, 2.0):
        got = rotate(torch.tensor(a, dtype=torch.float32), torch.tensor(u, dtype=torch.float32), alpha).numpy()
        want = reference_rotate(a.astype(np.float32), u, alpha)
        assert np.isfinite(got).all()
        assert np.all(got[0] == 0)  # a zero vector stays zero
        # cosθ = +1 with α = 1 is the op's singularity (â − αu is rounding noise in any precision):
        # only require a finite result that does not grow
        rows = [0, 2, 3, 4] if alpha == 1.0 else [0, 1, 2, 3, 4]
        np.testing.assert_allclose(got[rows], want[rows], rtol=1e-5, atol=1e-6)
        assert np.linalg.norm(got[1]) <= 3.0 * (1 + 1e-5)
    # exactly parallel in floating point (a basis vector): α = 1 gives exactly 0
    e1 = torch.zeros(16)
    e1[0] = 1.0
    assert torch.equal(rotate(3.0 * e1[None], e1, 1.0), torch.zeros(1, 16))
    # cosθ = −1: the vector keeps its direction and norm (−u − αu ∥ −u)
    got = rotate(torch.tensor(-2.0 * u[None], dtype=torch.float32), torch.tensor(u, dtype=torch.float32), 0.45)
    np.testing.assert_allclose(got.numpy()[0], -2.0 * u, rtol=1e-5, atol=1e-6)
    # cosθ = +1 with α < 1 keeps the direction, α > 1 flips it; the norm is preserved
    for alpha, sign in ((0.45, 1.0), (2.0, -1.0)):
        got = rotate(torch.tensor(3.0 * u[None], dtype=torch.float32), torch.tensor(u, dtype=torch.float32), alpha)
        np.testing.assert_allclose(got.numpy()[0], sign * 3.0 * u, rtol=1e-4, atol=1e-5)


def test_rotate_angles_match_the_design_numbers() -> None:
    u = np.array([1.0, 0.0])
    for cos, degrees in ((0.0, 24.2), (-0.5, 17.6), (0.5, 26.7)):
        a = np.array([cos, np.sqrt(1 - cos**2)])
        out = rotate(torch.tensor(a[None], dtype=torch.float32), torch.tensor(u, dtype=torch.float32), 0.45)[0].numpy()
        angle = np.degrees(np.arccos(np.clip(out @ a / (np.linalg.norm(out) * np.linalg.norm(a)), -1, 1)))
        assert abs(angle - degrees) < 0.1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=8, max_size=8),
       st.floats(0.0, 3.0), st.integers(0, 100))
def test_rotate_property_vs_reference(values: list[float], alpha: float, seed: int) -> None:
    a = np.array(values, dtype=np.float32)[None]
    u = unit(8, seed)
    got = rotate(torch.tensor(a), torch.tensor(u, dtype=torch.float32), alpha).numpy()
    want = reference_rotate(a, u, alpha)
    scale = max(1.0, float(np.abs(a).max()))
    moved_norm = np.linalg.norm(a / max(np.linalg.norm(a), 1e-12) - alpha * u)
    if moved_norm > 1e-3:  # near the α = 1, cosθ = 1 singularity fp32 cannot match fp64
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def test_rotate_per_request_alpha_and_dtype() -> None:
    torch.manual_seed(0)
    a = torch.randn(3, 4, 32)
    u = torch.nn.functional.normalize(torch.randn(32), dim=0)
    alphas = torch.tensor([0.0, 0.45, 1.5]).reshape(3, 1, 1)
    got = rotate(a, u, alphas)
    for row, alpha in enumerate((0.0, 0.45, 1.5)):
        torch.testing.assert_close(got[row], rotate(a[row], u, alpha), rtol=1e-6, atol=1e-6)
    half = rotate(a.to(torch.bfloat16), u, 0.45)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), rotate(a, u, 0.45), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("bad", ["0.4", True, None, [[1.0]], [], {"a": 1}, float("nan"), torch.ones(2, 2)])
def test_validate_alpha_rejects_bad_values(bad: object) -> None:
    with pytest.raises(EditError, match="alpha"):
        validate_alpha(bad)


def test_validate_alpha_accepts_numbers_and_rows() -> None:
    assert validate_alpha(1) == 1.0 and isinstance(validate_alpha(1), float)
    assert validate_alpha(torch.tensor(0.5)) == 0.5
    rows = validate_alpha([0.1, 0.2])
    assert rows.dtype == torch.float32 and rows.shape == (2,)
