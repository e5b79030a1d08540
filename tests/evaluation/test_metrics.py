"""Metrics on examples small enough to compute by hand."""

from __future__ import annotations

import math

import pytest

from detox_plugins.evaluation.metrics import (
    continuation_perplexities,
    distinct_n,
    expected_max_toxicity,
    fluency,
    get_word_tokenizer,
    mean_perplexity,
    n_gram_entropy,
    over_refusal_rate,
    refusal_rate,
    regex_word_tokenize,
    roc_auc,
    safeedit_score,
    safeedit_scores,
    toxicity_probability,
)
from registry.errors import DetoxError


def test_safeedit_score_is_percentage_safe_with_empty_as_half():
    assert safeedit_score([0, 1, 0.5, 0]) == pytest.approx(62.5)
    assert safeedit_score([0.0]) == 100.0
    assert safeedit_scores({"DS": [1, 1], "DG_onlyQ": [0, 1], "DG_otherA": []}) == {"DS": 0.0, "DG_onlyQ": 50.0}
    with pytest.raises(DetoxError):
        safeedit_score([])


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("I can't help with that. Mr. Smith won't go!",
         ["I", "ca", "n't", "help", "with", "that", ".", "Mr", ".", "Smith", "wo", "n't", "go", "!"]),
        ('He said "hello, world" (twice)... It\'s 1,000 at 12:30.',
         ["He", "said", "``", "hello", ",", "world", "''", "(", "twice", ")", "...", "It", "'s", "1,000", "at",
          "12:30", "."]),
        ("Sure, here is how to do it:", ["Sure", ",", "here", "is", "how", "to", "do", "it", ":"]),
        ("We're sure they'll say I'd go; you've seen.",
         ["We", "'re", "sure", "they", "'ll", "say", "I", "'d", "go", ";", "you", "'ve", "seen", "."]),
        ("", []),
    ],
)
def test_regex_word_tokenizer_golden(text, tokens):
    assert regex_word_tokenize(text) == tokens


def test_n_gram_entropy_by_hand():
    # "a b a b": bigrams ab x2, ba x1 -> H2 = h(1/3) = 0.918296; trigrams aba, bab -> H3 = 1.
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert n_gram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    # "a b c d": 3 distinct bigrams -> log2 3; 2 distinct trigrams -> 1.
    assert n_gram_entropy("a b c d") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3) / 2)
    assert n_gram_entropy("one") == 0.0  # fewer than n tokens: H_n = 0
    assert n_gram_entropy("") == 0.0
    assert fluency(["a b a b", "a b c d"]) == pytest.approx(
        (n_gram_entropy("a b a b") + n_gram_entropy("a b c d")) / 2
    )
    with pytest.raises(DetoxError):
        get_word_tokenizer("punkt")


def test_expected_max_toxicity_and_toxicity_probability():
    scores = [[0.1, 0.9], [0.2, None], [None]]  # the last prompt has no score and is ignored
    assert expected_max_toxicity(scores) == pytest.approx(0.55)
    assert toxicity_probability(scores) == pytest.approx(0.5)
    assert toxicity_probability([[0.5]]) == 0.0  # strictly above 0.5
    with pytest.raises(DetoxError):
        expected_max_toxicity([[None]])


def test_distinct_n_by_hand():
    result = distinct_n([["a b a", "a b"], ["x y z"]])
    # prompt 1: 5 words; uni {a,b}=2, bi {ab,ba}=2, tri {aba}=1 -> .4 .4 .2; prompt 2: 3 words -> 1, 2/3, 1/3
    assert result["dist-1"] == pytest.approx((0.4 + 1.0) / 2)
    assert result["dist-2"] == pytest.approx((0.4 + 2 / 3) / 2)
    assert result["dist-3"] == pytest.approx((0.2 + 1 / 3) / 2)


def test_refusal_rates():
    assert refusal_rate(["I cannot do that", "Sure!", "Sorry, no."]) == pytest.approx(2 / 3)
    assert over_refusal_rate(["Paris.", "I'm sorry, I can't."]) == 0.5
    with pytest.raises(DetoxError):
        refusal_rate([])


def test_roc_auc_counts_ties_as_half():
    assert roc_auc([0.9, 0.1, 0.5, 0.5], [1, 0, 1, 0]) == pytest.approx(0.875)
    assert roc_auc([0.2, 0.8], [False, True]) == 1.0
    with pytest.raises(DetoxError):
        roc_auc([0.1], [1])


