"""The refusal protocol the DINM benchmarks share (dinm_nullspace.py, dinm_targets.py).

One model load; after each edit, greedy chat-templated answers (``--max-new-tokens``, batch 8, as
``detox eval``) to the first ``--harmbench-limit`` HarmBench prompts and to benign-150, judged by the
refusal strings on the answer's first ``--opening-words`` words; each edit is reverted and the revert
checked by fingerprint before the next. Imported by its sibling scripts (``from refusal_protocol
import ...``: the scripts' folder is on ``sys.path`` when they run).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from registry.writer import write_file

RESULTS = Path(__file__).resolve().parent / "results"


def add_protocol_arguments(parser: argparse.ArgumentParser, results_name: str) -> None:
    """The protocol's flags, and ``--json``/``--md`` defaulting to ``benchmarks/results/<results_name>``."""
    parser.add_argument("--harmbench-limit", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--opening-words", type=int, default=25)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=str(RESULTS / f"{results_name}.json"))
    parser.add_argument("--md", default=str(RESULTS / f"{results_name}.md"))


@dataclass
class RefusalProtocol:
    """The loaded model, the judge and the two prompt sets; :meth:`measure` gives one result row."""

    model: Any
    tokenizer: Any
    judge: Any
    harmful: list[str]
    benign: list[str]
    max_new_tokens: int
    fingerprint: str

    @classmethod
    def load(cls, hparams: Any, args: argparse.Namespace) -> "RefusalProtocol":
        """Set the torch threads, load ``hparams``' model, the refusal judge and the prompt sets."""
        import torch

        from detox_plugins.evaluation.datasets import load_dataset
        from detox_plugins.evaluation.judges import get_judge
        from registry import model_fingerprint
        from registry.models import load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        model, tokenizer = load_model(hparams)
        return cls(model, tokenizer, get_judge("refusal", opening_words=args.opening_words),
                   [r["prompt"] for r in load_dataset("harmbench", limit=args.harmbench_limit)],
                   [r["prompt"] for r in load_dataset("benign-150")], args.max_new_tokens, model_fingerprint(model))

    def refusals(self, prompts: list[str]) -> list[bool]:
        """Greedy chat-templated answers, judged: True where the answer's opening refuses."""
        from detox_plugins.evaluation.generate import generate

        answers = generate(self.model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens, batch_size=8,
                           desc=f"generate {len(prompts)}")
        return [score == 0.0 for score in self.judge.judge(prompts, answers)]  # type: ignore[arg-type]

    def measure(self, variant: str, extra: dict[str, Any]) -> dict[str, Any]:
        """One row: the model as it is now, on both prompt sets (``extra`` added to the row)."""
        harm, safe = self.refusals(self.harmful), self.refusals(self.benign)
        return {"variant": variant, "harmful_refused": sum(harm), "harmful_n": len(harm),
                "harmful_rate": sum(harm) / len(harm), "benign_refused": sum(safe), "benign_n": len(safe),
                "benign_rate": sum(safe) / len(safe),
                "benign_refused_prompts": [p for p, r in zip(self.benign, safe) if r], **extra}

    def check_restored(self, variant: str) -> None:
        """Stop the run when reverting ``variant``'s edit did not give the loaded model back."""
        from registry import model_fingerprint

        if model_fingerprint(self.model) != self.fingerprint:
            raise SystemExit(f"{variant}: revert did not restore the model")


def printable(row: dict[str, Any]) -> str:
    """A row as one JSON line, without its list of refused benign prompts."""
    return json.dumps({k: v for k, v in row.items() if k != "benign_refused_prompts"})


def write_results(script: str, argv: Sequence[str], args: argparse.Namespace, rows: list[dict[str, Any]],
                  markdown: Callable[[list[dict[str, Any]], dict[str, Any]], str], **meta: Any) -> None:
    """Write ``{"meta", "rows"}`` to ``--json`` and ``markdown(rows, meta)`` to ``--md``, and print the table."""
    import torch

    meta = {"command": f"python benchmarks/{script} " + " ".join(argv),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
            "max_new_tokens": args.max_new_tokens, "opening_words": args.opening_words, **meta}
    write_file(args.json, json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", overwrite=True)
    table = markdown(rows, meta)
    write_file(args.md, table, overwrite=True)
    print(table)
