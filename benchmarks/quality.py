"""Quality of each editor and of composed edits against the base model, on the same external data.

The suite itself is ``detox_plugins.evaluation.suite`` (also behind ``detox report``); this script
adds the benchmark's default edits and writes the results:

    python benchmarks/quality.py --make-default-edits /tmp/detox-edits --json benchmarks/results/quality.json
    python benchmarks/quality.py --edit mine=edits/dinm-1 --limit 10          # your own edit, quick
    python benchmarks/quality.py --make-default-edits W --edit sv=runs/ft --harmbench 200 --gsm8k 0

``--make-default-edits WORKDIR`` creates, when missing (or made for another model), three saved
edits under WORKDIR and evaluates them after ``base``:

- ``dinm``: DINM on shipped SafeEdit case 0, hparams DINM/smollm2-135m (as ``detox demo``);
- ``destein``: DeStein vectors from the 20 shipped pairs, hparams DeStein/smollm2-135m;
- ``detox-all``: the shipped pipeline hparams/pipelines/detox-all.yaml (DeStein, then DINM trained
  on the steered model), saved as one composed edit.

Prints the caption and a markdown table (rows: configurations; columns: metrics); writes the JSON
summary and every answer to ``<json>.items.jsonl``.
"""

from __future__ import annotations

from registry import from_hparams
import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmarks.quality")

DINM_HPARAMS = "DINM/smollm2-135m"
DESTEIN_HPARAMS = "DeStein/smollm2-135m"
DINM_CASE_ID = 0


def _usable(folder: Path, fingerprint: str) -> bool:
    """A saved edit in ``folder`` made for the model with ``fingerprint``."""
    from registry.saved import load_edit
    from registry.errors import DetoxError

    if not (folder / "manifest.json").is_file():
        return False
    try:
        saved = load_edit(folder)
    except DetoxError as exc:
        logger.warning("rebuilding %s: %s", folder, exc)
        return False
    if saved.payload == "composed":
        try:
            first = load_edit(saved.step_folders()[0])
        except DetoxError as exc:
            logger.warning("rebuilding %s: %s", folder, exc)
            return False
        return first.fingerprint == fingerprint
    return saved.fingerprint == fingerprint


def _dinm_edit(model: Any, tokenizer: Any) -> Any:
    from detox_plugins.dinm.cases import load_cases
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.dinm.protocol import as_request

    case = load_cases("safeedit-sample", case_id=str(DINM_CASE_ID))[0]
    return DINMEditor(from_hparams(DINM_HPARAMS)).edit(model, tokenizer, [as_request(case)])


def _destein_edit(model: Any, tokenizer: Any) -> Any:
    from detox_plugins.destein.editor import DeSteinEditor

    hp = from_hparams(DESTEIN_HPARAMS).replace(progress=False)
    return DeSteinEditor(hp).edit(model, tokenizer)


def make_default_edits(workdir: str | Path, model: Any, tokenizer: Any) -> list[str]:
    """Create the default edits under ``workdir`` where missing; return ``NAME=DIR`` specs.

    The model is left exactly as it was (every edit is reverted after saving).
    """
    import registry

    workdir = Path(workdir)
    fingerprint = registry.model_fingerprint(model)
    specs = []
    plan = {
        "dinm": lambda: [_dinm_edit(model, tokenizer)],
        "destein": lambda: [_destein_edit(model, tokenizer)],
        "detox-all": lambda: [_pipeline_edit("detox-all", model, tokenizer)],
    }
    for name, build in plan.items():
        folder = workdir / name
        if _usable(folder, fingerprint):
            logger.info("default edit %s: reusing %s", name, folder)
        else:
            start = time.perf_counter()
            steps = build()
            try:
                edit = steps[0] if len(steps) == 1 else registry.compose(steps)
                edit.save(folder, overwrite=True)
            finally:
                for step in reversed(steps):
                    if step.applied:
                        step.revert()
            print(f"[default edits] {name}: built and saved to {folder} in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr)
        specs.append(f"{name}={folder}")
    if registry.model_fingerprint(model) != fingerprint:
        raise registry.EditError("building the default edits left the model changed; this is a bug in an editor")
    return specs


def _pipeline_edit(name: str, model: Any, tokenizer: Any) -> Any:
    from registry.pipeline import load_pipeline, run_pipeline

    return run_pipeline(load_pipeline(name), model, tokenizer)


def main(argv: list[str] | None = None) -> int:
    from detox_plugins.evaluation.suite import add_suite_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name or local folder (default: the embedded smollm2-135m-instruct)")
    parser.add_argument("--edit", action="append", default=[], metavar="NAME=DIR",
                        help="a saved edit folder to evaluate as its own row (repeatable)")
    parser.add_argument("--make-default-edits", metavar="WORKDIR",
                        help="create (if missing) and evaluate the dinm, destein and detox-all edits")
    parser.add_argument("--no-base", action="store_true", help="leave out the base-model row")
    parser.add_argument("--no-safety-prompt", action="store_true",
                        help="leave out the first row (no edit, a safety system prompt)")
    parser.add_argument("--force", action="store_true", help="apply edits made for another model fingerprint")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", default="benchmarks/results/quality.json", help="summary JSON ('' = none)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    add_suite_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from detox_plugins.evaluation.suite import SuiteConfig, print_result, run_suite, settings_from_args
    from registry.errors import DetoxError
    from registry.models import load_model

    torch.set_num_threads(args.threads)
    try:
        settings = settings_from_args(args)
        own = [SuiteConfig.parse(spec) for spec in args.edit]  # bad specs fail before the model loads
        start = time.perf_counter()
        model, tokenizer = load_model(args.model)
        defaults = []
        if args.make_default_edits:
            defaults = [SuiteConfig.parse(s) for s in make_default_edits(args.make_default_edits, model, tokenizer)]
        configs = (([] if args.no_safety_prompt else [SuiteConfig.safety_prompt()]) +
                   ([] if args.no_base else [SuiteConfig("base")]) + defaults + own)
        edits_s = time.perf_counter() - start

        def save(partial: Any) -> None:
            if args.json:
                partial.meta["run"] = {"command": " ".join(["python", "benchmarks/quality.py", *sys.argv[1:]]),
                                       "setup_s": round(edits_s, 1)}
                partial.write(args.json, overwrite=True)  # this run's own progress file

        result = run_suite(model, tokenizer, configs, settings, force=args.force, progress=args.progress,
                           model_label=args.model or "smollm2-135m-instruct (embedded)", on_config=save)
    except DetoxError as exc:
        print(f"quality: error: {exc}", file=sys.stderr)
        return 2
    result.meta["run"] = {"command": " ".join(["python", "benchmarks/quality.py", *sys.argv[1:]]),
                          "setup_s": round(edits_s, 1), "total_s": round(time.perf_counter() - start, 1)}
    print_result(result)
    if args.json:
        summary, items = result.write(args.json, overwrite=True)  # replaces this run's progress saves
        print(f"\nwrote {summary} and {items}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
