"""DeStein's head probes: held-out accuracy of the toxic/non-toxic logistic probe per (layer, head).

    python benchmarks/destein_probes.py --json benchmarks/results/destein_probes.json

For each capture site (``head_input``: the per-head o_proj inputs of the shipped additive setting;
``attn_output``: the released rotate site) and each pair count, the vectors are built exactly as
the editor builds them (detox_plugins/destein/vectors.py, probes.py: one L2 logistic regression per
head, split by pair, the first 80 % train), and the held-out accuracy matrix ``acc`` [L, H] is
written as JSON and drawn as a heatmap. ``--num-pairs 0`` uses every shipped pair. With 20 pairs
only 4 pairs (8 activations) are held out, so each accuracy is a multiple of 1/8.
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

SITES = {"head_input": {"fusion": "additive", "apply": "bias_fold"},
         "attn_output": {"fusion": "rotate", "apply": "hook"}}


def measure(model: Any, tokenizer: Any, hparams: str, sites: list[str], pair_counts: list[int]) -> list[dict[str, Any]]:
    """One record per (site, pair count): acc [L, H] and summary numbers."""
    from detox_plugins.destein.editor import DeSteinEditor

    base = from_hparams(hparams)
    records = []
    for site in sites:
        for count in pair_counts:
            pairs_cfg = {**base.to_dict()["pairs"], "num_pairs": count}
            hp = base.replace(**SITES[site], capture=None, progress=False, pairs=pairs_cfg)
            editor = DeSteinEditor(hp)
            pairs, source = editor.resolve_pairs(None)
            start = time.perf_counter()
            vectors = editor.build_vectors(model, tokenizer, pairs, pair_source=source)
            acc = vectors.acc
            records.append({
                "site": vectors.site, "num_pairs": len(pairs), "held_out_pairs": len(pairs) - int(len(pairs) * hp.probe.train_frac),
                "acc": [[round(float(a), 4) for a in row] for row in acc.tolist()],
                "mean_acc": round(float(acc.mean()), 4), "max_acc": round(float(acc.max()), 4),
                "perfect_heads": int((acc >= 1.0).sum()), "num_heads": int(acc.numel()),
                "layer_mean_acc": [round(float(a), 4) for a in acc.mean(dim=1).tolist()],
                "build_seconds": round(time.perf_counter() - start, 2),
            })
            print(f"[probes] {site}, {len(pairs)} pairs: mean acc {records[-1]['mean_acc']:.3f}, built in "
                  f"{records[-1]['build_seconds']:.1f} s", file=sys.stderr)
    return records


def heatmap(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = result["records"]
    fig, axes = plt.subplots(1, len(records), figsize=(3.3 * len(records) + 1, 6.2), sharey=True,
                             constrained_layout=True, squeeze=False)
    for ax, record in zip(axes[0], records):
        acc = np.array(record["acc"], dtype=float)
        image = ax.imshow(acc, aspect="auto", cmap="magma", vmin=0.5, vmax=1.0, origin="lower")
        ax.set_title(f"{record['site']}, {record['num_pairs']} pairs\nmean {record['mean_acc']:.3f}", fontsize=9)
        ax.set_xlabel("head")
        ax.set_xticks(range(acc.shape[1]))
    axes[0][0].set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="held-out probe accuracy (≤ 0.5: black)")
    fig.suptitle(f"DeStein probe accuracy per (layer, head), {result['model']}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", default="DeStein/smollm2-135m", help="DeStein hparams (name or file)")
    parser.add_argument("--model", help="model (default: the hparams' model_name)")
    parser.add_argument("--sites", nargs="+", default=list(SITES), choices=list(SITES))
    parser.add_argument("--num-pairs", nargs="+", type=int, default=[20, 0],
                        help="pair counts to probe with (0 = all shipped pairs; default 20 0)")
    parser.add_argument("--limit", type=int, help="quick run: only the first pair count and site")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", default="benchmarks/results/destein_probes.json", help="results JSON")
    parser.add_argument("--png", help="heatmap (default: the JSON path with .png)")
    args = parser.parse_args(argv)

    import torch

    from registry.models import load_model

    torch.set_num_threads(args.threads)
    sites, counts = args.sites, args.num_pairs
    if args.limit:
        sites, counts = sites[:1], counts[:1]
    start = time.perf_counter()
    model, tokenizer = load_model(args.model or from_hparams(args.hparams))
    records = measure(model, tokenizer, args.hparams, sites, counts)
    result = {"model": args.model or "smollm2-135m-instruct (embedded)", "hparams": args.hparams,
              "records": records, "seconds": round(time.perf_counter() - start, 1)}
    print(f"\nDeStein probe accuracy ({args.hparams}; held-out pairs, split by pair)\n")
    print("| site | pairs (held out) | mean acc | max acc | heads at 1.0 | layers with mean acc ≥ 0.9 | build s |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        good = [i for i, a in enumerate(r["layer_mean_acc"]) if a >= 0.9]
        print(f"| {r['site']} | {r['num_pairs']} ({r['held_out_pairs']}) | {r['mean_acc']:.3f} | {r['max_acc']:.3f} | "
              f"{r['perfect_heads']}/{r['num_heads']} | {len(good)}/{len(r['layer_mean_acc'])} | {r['build_seconds']:.1f} |")
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_file(json_path, json.dumps(result, indent=1), overwrite=True)
    png = Path(args.png) if args.png else json_path.with_suffix(".png")
    heatmap(result, png)
    print(f"wrote {json_path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
