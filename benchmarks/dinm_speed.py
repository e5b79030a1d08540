"""DINM edit time per case: improved vs compat on the same cases in one run, with and without the
cached lower stack (DINM.md §12.4), and peak memory. Prints a markdown table, writes JSON.

    python benchmarks/dinm_speed.py --limit 3 --json dinm_speed.json

Timings cover ``edit()`` only (localization + optimisation + bookkeeping), never generation. Peak
memory is the process's peak RSS growth during each configuration (``resource``), plus the peak
of Python-level allocations (``tracemalloc``, which does not see torch's tensor storage).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

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
    parser.add_argument("--json", default="dinm_speed.json", help="where to write the results")
    args = parser.parse_args(argv)

    import torch

    from detox_plugins.dinm.commands import load_cases, load_hparams
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.dinm.protocol import as_request
    from registry.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_hparams(args.hparams)
    model, tokenizer = load_model(args.model or base)
    requests = [as_request(c) for c in load_cases(args.cases, limit=args.limit)]
    results: dict[str, Any] = {"hparams": args.hparams, "cases": [r.case_id for r in requests],
                               "torch_threads": torch.get_num_threads(), "configs": {}}
    for name in args.configs:
        editor = DINMEditor(base.replace(**CONFIGS[name]))
        times, layers, steps, fractions = [], [], [], []
        rss_before = peak_rss_mib()
        tracemalloc.start()
        for request in requests:
            start = time.perf_counter()
            edit = editor.edit(model, tokenizer, [request])
            times.append(time.perf_counter() - start)
            info = edit.metadata["cases"][0]
            layers.append(info["layers"][0])
            steps.append(info["steps"])
            fractions.append(info["upper_fraction"])
            edit.revert()
            print(f"{name}: case {request.case_id} layer {layers[-1]} {steps[-1]} steps {times[-1]:.2f} s", flush=True)
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results["configs"][name] = {
            "seconds_per_case": statistics.mean(times), "seconds": times, "layers": layers, "steps": steps,
            "blocks_run_fraction": fractions, "peak_rss_mib": peak_rss_mib(),
            "rss_growth_mib": peak_rss_mib() - rss_before, "python_peak_mib": py_peak / 2**20,
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
    print("| config | s/case | layers | steps | blocks run | peak RSS MiB | Python peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, row in configs.items():
        print(f"| {name} | {row['seconds_per_case']:.2f} | {row['layers']} | {row['steps']} | "
              f"{statistics.mean(row['blocks_run_fraction']):.2f} | {row['peak_rss_mib']:.0f} | "
              f"{row['python_peak_mib']:.1f} |")
    for label, value in ratios.items():
        print(f"\n{label}: {value:.2f}x", end="")
    print()
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
