"""benchmarks/dinm_contrast_subspace.py's own logic: the harmful-dominant projector, and that its swap of
the null-space builder confines a real DINM edit to that subspace and is undone afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from detox_plugins.dinm import nullspace
from detox_plugins.dinm.editor import DINMEditor
from tests.benchmark_scripts import load_benchmark

from .helpers import CASE, hparams, tiny_model

NAME = "model.layers.3.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_benchmark("dinm_contrast_subspace")


def test_the_projector_picks_the_direction_only_harmful_inputs_use(bench) -> None:
    generator = torch.Generator().manual_seed(0)
    shared = torch.randn(64, 8, generator=generator, dtype=torch.float64)
    benign = shared.T @ shared
    marker = torch.zeros(8, dtype=torch.float64)
    marker[5] = 1.0
    benign[5, :] = benign[:, 5] = 0.0  # benign inputs never use axis 5
    harmful = benign + 30.0 * torch.outer(marker, marker)
    projector = bench.harmful_dominant_projector(harmful, benign, rank=1, regularization=0.1).double()
    assert torch.allclose(projector, torch.outer(marker, marker), atol=1e-6)
    wider = bench.harmful_dominant_projector(harmful, benign, rank=3, regularization=0.1).double()
    assert torch.allclose(wider, wider.T, atol=1e-6) and torch.allclose(wider @ wider, wider, atol=1e-6)
    assert abs(float(torch.trace(wider)) - 3) < 1e-6


def test_a_confined_edit_lands_in_the_subspace_and_the_builder_is_restored(bench, tok) -> None:
    original = nullspace.build_projectors
    model = tiny_model("llama")
    weight = dict(model.named_parameters())[NAME]
    basis, _ = torch.linalg.qr(torch.randn(weight.shape[1], 2, generator=torch.Generator().manual_seed(1)))
    projector = basis @ basis.T
    with bench.confined_updates({NAME: projector}, {"contrast_rank": 2}):
        edit = DINMEditor(hparams(layers=[3], lr=5e-2, nullspace=True, nullspace_prompt_count=4),
                          progress=False).edit(model, tok, [CASE])
    assert nullspace.build_projectors is original
    delta = edit.deltas[NAME].float()
    assert float(delta.norm()) > 0
    assert float((delta - delta @ projector).norm()) < 1e-4 * float(delta.norm())
    assert edit.metadata["cases"][0]["nullspace"][NAME] == {"contrast_rank": 2}
    edit.revert()
