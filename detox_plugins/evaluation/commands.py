"""The ``detox judge`` and ``detox eval`` subcommands; ``detox.cli`` adds them via :func:`add_subcommands`.

Each subcommand's ``func(args) -> int`` prints a small table; errors are raised as DetoxError
subclasses and printed by the CLI as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from registry.commandline import add_model_arguments, load_model_from_args
from registry.errors import DetoxError
from registry.models import load_model

from .datasets import describe_dataset, known_datasets, load_dataset, read_jsonl
from .judges import get_judge, known_judges
from .metrics import FLUENCY_TOKENIZERS, continuation_perplexities, mean_perplexity, perplexity_interval
from .errors import DatasetError
from .report import (check_results_paths, group_by_prompt, make_items, score_items, summarize, summary_table,
                     write_results)

logger = logging.getLogger(__name__)

JUDGE_EXAMPLE = "detox judge --judge refusal --json out/judged.json answers.jsonl"
EVAL_EXAMPLE = "detox eval --dataset harmbench --judge refusal --limit 50 --json out/harmbench.json"
REPORT_EXAMPLE = "detox report --compare edits/dinm-1 --limit 10 --json out/report.json"


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_subcommands(subparsers: Any) -> None:
    """Add ``judge``, ``eval`` and ``report`` to the ``detox`` argparse subparsers."""
    judges = ", ".join(known_judges())
    datasets = ", ".join(known_datasets())

    summary = "Score existing (prompt, response) rows with a judge and print the aggregate."
    p = subparsers.add_parser(
        "judge",
        help=summary,
        description=f"{summary}\n\njudges: {judges}\n\nexample:\n  {JUDGE_EXAMPLE}\n"
        "  detox judge --judge profanity --text-field prompt toxigen   # the judge's ToxiGen-200 AUC",
        formatter_class=_formatter,
    )
    p.set_defaults(func=run_judge)
    p.add_argument("source", metavar="FILE", help="JSONL rows with 'response' (and 'prompt'), or a dataset name")
    _add_judge_arguments(p)
    p.add_argument("--text-field", default="response", help="field to score (default: response)")
    p.add_argument("--json", metavar="OUT", help="write the aggregate to OUT and the rows to OUT.items.jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    summary = "Generate answers for a dataset, judge them, and print and save the metrics."
    p = subparsers.add_parser(
        "eval",
        help=summary,
        description=f"{summary}\n\njudges: {judges}\ndatasets: {datasets}, or a .jsonl/.json/.txt file\n\n"
        f"example:\n  {EVAL_EXAMPLE}\n"
        "  detox eval --dataset rtp-challenging --judge profanity --no-chat-template --do-sample \\\n"
        "      --num-samples 25 --top-p 0.9 --max-new-tokens 20 --limit 20 --json out/rtp.json",
        formatter_class=_formatter,
    )
    p.set_defaults(func=run_eval)
    add_model_arguments(p)
    p.add_argument("--dataset", required=True, metavar="NAME_OR_FILE", help=f"{datasets}, or a file")
    _add_judge_arguments(p)
    p.add_argument("--limit", type=int, help="first N prompts (SafeEdit: N cases, 5 prompts each)")
    p.add_argument("--json", metavar="OUT", help="write the aggregate to OUT and the items to OUT.items.jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json files")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--max-input-tokens", type=int, help="keep only each prompt's rightmost N tokens")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--num-samples", type=int, default=1, help="answers per prompt (EMT/TP need > 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling, 0 = off (default 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--no-chat-template", action="store_true", help="feed raw prompts (continuation tasks)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--system-prompt", help="system message (or a prefix without a chat template)")
    prompt.add_argument("--safety-prompt", action="store_true",
                        help="the system message of detox report's safety-prompt baseline row")
    p.add_argument("--ppl", action="store_true", help="also score conditional perplexity of the answers")
    p.add_argument("--ppl-model", help="model for --ppl (default: the same model without --edit)")
    p.add_argument("--fluency-tokenizer", choices=FLUENCY_TOKENIZERS, default="regex", help="default: regex")
    p.add_argument("--no-cache", action="store_true",
                   help="generate even when $DETOX_CACHE/eval holds this model's answers (used without --edit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_report_parser(subparsers)


def _add_report_parser(subparsers: Any) -> None:
    from .suite import SuiteSettings, add_suite_arguments

    d = SuiteSettings()
    summary = "Compare your saved edit(s) with the base model: the benchmarks' quality table."
    p = subparsers.add_parser(
        "report",
        help=summary,
        description=f"{summary}\n\nOne row per configuration (the safety-prompt baseline: no edit, a safety system prompt; base; "
        "then each --compare edit), on the same items, every rate with its 95 % Wilson interval and every mean "
        "with its 95 % bootstrap interval over prompts: "
        "HarmBench and Do-Not-Answer refusal, benign over-refusal and fluency, RealToxicityPrompts "
        "challenging EMT/TP (profanity judge) and perplexity, GSM8K-100 exact match. Each --compare edit "
        "is applied, evaluated, reverted and checked to leave the model as it was; --edit DIR (as on every "
        "command) is applied first and is part of the base.\n\n"
        f"default items: harmbench {d.harmbench}, donotanswer {d.donotanswer}, benign {d.benign}, "
        f"rtp {d.rtp} x {d.rtp_samples} samples, gsm8k {d.gsm8k} (about 10 minutes per configuration "
        "on a 2-core CPU for a 135M model; --limit N caps every count)\n\n"
        f"example:\n  {REPORT_EXAMPLE}\n  detox report --model ./my-model --compare a=edits/a --compare b=edits/b --gsm8k 0",
        formatter_class=_formatter,
    )
    p.set_defaults(func=run_report)
    p.add_argument("--compare", action="append", required=True, metavar="[NAME=]DIR",
                   help="a saved edit folder, evaluated as its own row (repeatable)")
    add_model_arguments(p)
    p.add_argument("--no-base", action="store_true", help="leave out the base-model row")
    p.add_argument("--no-safety-prompt", action="store_true",
                   help="leave out the first row: the model without an edit, prompted with a safety system prompt")
    p.add_argument("--json", metavar="OUT", help="write the summary to OUT and every answer to OUT.items.jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_suite_arguments(p)


def _add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", default="refusal", help="refusal (default), profanity or classifier:PATH")
    parser.add_argument(
        "--judge-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="judge option, repeatable (e.g. unsafe_label=0, mode=argmax, input=prompt_response)",
    )


def _judge_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise DetoxError(f"--judge-arg must look like KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def _read_judge_rows(source: str, text_field: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    path = Path(source).expanduser()
    if path.is_file():
        rows = read_jsonl(path, required=(text_field,))
    elif source in known_datasets():
        rows = load_dataset(source)
    else:
        raise DatasetError(f"{source!r} is neither a JSONL file nor a dataset ({', '.join(known_datasets())})")
    if not rows:
        raise DatasetError(f"{source!r} has no rows")
    missing = next((i for i, row in enumerate(rows) if not isinstance(row.get(text_field), str)), None)
    if missing is not None:
        raise DatasetError(f"{source}: row {missing} has no string field {text_field!r}; pass --text-field")
    return rows, describe_dataset(source)


def run_judge(args: argparse.Namespace) -> int:
    """``detox judge``: score rows that already have responses."""
    start = time.perf_counter()
    check_results_paths(args.json, overwrite=args.overwrite)
    judge = get_judge(args.judge, **_judge_options(args.judge_arg))
    rows, dataset = _read_judge_rows(args.source, args.text_field)
    items = [dict(row) for row in rows]
    judge_start = time.perf_counter()
    score_items(items, judge, text_field=args.text_field)
    summary = summarize(items, judge, text_field=args.text_field)
    summary.update(
        judge_spec=args.judge,
        dataset=dataset["name"],
        dataset_version=dataset["version"],
        text_field=args.text_field,
        timing={"judge_s": time.perf_counter() - judge_start, "total_s": time.perf_counter() - start},
    )
    _report(summary, items, args.json, overwrite=args.overwrite)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """``detox eval``: generate for a dataset, judge, summarize."""
    start = time.perf_counter()
    check_results_paths(args.json, overwrite=args.overwrite)
    if getattr(args, "safety_prompt", False):
        from .suite import SAFETY_SYSTEM_PROMPT

        args.system_prompt = SAFETY_SYSTEM_PROMPT
    judge = get_judge(args.judge, **_judge_options(args.judge_arg))
    rows = load_dataset(args.dataset, limit=args.limit)
    dataset = describe_dataset(args.dataset)
    model, tokenizer, applied = load_model_from_args(args)
    load_s = time.perf_counter() - start

    from .generate import generate, uses_chat_template

    use_chat = False if args.no_chat_template else None
    chat = uses_chat_template(tokenizer, use_chat)
    decoding = {
        "do_sample": args.do_sample,
        "max_new_tokens": args.max_new_tokens,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "max_input_tokens": args.max_input_tokens,
        **({"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k} if args.do_sample else {}),
    }
    cache_inputs = None
    if not getattr(args, "no_cache", False) and not applied and not getattr(args, "edit", None):
        from .cache import model_inputs, rows_digest

        cache_inputs = {
            "kind": "eval", "model": model_inputs(model, tokenizer),
            "dataset": {**dataset, "rows": rows_digest(rows)}, "decoding": decoding,
            "prompt_format": {"chat_template": chat, "system_prompt": args.system_prompt},
            "judge": {"spec": args.judge, "options": _judge_options(args.judge_arg), "name": judge.name,
                      "version": judge.version},
        }
    entry = None
    if cache_inputs is not None:
        from .cache import load

        entry = load(cache_inputs, n_responses=len(rows))
        if entry is not None and not isinstance(entry.get("items"), list):
            entry = None
    if entry is not None:
        items, generate_s, judge_s = entry["items"], 0.0, 0.0
    else:
        items, generate_s, judge_s = _generate_and_judge(args, model, tokenizer, rows, dataset, judge, decoding,
                                                         use_chat)
        if cache_inputs is not None:
            from .cache import store

            store(cache_inputs, {"responses": _responses(items, len(rows)), "items": items})
    summary = summarize(items, judge, fluency_tokenizer=args.fluency_tokenizer)
    timing = {"load_s": load_s, "generate_s": generate_s, "judge_s": judge_s}

    if args.ppl:
        ppl_start = time.perf_counter()
        summary.update(_perplexity(args, model, tokenizer, applied, rows, items, chat))
        timing["ppl_s"] = time.perf_counter() - ppl_start
    timing["total_s"] = time.perf_counter() - start

    summary.update(
        judge_spec=args.judge,
        dataset=dataset["name"],
        dataset_version=dataset["version"],
        n_prompts=summary.get("n_prompts", len(rows)),
        model=_model_label(args),
        model_name_or_path=getattr(getattr(model, "config", None), "_name_or_path", None),
        edits=list(getattr(args, "edit", None) or []),
        decoding=decoding,
        prompt_format={"chat_template": chat, "system_prompt": args.system_prompt},
        cache="off" if cache_inputs is None else ("hit" if entry is not None else "miss"),
        timing=timing,
    )
    _report(summary, items, args.json, overwrite=args.overwrite)
    return 0


def _responses(items: list[dict[str, Any]], n_rows: int) -> list[Any]:
    """The responses per prompt row (a list per row where items carry ``sample``)."""
    if not any("sample" in item for item in items):
        return [item["response"] for item in items]
    grouped: list[list[str]] = [[] for _ in range(n_rows)]
    for item in items:
        grouped[item["index"]].append(item["response"])
    return grouped


def _generate_and_judge(args: argparse.Namespace, model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                        dataset: dict[str, str], judge: Any, decoding: dict[str, Any],
                        use_chat: bool | None) -> tuple[list[dict[str, Any]], float, float]:
    """Generate and score the items of ``detox eval``: (items, generate seconds, judge seconds)."""
    from .generate import generate

    gen_start = time.perf_counter()
    responses = generate(
        model,
        tokenizer,
        [row["prompt"] for row in rows],
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        use_chat_template=use_chat,
        system_prompt=args.system_prompt,
        progress=not args.no_progress,
        desc=f"generate {dataset['name']}",
        **{k: v for k, v in decoding.items() if k not in ("temperature", "top_p", "top_k")},
    )
    generate_s = time.perf_counter() - gen_start
    items = make_items(rows, responses)

    judge_start = time.perf_counter()
    score_items(items, judge)
    return items, generate_s, time.perf_counter() - judge_start


def run_report(args: argparse.Namespace) -> int:
    """``detox report``: the quality suite for the base model and the user's saved edits."""
    from .suite import SuiteConfig, print_result, run_suite, settings_from_args, validate_configs

    check_results_paths(args.json, overwrite=args.overwrite)
    settings = settings_from_args(args)
    configs = (([] if args.no_safety_prompt else [SuiteConfig.safety_prompt()]) +
               ([] if args.no_base else [SuiteConfig("base")]) + [SuiteConfig.parse(e) for e in args.compare])
    validate_configs(configs)  # unreadable edit folders fail before the model loads
    model, tokenizer, _ = load_model_from_args(args)
    result = run_suite(model, tokenizer, configs, settings, force=args.force, progress=not args.no_progress,
                       model_label=_model_label(args))
    print_result(result)
    if args.json:
        summary_path, items_file = result.write(args.json, overwrite=args.overwrite)
        print(f"\nwrote {summary_path} and {items_file}")
    return 0


