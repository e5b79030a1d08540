"""DeStein quality on the embedded model: RTP-challenging EMT/TP, conditional PPL, dist-n, benign checks.

Every configuration sees the same prompts, seeds and decoding (DeStein's protocol: top-p 0.9,
top-k 0, T 1.0, 20 new tokens, n samples per prompt, no chat template). Toxicity is the offline
profanity judge (alt-profanity-check; ToxiGen-200 AUC 0.69, NOT comparable with Perspective).
Perplexity is conditional on the prompt and scored by the UNEDITED model. The benign check
generates greedy answers to the shipped benign questions (chat template) and reports the
over-refusal rate and the n-gram-entropy fluency.

    python benchmarks/destein_quality.py --prompts 30 --samples 10 \
        --configs base rotate:0.45 additive:1.0@bias_fold --json destein_quality.json

A config is ``base`` or ``FUSION:ALPHA[@APPLY]`` (FUSION rotate|additive, APPLY hook|bias_fold).
"""

from __future__ import annotations

from registry.writer import write_file
from registry import from_hparams
import argparse
import json
import logging
import math
import sys
import time
from typing import Any


def parse_config(spec: str) -> dict[str, Any]:
    """``base`` or ``FUSION:ALPHA[@APPLY][+key=value...]``; keys: top_k, prefixes, num_pairs, last_k,
    weight, layers (``a-b`` inclusive range or ``a,b,c``)."""
    if spec == "base":
        return {"name": "base"}
    apply = ""
    if "@" in spec:  # @APPLY may come before or after the +key=value parts
        before, _, after = spec.partition("@")
        apply, plus, rest = after.partition("+")
        spec_core = before + (plus + rest if plus else "")
    else:
        spec_core = spec
    head, *extras = spec_core.split("+")
    fusion, _, alpha = head.partition(":")
    if fusion not in ("rotate", "additive"):
        raise SystemExit(f"bad config {spec!r}: use base or FUSION:ALPHA[@APPLY][+key=value], "
                         f"FUSION rotate|additive")
    cfg: dict[str, Any] = {"name": spec, "fusion": fusion, "alpha": float(alpha or 0.45),
                           "apply": apply or ("bias_fold" if fusion == "additive" else "hook"),
                           "pairs": {}, "probe": {}, "top": {}}
    for extra in extras:
        key, _, value = extra.partition("=")
        if key in ("prefixes",):
            cfg["pairs"][key] = value
        elif key in ("num_pairs", "last_k"):
            cfg["pairs"][key] = int(value)
        elif key == "top_k":
            cfg["probe"]["top_k"] = int(value)
        elif key == "weight":
            cfg["probe"]["weight"] = value
        elif key == "layers":
            if "-" in value:
                a, b = value.split("-")
                cfg["top"]["layers"] = list(range(int(a), int(b) + 1))
            else:
                cfg["top"]["layers"] = [int(x) for x in value.split(",")]
        else:
            raise SystemExit(f"bad config key {key!r} in {spec!r}")
    return cfg


INTERVALS = ("Intervals: 95 %; TP and over-refusal: Wilson on the counts; EMT, PPL, dist-n and fluency: "
             "percentile bootstrap over prompts (2000 resamples, seed 0).")
PER_PROMPT_KEYS = ("max_per_prompt", "ppl_per_prompt")
"""Per-prompt values kept in the JSON (so intervals can be recomputed), left out of the printed rows."""


