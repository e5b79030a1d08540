"""The ``detox`` command: discover editors, inspect hparams, generate, edit, evaluate.

Every subcommand has ``--help`` with an example. Errors print as one line (``--debug`` shows the
traceback) and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from registry.catalog import from_hparams, resolve_hparams_path, shipped_hparams
from registry.commandline import (MODEL_FLAGS, add_model_arguments, check_max_new_tokens_arg, check_new_output,
                                  load_model_from_args)
from registry.compose import ComposedEdit, StepFootprint, applied_footprints, describe_edit, raise_on_conflicts
from registry.errors import DetoxError, HyperParamsError
from registry.fingerprint import model_fingerprint
from registry import safeyaml, writer
from registry.hparams import HyperParams, deep_merge, peek_alg_name
from registry.inputs import InputField
from registry.pipeline import load_pipeline, run_pipeline
from registry.plugins import CommandInfo, get_editor, list_commands, list_editors, load_editors
from registry.saved import SavedEdit, load_edit

from detox_plugins.evaluation.commands import add_subcommands as add_evaluation_commands
from detox_plugins.evaluation.suite import markdown_table

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
    commands = list_commands()
    if commands:
        print("\ncommands the plugins add:")
        _print_table([("command", "distribution", "summary")] + [
            (c.command.name, c.distribution, textwrap.shorten(c.command.summary, 70)) for c in commands])
    return 0


# ---------------------------------------------------------------------- hparams
def cmd_hparams_list(args: argparse.Namespace) -> int:
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
def cmd_generate(args: argparse.Namespace) -> int:
    from detox_plugins.evaluation.generate import generate

    prompt = " ".join(args.prompt).strip()
    if not prompt:
        raise DetoxError("empty prompt; pass the text to answer, e.g. detox generate 'What is the capital of France?'")
    model, tokenizer, _ = load_model_from_args(args)
    responses = generate(
        model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens,
        use_chat_template=False if args.no_chat_template else None, progress=False,
    )
    print(responses[0])
    return 0


# ---------------------------------------------------------------------- edit (any registered editor)
#: Flags of `detox edit` itself; an editor input with one of these keys cannot become a flag.
EDIT_FLAGS = frozenset({*MODEL_FLAGS, "pipeline", "out", "json", "overwrite", "quiet", "set", "help", "debug",
                        "verbose"})


def input_dest(field: InputField) -> str:
    """Where argparse keeps an editor input's flag (prefixed: no clash with the host's own flags)."""
    return "input_" + field.dest


def editor_inputs() -> dict[str, list[tuple[str, InputField]]]:
    """Input key -> [(editor name, field)] over every installed editor (the flags of `detox edit`)."""
    table: dict[str, list[tuple[str, InputField]]] = {}
    for name, editor_class in sorted(load_editors().items(), key=lambda item: item[0].lower()):
        for field in editor_class.inputs:
            if field.key in EDIT_FLAGS:
                logger.warning("editor %s declares input %r, which is a flag of `detox edit` itself; it is "
                               "available in pipelines only", name, field.key)
                continue
            table.setdefault(field.key, []).append((name, field))
    return table


def add_editor_input_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per input key any installed editor declares; the help says which editors read it."""
    group = parser.add_argument_group("editor inputs (each read by the editors named in brackets)")
    for key, owners in sorted(editor_inputs().items()):
        first = owners[0][1]
        helps: dict[str, list[str]] = {}
        for editor, field in owners:
            helps.setdefault(field.help, []).append(editor)
        text = " | ".join(f"[{', '.join(editors)}] {help_text}" for help_text, editors in helps.items())
        group.add_argument(first.flag, dest=input_dest(first), type=first.type, metavar=first.metavar,
                           help=text.replace("%", "%%"))


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as a nested mapping (``pairs.path=x`` sets ``{"pairs": {"path": "x"}}``);
    each VALUE is read as a YAML scalar (``5e-4``, ``true``, ``[3]``)."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise HyperParamsError(f"--set takes KEY=VALUE (e.g. --set num_steps=5), got {pair!r}")
        try:
            value = safeyaml.load(raw, f"--set {key.strip()}") if raw.strip() else raw
        except safeyaml.YAMLRefusedError:
            raise  # an alias bomb or a duplicate key is refused, never taken as text
        except HyperParamsError:
            value = raw  # not YAML (e.g. a path with a colon): the text as given
        node = changes
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise HyperParamsError(f"--set {pair!r}: {part!r} is set both as a value and as a mapping")
        node[leaf] = value
    return changes


def hparams_with_overrides(name: str, pairs: Sequence[str]) -> HyperParams:
    """The hparams ``--hparams`` names, with every ``--set`` applied and validated like the file."""
    hparams = from_hparams(name)
    changes = parse_overrides(pairs)
    if not changes:
        return hparams
    return type(hparams).from_dict(deep_merge(hparams.to_dict(), changes), source=f"{name} + --set")


