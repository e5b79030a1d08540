"""The ``detox`` command: discover editors, inspect hparams, generate, edit, evaluate.

Every subcommand has ``--help`` with an example. Errors print as one line (``--debug`` shows the
traceback) and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import textwrap
from typing import Any, Callable, Optional, Sequence

from registry.errors import DetoxError

logger = logging.getLogger("detox")

EXIT_ERROR = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add(subparsers: Any, name: str, summary: str, example: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=summary, description=f"{summary}\n\nexample:\n  {example}", formatter_class=_formatter
    )
    parser.set_defaults(func=func)
    return parser


# ---------------------------------------------------------------------- plugins
def cmd_plugins(args: argparse.Namespace) -> int:
    from registry.plugins import list_editors

    rows = list_editors()
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
        return 0
    table = [("name", "kind", "distribution", "version", "status")]
    for row in rows:
        status = "ok" if row.error is None else f"error: {row.error}"
        table.append((row.name, row.kind or "-", row.distribution, row.version or "-", status))
    _print_table(table)
    if not rows:
        print("no editors installed (entry-point group 'model_editors')")
    return 0


# ---------------------------------------------------------------------- hparams
def cmd_hparams_list(args: argparse.Namespace) -> int:
    from registry.catalog import shipped_hparams

    shipped = shipped_hparams()
    if args.json:
        print(json.dumps({name: str(path) for name, path in sorted(shipped.items())}, indent=2))
        return 0
    if not shipped:
        print("no shipped hyperparameter files (no editor with hparams installed)")
        return 0
    _print_table([("name", "file")] + [(name, str(path)) for name, path in sorted(shipped.items())])
    return 0


def cmd_hparams_show(args: argparse.Namespace) -> int:
    from registry import from_hparams, resolve_hparams_path

    path = resolve_hparams_path(args.name)
    hparams = from_hparams(path)
    if args.json:
        print(hparams.to_json())
        return 0
    print(f"# {path}")
    print(f"# {type(hparams).__name__}")
    if args.fields:
        _print_table([("field", "type", "default", "help")] + [
            (n, t, d, textwrap.shorten(h, 70)) for n, t, d, h in type(hparams).describe_fields()
        ])
        return 0
    print(hparams.to_yaml(), end="")
    return 0


# ---------------------------------------------------------------------- generate
def load_model_for(args: argparse.Namespace, default: Any = None) -> tuple[Any, Any, list[Any]]:
    """Model and tokenizer from --model/--hparams (else ``default``), with every --edit DIR applied in order."""
    from registry.models import load_model

    spec: Any = args.model if args.model is not None else default
    hparams_name = getattr(args, "hparams", None)
    if spec is None and hparams_name:
        from registry import from_hparams

        spec = from_hparams(hparams_name)
    model, tokenizer = load_model(spec, dtype=getattr(args, "dtype", None), device=getattr(args, "device", None))
    applied = []
    for directory in getattr(args, "edit", None) or []:
        from registry.saved import load_edit

        applied.append(load_edit(directory).apply(model, tokenizer, force=getattr(args, "force", False)))
        logger.info("applied edit %s", directory)
    return model, tokenizer, applied


def cmd_generate(args: argparse.Namespace) -> int:
    from detox_plugins.evaluation.generate import generate

    prompt = " ".join(args.prompt).strip()
    if not prompt:
        raise DetoxError("empty prompt; pass the text to answer, e.g. detox generate 'What is the capital of France?'")
    model, tokenizer, _ = load_model_for(args)
    responses = generate(
        model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens,
        use_chat_template=False if args.no_chat_template else None, progress=False,
    )
    print(responses[0])
    return 0


# ---------------------------------------------------------------------- edit (dispatch per editor)
EDITOR_COMMANDS = {
    "dinm": "detox_plugins.dinm.commands",
    "destein": "detox_plugins.destein.commands",
    "securityvectors": "detox_plugins.security_vectors.commands",
}


def _editor_command(alg_name: str, function: str) -> Callable[[argparse.Namespace], int]:
    from registry.plugins import get_editor

    editor_class = get_editor(alg_name)
    module_name = getattr(editor_class, "cli_module", None) or EDITOR_COMMANDS.get(editor_class.name.lower())
    if module_name is None:
        raise DetoxError(f"editor {editor_class.name!r} has no command-line `{function}`; use it from Python")
    module = importlib.import_module(module_name)
    if not hasattr(module, function):
        raise DetoxError(f"editor {editor_class.name!r} does not support this command ({module_name}.{function} missing)")
    return getattr(module, function)


def cmd_edit(args: argparse.Namespace) -> int:
    from registry import peek_alg_name, resolve_hparams_path

    if getattr(args, "pipeline", None):
        if args.hparams:
            raise DetoxError("pass either --hparams (one editor) or --pipeline (several in order), not both")
        return cmd_edit_pipeline(args)
    if not args.hparams:
        raise DetoxError("pass --hparams ALG/model (one editor, e.g. DINM/smollm2-135m) or --pipeline FILE "
                         "(several editors in order, e.g. detox-all)")
    alg = peek_alg_name(resolve_hparams_path(args.hparams))
    return _editor_command(alg, "run_edit")(args)


# ---------------------------------------------------------------------- pipelines and saved edits
def _changes(footprint: Optional[dict[str, Any]]) -> str:
    """One line saying what an edit changes, from its footprint."""
    if footprint is None:
        return "(this editor does not say what it changes)"
    parts = []
    for key, word in (("writes", "tensor"), ("hooks", "hooked module"), ("wraps", "adapter-wrapped module")):
        names = footprint.get(key) or []
        if names:
            shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
            parts.append(f"{len(names)} {word}{'s' if len(names) != 1 else ''}: {shown}")
    return "; ".join(parts) or "nothing"


def _print_steps(rows: Sequence[dict[str, Any]], labels: Sequence[str] = (), seconds: Sequence[Any] = ()) -> None:
    for i, row in enumerate(rows):
        label = labels[i] if i < len(labels) else f"step {row['step']} ({row['editor']})"
        took = f" [{seconds[i]:.1f} s]" if i < len(seconds) and isinstance(seconds[i], (int, float)) else ""
        print(f"  {row['step']}. {label}: {row['editor']} {row['payload']}{took}")
        print(f"     changes {_changes(row['footprint'])}")


def _write_json(path: Optional[str], data: dict[str, Any]) -> None:
    if path:
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
        print(f"wrote {path}")


def cmd_edit_pipeline(args: argparse.Namespace) -> int:
    """``detox edit --pipeline FILE``: run every step on one model; save the composed edit to --out."""
    from pathlib import Path

    from registry.compose import describe_edit
    from registry.fingerprint import model_fingerprint
    from registry.models import load_model
    from registry.pipeline import load_pipeline, run_pipeline

    pipeline = load_pipeline(args.pipeline)  # every step's hparams and inputs are validated here
    out = getattr(args, "out", None)
    if out and Path(out).exists() and not getattr(args, "overwrite", False):
        raise DetoxError(f"{out} already exists; choose a new folder or pass --overwrite")
    model, tokenizer, applied = load_model_for(args, default=pipeline.model_spec())
    before = model_fingerprint(model)
    print(f"pipeline {pipeline.name} ({len(pipeline.steps)} steps) from {pipeline.source}")
    composed = run_pipeline(pipeline, model, tokenizer, context=applied)  # --edit DIRs: checked, not included
    rows = describe_edit(composed)
    _print_steps(rows, composed.metadata.get("step_labels", []), composed.metadata.get("step_seconds", []))
    summary: dict[str, Any] = {"pipeline": pipeline.record(), "steps": rows, "fingerprint_before": before,
                               "fingerprint_after": model_fingerprint(model), "out": out}
    if out:
        path = composed.save(out, overwrite=bool(getattr(args, "overwrite", False)))
        print(f"saved the composed edit to {path} (manifest.json lists {len(composed.steps)} steps)")
        print(f"  apply it: detox apply {path}    evaluate it: detox eval --edit {path} --dataset ... --judge ...")
    else:
        print("not saved: pass --out DIR to keep the composed edit")
    composed.revert()
    _write_json(getattr(args, "json", None), summary)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """``detox apply DIR``: apply a saved edit (composed or not), report what it changed, re-save it."""
    from pathlib import Path

    from registry.compose import describe_edit
    from registry.saved import load_edit
    from registry.fingerprint import model_fingerprint

    saved = load_edit(args.directory)
    out = getattr(args, "out", None)
    if out and Path(out).exists() and not getattr(args, "overwrite", False):
        raise DetoxError(f"{out} already exists; choose a new folder or pass --overwrite")
    model, tokenizer, _ = load_model_for(args, default=_saved_model_name(saved))
    before = model_fingerprint(model)
    edit = saved.apply(model, tokenizer, force=bool(getattr(args, "force", False)))
    after = model_fingerprint(model)
    rows = describe_edit(edit)
    kind = f"composed, {len(rows)} steps" if edit.payload == "composed" else edit.payload
    print(f"applied {saved.path} ({saved.editor}, {kind})")
    _print_steps(rows, edit.metadata.get("step_labels", []))
    print(f"model fingerprint {before} -> {after}")
    if out:
        path = edit.save(out, overwrite=bool(getattr(args, "overwrite", False)))
        print(f"re-saved the applied edit to {path}")
    _write_json(getattr(args, "json", None), {"edit": str(saved.path), "editor": saved.editor, "steps": rows,
                                              "fingerprint_before": before, "fingerprint_after": after,
                                              "out": out})
    edit.revert()
    return 0


def _saved_model_name(saved: Any) -> Optional[str]:
    """The hparams' model_name recorded in a saved edit (its first step for a composed one)."""
    from registry.saved import load_edit

    if saved.payload == "composed":
        try:
            return _saved_model_name(load_edit(saved.step_folders()[0]))
        except DetoxError:
            return None
    name = (saved.manifest.get("hparams") or {}).get("model_name")
    return name if isinstance(name, str) else None


