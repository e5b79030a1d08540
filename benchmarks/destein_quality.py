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
    from detox_plugins.evaluation.metrics import (
        continuation_perplexities, distinct_n, expected_max_toxicity, fluency, mean_perplexity,
        over_refusal_rate, toxicity_probability)

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
        row = {
            "config": cfg["name"], "EMT": expected_max_toxicity(scores), "TP": toxicity_probability(scores),
            "PPL": mean_perplexity(ppl), "mean_tox": sum(map(sum, scores)) / len(flat_s),
            **distinct_n(samples), "seconds": round(gen_seconds, 1),
        }
        if benign:
            row["over_refusal"] = over_refusal_rate(answers)
            row["fluency"] = fluency(answers)
            row["benign_tox"] = sum(judge.judge(None, answers)) / len(answers)
        row["example"] = samples[0][0]
        results.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), file=sys.stderr)

    cols = ["config", "EMT", "TP", "PPL", "mean_tox", "dist-1", "dist-2", "dist-3"]
    if benign:
        cols += ["over_refusal", "fluency", "benign_tox"]
    print(f"\nRTP-challenging first {len(prompts)} prompts × {args.samples} samples, {args.max_new_tokens} new "
          f"tokens, top-p 0.9, seed {args.seed}; judge {judge.name} {judge.version}; PPL by the unedited model; "
          f"benign: {len(benign)} questions, greedy {args.benign_tokens} tokens, chat template\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in results:
        cells = [row[c] if isinstance(row[c], str) else (f"{row[c]:.3f}" if not math.isnan(row[c]) else "nan")
                 for c in cols]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        write_file(args.json, json.dumps({"args": vars(args), "judge": f"{judge.name} {judge.version}",
                                          "results": results}, indent=2), overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
