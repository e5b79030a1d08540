"""Intervals of the quality metrics: the percentile bootstrap of means, and the helpers built on it."""

from __future__ import annotations

import math
import random

import pytest

from detox_plugins.evaluation.metrics import (
    bootstrap_interval,
    emt_interval,
    expected_max_toxicity,
    fluency,
    fluency_interval,
    format_mean,
    grouped_mean_interval,
    max_per_prompt,
    mean_perplexity,
    perplexity_interval,
    safeedit_counts,
    safeedit_interval,
    safeedit_score,
    toxic_prompt_count,
    toxicity_probability,
    wilson_interval,
)
from registry.errors import DetoxError


def test_constant_values_give_a_zero_width_interval() -> None:
    assert bootstrap_interval([0.7] * 12) == pytest.approx((0.7, 0.7))
    assert bootstrap_interval([3.0]) == (3.0, 3.0)


def test_the_same_seed_gives_the_same_interval_and_another_seed_another() -> None:
    rng = random.Random(1)
    values = [rng.random() for _ in range(30)]
    assert bootstrap_interval(values, seed=0) == bootstrap_interval(values, seed=0)
    assert bootstrap_interval(values, seed=0) != bootstrap_interval(values, seed=1)


def test_the_interval_surrounds_the_mean_and_narrows_with_more_data() -> None:
    rng = random.Random(7)
    small = [rng.gauss(0, 1) for _ in range(20)]
    large = [rng.gauss(0, 1) for _ in range(400)]
    for values in (small, large):
        low, high = bootstrap_interval(values)
        assert low < sum(values) / len(values) < high
    width = lambda v: bootstrap_interval(v)[1] - bootstrap_interval(v)[0]  # noqa: E731
    assert width(large) < width(small) / 2


def test_the_width_matches_the_normal_approximation_of_a_mean() -> None:
    # 200 draws from N(0, 1): the 95 % interval of the mean is about +-1.96/sqrt(200) = +-0.139.
    rng = random.Random(3)
    values = [rng.gauss(0, 1) for _ in range(200)]
    low, high = bootstrap_interval(values)
    sd = math.sqrt(sum((v - sum(values) / 200) ** 2 for v in values) / 199)
    assert (high - low) / 2 == pytest.approx(1.96 * sd / math.sqrt(200), rel=0.15)


def test_coverage_on_repeated_samples_is_near_95_percent() -> None:
    # 200 samples of 40 uniform values: the true mean 0.5 should lie inside about 95 % of the intervals.
    rng = random.Random(11)
    hits = 0
    for trial in range(200):
        values = [rng.random() for _ in range(40)]
        low, high = bootstrap_interval(values, n_resamples=400, seed=trial)
        hits += low <= 0.5 <= high
    assert 0.88 <= hits / 200 <= 0.99


def test_a_custom_statistic_and_nan_resamples() -> None:
    assert bootstrap_interval([1.0, 1.0, 5.0], max, n_resamples=50) == pytest.approx((1.0, 5.0))
    assert bootstrap_interval([math.nan, math.nan], lambda v: math.nan) == (pytest.approx(math.nan, nan_ok=True),) * 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(DetoxError):
        bootstrap_interval([])
    with pytest.raises(DetoxError):
        bootstrap_interval([1.0], n_resamples=0)
    with pytest.raises(DetoxError):
        bootstrap_interval([1.0], confidence=1.0)


def test_emt_interval_resamples_the_prompt_maxima() -> None:
    scores = [[0.1, 0.9], [0.2, None], [0.4, 0.3], [None]]
    assert max_per_prompt(scores) == [0.9, 0.2, 0.4]
    assert emt_interval(scores) == bootstrap_interval([0.9, 0.2, 0.4])
    low, high = emt_interval(scores)
    assert 0.2 <= low <= expected_max_toxicity(scores) <= high <= 0.9
    assert emt_interval([[0.3, 0.3], [0.1, 0.3]]) == pytest.approx((0.3, 0.3))


def test_toxic_prompt_count_is_tp_as_a_count() -> None:
    scores = [[0.1, 0.9], [0.2, 0.4], [0.6], [None]]
    assert toxic_prompt_count(scores) == (2, 3)
    assert toxicity_probability(scores) == pytest.approx(2 / 3)


def test_perplexity_interval_keeps_each_prompts_continuations_together() -> None:
    groups = [[10.0, 12.0], [20.0, math.nan], [1e5, 30.0]]
    flat = [p for g in groups for p in g]
    low, high = perplexity_interval(groups)
    assert low <= mean_perplexity(flat) <= high
    assert perplexity_interval([[5.0, 5.0], [5.0]]) == pytest.approx((5.0, 5.0))
    # a resample of prompts whose continuations are all dropped is left out, not NaN
    assert not math.isnan(perplexity_interval([[math.nan], [7.0]])[0])


def test_grouped_mean_and_fluency_intervals() -> None:
    assert grouped_mean_interval([[1.0, 1.0], [1.0]]) == pytest.approx((1.0, 1.0))
    responses = [["the cat sat on the mat and the dog sat too"], ["a b c d e f g"], ["yes yes yes yes"]]
    low, high = fluency_interval(responses)
    assert low <= fluency([r for g in responses for r in g]) <= high


def test_safeedit_interval_is_wilson_on_whole_counts_and_a_bootstrap_with_empty_answers() -> None:
    labels = [0, 0, 1, 1, 1, 1, 1, 1]
    low, high = wilson_interval(2, 8)
    assert safeedit_interval(labels) == pytest.approx((100 * low, 100 * high))
    half = [0, 0.5, 1, 1, 1, 1, 1, 1]  # one empty answer counts half safe: 18.75, no count k/8
    low, high = safeedit_interval(half)
    assert low <= safeedit_score(half) <= high
    assert safeedit_counts(half) == {"n": 8, "safe": 1, "unsafe": 6, "empty": 1}
    with pytest.raises(DetoxError):
        safeedit_interval([])


def test_format_mean() -> None:
    assert format_mean(0.5581, (0.47, 0.6449)) == "0.558 [0.470, 0.645]"
    assert format_mean(22.46, [19.0, 26.0], 1) == "22.5 [19.0, 26.0]"
    assert format_mean(0.5, None) == "0.500"
    assert format_mean(0.5, [None, None]) == "0.500"
    assert format_mean(math.nan, (0.1, 0.2)) == "–"
