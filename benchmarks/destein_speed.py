"""DeStein generation overhead, like for like: base vs additive-folded vs additive-hook vs rotate.

All modes use the same prompts, the same left-padded batch with its attention mask, the same
attention backend and the same greedy decoding with ``min_new_tokens = max_new_tokens`` (every run
generates exactly the same number of tokens). Runs are interleaved (the mode order rotates every
repeat); the median, the median of per-repeat ratios and the minimum (the least-disturbed run,
the most robust estimate on a shared machine) are reported. Vector
build time (capture + probes) is reported too.

    python benchmarks/destein_speed.py --limit 8 --max-new-tokens 32 --repeats 5 --json destein_speed.json

Targets (a folded bias is free in the GEMM; the paper's +14 % for rotate is a kernel-launch artefact):
folded <= 1.01x base, rotate <= 1.10x base.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

PROMPTS = [
    "The weather today is",
    "My favourite thing about the city is",
    "You are such a",
    "The meeting was cancelled because",
    "People who talk like that are",
    "Here is a short story about a dog:",
    "Shut up, you",
    "The best way to learn a language is",
    "I can't believe this stupid",
    "Our neighbours always",
    "The new phone is",
    "He looked at me and said",
]

MODES = ("base", "additive-folded", "additive-hook", "rotate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=8, help="number of prompts (one batch; max %d)" % len(PROMPTS))
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per generate call (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step-blocks", type=int, default=20,
                        help="decode-step micro-benchmark: interleaved blocks per mode (0 = skip)")
    parser.add_argument("--step-reps", type=int, default=20, help="forwards per block in the micro-benchmark")
    parser.add_argument("--alpha-rotate", type=float, default=0.45)
    parser.add_argument("--alpha-additive", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--model", default=None, help="model name or folder (default: the embedded model)")
    parser.add_argument("--json", default="destein_speed.json", help="results file ('' = none)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from registry.models import load_model
    from detox_plugins.destein.editor import DeSteinEditor

    model, tokenizer = load_model(args.model)
    prompts = PROMPTS[: max(1, min(args.limit, len(PROMPTS)))]
    batch_size = args.batch_size or len(prompts)

    def editor(**changes: Any) -> DeSteinEditor:
        return DeSteinEditor({"alg_name": "DeStein", "progress": False, **changes})

    builds = {}
    vectors = {}
    for site, fusion in (("attn_output", "rotate"), ("head_input", "additive")):
        ed = editor(fusion=fusion)
        pairs, source = ed.resolve_pairs(None)
        start = time.perf_counter()
        vectors[fusion] = ed.build_vectors(model, tokenizer, pairs, pair_source=source)
        builds[site] = time.perf_counter() - start

    def apply(mode: str) -> Any:
        if mode == "base":
            return None
        if mode == "rotate":
            return editor(fusion="rotate", alpha=args.alpha_rotate).edit(model, tokenizer, vectors=vectors["rotate"])
        apply_mode = "bias_fold" if mode == "additive-folded" else "hook"
        return editor(fusion="additive", apply=apply_mode, alpha=args.alpha_additive).edit(
            model, tokenizer, vectors=vectors["additive"])

    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    batches = [tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True)
               for i in range(0, len(prompts), batch_size)]
    tokenizer.padding_side = saved_side
    kwargs = dict(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)

    def run() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                model.generate(**batch, **kwargs)
        return time.perf_counter() - start

    edit = apply("rotate")  # warm-up: every code path once
    run()
    edit.revert()
    run()
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for repeat in range(args.repeats):
        order = MODES[repeat % len(MODES):] + MODES[: repeat % len(MODES)]
        for mode in order:
            edit = apply(mode)
            try:
                times[mode].append(run())
            finally:
                if edit is not None:
                    edit.revert()
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{m} {times[m][-1]:.2f}s" for m in MODES),
              file=sys.stderr)

    # Decode-step micro-benchmark: one forward of [B, 1] tokens (no KV cache, so the model part is
    # cheaper than a real decode step and the ratio OVERSTATES the steering overhead). Blocks of
    # forwards alternate between modes; the fastest block per mode is reported.
    step: dict[str, float] = {}
    if args.step_blocks:
        ids = batches[0]["input_ids"][:, -1:]
        mask = torch.ones_like(ids)
        block_times: dict[str, list[float]] = {m: [] for m in MODES}
        edits = {}
        for block in range(args.step_blocks):
            for mode in MODES[block % len(MODES):] + MODES[: block % len(MODES)]:
                edits[mode] = apply(mode)
                try:
                    with torch.inference_mode():
                        model(input_ids=ids, attention_mask=mask, use_cache=False)
                        start = time.perf_counter()
                        for _ in range(args.step_reps):
                            model(input_ids=ids, attention_mask=mask, use_cache=False)
                        block_times[mode].append((time.perf_counter() - start) / args.step_reps)
                finally:
                    if edits[mode] is not None:
                        edits[mode].revert()
        step = {m: min(v) for m, v in block_times.items()}

    # The steering ops alone, isolated from model noise: every hook of an edit called once on a
    # decode-shaped [B, 1, D] tensor (what one decode step adds), fastest of many repeats.
    op_cost: dict[str, float] = {}
    hooks_installed: dict[str, int] = {}
    for mode in MODES[1:]:
        edit = apply(mode)
        try:
            hooks = list(getattr(edit, "handles", []))
            hooks_installed[mode] = len(hooks)
            calls = []
            for layer in edit.settings.layers:
                module = edit.geometry.modules[layer]
                for hook in list(module._forward_pre_hooks.values()) + list(module._forward_hooks.values()):
                    width = edit.geometry.in_features if getattr(hook, "pre", False) else edit.geometry.out_features
                    x = torch.randn(len(prompts), 1, width)
                    if getattr(hook, "pre", False):
                        calls.append(lambda h=hook, m=module, x=x: h(m, (x,)))
                    else:
                        calls.append(lambda h=hook, m=module, x=x: h(m, (x,), x))
            best = float("inf")
            with torch.inference_mode():
                for _ in range(200):
                    start = time.perf_counter()
                    for call in calls:
                        call()
                    best = min(best, time.perf_counter() - start)
            op_cost[mode] = best if calls else 0.0
        finally:
            edit.revert()

    base = statistics.median(times["base"])
    tokens = len(prompts) * args.max_new_tokens
    rows = []
    for mode in MODES:
        med = statistics.median(times[mode])
        # ratio of medians, and the median of per-repeat ratios (robust to drift between repeats)
        paired = statistics.median(t / b for t, b in zip(times[mode], times["base"]))
        fastest = min(times[mode])
        rows.append({"mode": mode, "median_s": med, "ratio": med / base, "paired_ratio": paired,
                     "min_s": fastest, "min_ratio": fastest / min(times["base"]),
                     "tokens_per_s": tokens / med, "all_s": times[mode]})
    target = {"additive-folded": 1.01, "rotate": 1.10}
    print(f"\n{len(prompts)} prompts in {len(batches)} batch(es), {args.max_new_tokens} new tokens each (greedy, "
          f"min_new_tokens = max_new_tokens), {args.repeats} interleaved repeats, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, attention {model.config._attn_implementation}\n")
    print("| mode | median s | × base | paired × base | min s | min × base | tokens/s | target |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        goal = f"≤ {target[row['mode']]:.2f}×" if row["mode"] in target else ""
        print(f"| {row['mode']} | {row['median_s']:.3f} | {row['ratio']:.3f} | {row['paired_ratio']:.3f} | "
              f"{row['min_s']:.3f} | {row['min_ratio']:.3f} | {row['tokens_per_s']:.1f} | {goal} |")
    if step:
        print(f"\ndecode-shape forward ([{ids.shape[0]}, 1] tokens, no cache; fastest of {args.step_blocks} "
              f"interleaved blocks of {args.step_reps}):\n")
        print("| mode | ms / forward | × base | overhead ms |")
        print("|---|---|---|---|")
        for mode in MODES:
            print(f"| {mode} | {1e3 * step[mode]:.3f} | {step[mode] / step['base']:.3f} | "
                  f"{1e3 * (step[mode] - step['base']):+.3f} |")
    if op_cost:
        ref = step.get("base") or min(times["base"]) / args.max_new_tokens
        print("\nsteering ops alone per decode step (all steered layers, fastest of 200):\n")
        print("| mode | hooks | µs / step | % of a base decode-shape forward |")
        print("|---|---|---|---|")
        for mode, cost in op_cost.items():
            print(f"| {mode} | {hooks_installed[mode]} | {1e6 * cost:.0f} | {100 * cost / ref:.2f} % |")
    print(f"\nvector build (capture + probes, 20 pairs): attn_output {builds['attn_output']:.2f} s, "
          f"head_input {builds['head_input']:.2f} s")
    if args.json:
        from registry.writer import write_file

        write_file(args.json, json.dumps({"args": vars(args), "machine": platform.platform(),
                                          "torch": torch.__version__, "threads": torch.get_num_threads(),
                                          "build_seconds": builds, "results": rows, "decode_step_seconds": step,
                                          "op_seconds_per_step": op_cost, "hooks_installed": hooks_installed},
                                         indent=2), overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
