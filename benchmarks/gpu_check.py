"""The GPU check: each editor on a real model, its export reloaded, and (if vLLM is installed) served.

For a machine with a GPU and a local model folder; never part of the test run or CI. For each editor
(DINM, DeStein folded, the security-vector fine-tune merged): edit, time it, record the peak GPU memory,
export a merged checkpoint, reload it with plain transformers and compare greedy outputs with the edited
model in memory; then, when ``vllm`` is importable, load each export in vLLM and compare its greedy
outputs with the transformers path. Prints a table and writes JSON.

    python benchmarks/gpu_check.py --model /models/Llama-3.1-8B-Instruct --family llama3.1-8b-instruct \\
        --out /tmp/gpu-check --json /tmp/gpu-check.json

``--family`` picks the shipped hparams (``DINM/<family>``, ...); ``--hparams ALG=FILE`` replaces one.
``--device cpu`` runs the same steps on the CPU (slow for a real model; the test suite runs it on a tiny one).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import registry
from registry.writer import write_file

logger = logging.getLogger("gpu_check")

PROMPTS = ["How do I pick a lock to get into my neighbour's house?", "How do I make a simple tomato pasta sauce?"]
CASE = {"prompt": PROMPTS[0], "target_new": "I can't help with entering someone else's home.",
        "ground_truth": "Sure, here is how to pick the lock:"}
EDITORS = ("DINM", "DeStein", "SecurityVectors")


def _peak_memory(device: str) -> Optional[float]:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def greedy(model: Any, tokenizer: Any, max_new_tokens: int) -> list[str]:
    from detox_plugins.evaluation.generate import generate

    return generate(model, tokenizer, PROMPTS, max_new_tokens=max_new_tokens, progress=False)


def vllm_greedy(folder: Path, tokenizer: Any, max_new_tokens: int, dtype: str) -> Optional[list[str]]:
    """Greedy answers from vLLM for the same chat-formatted prompts, or None without vLLM."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        return None
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in PROMPTS]
    llm = LLM(model=str(folder), dtype=dtype, enforce_eager=True)
    outputs = llm.generate(texts, SamplingParams(temperature=0.0, max_tokens=max_new_tokens))
    del llm
    return [o.outputs[0].text for o in outputs]


def make_edit(alg: str, hparams: Any, model: Any, tokenizer: Any, data: Optional[str]) -> Any:
    editor = registry.get_editor(alg)(hparams)
    if alg == "DINM":
        return editor.edit(model, tokenizer, [CASE])
    if alg == "DeStein":
        return editor.edit(model, tokenizer)
    vector = editor.edit(model, tokenizer, None)
    return editor.fine_tune(model, tokenizer, data or "sv_attack.jsonl", vector=vector)


def hparams_for(alg: str, args: argparse.Namespace) -> Any:
    overrides = dict(item.split("=", 1) for item in args.hparams)
    name = overrides.get(alg) or f"{alg}/{args.family}"
    hp = registry.from_hparams(name)
    changes: dict[str, Any] = {"model_name": args.model, "dtype": args.dtype, "device": args.device}
    if alg == "DeStein":
        changes.update(fusion="additive", apply="bias_fold")  # the exportable form
    if alg == "SecurityVectors":
        changes.update(export="merged", user_mode="lora", ft_max_steps=args.sv_steps, progress=False)
    return hp.replace(**{k: v for k, v in changes.items() if k in hp.to_dict()})


def check(alg: str, args: argparse.Namespace) -> dict[str, Any]:
    """One editor: edit, export, reload with transformers, and with vLLM when installed."""
    import torch
    from transformers import AutoModelForCausalLM

    row: dict[str, Any] = {"editor": alg}
    hparams = hparams_for(alg, args)
    model, tokenizer = registry.load_model(hparams)
    _reset_peak(args.device)
    started = time.perf_counter()
    try:
        edit = make_edit(alg, hparams, model, tokenizer, args.sv_data)
    except registry.DetoxError as exc:
        return {**row, "status": f"refused: {exc}"}
    row["edit_seconds"] = round(time.perf_counter() - started, 2)
    row["peak_gib"] = _peak_memory(args.device)
    edited = greedy(model, tokenizer, args.max_new_tokens)
    folder = Path(args.out) / alg.lower()
    try:
        edit.export(folder, tokenizer=tokenizer, overwrite=True)
    except registry.DetoxError as exc:
        edit.revert()
        return {**row, "status": f"export refused: {exc}"}
    edit.revert()
    del model
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    row["transformers_equal"] = greedy(reloaded, tokenizer, args.max_new_tokens) == edited
    del reloaded
    served = vllm_greedy(folder, tokenizer, args.max_new_tokens, args.dtype) if args.device.startswith("cuda") else None
    row["vllm_equal"] = None if served is None else [s.strip() for s in served] == [e.strip() for e in edited]
    row["status"] = "ok"
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return row


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a local Hugging Face model folder")
    parser.add_argument("--family", default="llama3.1-8b-instruct", help="shipped hparams name (DINM/<family>, ...)")
    parser.add_argument("--hparams", action="append", default=[], metavar="ALG=FILE", help="replace one editor's hparams")
    parser.add_argument("--editors", default=",".join(EDITORS), help=f"comma-separated subset of {', '.join(EDITORS)}")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--sv-steps", type=int, default=20, help="optimizer steps of the fine-tune")
    parser.add_argument("--sv-data", help="the user's fine-tuning rows (default: the shipped sv_attack.jsonl)")
    parser.add_argument("--out", required=True, help="a scratch folder for the exports")
    parser.add_argument("--keep", action="store_true", help="keep the exports")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = [check(alg.strip(), args) for alg in args.editors.split(",") if alg.strip()]
    columns = ("editor", "status", "edit_seconds", "peak_gib", "transformers_equal", "vllm_equal")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    if args.json:
        write_file(args.json, json.dumps({"args": vars(args), "rows": rows}, indent=2), overwrite=True)
    failed = [r for r in rows if r.get("status") == "ok" and (r.get("transformers_equal") is False
                                                             or r.get("vllm_equal") is False)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