def rtp_metrics(samples: list[list[str]], scores: list[list[float]], ppl: list[float]) -> dict[str, Any]:
    """EMT, TP, PPL, mean toxicity and dist-n of one configuration, each mean with its 95 % interval."""
    from detox_plugins.evaluation.metrics import (bootstrap_interval, distinct_n, distinct_n_per_prompt,
                                                  emt_interval, expected_max_toxicity, max_per_prompt,
                                                  mean_perplexity, perplexity_interval, toxic_prompt_count,
                                                  toxicity_probability, wilson_interval)

    ppl_groups, start = [], 0
    for group in samples:
        ppl_groups.append(ppl[start:start + len(group)])
        start += len(group)
    toxic, n_scored = toxic_prompt_count(scores)
    row: dict[str, Any] = {
        "EMT": expected_max_toxicity(scores), "EMT_ci95": list(emt_interval(scores)),
        "TP": toxicity_probability(scores), "toxic_prompts": toxic, "n_prompts": n_scored,
        "TP_ci95": list(wilson_interval(toxic, n_scored)),
        "PPL": mean_perplexity(ppl), "PPL_ci95": list(perplexity_interval(ppl_groups)),
        "mean_tox": sum(map(sum, scores)) / sum(map(len, scores)), **distinct_n(samples),
        "max_per_prompt": max_per_prompt(scores), "ppl_per_prompt": ppl_groups,
    }
    for name, values in distinct_n_per_prompt(samples).items():
        row[f"{name}_ci95"] = list(bootstrap_interval(values)) if values else None
    return row


def benign_metrics(answers: list[str], toxicity: list[float]) -> dict[str, Any]:
    """Over-refusal (with its count and Wilson interval), fluency (bootstrap interval) and mean toxicity."""
    from detox_plugins.evaluation.judges import is_refusal
    from detox_plugins.evaluation.metrics import fluency, fluency_interval, wilson_interval

    refused = sum(is_refusal(a) for a in answers)
    return {"over_refusal": refused / len(answers), "over_refused": refused, "n_benign": len(answers),
            "over_refusal_ci95": list(wilson_interval(refused, len(answers))),
            "fluency": fluency(answers), "fluency_ci95": list(fluency_interval([[a] for a in answers])),
            "benign_tox": sum(toxicity) / len(toxicity)}


def _cell(row: dict[str, Any], column: str) -> str:
    """A value with its interval: rates with their count (``k/n``), means with their bootstrap interval."""
    from detox_plugins.evaluation.metrics import format_mean, format_rate

    value = row.get(column)
    if isinstance(value, str):
        return value
    if value is None or math.isnan(value):
        return "nan"
    if column == "TP" and "toxic_prompts" in row:
        return format_rate(row["toxic_prompts"], row["n_prompts"])
    if column == "over_refusal" and "over_refused" in row:
        return format_rate(row["over_refused"], row["n_benign"])
    digits = 1 if column == "PPL" else 2 if column == "fluency" else 3
    return format_mean(value, row.get(f"{column}_ci95"), digits)


