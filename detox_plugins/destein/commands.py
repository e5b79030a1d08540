"""DeStein's own ``detox`` verb, contributed through ``register_commands``: ``detox steer`` (base vs
steered continuations side by side). ``detox edit --hparams DeStein/...`` is the host's generic edit.

The model comes from ``registry.commandline.load_model_from_args`` (``--model``, ``--hparams``,
``--dtype``, ``--device``, ``--edit`` as on every command); the steering vectors are built from
the hparams' pairs (or ``--pairs``), or read from a saved DeStein edit (``--vectors DIR``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import textwrap
from typing import Any, Optional, Sequence

from registry.command import Command
from registry.commandline import hparams_from_args, load_model_from_args
from registry.errors import DetoxError
from registry.saved import load_edit

from .editor import DeSteinEditor

logger = logging.getLogger(__name__)

DEFAULT_HPARAMS = "DeStein/smollm2-135m"


def add_steer_arguments(parser: argparse.ArgumentParser) -> None:
    """``detox steer [--vectors DIR] [--alpha A] [--max-new-tokens N] [...] PROMPT [PROMPT ...]``."""
    parser.add_argument("prompt", nargs="+", help="prompt(s) to continue")
    parser.add_argument("--vectors", metavar="DIR", help="a saved DeStein edit folder (skips building vectors)")
    parser.add_argument("--alpha", type=float, default=None, help="steering strength (default: the hparams'/edit's)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="new tokens per continuation (default 40)")
    parser.add_argument("--pairs", default=None, help="JSONL pair file when building vectors")
    parser.add_argument("--sample", action="store_true", help="sample (top-p 0.9) instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same for base and steered)")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    parser.add_argument("--width", type=int, default=None, help="table width (default: the terminal's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _overrides(hp: Any, args: argparse.Namespace) -> Any:
    changes: dict[str, Any] = {}
    if args.alpha is not None:
        changes["alpha"] = args.alpha
    if args.quiet:
        changes["progress"] = False
    if args.pairs:
        changes["pairs"] = {**hp.to_dict()["pairs"], "path": str(args.pairs)}
    return hp.replace(**changes) if changes else hp


def run_steer(args: argparse.Namespace) -> int:
    """Continue each prompt with the base and the steered model and print them side by side."""
    prompts = list(args.prompt or [])
    if not any(p.strip() for p in prompts):
        raise DetoxError("give at least one PROMPT, e.g. detox steer 'You are such a'")
    saved = load_edit(args.vectors) if args.vectors else None
    if saved is not None and saved.editor.lower() != DeSteinEditor.name.lower():
        raise DetoxError(f"--vectors {args.vectors} holds a {saved.editor} edit, not DeStein vectors")
    if saved is not None and args.hparams is None:
        hp = DeSteinEditor.coerce_hparams(saved.manifest.get("hparams") or {"alg_name": "DeStein"})
    else:
        hp = DeSteinEditor.coerce_hparams(hparams_from_args(args, DEFAULT_HPARAMS))
    hp = _overrides(hp, args)
    editor = DeSteinEditor(hp)
    if saved is None:
        editor.resolve_pairs(None)  # fail on a bad pair file before loading the model
    model, tokenizer, _ = load_model_from_args(args, default=hp)
    base = _continue(model, tokenizer, prompts, args)
    if saved is not None:
        edit = saved.apply(model, tokenizer, force=args.force)
        if args.alpha is not None:
            edit.set_alpha(args.alpha)
    else:
        edit = editor.edit(model, tokenizer)
    with edit:
        steered = _continue(model, tokenizer, prompts, args)
    label = f"DeStein {edit.settings.fusion}/{edit.settings.apply}, alpha {edit.alpha}"
    print(side_by_side(prompts, base, steered, right_title=label, width=args.width))
    return 0


def _continue(model: Any, tokenizer: Any, prompts: Sequence[str], args: argparse.Namespace) -> list[str]:
    from detox_plugins.evaluation.generate import generate

    sample = bool(args.sample)
    return generate(model, tokenizer, list(prompts), max_new_tokens=args.max_new_tokens, do_sample=sample,
                    top_p=0.9 if sample else 1.0, top_k=0, temperature=1.0, seed=args.seed,
                    use_chat_template=bool(args.chat), batch_size=8, progress=False)


def side_by_side(prompts: Sequence[str], left: Sequence[str], right: Sequence[str], *,
                 left_title: str = "base", right_title: str = "steered", width: Optional[int] = None) -> str:
    """A plain-text two-column table: each prompt, then its base and steered continuations."""
    total = width or min(shutil.get_terminal_size((120, 24)).columns, 160)
    col = max(20, (total - 3) // 2)
    lines = []
    rule = "-" * col + "-+-" + "-" * col
    for prompt, a, b in zip(prompts, left, right):
        lines.append(f"PROMPT: {prompt}")
        lines.append(f"{left_title:<{col}} | {right_title}")
        lines.append(rule)
        wrapped_a = textwrap.wrap(" ".join(a.split()), col) or [""]
        wrapped_b = textwrap.wrap(" ".join(b.split()), col) or [""]
        for i in range(max(len(wrapped_a), len(wrapped_b))):
            x = wrapped_a[i] if i < len(wrapped_a) else ""
            y = wrapped_b[i] if i < len(wrapped_b) else ""
            lines.append(f"{x:<{col}} | {y}")
        lines.append("")
    return "\n".join(lines)


COMMANDS = (
    Command("steer", "Show base vs DeStein-steered continuations side by side.", run_steer, add_steer_arguments,
            examples=("detox steer --alpha 0.5 'You are such a'",
                      "detox steer --vectors edits/destein --max-new-tokens 20 'You are such a' 'I hate'")),
)
