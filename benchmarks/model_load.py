"""Load time of the embedded model: first load (GGUF dequantised + cached) vs cached loads.

    python benchmarks/model_load.py [--repeats 3] [--json results/model_load.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from registry.writer import write_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from registry import models

    with tempfile.TemporaryDirectory() as cache:
        os.environ[models.CACHE_ENV] = cache
        start = time.perf_counter()
        models.load_model()
        first = time.perf_counter() - start
        cached = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            models.load_model()
            cached.append(time.perf_counter() - start)
    result = {"first_load_s": round(first, 2), "cached_load_s_median": round(statistics.median(cached), 2),
              "cached_loads_s": [round(c, 2) for c in cached], "ratio_first_over_cached": round(first / statistics.median(cached), 1)}
    print("| load | seconds |\n|---|---|")
    print(f"| first (convert GGUF → cache) | {result['first_load_s']} |")
    print(f"| cached (median of {args.repeats}) | {result['cached_load_s_median']} |")
    print(f"\nfirst / cached = {result['ratio_first_over_cached']}×")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_file(args.json, json.dumps(result, indent=2), overwrite=True)


if __name__ == "__main__":
    main()
