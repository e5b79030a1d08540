"""``detox edit`` (DINM) and ``detox demo``: the command-line side of the DINM editor.

``run_edit(args)`` reads: ``hparams`` (name or file), ``model``, ``dtype``, ``device``, ``edit``,
``force``, ``cases`` (SafeEdit JSON file or a dataset name; default ``safeedit-sample``),
``case_id``, ``limit``, ``out``, ``json``, ``max_new_tokens``. ``run_demo(args)`` reads
``model``, ``hparams`` (default ``DINM/smollm2-135m``), ``dtype``, ``device``, ``edit``, ``force``,
``max_new_tokens``. Missing attributes take their defaults, so a bare ``argparse.Namespace`` works.
"""

from __future__ import annotations

import argparse
import json
import logging
import textwrap
from pathlib import Path
from typing import Any, Optional

from registry.errors import DatasetError

logger = logging.getLogger(__name__)

DEFAULT_HPARAMS = "DINM/smollm2-135m"
DEFAULT_CASES = "safeedit-sample"
#: The shipped case the demo edits on (see hparams/DINM/smollm2-135m.yaml for the measurements).
DEMO_CASE_ID = 0
DEMO_BENIGN_PROMPT = "How do I make a simple tomato pasta sauce?"


def _get(args: Any, name: str, default: Any = None) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


def load_hparams(name: Optional[str]) -> Any:
    from .hparams import DINMHyperParams

    return DINMHyperParams.from_hparams(name or DEFAULT_HPARAMS)


def load_model_and_tokenizer(args: Any, hparams: Any) -> tuple[Any, Any]:
    """The model named by ``--model`` (else the hparams' ``model_name``), with ``--edit`` DIRs applied."""
    from registry.edits import load_edit
    from registry.models import load_model

    spec = _get(args, "model") or hparams
    model, tokenizer = load_model(spec, dtype=_get(args, "dtype"), device=_get(args, "device"))
    for directory in _get(args, "edit", []) or []:
        load_edit(directory).apply(model, tokenizer, force=bool(_get(args, "force", False)))
        logger.info("applied edit %s", directory)
    return model, tokenizer


def load_cases(source: Optional[str], *, case_id: Optional[str] = None, limit: Optional[int] = None) -> list[Any]:
    """SafeEdit cases from a file or the shipped sample, filtered by ``case_id`` and ``limit``."""
    from detox_plugins.evaluation.datasets import load_safeedit, load_safeedit_sample

    source = source or DEFAULT_CASES
    if source in (DEFAULT_CASES, "safeedit_sample") and not Path(source).exists():
        cases = load_safeedit_sample()
    elif Path(source).expanduser().is_file():
        cases = load_safeedit(Path(source).expanduser())
    else:
        raise DatasetError(
            f"--cases {source!r} is neither a SafeEdit JSON file nor {DEFAULT_CASES!r}; pass a file such as "
            f"SafeEdit_test.json"
        )
    if case_id is not None:
        chosen = [c for c in cases if str(c.case_id) == str(case_id)]
        if not chosen:
            ids = ", ".join(str(c.case_id) for c in cases[:10])
            raise DatasetError(f"no case with id {case_id!r} in {source}; ids start with: {ids}")
        cases = chosen
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"--limit must be >= 1, got {limit}")
        cases = cases[:limit]
    return cases


def _short(text: str, width: int = 100) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...") or "(empty)"


def _save_edit(out: str, many: bool):
    def save(request: Any, edit: Any) -> None:
        target = Path(out) / f"case-{request.case_id}" if many else Path(out)
        edit.save(target, overwrite=True)
        print(f"saved the edit of case {request.case_id} to {target}")
    return save


def run_edit(args: argparse.Namespace) -> int:
    """Edit each case (SafeEdit protocol: answer, edit, answer, revert), print and optionally save."""
    from .editor import DINMEditor

    hparams = load_hparams(_get(args, "hparams"))
    cases = load_cases(_get(args, "cases"), case_id=_get(args, "case_id"), limit=_get(args, "limit"))
    model, tokenizer = load_model_and_tokenizer(args, hparams)
    editor = DINMEditor(hparams, progress=True)
    out = _get(args, "out")
    report = editor.safeedit_protocol(
        model, tokenizer, cases, max_new_tokens=_get(args, "max_new_tokens"),
        on_edit=_save_edit(out, len(cases) > 1) if out else None,
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
    json_path = _get(args, "json")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        print(f"wrote {json_path}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Detoxify the embedded model on one shipped case; show a harmful and a benign prompt before/after."""
    from detox_plugins.evaluation.generate import generate
    from detox_plugins.evaluation.judges import is_refusal

    from .editor import DINMEditor
    from .protocol import as_request, evaluation_prompts
    from .inputs import with_suffix

    hparams = load_hparams(_get(args, "hparams"))
    cases = load_cases(DEFAULT_CASES)
    case = next((c for c in cases if c.case_id == DEMO_CASE_ID), cases[0])
    request = as_request(case)
    model, tokenizer = load_model_and_tokenizer(args, hparams)
    editor = DINMEditor(hparams)
    harmful = evaluation_prompts(request, hparams)["post"]["DS"]
    benign = with_suffix(DEMO_BENIGN_PROMPT, hparams.suffix_system_prompt, hparams.use_suffix)
    chat = hparams.use_chat_template if hparams.effective_eval_prompt == "consistent" else False
    gen = dict(max_new_tokens=_get(args, "max_new_tokens", 60), use_chat_template=chat, progress=False)
    before = generate(model, tokenizer, [harmful, benign], **gen)
    edit = editor.edit(model, tokenizer, [request])
    try:
        after = generate(model, tokenizer, [harmful, benign], **gen)
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
          f"`detox edit --hparams {_get(args, 'hparams', DEFAULT_HPARAMS)} --case-id {case.case_id} --out DIR`.")
    return 0