def given_inputs(args: argparse.Namespace) -> dict[str, tuple[InputField, Any]]:
    """The editor-input flags given on the command line: key -> (the flag's field, its value)."""
    given = {}
    for key, owners in editor_inputs().items():
        value = getattr(args, input_dest(owners[0][1]), None)
        if value is not None:
            given[key] = (owners[0][1], value)
    return given


def chosen_inputs(args: argparse.Namespace, editor_class: type) -> dict[str, Any]:
    """The editor's input values given on the command line; a flag only other editors read is refused."""
    mine = {field.key for field in editor_class.inputs}
    given = given_inputs(args)
    values = {key: value for key, (_, value) in given.items() if key in mine}
    foreign = [field.flag for key, (field, _) in given.items() if key not in mine]
    if foreign:
        takes = ", ".join(f.flag for f in editor_class.inputs if f.key not in EDIT_FLAGS) or "no input flags"
        raise DetoxError(f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not an input of "
                         f"{editor_class.name}; it takes {takes}")
    return values


def cmd_edit(args: argparse.Namespace) -> int:
    """``detox edit --hparams ALG/model``: run that editor with its inputs; save the edit to ``--out``."""
    if args.pipeline:
        if args.hparams:
            raise DetoxError("pass either --hparams (one editor) or --pipeline (several in order), not both")
        return cmd_edit_pipeline(args)
    if not args.hparams:
        raise DetoxError("pass --hparams ALG/model (one editor, e.g. DINM/smollm2-135m) or --pipeline FILE "
                         "(several editors in order, e.g. detox-all)")
    editor_class = get_editor(peek_alg_name(resolve_hparams_path(args.hparams)))
    values = chosen_inputs(args, editor_class)
    hparams = hparams_with_overrides(args.hparams, args.set)
    check_new_output(args.out, overwrite=args.overwrite)
    check_new_output(args.json, overwrite=args.overwrite, kind="file", what="--json")
    editor = editor_class(hparams)
    inputs = editor.read_inputs(values)  # files are read now: a bad one fails before the model loads
    model, tokenizer, applied = load_model_from_args(args, default=hparams)
    before = model_fingerprint(model)
    label = f"{editor_class.name} ({args.hparams})"
    if applied:  # edits from --edit DIR: this edit must not break them
        context = [StepFootprint(f"--edit {s.label}", s.footprint) for s in applied_footprints(applied)]
        raise_on_conflicts(context + [StepFootprint(label, editor.planned_footprint(model, inputs))])
    started = time.perf_counter()
    print(f"editing with {editor_class.name} ...", flush=True)
    edit = editor.edit(model, tokenizer, inputs)
    seconds = time.perf_counter() - started
    try:
        if applied:
            raise_on_conflicts(context + [StepFootprint(label, edit.footprint())], only_last=True, undone=True)
        rows = describe_edit(edit)
        print(f"{editor_class.name} edit of {getattr(model.config, '_name_or_path', '?')} in {seconds:.1f} s "
              f"({edit.payload})")
        _print_steps(rows)
        for line in edit.summary():
            print(f"  {line}")
        summary: dict[str, Any] = {"editor": editor_class.name, "hparams": hparams.to_dict(), "inputs": values,
                                   "steps": rows, "seconds": round(seconds, 3), "fingerprint_before": before,
                                   "fingerprint_after": model_fingerprint(model), "out": args.out,
                                   "edits_applied_first": list(args.edit or [])}
        if args.out:
            path = edit.save(args.out, overwrite=args.overwrite)
            print(f"saved the edit to {path}")
            print(f"  apply it: detox apply {path}    evaluate it: detox eval --edit {path} --dataset ... --judge ...")
        else:
            print("not saved: pass --out DIR to keep the edit")
    finally:
        edit.revert()
    _write_json(args.json, summary, overwrite=args.overwrite)
    return 0


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


def _write_json(path: Optional[str], data: dict[str, Any], *, overwrite: bool = False) -> None:
    if path:
        writer.write_file(path, json.dumps(data, indent=2, sort_keys=True, default=str), overwrite=overwrite,
                          what="--json")
        print(f"wrote {path}")