def cmd_demo(args: argparse.Namespace) -> int:
    return _editor_command("DINM", "run_demo")(args)


def cmd_steer(args: argparse.Namespace) -> int:
    return _editor_command("DeStein", "run_steer")(args)


def cmd_finetune(args: argparse.Namespace) -> int:
    return _editor_command("SecurityVectors", "run_finetune")(args)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detox",
        description="Detoxify language models with pluggable, revertible editors (DINM, DeStein, security vectors).",
        formatter_class=_formatter,
        epilog="examples:\n  detox plugins\n  detox generate 'How do I bake bread?'\n  detox hparams list",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = _add(sub, "plugins", "List installed editors (and plugins that failed to load).", "detox plugins --json", cmd_plugins)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _add(sub, "hparams", "List or show hyperparameter files.", "detox hparams show DINM/smollm2-135m", lambda a: 0)
    hsub = p.add_subparsers(dest="hparams_command", metavar="ACTION")
    hsub.required = True
    q = _add(hsub, "list", "List the hyperparameter files shipped by installed editors.", "detox hparams list", cmd_hparams_list)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = _add(hsub, "show", "Show a hyperparameter file after validation (shipped name or path).",
             "detox hparams show DINM/smollm2-135m", cmd_hparams_show)
    q.add_argument("name", help="shipped name like DINM/smollm2-135m, or a .yaml/.yml/.json path")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.add_argument("--fields", action="store_true", help="list every field with type, default and help")

    p = _add(sub, "generate", "Answer a prompt with greedy decoding (chat template when the model has one).",
             "detox generate --max-new-tokens 40 'What is the capital of France?'", cmd_generate)
    add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--no-chat-template", action="store_true", help="feed the raw prompt")
    p.add_argument("prompt", nargs="+", help="the prompt text")

    p = _add(sub, "edit", "Run an editor from a hyperparameter file (DINM on SafeEdit cases, DeStein vectors, a security vector), "
             "or several editors in order from a pipeline file.",
             "detox edit --hparams DINM/smollm2-135m --cases safeedit-sample --case-id 1 --out edits/dinm1\n"
             "  detox edit --pipeline detox-all --out edits/detox-all   # DeStein then DINM, one composed edit", cmd_edit)
    add_model_arguments(p)
    p.add_argument("--pipeline", metavar="FILE",
                   help="pipeline YAML (or shipped name: detox-all, sv-finetune-then-dinm): several editors in order")
    p.add_argument("--cases", help="SafeEdit-format JSON file or dataset name (DINM)")
    p.add_argument("--case-id", help="only the case with this id (DINM)")
    p.add_argument("--limit", type=int, help="at most this many cases")
    p.add_argument("--pairs", help="steering-pair JSONL file (DeStein)")
    p.add_argument("--data", help="training data JSONL file (security vectors)")
    p.add_argument("--out", help="save the edit to this folder")
    p.add_argument("--json", help="write results as JSON to this file")
    p.add_argument("--max-new-tokens", type=int, help="tokens per evaluation answer (default from hparams)")
    p.add_argument("--alpha", type=float, help="steering strength override (DeStein)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _add(sub, "demo", "The main job: detoxify the embedded model with DINM on one shipped case, show before/after.",
             "detox demo", cmd_demo)
    add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=60, help="tokens per answer (default 60)")

    p = _add(sub, "steer", "Show base vs DeStein-steered continuations side by side.",
             "detox steer --alpha 0.5 'You are such a'", cmd_steer)
    from detox_plugins.destein.commands import add_steer_arguments  # cheap: argparse only

    add_steer_arguments(p)

    p = _add(sub, "finetune", "Fine-tune on user data, optionally with a frozen security vector active.",
             "detox finetune --data my.jsonl --vector edits/sv --out runs/ft", cmd_finetune)
    add_model_arguments(p)
    p.add_argument("--data", required=True, help="JSONL rows {\"prompt\", \"response\"}")
    p.add_argument("--vector", help="security-vector folder saved by `detox edit`")
    p.add_argument("--out", required=True, help="output folder (an edit artifact)")
    p.add_argument("--mode", choices=("lora", "full"), help="train a new LoRA (default) or the backbone itself")
    p.add_argument("--export", choices=("adapter", "merged"), help="save the user adapter alone or merged deltas")
    p.add_argument("--epochs", type=float, help="override the hparams' fine-tuning epochs")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--lr", type=float, help="override the fine-tuning learning rate")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--json", help="write a summary as JSON to this file")

    p = _add(sub, "apply", "Apply a saved edit (composed or not) to a model, report what it changes, optionally re-save it.",
             "detox apply edits/detox-all --model ./my-model --out edits/detox-all-copy", cmd_apply)
    p.add_argument("directory", metavar="DIR", help="a folder written by `detox edit --out` or Edit.save")
    add_model_arguments(p)
    p.add_argument("--out", metavar="DIR2", help="save the applied edit again to this folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--json", help="write the report as JSON to this file")

    _add_optional_commands(sub)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser, *, hparams_required: bool = False) -> None:
    parser.add_argument("--model", help="model name or local folder (default: the embedded smollm2-135m-instruct)")
    parser.add_argument("--hparams", required=hparams_required, help="hyperparameter name (DINM/smollm2-135m) or file")
    parser.add_argument("--edit", action="append", metavar="DIR", help="apply a saved edit first (repeatable)")
    parser.add_argument("--force", action="store_true", help="apply --edit even if the model fingerprint differs")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weights dtype")
    parser.add_argument("--device", help="cpu, cuda, cuda:N")


def _add_optional_commands(sub: Any) -> None:
    """Subcommands contributed by the evaluation package (judge, eval)."""
    try:
        from detox_plugins.evaluation.commands import add_subcommands
    except ImportError as exc:  # pragma: no cover - only when the package is broken
        logger.debug("evaluation commands unavailable: %s", exc)
        return
    add_subcommands(sub)


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except DetoxError as exc:
        if args.debug:
            raise
        print(f"detox: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("detox: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # one line for users; --debug for the traceback
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"detox: unexpected error: {type(exc).__name__}: {message} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
