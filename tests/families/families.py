"""Tiny random configs (built in-process, milliseconds) of the model families users run, and the module
names each editor's hparams point at in that family (what a user writes in the YAML for that model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Shared sizes: 3 layers, hidden 32, 4 query heads and 2 KV heads (GQA) where the family has them.
LLAMA_LIKE = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


@dataclass(frozen=True)
class Family:
    """One architecture: how to build it, and the names DINM and the security vectors edit there."""

    model_type: str
    config: dict[str, Any]
    mlp_out: str  # DINM's rewrite_module_tmp: the MLP output projection of block {}
    attention_inputs: tuple[str, ...]  # the security vector's LoRA target modules
    traits: tuple[str, ...] = field(default=())  # what the family exercises (README column)

    def build(self, seed: int = 0) -> Any:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.for_model(self.model_type, **{**self.config, **SPECIAL_IDS})
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()


DOWN = "model.layers.{}.mlp.down_proj.weight"
QV = ("q_proj", "v_proj")

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", LLAMA_LIKE, DOWN, QV, ("GQA",)),
    Family("mistral", {**LLAMA_LIKE, "sliding_window": 64}, DOWN, QV, ("GQA", "sliding window")),
    Family("mixtral", {**LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2},
           "model.layers.{}.mlp.experts.down_proj", QV, ("GQA", "MoE MLP (fused experts)")),
    Family("qwen2", LLAMA_LIKE, DOWN, QV, ("GQA", "q/k/v biases")),
    Family("qwen3", {**LLAMA_LIKE, "head_dim": 8}, DOWN, QV, ("GQA", "q/k norms")),
    Family("gemma2", {**LLAMA_LIKE, "head_dim": 8}, DOWN, QV, ("GQA", "extra norms", "tied embeddings", "softcapping")),
    Family("gemma3_text", {**LLAMA_LIKE, "head_dim": 8}, DOWN, QV, ("GQA", "extra norms", "q/k norms", "tied embeddings")),
    Family("phi3", LLAMA_LIKE, DOWN, ("qkv_proj",), ("GQA", "fused qkv and gate_up")),
    Family("olmo2", LLAMA_LIKE, DOWN, QV, ("GQA", "post-norms", "q/k norms")),
    Family("granite", LLAMA_LIKE, DOWN, QV, ("GQA", "residual and logit multipliers")),
    Family("gpt2", dict(n_embd=32, n_layer=3, n_head=4, n_positions=512, vocab_size=128),
           "transformer.h.{}.mlp.c_proj.weight", ("c_attn",), ("Conv1D", "tied embeddings", "absolute positions")),
    Family("gpt_neox", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                            vocab_size=128, max_position_embeddings=128),
           "gpt_neox.layers.{}.mlp.dense_4h_to_h.weight", ("query_key_value",), ("fused qkv", "parallel residual")),
    Family("opt", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=64, vocab_size=128,
                       max_position_embeddings=512, word_embed_proj_dim=32),
           "model.decoder.layers.{}.fc2.weight", QV, ("biases", "learned positions")),
    Family("falcon", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, vocab_size=128,
                          new_decoder_architecture=False, multi_query=True),
           "transformer.h.{}.mlp.dense_4h_to_h.weight", ("query_key_value",), ("multi-query", "parallel attention")),
)}


#: The editors (and DINM's/DeStein's modes) every family is run with; the README table's columns.
EDITORS = ("DINM (fixed layer)", "DINM (located layer)", "DeStein (bias fold)", "DeStein (hook)", "SecurityVectors")

#: Named refusals, ``{(family, editor): message fragment}``; every other cell must pass.
REFUSALS: dict[tuple[str, str], str] = {}

#: Families whose attention output projection has no bias and whose config has no flag that adds one:
#: a merged checkpoint cannot hold a DeStein fold there.
NO_BIAS_FLAG = ("mistral", "mixtral", "qwen2", "phi3", "falcon")


def export_refusal(family: str, editor: str) -> str | None:
    """Why a merged export of this cell is refused (a message fragment), or None when it must round-trip."""
    if editor == "DeStein (hook)":
        return "steers activations at run time"
    if editor == "SecurityVectors":
        return "removed at inference"
    if editor == "DeStein (bias fold)" and family in NO_BIAS_FLAG:
        return "cannot hold this DeStein fold"
    return None

TABLE_START = "<!-- families:start -->"
TABLE_END = "<!-- families:end -->"


def render_table() -> str:
    """The README's family x editor table, from FAMILIES, EDITORS, REFUSALS and ``export_refusal`` (which the
    tests check): each cell is the edit (revert, save, load, apply) and its merged export."""
    lines = [TABLE_START,
             "| family | exercises | " + " | ".join(EDITORS) + " |",
             "|---|---|" + "---|" * len(EDITORS)]
    for name, family in FAMILIES.items():
        cells = [f"refused: {REFUSALS[(name, e)]}" if (name, e) in REFUSALS else
                 "pass; export " + ("refused: " + export_refusal(name, e) if export_refusal(name, e) else "pass")
                 for e in EDITORS]
        lines.append(f"| `{name}` | {', '.join(family.traits)} | " + " | ".join(cells) + " |")
    lines.append(TABLE_END)
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.families.families: print the table for the README
    print(render_table())
