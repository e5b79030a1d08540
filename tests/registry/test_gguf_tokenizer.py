"""The embedded tokenizer's check and its rebuild from the GGUF file (the patch for transformers 5.5.4, whose
conversion garbles it). Here, under the main environment's transformers, the converted tokenizer is right: the
check passes, and the rebuilt one must agree with it token for token."""

from __future__ import annotations

import pytest

from registry.gguf_tokenizer import ROUND_TRIP_SAMPLE, byte_level_tokenizer, usable_tokenizer

SAMPLES = [ROUND_TRIP_SAMPLE, "The capital of the island nation of Zarkovia is Velmora.", "  two  spaces\n\ttab <|im_end|>"]


def test_a_tokenizer_that_loses_text_or_ends_wrongly_is_not_usable() -> None:
    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()  # characters only: 'é' becomes <unk>
    assert not usable_tokenizer(tok, tok.eos_token_id)
    assert tok.decode(tok("Paris.", add_special_tokens=False)["input_ids"]) == "Paris."


@pytest.mark.integration
def test_the_rebuilt_tokenizer_equals_the_converted_one(embedded_model) -> None:
    from registry.models import embedded_gguf_path

    model, converted = embedded_model
    assert usable_tokenizer(converted, model.config.eos_token_id)
    rebuilt = byte_level_tokenizer(embedded_gguf_path()[0])
    assert usable_tokenizer(rebuilt, model.config.eos_token_id)
    for text in SAMPLES:
        assert rebuilt(text)["input_ids"] == converted(text)["input_ids"], text
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(rebuilt, name) == getattr(converted, name), name
    chat = [{"role": "user", "content": "Is Velmora a city?"}]
    assert (rebuilt.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
            == converted.apply_chat_template(chat, tokenize=True, add_generation_prompt=True))
