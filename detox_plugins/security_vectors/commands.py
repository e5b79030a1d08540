"""Command-line entry points of the SecurityVectors editor (wired into ``detox`` by ``detox_plugins.cli``).

``detox edit --hparams SecurityVectors/smollm2-135m --out DIR [--data FILE] [--model NAME] [--edit DIR]``
    trains a security vector and saves it (``run_edit``).
``detox finetune --data FILE.jsonl [--vector DIR] [--hparams ...] [--model NAME] [--edit DIR] --out DIR``
    fine-tunes with the vector active and frozen, or plainly without ``--vector`` (``run_finetune``).

Both read optional attributes with ``getattr`` so the parser may add them later:
``--overwrite``, ``--mode lora|full``, ``--export adapter|merged``, ``--epochs``, ``--max-steps``,
``--lr``, ``--json FILE``, ``--force``, ``--dtype``, ``--device``, ``--quiet`` (no progress bars);
``run_edit`` also reads ``--limit`` (at most N harmful rows).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Optional

from registry.errors import DetoxError

logger = logging.getLogger(__name__)

DEFAULT_HPARAMS = "SecurityVectors/smollm2-135m"


def _hparams(args: argparse.Namespace) -> Any:
    from .hparams import SecurityVectorHyperParams

    hp = SecurityVectorHyperParams.from_hparams(getattr(args, "hparams", None) or DEFAULT_HPARAMS)
    return hp.for_cli(
        progress=False if getattr(args, "quiet", False) else None,
        ft_epochs=getattr(args, "epochs", None),
        ft_max_steps=getattr(args, "max_steps", None),
        ft_lr=getattr(args, "lr", None),
        user_mode=getattr(args, "mode", None),
        export=getattr(args, "export", None),
    )


def _load(args: argparse.Namespace, hp: Any) -> tuple[Any, Any, list[Any]]:
    """Model and tokenizer (``--model``, else the hparams' model_name), then every ``--edit DIR`` in order."""
    from registry.saved import load_edit
    from registry.models import load_model

    model, tokenizer = load_model(getattr(args, "model", None) or hp.model_name,
                                  dtype=getattr(args, "dtype", None) or hp.dtype,
                                  device=getattr(args, "device", None) or hp.device)
    applied = []
    for directory in getattr(args, "edit", None) or []:
        applied.append(load_edit(directory).apply(model, tokenizer, force=bool(getattr(args, "force", False))))
        logger.info("applied edit %s", directory)
    return model, tokenizer, applied


def _write_json(path: Optional[str], summary: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")


def run_edit(args: argparse.Namespace) -> int:
    """``detox edit --hparams SecurityVectors/...``: train a security vector and save it to ``--out``."""
    from .editor import SecurityVectorEditor

    out = getattr(args, "out", None)
    if not out:
        raise DetoxError("--out DIR is required: the security vector is saved there (pass it later to "
                         "`detox finetune --vector DIR`)")
    overwrite = bool(getattr(args, "overwrite", False))
    if Path(out).exists() and not overwrite:
        raise DetoxError(f"{out} already exists; choose a new folder (or pass --overwrite)")
    hp = _hparams(args).for_cli(num_harmful=getattr(args, "limit", None))
    model, tokenizer, _ = _load(args, hp)
    editor = SecurityVectorEditor(hp)
    edit = editor.edit(model, tokenizer, getattr(args, "data", None))
    edit.save(out, overwrite=overwrite)
    vector = edit.metadata["vector"]
    summary = {"out": str(out), "harmful_rows": edit.metadata["num_harmful"],
               "benign_rows": edit.metadata["num_benign"], **vector}
    print(f"security vector saved to {out}")
    print(f"  harmful rows {summary['harmful_rows']}, benign KL rows {summary['benign_rows']}, "
          f"{vector['train']['steps']} steps in {vector['train']['seconds']:.0f} s")
    print(f"  harmful loss: base {vector['harmful_loss_base']:.3f} -> with the vector "
          f"{vector['harmful_loss_with_vector']:.3f}")
    print(f"  use it: detox finetune --data FILE.jsonl --vector {out} --out DIR")
    _write_json(getattr(args, "json", None), summary)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    """``detox finetune --data FILE --out DIR [--vector DIR]``: the user's fine-tune, saved as an edit."""
    from .editor import SecurityVectorEditor

    data = getattr(args, "data", None)
    out = getattr(args, "out", None)
    if not data:
        raise DetoxError("--data FILE.jsonl is required (rows {\"prompt\", \"response\"})")
    if not out:
        raise DetoxError("--out DIR is required: the fine-tuned result is saved there as an edit")
    overwrite = bool(getattr(args, "overwrite", False))
    if Path(out).exists() and not overwrite:
        raise DetoxError(f"{out} already exists; choose a new folder (or pass --overwrite)")
    hp = _hparams(args)
    vector = getattr(args, "vector", None)
    if vector is not None:
        _check_vector(vector)
    model, tokenizer, _ = _load(args, hp)
    editor = SecurityVectorEditor(hp)
    edit = editor.fine_tune(model, tokenizer, data, vector=vector, out=out, overwrite=overwrite,
                            force=bool(getattr(args, "force", False)))
    info = edit.metadata["finetune"]
    train = info["train"]
    print(f"fine-tune saved to {out} ({edit.payload}; the security vector is not part of it)")
    print(f"  mode {info['mode']}, export {info['export']}, vector {'on' if vector else 'off (plain fine-tune)'}")
    print(f"  {info['rows']} rows ({info['harmful_rows']} flagged harmful), {train['steps']} steps in "
          f"{train['seconds']:.0f} s, train loss {train['train_loss']:.4f}")
    print(f"  evaluate it: detox eval --edit {out} ...   revert: it is an edit of the base model")
    _write_json(getattr(args, "json", None), {"out": str(out), "payload": edit.payload, **info})
    return 0


def _check_vector(vector: str) -> None:
    """Fail fast (before loading a model) when --vector is not a saved security vector."""
    from .editor import SecurityVector

    SecurityVector.from_any(vector)
