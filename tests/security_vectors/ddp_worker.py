"""One rank of the distributed fine-tune test (launched by ``torch.distributed.run``): trains the vector,
then the user's LoRA with the vector active and frozen, through the Hugging Face Trainer (DDP, gloo on
the CPU), and saves what this rank ended with."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.security_vectors.tiny import harmful_rows, tiny_llama, tiny_tokenizer  # noqa: E402

from detox_plugins.security_vectors.editor import SecurityVectorEditor  # noqa: E402

HPARAMS = dict(alg_name="SecurityVectors", max_length=64, progress=False, seed=0,
               sv_lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), sv_epochs=2, sv_lr=1e-2,
               sv_batch_size=4, sv_kl_weight=0.0,
               user_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"]),
               ft_epochs=1, ft_lr=5e-3, ft_batch_size=2, export="adapter")


def main(out: str) -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    editor = SecurityVectorEditor(HPARAMS)
    vector = editor.edit(model, tokenizer, harmful_rows()[:8])
    tuned = editor.fine_tune(model, tokenizer, harmful_rows()[8:16], vector=vector)
    torch.save({"user": tuned.tensors(), "steps": tuned.metadata["finetune"]["train"]["steps"],
                "world": int(os.environ.get("WORLD_SIZE", "1"))}, Path(out) / f"rank{os.environ.get('RANK', '0')}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