def cmd_edit_pipeline(args: argparse.Namespace) -> int:
    """``detox edit --pipeline FILE``: run every step on one model; save the composed edit to --out."""
    if args.set:
        raise DetoxError("--set changes one editor's hparams; in a pipeline, put the changes in the step's "
                         "'override:' mapping")
    foreign = [field.flag for field, _ in given_inputs(args).values()]
    if foreign:
        raise DetoxError(f"{', '.join(foreign)}: a pipeline's steps carry their own inputs; put them in the "
                         f"pipeline file")
    pipeline = load_pipeline(args.pipeline)  # every step's hparams and inputs are validated here
    out = args.out
    check_new_output(out, overwrite=args.overwrite)
    check_new_output(args.json, overwrite=args.overwrite, kind="file", what="--json")
    model, tokenizer, applied = load_model_from_args(args, default=pipeline.model_spec())
    before = model_fingerprint(model)
    print(f"pipeline {pipeline.name} ({len(pipeline.steps)} steps) from {pipeline.source}")
    composed = run_pipeline(pipeline, model, tokenizer, context=applied)  # --edit DIRs: checked, not included
    rows = describe_edit(composed)
    _print_steps(rows, composed.metadata.get("step_labels", []), composed.metadata.get("step_seconds", []))
    summary: dict[str, Any] = {"pipeline": pipeline.record(), "steps": rows, "fingerprint_before": before,
                               "fingerprint_after": model_fingerprint(model), "out": out}
    if out:
        path = composed.save(out, overwrite=args.overwrite)
        print(f"saved the composed edit to {path} (manifest.json lists {len(composed.steps)} steps)")
        print(f"  apply it: detox apply {path}    evaluate it: detox eval --edit {path} --dataset ... --judge ...")
    else:
        print("not saved: pass --out DIR to keep the composed edit")
    composed.revert()
    _write_json(args.json, summary, overwrite=args.overwrite)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """``detox apply DIR``: apply a saved edit (composed or not), report what it changed, re-save it."""
    saved = load_edit(args.directory)
    out = args.out
    check_new_output(out, overwrite=args.overwrite)
    check_new_output(args.json, overwrite=args.overwrite, kind="file", what="--json")
    model, tokenizer, _ = load_model_from_args(args, default=_saved_model_name(saved))
    before = model_fingerprint(model)
    edit = saved.apply(model, tokenizer, force=args.force)
    after = model_fingerprint(model)
    rows = describe_edit(edit)
    kind = f"composed, {len(rows)} steps" if edit.payload == "composed" else edit.payload
    print(f"applied {saved.path} ({saved.editor}, {kind})")
    _print_steps(rows, edit.metadata.get("step_labels", []))
    print(f"model fingerprint {before} -> {after}")
    if out:
        path = edit.save(out, overwrite=args.overwrite)
        print(f"re-saved the applied edit to {path}")
    _write_json(args.json, {"edit": str(saved.path), "editor": saved.editor, "steps": rows,
                            "fingerprint_before": before, "fingerprint_after": after, "out": out},
                overwrite=args.overwrite)
    edit.revert()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``detox export DIR --out OUT``: a standard checkpoint of the edited model (merged) or a PEFT adapter."""
    saved = load_edit(args.directory)
    check_new_output(args.out, overwrite=args.overwrite)
    quality = _quality_table(args.report) if args.report else None
    model, tokenizer, applied = load_model_from_args(args, default=_saved_model_name(saved))
    edit = saved.apply(model, tokenizer, force=args.force)
    whole = ComposedEdit(model, [*applied, edit]) if applied else edit  # --edit DIRs are part of the weights
    try:
        path = whole.export(args.out, tokenizer=tokenizer, format=args.format, quality=quality,
                            overwrite=args.overwrite)
    finally:
        edit.revert()
    files = sorted(p.name for p in Path(path).iterdir())
    print(f"exported {saved.path} ({saved.editor}, {saved.payload}) as a {args.format} checkpoint to {path}")
    print(f"  files: {', '.join(files)}")
    if args.format == "merged":
        print(f"  load it: AutoModelForCausalLM.from_pretrained({str(path)!r})   serve it: vllm serve {path}")
    else:
        print(f"  load it: PeftModel.from_pretrained(base_model, {str(path)!r})   serve it: vllm serve BASE "
              f"--enable-lora --lora-modules detox={path}")
    return 0


def _quality_table(report: str) -> str:
    """The markdown quality table of a ``detox report --json`` file, for the model card."""
    try:
        return markdown_table(json.loads(Path(report).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DetoxError(f"--report {report}: not a `detox report --json` file ({type(exc).__name__}: {exc})") from None


def _saved_model_name(saved: SavedEdit) -> Optional[str]:
    """The hparams' model_name recorded in a saved edit (its first step for a composed one)."""
    if saved.payload == "composed":
        try:
            return _saved_model_name(load_edit(saved.step_folders()[0]))
        except DetoxError:
            return None
    name = (saved.manifest.get("hparams") or {}).get("model_name")
    return name if isinstance(name, str) else None


