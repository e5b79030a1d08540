"""Capture (last-k real tokens, batched == per text), probes (sklearn objective) and top-k selection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from detox_plugins.destein.capture import capture_activations, last_k_weights
from detox_plugins.destein.geometry import resolve_geometry
from detox_plugins.destein.hparams import ProbeConfig
from detox_plugins.destein.probes import fit_head_probes, fit_logistic_newton, split_pairs, top_k_mask
from detox_plugins.destein.vectors import SteeringVectors
from registry.errors import EditError, HyperParamsError

TEXTS = ["a", "you are a stupid idiot", "hi there", "this is a much longer sentence with many characters"]


def test_last_k_weights_left_and_right_padding() -> None:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    w = last_k_weights(right, 2)
    assert torch.equal(w, torch.tensor([[0, .5, .5, 0, 0], [0, 0, 0, .5, .5], [1., 0, 0, 0, 0]]))
    left = right.flip(-1)
    assert torch.equal(last_k_weights(left, 2), torch.tensor([[0, 0, 0, .5, .5], [0, 0, 0, .5, .5], [0, 0, 0, 0, 1.]]))


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_batched_capture_equals_per_text(request: Any, tok: Any, model_name: str) -> None:
    model = request.getfixturevalue(model_name)
    geometry = resolve_geometry(model)
    sites = ("attn_output", "head_input")
    batched = capture_activations(model, tok, TEXTS, geometry, sites=sites, last_k=8, batch_size=4)
    single = capture_activations(model, tok, TEXTS, geometry, sites=sites, last_k=8, batch_size=1)
    for site in sites:
        assert batched[site].shape == (len(TEXTS), geometry.num_layers, geometry.dim(site))
        torch.testing.assert_close(batched[site], single[site], rtol=1e-5, atol=1e-5)


def test_capture_sites_are_consistent_and_last_k_means(llama: Any, tok: Any) -> None:
    geometry = resolve_geometry(llama)
    acts = capture_activations(llama, tok, TEXTS, geometry, sites=("attn_output", "head_input"), last_k=3)
    for layer, module in enumerate(geometry.modules):  # o_proj is linear: mean of outputs = W · mean of inputs
        torch.testing.assert_close(module(acts["head_input"][:, layer]), acts["attn_output"][:, layer],
                                   rtol=1e-5, atol=1e-5)
    # the mean over the last 3 real tokens, by hand
    seen = {}
    handle = geometry.modules[1].register_forward_hook(lambda m, a, o: seen.setdefault("out", o.detach()))
    with torch.no_grad():
        llama(**tok(TEXTS[1], return_tensors="pt"))
    handle.remove()
    torch.testing.assert_close(acts["attn_output"][1, 1], seen["out"][0, -3:].mean(0), rtol=1e-5, atol=1e-6)


def test_geometry_is_gqa_safe(llama: Any, gpt2: Any) -> None:
    g = resolve_geometry(llama)
    assert (g.num_layers, g.num_heads, g.in_features, g.out_features, g.head_dim) == (3, 4, 64, 64, 16)
    assert llama.config.num_key_value_heads == 2
    assert resolve_geometry(gpt2).template == "transformer.h.{}.attn.c_proj"
    with pytest.raises(EditError, match="attn_out_module_tmp"):
        resolve_geometry(llama, "model.layers.{}.nope")
    with pytest.raises(EditError, match="not divisible"):
        resolve_geometry(llama, num_heads=5)
    from detox_plugins.destein.geometry import find_template

    llama.config.model_type = "my-custom-llama"  # unknown type: found by the module-name pattern
    assert find_template(llama) == "model.layers.{}.self_attn.o_proj"


def test_newton_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40, 6))
    y = (x[..., 0] + 0.5 * rng.standard_normal((3, 40)) > 0).astype(float)[0]
    x[1] *= 5.0
    w, b = fit_logistic_newton(torch.tensor(x), torch.tensor(y), C=1.0)
    for unit in range(3):
        ref = LogisticRegression(C=1.0, max_iter=10000, tol=1e-10).fit(x[unit], y)
        np.testing.assert_allclose(w[unit].numpy(), ref.coef_[0], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(float(b[unit]), ref.intercept_[0], rtol=1e-3, atol=1e-4)


def probe_data(m: int = 10, layers: int = 2, heads: int = 3, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    base = torch.randn(m, layers, heads * d)
    shift = torch.zeros(layers, heads * d)
    shift[0, :d] = 3.0  # head (0, 0) separates perfectly; others are noise
    shift[1, d:2 * d] = 0.8
    toxic = base + shift + 0.3 * torch.randn(m, layers, heads * d)
    return toxic, base + 0.3 * torch.randn(m, layers, heads * d)


@pytest.mark.parametrize("solver", ["newton", "sklearn"])
def test_probes_rank_the_informative_head_first(solver: str) -> None:
    toxic, non = probe_data()
    result = fit_head_probes(toxic, non, 3, ProbeConfig(solver=solver))
    assert result.acc.shape == (2, 3)
    assert result.acc[0, 0] == 1.0 and result.train_pairs == list(range(8)) and result.val_pairs == [8, 9]
    mask = top_k_mask(result.acc, 1, result.score)
    assert mask[0, 0] == 1 and mask.sum() == 1


def test_solvers_agree_on_accuracy() -> None:
    toxic, non = probe_data(m=20)
    a = fit_head_probes(toxic, non, 3, ProbeConfig(solver="newton"))
    b = fit_head_probes(toxic, non, 3, ProbeConfig(solver="sklearn"))
    assert torch.equal(a.acc, b.acc)
    torch.testing.assert_close(a.score, b.score, rtol=0, atol=2e-3)


def test_split_pairs_rules() -> None:
    assert split_pairs(20, ProbeConfig(), 42) == (list(range(16)), list(range(16, 20)))
    train, val = split_pairs(20, ProbeConfig(split="random"), 42)
    assert sorted(train + val) == list(range(20)) and train != list(range(16))
    with pytest.raises(HyperParamsError, match="pairs.num_pairs"):
        split_pairs(1, ProbeConfig(), 0)


def test_top_k_ties_and_bounds() -> None:
    acc = torch.tensor([[0.5, 1.0], [1.0, 0.5]])
    score = torch.tensor([[0.9, 0.6], [0.7, 0.9]])
    assert torch.equal(top_k_mask(acc, 1, score), torch.tensor([[0., 0.], [1., 0.]]))
    assert torch.equal(top_k_mask(acc, 1), torch.tensor([[0., 1.], [0., 0.]]))  # then by index
    with pytest.raises(HyperParamsError, match="top_k"):
        top_k_mask(acc, 5)


def test_mask_zeroes_unselected_heads_in_every_derived_vector() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1., 0.], [0., 0.]])
    vectors = SteeringVectors(v=torch.randn(2, 8), acc=torch.full((2, 2), 0.75), mask=mask,
                              site="head_input", num_pairs=4)
    shift = vectors.additive_shift("one_plus_acc")
    assert torch.all(shift[0, 4:] == 0) and torch.all(shift[1] == 0) and torch.all(shift[0, :4] != 0)
    torch.testing.assert_close(shift[0, :4], -1.75 * vectors.v[0, :4] / 4)
    u = vectors.rotate_units("acc")
    assert torch.all(u[0, 4:] == 0) and torch.all(u[1] == 0)
    torch.testing.assert_close(u[0].norm(), torch.tensor(1.0))
