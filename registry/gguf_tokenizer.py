"""The embedded model's tokenizer, checked, and rebuilt from the GGUF file's own vocabulary when transformers
converts it wrongly.

transformers 5.5.4 (the release EasyEdit pins) converts the embedded SmolLM2 GGUF's byte-level BPE
tokenizer into a ``CodeLlamaTokenizer``: spaces encode as ``<|endoftext|>``, decoded text shows ``Ġ``, and
its end-of-sequence token is ``<|im_start|>``. ``usable_tokenizer`` detects such a tokenizer (a sample
text must survive encode → decode, and the end-of-sequence token must be the GGUF's), and
``byte_level_tokenizer`` builds the right one from the GGUF metadata (``tokenizer.ggml.*``): the same
vocabulary, merges, byte-level pre-tokenizer and decoder, special tokens and chat template that
transformers 5.2x produces from the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ModelLoadError

#: Text a byte-level tokenizer must give back unchanged (spaces, punctuation, a newline, digits, a non-ASCII letter).
ROUND_TRIP_SAMPLE = "The capital of France is Paris.\n  Tokens: 1, 2; café?"
CONTROL_TOKEN = 3  # GGUF token_type of control (special) tokens


def usable_tokenizer(tokenizer: Any, eos_token_id: Any) -> bool:
    """True when ``tokenizer`` round-trips the sample text and ends sequences with ``eos_token_id`` (the model's)."""
    ids = tokenizer(ROUND_TRIP_SAMPLE, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids) == ROUND_TRIP_SAMPLE and (eos_token_id is None or tokenizer.eos_token_id == eos_token_id)


def checked_tokenizer(tokenizer: Any, gguf: Path, eos_token_id: Any) -> Any:
    """``tokenizer`` when usable, else the one rebuilt from the GGUF (logged once per load)."""
    import logging

    import transformers

    if usable_tokenizer(tokenizer, eos_token_id):
        return tokenizer
    logging.getLogger(__name__).info(
        "transformers %s converted %s's tokenizer wrongly (%s); using the one rebuilt from the GGUF's vocabulary",
        transformers.__version__, gguf.name, type(tokenizer).__name__)
    return byte_level_tokenizer(gguf)


def byte_level_tokenizer(gguf: Path) -> Any:
    """A fast tokenizer built from the GGUF's ``tokenizer.ggml.*`` fields (only byte-level BPE, ``model: gpt2``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fields = _gguf_fields(gguf)
    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelLoadError(f"{gguf}: its tokenizer is {kind!r}, not byte-level BPE ('gpt2'); it cannot be rebuilt "
                             f"here, use a transformers release that converts it (5.2x)")
    tokens = list(fields["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                                   byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    types = list(fields.get("tokenizer.ggml.token_type", []))
    specials = [t for t, kind_ in zip(tokens, types) if kind_ == CONTROL_TOKEN]

    def token(key: str) -> Any:
        index = fields.get(key)
        return None if index is None else tokens[int(index)]

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"), unk_token=token("tokenizer.ggml.unknown_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id"))
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    if fields.get("tokenizer.chat_template"):
        tokenizer.chat_template = fields["tokenizer.chat_template"]
    return tokenizer


def _gguf_fields(gguf: Path) -> dict[str, Any]:
    """The GGUF file's ``tokenizer.*`` metadata as Python values (the file is memory-mapped, not read whole)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.")}