def _plugin_command(info: CommandInfo) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return int(info.command.run(args) or 0)
    return run


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The whole ``detox`` parser: the host's commands, then every command an installed plugin adds."""
    commands = list_commands()
    parser = argparse.ArgumentParser(
        prog="detox",
        description="Detoxify language models with pluggable, revertible editors (DINM, DeStein, security vectors).\n"
                    "Commands marked [distribution] come from installed editor plugins.",
        formatter_class=_formatter,
        epilog="examples:\n  detox plugins\n  detox generate 'How do I bake bread?'\n  detox hparams list",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = _add(sub, "plugins", "List installed editors, the commands they add, and plugins that failed to load.",
             "detox plugins --json", cmd_plugins)
    p.add_argument("--json", action="store_true", help="machine-readable output (the editors and failures)")

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

    editors = ", ".join(sorted(load_editors(), key=str.lower)) or "none installed"
    p = _add(sub, "edit", f"Run any installed editor ({editors}) from a hyperparameter file with that editor's "
             "inputs, or several editors in order from a pipeline file; save the edit.",
             "detox edit --hparams DINM/smollm2-135m --cases safeedit-sample --case-id 1 --out edits/dinm1\n"
             "  detox edit --hparams DeStein/smollm2-135m --set alpha=0.5 --out edits/destein\n"
             "  detox edit --hparams FT/smollm2-135m --requests facts.jsonl --out edits/ft   # a plugin's editor\n"
             "  detox edit --pipeline detox-all --out edits/detox-all   # DeStein then DINM, one composed edit", cmd_edit)
    add_model_arguments(p, hparams_help="hyperparameter name (DINM/smollm2-135m) or file: chooses the editor")
    p.add_argument("--pipeline", metavar="FILE",
                   help="pipeline YAML (or shipped name: detox-all, sv-finetune-then-dinm): several editors in order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one hparams field (repeatable; nested: pairs.num_pairs=10)")
    p.add_argument("--out", help="save the edit to this folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder and --json file")
    p.add_argument("--json", help="write a summary as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_editor_input_arguments(p)

    p = _add(sub, "apply", "Apply a saved edit (composed or not) to a model, report what it changes, optionally re-save it.",
             "detox apply edits/detox-all --model ./my-model --out edits/detox-all-copy", cmd_apply)
    p.add_argument("directory", metavar="DIR", help="a folder written by `detox edit --out` or Edit.save")
    add_model_arguments(p)
    p.add_argument("--out", metavar="DIR2", help="save the applied edit again to this folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder and --json file")
    p.add_argument("--json", help="write the report as JSON to this file")

    p = _add(sub, "export", "Write a saved edit as a standard checkpoint that loads without detox-plugins: a merged "
             "Hugging Face folder (DINM, FT, merged fine-tunes, DeStein bias folds, composed edits) or a PEFT adapter.",
             "detox export edits/dinm-0 --out exports/dinm-0\n"
             "  detox export runs/ft --format peft --out exports/ft-adapter   # a fine-tune saved as an adapter\n"
             "  detox export edits/detox-all --report out/report.json --out exports/detox-all", cmd_export)
    p.add_argument("directory", metavar="DIR", help="a folder written by `detox edit --out`, `detox finetune` or Edit.save")
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="the checkpoint folder to write")
    p.add_argument("--format", choices=("merged", "peft"), default="merged",
                   help="merged: the edited model as a Hugging Face folder (default); peft: an adapter folder")
    p.add_argument("--report", metavar="FILE", help="a `detox report --json` file whose table goes into the model card")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")

    add_evaluation_commands(sub)
    for info in commands:
        command = info.command
        examples = "\n  ".join(command.examples)
        p = sub.add_parser(command.name, help=f"{command.summary} [{info.distribution}]",
                           description=f"{command.summary}\n\nadded by {info.distribution} {info.version} "
                                       f"(plugin {info.plugin!r})\n\nexample:\n  {examples}",
                           formatter_class=_formatter)
        p.set_defaults(func=_plugin_command(info))
        if command.model_arguments:
            add_model_arguments(p)
        command.add_arguments(p)
    return parser


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def quiet_library_bars(verbosity: int) -> None:
    """transformers' own "Loading weights" bar and its info logs only with ``-v`` (the CLI's choice; the
    library keeps its defaults). Set through transformers' environment switches, read when it imports."""
    if verbosity == 0:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()  # loads the plugins: in strict mode a broken one raises here
    except DetoxError as exc:
        print(f"detox: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if getattr(args, "quiet", False):
        os.environ["TQDM_DISABLE"] = "1"  # every progress bar, whichever editor draws it
    try:
        quiet_library_bars(args.verbose)
        check_max_new_tokens_arg(args)  # the one rule for every command with --max-new-tokens
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
        print(f"detox: unexpected error: {type(exc).__name__}: {message[:300]} (rerun with --debug for the "
              f"traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED
    finally:
        writer.release_all()  # the --out locks this command took; parent folders it made and left empty go


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
