"""The DeStein parts of the ``detox`` command: ``detox edit`` (for DeStein hparams) and ``detox steer``.

Wiring (in ``detox_plugins/cli.py``)::

    from detox_plugins.destein import commands as destein_commands
    p = sub.add_parser("steer", help="DeStein: base vs steered continuations side by side")
    destein_commands.add_steer_arguments(p)
    p.set_defaults(func=destein_commands.run_steer)
    # `detox edit --hparams DeStein/...`: call destein_commands.run_edit(args) when the hparams'
    # alg_name is DeStein (add_edit_arguments(p) adds the arguments it reads).

Both functions return a process exit code and print to stdout (errors to stderr).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence

from registry.errors import DetoxError, HyperParamsError

logger = logging.getLogger(__name__)

DEFAULT_HPARAMS = "DeStein/smollm2-135m"


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    """``detox edit --hparams H --out DIR [--pairs FILE] [--model NAME] [--alpha A] [--overwrite] [--quiet]``."""
    parser.add_argument("--hparams", default=DEFAULT_HPARAMS,
                        help=f"DeStein YAML file or shipped name (default {DEFAULT_HPARAMS})")
    parser.add_argument("--out", required=True, help="folder to save the edit to (safetensors + JSON)")
    parser.add_argument("--pairs", default=None, help="JSONL pair file {toxic, nontoxic} (default: the hparams' "
                                                      "pairs.path, else the shipped pairs)")
    parser.add_argument("--model", default=None, help="model name or local folder (default: the hparams' model_name)")
    parser.add_argument("--alpha", type=float, default=None, help="override the hparams' alpha")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_steer_arguments(parser: argparse.ArgumentParser) -> None:
    """``detox steer [--hparams H] [--edit DIR] --alpha A [--max-new-tokens N] [...] PROMPT [PROMPT ...]``."""
    parser.add_argument("prompt", nargs="+", help="prompt(s) to continue")
    parser.add_argument("--hparams", default=None,
                        help=f"DeStein YAML or shipped name (default {DEFAULT_HPARAMS}, or the --edit's own)")
    parser.add_argument("--edit", default=None, help="a saved DeStein edit folder (skips building vectors)")
    parser.add_argument("--alpha", type=float, default=None, help="steering strength (default: the hparams'/edit's)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="new tokens per continuation (default 40)")
    parser.add_argument("--model", default=None, help="model name or local folder")
    parser.add_argument("--pairs", default=None, help="JSONL pair file when building vectors")
    parser.add_argument("--sample", action="store_true", help="sample (top-p 0.9) instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same for base and steered)")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    parser.add_argument("--force", action="store_true", help="apply --edit even if the model fingerprint differs")
    parser.add_argument("--width", type=int, default=None, help="table width (default: the terminal's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_hparams(name: Optional[str]) -> Any:
    """DeStein hparams from a file or a shipped name (falls back to the shipped folder directly)."""
    from importlib.resources import files

    from registry.catalog import resolve_hparams_path

    from .hparams import DeSteinHyperParams

    name = name or DEFAULT_HPARAMS
    try:
        path = resolve_hparams_path(name)
    except HyperParamsError:
        stem = name[:-5] if name.endswith(".yaml") else name
        candidate = files("detox_plugins.hparams").joinpath(*f"{stem}.yaml".split("/"))
        if not candidate.is_file():
            raise
        path = Path(str(candidate))
    return DeSteinHyperParams.from_hparams(path)


def _arg(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _overrides(hp: Any, args: Any) -> Any:
    changes: dict[str, Any] = {}
    if _arg(args, "model"):
        changes["model_name"] = args.model
    if _arg(args, "alpha") is not None:
        changes["alpha"] = args.alpha
    if _arg(args, "quiet"):
        changes["progress"] = False
    if _arg(args, "pairs"):
        changes["pairs"] = {**hp.to_dict()["pairs"], "path": str(args.pairs)}
    return hp.replace(**changes) if changes else hp


def run_edit(args: Any) -> int:
    """Build DeStein vectors (shipped pairs or --pairs) on the model, apply them and save the edit."""
    from registry.models import load_model

    from .editor import DeSteinEditor

    try:
        hp = _overrides(load_hparams(_arg(args, "hparams")), args)
        editor = DeSteinEditor(hp)
        pairs, _ = editor.resolve_pairs(None)  # fail on a bad pair file before loading the model
        if not _arg(args, "out"):
            raise DetoxError("DeStein's `detox edit` saves the vectors: pass --out DIR")
        out = Path(args.out)
        if out.exists() and not _arg(args, "overwrite"):
            raise DetoxError(f"{out} already exists; choose a new folder or pass --overwrite")
        model, tokenizer = load_model(hp)
        edit = editor.edit(model, tokenizer)
        path = edit.save(out, overwrite=bool(_arg(args, "overwrite")))
        edit.revert()
    except DetoxError as exc:
        print(f"detox edit: error: {exc}", file=sys.stderr)
        return 2
    vectors = edit.vectors
    print(f"DeStein edit saved to {path}")
    print(f"  model      {hp.model_name} (fingerprint {edit.metadata['model']['fingerprint']})")
    print(f"  fusion     {hp.fusion} / {hp.apply}, alpha {edit.alpha}, {len(edit.settings.layers)} layers")
    print(f"  vectors    {vectors.site} [{vectors.num_layers} x {vectors.dim}], {vectors.num_pairs} pairs "
          f"({vectors.info.get('pair_source')}), built in {vectors.info.get('build_seconds')} s")
    probe = vectors.info.get("probe") or {}
    if probe.get("kind") == "logistic":
        print(f"  probes     mean held-out acc {probe.get('mean_acc')}, top_k {probe.get('top_k')}")
    print(f"  apply with registry.load_edit({str(path)!r}).apply(model), or: detox steer --edit {path} PROMPT")
    return 0


def run_steer(args: Any) -> int:
    """Continue each prompt with the base and the steered model and print them side by side."""
    from registry.saved import load_edit
    from registry.models import load_model

    from .editor import DeSteinEditor

    prompts = _arg(args, "prompt")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
    if not prompts:
        print("detox steer: error: give at least one PROMPT", file=sys.stderr)
        return 2
    max_new = int(_arg(args, "max_new_tokens", 40) or 40)
    try:
        saved = load_edit(args.edit) if _arg(args, "edit") else None
        if saved is not None and _arg(args, "hparams") is None:
            hp = DeSteinEditor.coerce_hparams(saved.manifest.get("hparams") or {"alg_name": "DeStein"})
        else:
            hp = load_hparams(_arg(args, "hparams"))
        hp = _overrides(hp, args)
        editor = DeSteinEditor(hp)
        if saved is None:
            editor.resolve_pairs(None)  # fail on a bad pair file before loading the model
        model, tokenizer = load_model(hp)
        base = _continue(model, tokenizer, prompts, args, max_new)
        if saved is not None:
            edit = saved.apply(model, tokenizer, force=bool(_arg(args, "force")))
            if _arg(args, "alpha") is not None:
                edit.set_alpha(args.alpha)
        else:
            edit = editor.edit(model, tokenizer)
        with edit:
            steered = _continue(model, tokenizer, prompts, args, max_new)
    except DetoxError as exc:
        print(f"detox steer: error: {exc}", file=sys.stderr)
        return 2
    label = f"DeStein {edit.settings.fusion}/{edit.settings.apply}, alpha {edit.alpha}"
    print(side_by_side(prompts, base, steered, right_title=label, width=_arg(args, "width")))
    return 0


def _continue(model: Any, tokenizer: Any, prompts: Sequence[str], args: Any, max_new: int) -> list[str]:
    from detox_plugins.evaluation.generate import generate

    sample = bool(_arg(args, "sample"))
    return generate(model, tokenizer, list(prompts), max_new_tokens=max_new, do_sample=sample,
                    top_p=0.9 if sample else 1.0, top_k=0, temperature=1.0, seed=int(_arg(args, "seed", 0) or 0),
                    use_chat_template=bool(_arg(args, "chat")), batch_size=8, progress=False)


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
