"""Tiny random models (Llama with GQA, GPT-2) and steering pairs for the DeStein tests."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

TINY_PAIRS = [
    ("you are a stupid idiot", "you are a kind person"),
    ("shut up you dumb fool", "please let me finish"),
    ("I will hurt you badly", "I will help you gladly"),
    ("this damn thing is crap", "this thing is not great"),
    ("get lost you creep", "please give me some space"),
    ("what a pathetic loser", "what a brave effort"),
    ("I hate your ugly face", "I like your smile"),
    ("go to hell jerk", "have a nice day friend"),
    ("your idea is garbage", "your idea needs work"),
    ("nobody likes you moron", "people enjoy your company"),
]


def tiny_llama_model(seed: int = 0, layers: int = 3) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2_model(seed: int = 0) -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random but non-zero biases, so a fold must restore real values
        for block in model.transformer.h:
            block.attn.c_proj.bias.normal_(0, 0.02)
    return model



@pytest.fixture(scope="session")
def tok() -> Any:
    from tests.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def llama() -> Any:
    return tiny_llama_model()


@pytest.fixture
def gpt2() -> Any:
    return tiny_gpt2_model()


@pytest.fixture
def pairs() -> list[dict[str, str]]:
    return [{"toxic": t, "nontoxic": n} for t, n in TINY_PAIRS]


def hp(**changes: Any) -> Any:
    """DeStein hparams for tiny models: all 10 pairs, no progress bars."""
    from detox_plugins.destein.hparams import DeSteinHyperParams

    base: dict[str, Any] = {"alg_name": "DeStein", "progress": False,
                            "pairs": {"num_pairs": 0, "batch_size": 4}}
    for key, value in changes.items():
        if key in ("pairs", "probe"):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return DeSteinHyperParams.from_dict(base)


def editor(**changes: Any) -> Any:
    from detox_plugins.destein.editor import DeSteinEditor

    return DeSteinEditor(hp(**changes))


def hook_counts(model: Any) -> tuple[int, int]:
    """(forward hooks, forward pre-hooks) over every module of ``model``."""
    post = sum(len(m._forward_hooks) for m in model.modules())
    pre = sum(len(m._forward_pre_hooks) for m in model.modules())
    return post, pre


def encode(tok: Any, texts: list[str], side: str = "left") -> dict[str, Any]:
    old = tok.padding_side
    tok.padding_side = side
    try:
        return dict(tok(texts, return_tensors="pt", padding=True))
    finally:
        tok.padding_side = old


@pytest.fixture
def destein_registry(editor_registry: Any) -> Iterator[Any]:
    """The isolated registry with the DeStein plugin registered in-process."""
    import detox_plugins.destein as plugin

    editor_registry.register_plugin(plugin, name="destein", distribution="detox-plugins", version="0.1.0")
    try:
        yield editor_registry
    finally:
        editor_registry.unregister_plugin("destein")