def test_mean_perplexity_drops_nan_and_huge_values():
    assert mean_perplexity([2.0, 4.0, 1e4, float("nan")]) == 3.0
    assert math.isnan(mean_perplexity([1e5]))


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(word_tokenizer):
    import torch

    from .conftest import build_tiny_llama

    model = build_tiny_llama(len(word_tokenizer))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0 -> uniform next-token distribution
    ppl = continuation_perplexities(
        model, word_tokenizer, ["how do you", "hello"], [" bake bread", " world ."], progress=False
    )
    assert ppl == pytest.approx([len(word_tokenizer)] * 2, rel=1e-4)


def test_perplexity_matches_manual_nll_and_batching(word_tokenizer, tiny_lm):
    import torch

    prompts = ["how do you", "tell me a story about the sky", "hello"]
    continuations = [" bake bread", " and water please", ""]
    batched = continuation_perplexities(tiny_lm, word_tokenizer, prompts, continuations, batch_size=3, progress=False)
    single = [
        continuation_perplexities(tiny_lm, word_tokenizer, [p], [c], progress=False)[0]
        for p, c in zip(prompts, continuations)
    ]
    assert math.isnan(batched[2]) and math.isnan(single[2])  # empty continuation
    assert batched[:2] == pytest.approx(single[:2], rel=1e-4)
    # by hand for the first pair: mean NLL of the continuation's tokens
    p_ids = word_tokenizer(prompts[0])["input_ids"]
    ids = word_tokenizer(prompts[0] + continuations[0])["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_lm(torch.tensor([ids])).logits[0], -1)
    nll = [-logprobs[t - 1, ids[t]].item() for t in range(len(p_ids), len(ids))]
    assert batched[0] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-4)
    with pytest.raises(DetoxError):
        continuation_perplexities(tiny_lm, word_tokenizer, ["a"], [], progress=False)


def test_wilson_interval_known_values_and_edges():
    from detox_plugins.evaluation.metrics import format_rate, wilson_interval

    low, high = wilson_interval(9, 40)
    # Wilson 95 % for 9/40: 0.1232 .. 0.3753 (computed by hand from the closed form)
    assert abs(low - 0.1232) < 5e-4 and abs(high - 0.3753) < 5e-4
    low, high = wilson_interval(0, 40)
    assert low == 0.0 and 0.08 < high < 0.09  # not empty at zero successes
    low, high = wilson_interval(40, 40)
    assert high == 1.0 and 0.91 < low < 0.92
    assert format_rate(9, 40) == "22.5 % [12.3, 37.5] (9/40)"


def test_wilson_interval_refuses_impossible_counts():
    import pytest

    from detox_plugins.evaluation.metrics import wilson_interval
    from registry.errors import DetoxError

    with pytest.raises(DetoxError, match="at least one item"):
        wilson_interval(0, 0)
    with pytest.raises(DetoxError, match="between 0 and n"):
        wilson_interval(5, 4)


def test_surviving_share_of_a_gain_and_of_a_reduction():
    from detox_plugins.evaluation.metrics import surviving_share

    # refusal 0.0 -> 0.225 by the edit; after the attack 0.05 (base) vs 0.15 (edited): 0.10 / 0.225 survives
    assert surviving_share(0.15, 0.05, 0.225, 0.0) == pytest.approx(0.10 / 0.225)
    # toxicity 0.56 -> 0.31 by the edit (a reduction); attacked 0.60 (base) vs 0.60 (edited): nothing survives
    assert surviving_share(0.60, 0.60, 0.31, 0.56) == pytest.approx(0.0)
    # the attacked edited model more toxic than the attacked base: a negative share
    assert surviving_share(0.70, 0.60, 0.31, 0.56) == pytest.approx(-0.4)
    assert surviving_share(0.31, 0.56, 0.31, 0.56) == pytest.approx(1.0)


def test_surviving_share_without_an_effect_or_with_a_missing_value():
    from detox_plugins.evaluation.metrics import surviving_share

    assert surviving_share(0.1, 0.0, 0.0, 0.0) is None  # no gain to survive
    with pytest.raises(DetoxError, match="base_attacked is missing or NaN"):
        surviving_share(0.1, float("nan"), 0.2, 0.0)
