"""DINM's toxic-layer localization: the per-layer distance between the safe and the unsafe response
on several shipped SafeEdit cases, for each localization metric. Writes JSON and a heatmap PNG.

    python benchmarks/localization.py --cases 9 --json benchmarks/results/localization.json

Three metrics (detox_plugins/dinm/locate.py):

- ``compat``: EasyEdit's (one batch of the two responses alone, padded on the tokenizer's own side,
  Frobenius distance of the padded hidden-state matrices, the last one after the final norm);
- ``improved l2``: raw block outputs, mean-pooled over the response tokens after the (chat-templated)
  prompt, ``||mu+ - mu-||`` (hparams DINM/smollm2-135m, the shipped setting);
- ``improved relative_l2``: the same divided by the mean norm of ``mu+`` and ``mu-``;
- ``improved separability``: ``||mu+ - mu-||²`` over the two responses' token spread at that layer;
- ``improved attribution``: gradient × activation of each block's edited module (down_proj) for the
  unsafe-minus-safe mean log-likelihood gap (one backward pass per response).

The edited layer is the argmax of each row. Cases come round-robin over the 9 categories. Nothing is
edited: only forward passes run.
"""

from __future__ import annotations

from registry import from_hparams
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from registry.writer import write_file

METHODS = ("compat", "improved l2", "improved relative_l2", "improved separability", "improved attribution")


def locate_case(model: Any, tokenizer: Any, request: Any, editor: Any) -> dict[str, Any]:
    """Every metric's ``Localization`` of one request (no edit), keyed like ``METHODS``.

    ``editor`` is an improved-mode ``DINMEditor`` without fixed layers (its plan builds the sequences)."""
    from detox_plugins.dinm.locate import locate_blocks, locate_by_attribution, locate_easyedit

    plan = editor.plan(model, tokenizer, [request])
    seqs = plan.cases[0]
    found = {"compat": locate_easyedit(model, tokenizer, request.target_new, request.ground_truth or "")}
    for metric in ("l2", "relative_l2", "separability"):
        found[f"improved {metric}"] = locate_blocks(model, plan.stack, tokenizer, seqs.safe, seqs.unsafe,
                                                    metric=metric)
    names = [n for n, _ in model.named_parameters()]
    found["improved attribution"] = locate_by_attribution(
        model, plan.stack, seqs.safe, seqs.unsafe, modules=editor._trained_modules(model, plan.stack, names))
    return found


def measure(model: Any, tokenizer: Any, cases: list[Any], hparams: str) -> dict[str, Any]:
    """Per-method, per-case layer scores and argmax layers."""
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.dinm.protocol import as_request

    hp = from_hparams(hparams)
    editor = DINMEditor(hp.replace(mode="improved", layers=[]))
    out: dict[str, Any] = {m: {"scores": [], "layers": []} for m in METHODS}
    for case in cases:
        for method, found in locate_case(model, tokenizer, as_request(case), editor).items():
            out[method]["scores"].append(found.scores)
            out[method]["layers"].append(found.layer)
    for method in out.values():
        method["scores"] = [[round(s, 4) for s in row] for row in method["scores"]]
    return out


def score_panel(ax: Any, scores: Any, picked: list[int], title: str, xlabel: str = "layer (red: located)") -> Any:
    """One heatmap panel: rows = cases, columns = layers, each row scaled to [0, 1] (its maximum 1, its
    minimum or 0, whichever is lower, 0: attribution scores can be negative); a red ring on each row's
    picked layer. Returns the image."""
    import numpy as np

    scores = np.asarray(scores, dtype=float)
    low = np.minimum(scores.min(axis=1, keepdims=True), 0)
    scaled = (scores - low) / np.maximum(scores.max(axis=1, keepdims=True) - low, 1e-12)
    image = ax.imshow(scaled, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    for row, layer in enumerate(picked):
        ax.plot(layer, row, marker="o", markersize=5, markerfacecolor="none", markeredgecolor="red")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return image


def heatmap(result: dict[str, Any], path: Path) -> None:
    """One panel per metric: rows = cases, columns = layers, each row scaled by its maximum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c} ({cat[:14]})" for c, cat in zip(result["cases"], result["categories"])]
    methods = list(result["methods"])  # what this result measured (an older file may hold fewer metrics)
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 0.32 * len(labels) + 1.8),
                             sharey=True, constrained_layout=True)
    for ax, method in zip(axes, methods):
        scores = result["methods"][method]["scores"]
        image = score_panel(ax, scores, result["methods"][method]["layers"], method)
        ax.set_xticks(range(0, len(scores[0]), 5))
    axes[0].set_yticks(range(len(labels)))
    axes[0].set_yticklabels(labels, fontsize=7)
    axes[0].set_ylabel("SafeEdit case (category)")
    fig.colorbar(image, ax=axes, shrink=0.8, label="score, scaled per row")
    fig.suptitle(f"DINM localization on {result['model']}: per-layer score of each metric")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", default="DINM/smollm2-135m", help="DINM hparams (name or file)")
    parser.add_argument("--model", help="model (default: the hparams' model_name)")
    parser.add_argument("--cases", type=int, default=9, help="shipped cases, round-robin over categories (default 9)")
    parser.add_argument("--limit", type=int, help="alias of --cases for run_all's quick runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", default="benchmarks/results/localization.json", help="results JSON")
    parser.add_argument("--png", help="heatmap (default: the JSON path with .png)")
    args = parser.parse_args(argv)

    import torch

    from detox_plugins.evaluation.datasets import interleave_by_category, load_safeedit_sample
    from registry.models import load_model

    torch.set_num_threads(args.threads)
    count = args.limit or args.cases
    start = time.perf_counter()
    model, tokenizer = load_model(args.model or from_hparams(args.hparams))
    cases = interleave_by_category(load_safeedit_sample())[:count]
    methods = measure(model, tokenizer, cases, args.hparams)
    result = {
        "model": args.model or "smollm2-135m-instruct (embedded)", "hparams": args.hparams,
        "cases": [c.case_id for c in cases], "categories": [c.category for c in cases],
        "num_layers": len(methods["compat"]["scores"][0]), "methods": methods,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"\nDINM localization on {len(cases)} shipped SafeEdit case(s), {result['num_layers']} layers "
          f"({args.hparams}); located layer per case:\n")
    print("| case | category | " + " | ".join(METHODS) + " |")
    print("|---|---|" + "---|" * len(METHODS))
    for i, (case_id, category) in enumerate(zip(result["cases"], result["categories"])):
        print(f"| {case_id} | {category} | " + " | ".join(str(methods[m]["layers"][i]) for m in METHODS) + " |")
    for method in METHODS:
        layers = methods[method]["layers"]
        top = max(set(layers), key=layers.count)
        print(f"\n{method}: layer {top} on {layers.count(top)}/{len(layers)} cases", end="")
    print()
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_file(json_path, json.dumps(result, indent=1), overwrite=True)
    png = Path(args.png) if args.png else json_path.with_suffix(".png")
    heatmap(result, png)
    print(f"wrote {json_path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