def table(results: list[dict[str, Any]], benign: bool) -> str:
    """The markdown table of the configurations' rows."""
    cols = ["config", "EMT", "TP", "PPL", "mean_tox", "dist-1", "dist-2", "dist-3"]
    if benign:
        cols += ["over_refusal", "fluency", "benign_tox"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row, c) for c in cols) + " |" for row in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", default=None,
                        help="DeStein YAML for the vector settings (default: built-in defaults)")
    parser.add_argument("--configs", nargs="+", default=["base", "rotate:0.45", "additive:1.0@bias_fold"])
    parser.add_argument("--prompts", type=int, default=30,
                        help="RTP-challenging prompts (interleaved over 7 attributes)")
    parser.add_argument("--samples", type=int, default=10, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--benign", type=int, default=30, help="benign questions for over-refusal/fluency (0 = skip)")
    parser.add_argument("--benign-tokens", type=int, default=40)
    parser.add_argument("--num-pairs", type=int, default=None, help="override pairs.num_pairs")
    parser.add_argument("--top-k", type=int, default=None, help="override probe.top_k")
    parser.add_argument("--seed", type=int, default=16, help="sampling seed (DeStein hard-codes 16)")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    from registry.models import load_model
    from detox_plugins.destein.editor import DeSteinEditor
    from detox_plugins.destein.hparams import DeSteinHyperParams
    from detox_plugins.evaluation.datasets import load_benign, load_dataset
    from detox_plugins.evaluation.generate import generate
    from detox_plugins.evaluation.judges import get_judge
    from detox_plugins.evaluation.metrics import continuation_perplexities

    judge = get_judge("profanity")
    model, tokenizer = load_model()
    rows = load_dataset("rtp-challenging", limit=args.prompts)
    prompts = [r["prompt"] for r in rows]
    benign = [r["prompt"] for r in load_benign()[: args.benign]] if args.benign else []

    base_hp = from_hparams(args.hparams) if args.hparams else DeSteinHyperParams(alg_name="DeStein")
    overrides: dict[str, Any] = {"progress": False}
    pairs = base_hp.to_dict()["pairs"]
    probe = base_hp.to_dict()["probe"]
    if args.num_pairs is not None:
        pairs["num_pairs"] = args.num_pairs
    if args.top_k is not None:
        probe["top_k"] = args.top_k
    overrides.update(pairs=pairs, probe=probe)
    vector_cache: dict[str, Any] = {}

    results = []
    for spec in args.configs:
        cfg = parse_config(spec)
        edit = None
        started = time.perf_counter()
        if cfg["name"] != "base":
            pairs_cfg = {**overrides["pairs"], **cfg["pairs"]}
            probe_cfg = {**overrides["probe"], **cfg["probe"]}
            hp = base_hp.replace(fusion=cfg["fusion"], alpha=cfg["alpha"], apply=cfg["apply"], capture=None,
                                 progress=False, pairs=pairs_cfg, probe=probe_cfg, **cfg["top"])
            editor = DeSteinEditor(hp)
            key = json.dumps([hp.capture_site, pairs_cfg, {k: v for k, v in probe_cfg.items() if k != "weight"}],
                             sort_keys=True)
            if key not in vector_cache:
                t0 = time.perf_counter()
                pairs_used, source = editor.resolve_pairs(None)
                vector_cache[key] = editor.build_vectors(model, tokenizer, pairs_used, pair_source=source)
                print(f"[vectors] {hp.capture_site}: built in {time.perf_counter() - t0:.1f} s, mean probe acc "
                      f"{float(vector_cache[key].acc.mean()):.3f}", file=sys.stderr)
            edit = editor.edit(model, tokenizer, vectors=vector_cache[key])
        try:
            samples = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, do_sample=True,
                               top_p=0.9, top_k=0, temperature=1.0, num_samples=args.samples, seed=args.seed,
                               use_chat_template=False, batch_size=args.batch_size, progress=False)
            answers = generate(model, tokenizer, benign, max_new_tokens=args.benign_tokens, do_sample=False,
                               use_chat_template=True, batch_size=10, progress=False) if benign else []
        finally:
            if edit is not None:
                edit.revert()
        gen_seconds = time.perf_counter() - started
        scores = [judge.judge(None, s) for s in samples]
        flat_p = [p for p, s in zip(prompts, samples) for _ in s]
        flat_s = [x for s in samples for x in s]
        ppl = continuation_perplexities(model, tokenizer, flat_p, flat_s, batch_size=20, progress=False)
        row = {"config": cfg["name"], **rtp_metrics(samples, scores, ppl), "seconds": round(gen_seconds, 1)}
        if benign:
            row.update(benign_metrics(answers, judge.judge(None, answers)))
        row["example"] = samples[0][0]
        results.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k not in PER_PROMPT_KEYS}), file=sys.stderr)

    print(f"\nRTP-challenging first {len(prompts)} prompts × {args.samples} samples, {args.max_new_tokens} new "
          f"tokens, top-p 0.9, seed {args.seed}; judge {judge.name} {judge.version}; PPL by the unedited model; "
          f"benign: {len(benign)} questions, greedy {args.benign_tokens} tokens, chat template. {INTERVALS}\n")
    print(table(results, bool(benign)))
    if args.json:
        write_file(args.json, json.dumps({"args": vars(args), "judge": f"{judge.name} {judge.version}",
                                          "results": results}, indent=2), overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
