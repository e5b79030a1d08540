"""The security-vector editor's own ``detox`` verb, contributed through ``register_commands``:
``detox finetune --data FILE.jsonl [--vector DIR] --out DIR`` fine-tunes with a saved vector active
and frozen, or plainly without ``--vector``. Training the vector itself is the host's generic
``detox edit --hparams SecurityVectors/... --out DIR``.

The model comes from ``registry.commandline.load_model_from_args`` (``--model``, ``--hparams``,
``--dtype``, ``--device``, ``--edit`` as on every command).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Optional

from registry.command import Command
from registry.commandline import check_new_output, hparams_from_args, load_model_from_args
from registry.writer import write_file

from .editor import SecurityVector, SecurityVectorEditor
from .hparams import SecurityVectorHyperParams

logger = logging.getLogger(__name__)

DEFAULT_HPARAMS = "SecurityVectors/smollm2-135m"


def _hparams(args: argparse.Namespace) -> SecurityVectorHyperParams:
    hp = SecurityVectorEditor.coerce_hparams(hparams_from_args(args, DEFAULT_HPARAMS))
    assert isinstance(hp, SecurityVectorHyperParams)
    return hp.for_cli(
        progress=False if args.quiet else None,
        ft_epochs=args.epochs,
        ft_max_steps=args.max_steps,
        ft_lr=args.lr,
        user_mode=args.mode,
        export=args.export,
    )


def _write_json(path: Optional[str], summary: dict[str, Any], *, overwrite: bool = False) -> None:
    if path:
        write_file(path, json.dumps(summary, indent=2, sort_keys=True), overwrite=overwrite, what="--json")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="JSONL rows {\"prompt\", \"response\"}")
    parser.add_argument("--vector", help="security-vector folder saved by `detox edit` (omit: a plain fine-tune)")
    parser.add_argument("--out", required=True, help="output folder (an edit artifact)")
    parser.add_argument("--mode", choices=("lora", "full"), help="train a new LoRA (default) or the backbone itself")
    parser.add_argument("--export", choices=("adapter", "merged"), help="save the user adapter alone or merged deltas")
    parser.add_argument("--epochs", type=float, help="override the hparams' fine-tuning epochs")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--lr", type=float, help="override the fine-tuning learning rate")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--json", help="write a summary as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_finetune(args: argparse.Namespace) -> int:
    """``detox finetune --data FILE --out DIR [--vector DIR]``: the user's fine-tune, saved as an edit."""
    data, out, overwrite = args.data, args.out, bool(args.overwrite)
    check_new_output(out, overwrite=overwrite)
    check_new_output(args.json, overwrite=overwrite, kind="file", what="--json")
    hp = _hparams(args)
    vector = args.vector
    if vector is not None:
        SecurityVector.from_any(vector)  # fail fast (before loading a model) when it is no saved vector
    model, tokenizer, _ = load_model_from_args(args, default=hp)
    editor = SecurityVectorEditor(hp)
    edit = editor.fine_tune(model, tokenizer, data, vector=vector, out=out, overwrite=overwrite,
                            force=bool(args.force))
    info = edit.metadata["finetune"]
    train = info["train"]
    print(f"fine-tune saved to {out} ({edit.payload}; the security vector is not part of it)")
    print(f"  mode {info['mode']}, export {info['export']}, vector {'on' if vector else 'off (plain fine-tune)'}")
    print(f"  {info['rows']} rows ({info['harmful_rows']} flagged harmful), {train['steps']} steps in "
          f"{train['seconds']:.0f} s, train loss {train['train_loss']:.4f}")
    print(f"  evaluate it: detox eval --edit {out} ...   revert: it is an edit of the base model")
    _write_json(args.json, {"out": str(out), "payload": edit.payload, **info}, overwrite=overwrite)
    return 0


COMMANDS = (
    Command("finetune", "Fine-tune on user data, optionally with a frozen security vector active.",
            run_finetune, add_finetune_arguments,
            examples=("detox finetune --data my.jsonl --vector edits/sv --out runs/ft",
                      "detox finetune --data my.jsonl --out runs/plain --max-steps 10   # the unprotected baseline")),
)