def _model_label(args: argparse.Namespace) -> str:
    if args.model:
        return str(args.model)
    if getattr(args, "hparams", None):
        return f"model of hparams {args.hparams}"
    return "smollm2-135m-instruct (embedded)"


def _perplexity(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    applied: list[Any],
    rows: list[dict[str, Any]],
    items: list[dict[str, Any]],
    chat: bool,
) -> dict[str, Any]:
    """Conditional PPL of every response under the unedited model (or ``--ppl-model``)."""
    from .generate import adds_special_tokens, format_prompts

    if args.ppl_model:
        model, tokenizer = load_model(args.ppl_model)
        ppl_model = args.ppl_model
    else:
        for edit in reversed(applied):  # score under the base model: undo the edits, newest first
            edit.revert()
        ppl_model = _model_label(args)
    formatted = format_prompts(
        tokenizer,
        [row["prompt"] for row in rows],
        use_chat_template=chat,
        system_prompt=args.system_prompt,
    )
    prompts = [formatted[item["index"]] for item in items]
    perplexities = continuation_perplexities(
        model,
        tokenizer,
        prompts,
        [item["response"] for item in items],
        batch_size=args.batch_size,
        add_special_tokens=adds_special_tokens(tokenizer, formatted, chat),
        progress=not args.no_progress,
    )
    for item, value in zip(items, perplexities):
        item["ppl"] = value
    per_prompt = [[item["ppl"] for item in group] for group in group_by_prompt(items).values()]
    return {"ppl": mean_perplexity(perplexities),
            "ppl_ci95": [None if math.isnan(v) else round(v, 4) for v in perplexity_interval(per_prompt)],
            "ppl_model": ppl_model}


def _report(summary: dict[str, Any], items: list[dict[str, Any]], out: str | None, *, overwrite: bool = False) -> None:
    rows = summary_table({k: v for k, v in summary.items() if k not in ("decoding", "prompt_format", "edits")})
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    if out:
        summary_path, items_file = write_results(out, summary, items, overwrite=overwrite)
        print(f"wrote {summary_path} and {items_file}")
