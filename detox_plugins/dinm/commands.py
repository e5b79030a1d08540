"""DINM's own ``detox`` verbs, contributed through ``register_commands``: ``detox demo`` (the main
job: one case before/after) and ``detox safeedit`` (SafeEdit's per-case protocol: answer, edit,
answer, revert, with the scores). ``detox edit --hparams DINM/...`` is the host's generic edit.

Both load the model through ``registry.commandline.load_model_from_args``, so ``--model``,
``--hparams``, ``--dtype``, ``--device`` and ``--edit`` mean what they mean on every command.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

from registry.command import Command
from registry.commandline import check_new_output, hparams_from_args, load_model_from_args
from registry.writer import write_file

from .cases import DEFAULT_CASES, as_request, load_cases
from .protocol import evaluation_prompts
from .inputs import with_suffix

DEFAULT_HPARAMS = "DINM/smollm2-135m"
#: The shipped case the demo edits on (see hparams/DINM/smollm2-135m.yaml for the measurements).
DEMO_CASE_ID = 0
DEMO_BENIGN_PROMPT = "How do I make a simple tomato pasta sauce?"


def _short(text: str, width: int = 100) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...") or "(empty)"


def _save_edit(out: str, many: bool, overwrite: bool):
    def save(request: Any, edit: Any) -> None:
        target = Path(out) / f"case-{request.case_id}" if many else Path(out)
        edit.save(target, overwrite=overwrite)
        print(f"saved the edit of case {request.case_id} to {target}")
    return save


def add_safeedit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", help=f"SafeEdit JSON file (default: {DEFAULT_CASES}, the shipped cases)")
    parser.add_argument("--case-id", help="only the case with this id")
    parser.add_argument("--limit", type=int, help="at most this many cases")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per answer (default from the hparams)")
    parser.add_argument("--out", help="save each case's edit (one folder per case when there are several)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out folders and --json file")
    parser.add_argument("--json", help="write the scores and every answer as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_safeedit(args: argparse.Namespace) -> int:
    """Edit each case (SafeEdit protocol: answer, edit, answer, revert), print and optionally save."""
    from .editor import DINMEditor

    hparams = hparams_from_args(args, DEFAULT_HPARAMS)
    editor = DINMEditor(hparams, progress=not args.quiet)
    cases = load_cases(args.cases, case_id=args.case_id, limit=args.limit)
    out = args.out
    check_new_output(out, overwrite=args.overwrite)
    check_new_output(args.json, overwrite=args.overwrite, kind="file", what="--json")
    model, tokenizer, _ = load_model_from_args(args, default=hparams)
    report = editor.safeedit_protocol(
        model, tokenizer, cases, max_new_tokens=args.max_new_tokens, progress=not args.quiet,
        on_edit=_save_edit(out, len(cases) > 1, args.overwrite) if out else None,
    )
    for case in report.cases:
        print(f"\n=== case {case['case_id']} ({case['category']}): layer {case['layers']}, "
              f"{case['steps']} steps, {case['edit_seconds']:.2f} s")
        for metric in case["responses"]["post"]:
            print(f"[{metric}] {_short(case['prompts']['post'][metric], 90)}")
            for stage in case["responses"]:
                label = case["labels"][stage][metric]
                verdict = {0.0: "safe", 1.0: "unsafe"}.get(label, "empty")
                print(f"  {stage:>10} ({verdict}): {_short(case['responses'][stage][metric])}")
    print(f"\nSafeEdit scores over {len(report.cases)} case(s) (judge {report.settings['judge']}, "
          f"eval_prompt {report.settings['eval_prompt']}; higher = safer):")
    print(report.table())
    print(f"edit time: {report.edit_seconds:.2f} s in total")
    json_path = args.json
    if json_path:
        write_file(json_path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False), overwrite=args.overwrite,
                   what="--json")
        print(f"wrote {json_path}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Detoxify the embedded model on one shipped case; show a harmful and a benign prompt before/after."""
    from detox_plugins.evaluation.generate import generate
    from detox_plugins.evaluation.judges import is_refusal

    from .editor import DINMEditor

    hparams = hparams_from_args(args, DEFAULT_HPARAMS)
    cases = load_cases(DEFAULT_CASES)
    case = next((c for c in cases if c.case_id == DEMO_CASE_ID), cases[0])
    request = as_request(case)
    model, tokenizer, _ = load_model_from_args(args, default=hparams)
    editor = DINMEditor(hparams)
    harmful = evaluation_prompts(request, hparams)["post"]["DS"]
    benign = with_suffix(DEMO_BENIGN_PROMPT, hparams.suffix_system_prompt, hparams.use_suffix)
    chat = hparams.use_chat_template if hparams.effective_eval_prompt == "consistent" else False
    gen = dict(max_new_tokens=args.max_new_tokens, use_chat_template=chat, progress=True)
    print("DINM demo: answering the harmful and the benign prompt before the edit ...", flush=True)
    before = generate(model, tokenizer, [harmful, benign], desc="answers before", **gen)
    print(f"editing with DINM on case {case.case_id} ...", flush=True)
    edit = editor.edit(model, tokenizer, [request])
    try:
        print("answering again after the edit ...", flush=True)
        after = generate(model, tokenizer, [harmful, benign], desc="answers after", **gen)
    finally:
        edit.revert()
    info = edit.metadata["cases"][0]
    print(f"DINM demo: case {case.case_id} ({case.category}) of the shipped SafeEdit sample, "
          f"mode {hparams.mode}")
    print(f"\nHarmful prompt: {_short(harmful, 300)}")
    print(f"  before the edit: {_short(before[0], 300)}")
    print(f"\nEdited layer {info['layers']} ({', '.join(info['tensors'])}): {info['steps']} steps "
          f"in {edit.metadata['edit_seconds']:.2f} s")
    print(f"  after the edit:  {_short(after[0], 300)}")
    print(f"\nBenign prompt: {_short(benign, 300)}")
    print(f"  before the edit: {_short(before[1], 300)}")
    print(f"  after the edit:  {_short(after[1], 300)}")
    print(f"\nRefusal (GCG strings): harmful {is_refusal(before[0])} -> {is_refusal(after[0])}, "
          f"benign {is_refusal(before[1])} -> {is_refusal(after[1])}. The edit was reverted; save one with "
          f"`detox edit --hparams {args.hparams or DEFAULT_HPARAMS} --cases safeedit-sample --case-id {case.case_id} --out DIR`.")
    return 0


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=60, help="tokens per answer (default 60)")


COMMANDS = (
    Command("demo", "The main job: detoxify the embedded model with DINM on one shipped case, show before/after.",
            run_demo, add_demo_arguments, examples=("detox demo", "detox demo --model ./my-model --hparams my-dinm.yaml")),
    Command("safeedit", "SafeEdit's protocol with DINM: per case, answer, edit, answer again, revert; print the scores.",
            run_safeedit, add_safeedit_arguments,
            examples=("detox safeedit --cases safeedit-sample --limit 5 --max-new-tokens 32 --json out/safeedit.json",
                      "detox safeedit --hparams DINM/smollm2-135m-compat --case-id 4 --out edits/case4")),
)
