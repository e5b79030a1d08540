"""Tiny offline models for the evaluation tests: a word-level tokenizer, a random Llama, a random
BERT classifier saved to a folder. Everything is built in-process; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

WORDS = (
    "the a an is are was to of and in on for with that this it you i we they he she "
    "how what why where when who can could do does make write tell me my your please "
    "sure here sorry cannot help kill process photo shoot cake bake bread water sky blue "
    "question answer story game rules safe unsafe hello world . , ! ?"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_word_tokenizer(*, chat_template: bool = False, pad: bool = True) -> Any:
    """A whitespace word-level fast tokenizer with <s>, </s>, <pad>, <unk> (and chat markers)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|system|>", "<|assistant|>", "<|end|>"]
    vocab = {token: i for i, token in enumerate(specials + list(WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>" if pad else None,
        additional_special_tokens=specials[4:],
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def word_tokenizer() -> Any:
    return build_word_tokenizer()


@pytest.fixture(scope="module")
def tiny_lm(word_tokenizer: Any) -> Any:
    return build_tiny_llama(len(word_tokenizer))


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-label BERT sequence classifier and its tokenizer, saved like a downloaded model."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = build_word_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=512,
        num_labels=2,
        pad_token_id=0,
        id2label={0: "safe", 1: "unsafe"},
        label2id={"safe": 0, "unsafe": 1},
    )
    folder = tmp_path_factory.mktemp("classifier")
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
