"""DINM edit time per case: improved vs compat on the same cases in one run, with and without the
cached lower stack (the frozen blocks below the edited layer run once per edit), and peak memory.
Prints a markdown table, writes JSON.

    python benchmarks/dinm_speed.py --limit 3 --json dinm_speed.json

Timings cover ``edit()`` only (localization + optimisation + bookkeeping), never generation. After
one warm-up edit the configurations alternate case by case (and reverse their order every round),
so load from other processes falls on all of them alike; the table reports the median. Peak memory
is the process's peak RSS after each configuration's edits (``resource``; the model itself is
~540 MiB of it).
"""

from __future__ import annotations

from registry import from_hparams
import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from registry.writer import write_file

CONFIGS: dict[str, dict[str, Any]] = {
    # name: hparams overrides on top of --hparams
    "improved": {"mode": "improved"},
    "improved-nocache": {"mode": "improved", "cache_lower_layers": False},
    "compat": {"mode": "compat", "use_chat_template": False},
    "compat-nocache": {"mode": "compat", "use_chat_template": False, "cache_lower_layers": False},
}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", default="DINM/smollm2-135m", help="base hparams (name or file)")
    parser.add_argument("--model", help="model (default: the hparams' model_name)")
    parser.add_argument("--cases", default="safeedit-sample", help="SafeEdit JSON file or safeedit-sample")
    parser.add_argument("--limit", type=int, default=3, help="cases to edit per configuration (default 3)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=2, help="times each case is edited per configuration (default 2)")
    parser.add_argument("--json", default="dinm_speed.json", help="where to write the results")
    args = parser.parse_args(argv)

    import torch

    from detox_plugins.dinm.cases import load_cases
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.dinm.protocol import as_request
    from registry.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    base = from_hparams(args.hparams)
    model, tokenizer = load_model(args.model or base)
    requests = [as_request(c) for c in load_cases(args.cases, limit=args.limit)]
    results: dict[str, Any] = {"hparams": args.hparams, "cases": [r.case_id for r in requests],
                               "torch_threads": torch.get_num_threads(), "configs": {}}
    editors = {name: DINMEditor(base.replace(**CONFIGS[name])) for name in args.configs}
    # Warm-up (first-call allocations and kernel selection), then the configurations alternate case
    # by case and round by round, so that load from other processes hits all of them alike.
    editors[args.configs[0]].edit(model, tokenizer, requests[:1]).revert()
    runs: dict[str, dict[str, list[Any]]] = {name: {"seconds": [], "layers": [], "steps": [], "fractions": []}
                                             for name in args.configs}
    peak: dict[str, float] = {}
    for round_index in range(args.rounds):
        for request in requests:
            order = args.configs if round_index % 2 == 0 else list(reversed(args.configs))
            for name in order:
                start = time.perf_counter()
                edit = editors[name].edit(model, tokenizer, [request])
                seconds = time.perf_counter() - start
                info = edit.metadata["cases"][0]
                edit.revert()
                row = runs[name]
                row["seconds"].append(seconds)
                row["layers"].append(info["layers"][0])
                row["steps"].append(info["steps"])
                row["fractions"].append(info["upper_fraction"])
                peak[name] = max(peak.get(name, 0.0), peak_rss_mib())
                print(f"round {round_index}: {name}: case {request.case_id} layer {info['layers'][0]} "
                      f"{info['steps']} steps {seconds:.2f} s", flush=True)
    for name, row in runs.items():
        results["configs"][name] = {
            "seconds_per_case": statistics.median(row["seconds"]), "mean_seconds": statistics.mean(row["seconds"]),
            "seconds": row["seconds"], "layers": row["layers"], "steps": row["steps"],
            "blocks_run_fraction": row["fractions"], "peak_rss_mib": peak[name],
        }
    configs = results["configs"]
    ratios = {}
    if "improved" in configs and "compat" in configs:
        ratios["compat / improved"] = configs["compat"]["seconds_per_case"] / configs["improved"]["seconds_per_case"]
    if "compat-nocache" in configs and "improved" in configs:
        ratios["compat-nocache (EasyEdit cost) / improved"] = (
            configs["compat-nocache"]["seconds_per_case"] / configs["improved"]["seconds_per_case"])
    for mode in ("improved", "compat"):
        if mode in configs and f"{mode}-nocache" in configs:
            ratios[f"{mode}: nocache / cache"] = (configs[f"{mode}-nocache"]["seconds_per_case"]
                                                  / configs[mode]["seconds_per_case"])
    results["ratios"] = ratios
    print(f"\nDINM edit time on {len(requests)} case(s) of {args.cases} ({args.hparams}, "
          f"{results['torch_threads']} torch threads)\n")
    print("| config | median s/case | mean s/case | layers | steps | blocks run | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, row in configs.items():
        print(f"| {name} | {row['seconds_per_case']:.2f} | {row['mean_seconds']:.2f} | {sorted(set(row['layers']))} | "
              f"{sorted(set(row['steps']))} | {statistics.mean(row['blocks_run_fraction']):.2f} | "
              f"{row['peak_rss_mib']:.0f} |")
    for label, value in ratios.items():
        print(f"\n{label}: {value:.2f}x", end="")
    print()
    write_file(args.json, json.dumps(results, indent=2), overwrite=True)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
