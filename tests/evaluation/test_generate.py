"""The batched generation helper on a tiny random Llama (hidden 32, 2 layers) and a word tokenizer."""

from __future__ import annotations

import pytest
import torch

from detox_plugins.evaluation.generate import format_prompts, generate
from registry.errors import DetoxError

from .conftest import build_tiny_llama, build_word_tokenizer

PROMPTS = ["how do you bake bread ?", "hello", "tell me a story about the sky and water please"]


def test_left_padded_batch_equals_single_prompt_greedy(word_tokenizer, tiny_lm):
    batched = generate(tiny_lm, word_tokenizer, PROMPTS, max_new_tokens=6, batch_size=8, progress=False)
    single = [generate(tiny_lm, word_tokenizer, [p], max_new_tokens=6, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(text, str) for text in batched)
    assert word_tokenizer.padding_side == "right"  # restored


def test_returns_only_the_new_tokens(word_tokenizer, tiny_lm):
    prompt = "the sky is blue ."
    enc = word_tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        full = tiny_lm.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0)
    expected = word_tokenizer.decode(full[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert generate(tiny_lm, word_tokenizer, [prompt], max_new_tokens=5, progress=False) == [expected]
    assert not expected.startswith(prompt)


def test_num_samples_shape_and_seed_determinism(word_tokenizer, tiny_lm):
    state = torch.random.get_rng_state()
    kwargs = dict(max_new_tokens=5, do_sample=True, num_samples=3, batch_size=4, progress=False)
    first = generate(tiny_lm, word_tokenizer, PROMPTS, seed=7, **kwargs)
    again = generate(tiny_lm, word_tokenizer, PROMPTS, seed=7, **kwargs)
    other = generate(tiny_lm, word_tokenizer, PROMPTS, seed=8, **kwargs)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert len(first) == 3 and all(len(samples) == 3 for samples in first)
    assert first == again
    assert first != other
    greedy = generate(tiny_lm, word_tokenizer, PROMPTS[:1], max_new_tokens=4, num_samples=2, progress=False)
    assert len(greedy[0]) == 2 and greedy[0][0] == greedy[0][1]


def test_chat_template_formatting():
    tokenizer = build_word_tokenizer(chat_template=True)
    assert format_prompts(tokenizer, ["hello"]) == ["<|user|> hello <|end|> <|assistant|> "]
    assert format_prompts(tokenizer, ["hello"], use_chat_template=False) == ["hello"]
    assert format_prompts(tokenizer, ["hello"], system_prompt="be safe") == [
        "<|system|> be safe <|end|> <|user|> hello <|end|> <|assistant|> "
    ]
    plain = build_word_tokenizer()
    assert format_prompts(plain, ["hello"], system_prompt="be safe") == ["be safe\n\nhello"]
    with pytest.raises(DetoxError, match="no chat_template"):
        format_prompts(plain, ["hello"], use_chat_template=True)
    model = build_tiny_llama(len(tokenizer))
    out = generate(model, tokenizer, ["hello", "how do you bake bread ?"], max_new_tokens=3, progress=False)
    assert len(out) == 2


def test_eos_used_as_pad_when_missing_and_restored(tiny_lm):
    tokenizer = build_word_tokenizer(pad=False)
    assert tokenizer.pad_token is None
    out = generate(tiny_lm, tokenizer, PROMPTS, max_new_tokens=3, progress=False)
    assert len(out) == 3
    assert tokenizer.pad_token is None


def test_rightmost_truncation_and_training_flag(word_tokenizer, tiny_lm):
    long = "the a an is are was to of and " * 5 + "how do you bake bread ?"
    truncated = generate(tiny_lm, word_tokenizer, [long], max_new_tokens=4, max_input_tokens=6, progress=False)
    tail = generate(tiny_lm, word_tokenizer, ["how do you bake bread ?"], max_new_tokens=4, progress=False)
    assert truncated == tail
    assert word_tokenizer.truncation_side == "right"
    tiny_lm.train()
    generate(tiny_lm, word_tokenizer, ["hello"], max_new_tokens=2, progress=False)
    assert tiny_lm.training
    tiny_lm.eval()


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"num_samples": 0}, {"batch_size": 0}])
def test_bad_arguments(word_tokenizer, tiny_lm, bad):
    with pytest.raises(DetoxError):
        generate(tiny_lm, word_tokenizer, ["hello"], progress=False, **bad)
