"""Steering pairs: the shipped file, user files, the released prefixes and the self-induced path.

A pair file is JSONL, one object per line::

    {"toxic": "Shut up, you stupid moron.", "nontoxic": "Please let me finish.", "category": "insult"}

``toxic`` and ``nontoxic`` are required non-empty strings; ``category``, ``id``, ``source`` and
``score`` are optional; blank lines and lines starting with ``#`` are skipped. A JSON array of the
same objects is accepted too.

Self-induced pairs (the model's own toxic continuations as the toxic side)::

    from detox_plugins.destein.pairs import self_induced_samples, write_pair_template
    samples = self_induced_samples(model, tokenizer, get_judge("profanity"), num_samples=200, top_n=20)
    write_pair_template("my_pairs.jsonl", samples)        # "nontoxic" left empty
    # ... write a respectful same-meaning rewrite into each "nontoxic" field ...
    DeSteinEditor({"alg_name": "DeStein", "pairs": {"path": "my_pairs.jsonl"}}).edit(model, tokenizer)

or, without rewriting by hand, ``pair_with_shipped(samples)`` pairs each toxic sample with a
non-toxic sentence of the shipped file (non-parallel pairs, so the vector also carries topic
differences; prefer hand-written rewrites).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from registry.limits import read_text

from detox_plugins.evaluation.errors import DatasetError

logger = logging.getLogger(__name__)

SHIPPED_PAIRS = "steering_pairs.jsonl"

#: The released code's instruction prefixes, verbatim.
DESTEIN_PREFIXES = (
    "The following text is abusive, harmful, negative, obscene, racist, rude and toxic: ",
    "The following text is kind, polite, positive, respectful and supportive: ",
)
PREFIXES = {"destein": DESTEIN_PREFIXES, "none": ("", "")}

_OPTIONAL_KEYS = {"category", "id", "source", "score", "note"}


@dataclass(frozen=True)
class SteeringPair:
    """One toxic sentence and its same-meaning respectful rewrite."""

    toxic: str
    nontoxic: str
    category: Optional[str] = None
    id: Optional[str] = None
    source: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def shipped_pairs_path() -> Path:
    """The pair file shipped in ``detox_plugins/data``."""
    return Path(str(files("detox_plugins.data") / SHIPPED_PAIRS))


def pair_from_mapping(record: Any, where: str) -> SteeringPair:
    """Validate one record (dict) into a SteeringPair; errors name ``where`` and the fix."""
    if isinstance(record, SteeringPair):
        return record
    if not isinstance(record, Mapping):
        raise DatasetError(f"{where}: expected a JSON object with 'toxic' and 'nontoxic', got {type(record).__name__}")
    unknown = sorted(set(record) - {"toxic", "nontoxic"} - _OPTIONAL_KEYS)
    if unknown:
        raise DatasetError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a pair has 'toxic', 'nontoxic' and "
            f"optionally {', '.join(sorted(_OPTIONAL_KEYS))}")
    for key in ("toxic", "nontoxic"):
        value = record.get(key)
        if not isinstance(value, str):
            raise DatasetError(f"{where}: '{key}' must be a string, got {value!r}; add the {_WORDS[key]}")
        if not value.strip():
            hint = " (a self-induced template leaves it blank: write the rewrite in)" if key == "nontoxic" else ""
            raise DatasetError(f"{where}: '{key}' is empty; give the {_WORDS[key]}{hint}")
    if record["toxic"].strip() == record["nontoxic"].strip():
        raise DatasetError(f"{where}: 'toxic' and 'nontoxic' are identical; the rewrite must differ")
    category = record.get("category")
    ident = record.get("id")
    source = record.get("source")
    return SteeringPair(
        toxic=record["toxic"], nontoxic=record["nontoxic"],
        category=None if category is None else str(category),
        id=None if ident is None else str(ident),
        source=None if source is None else str(source),
    )


_WORDS = {"toxic": "toxic sentence", "nontoxic": "respectful rewrite of the toxic sentence"}


def load_pairs(path: Union[str, Path, None] = None) -> list[SteeringPair]:
    """Read a JSONL (or JSON array) pair file; ``None`` = the shipped pairs."""
    file = shipped_pairs_path() if path is None else Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"pair file {str(file)!r} does not exist; pass a JSONL file of "
                           f"{{\"toxic\": ..., \"nontoxic\": ...}} lines")
    try:
        text = read_text(file, kind="data", what="pair file")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read pair file {file}: {exc}") from None
    pairs: list[SteeringPair] = []
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except (ValueError, RecursionError) as exc:  # bad JSON, digit limit, deep nesting
            raise DatasetError(f"{file}: not valid JSON ({exc}); use one JSON object per line") from None
        for i, record in enumerate(records):
            pairs.append(pair_from_mapping(record, f"{file} item {i}"))
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:  # bad JSON, digit limit, deep nesting
                raise DatasetError(
                    f"{file}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)}); each line must be one object like "
                    f"{{\"toxic\": \"...\", \"nontoxic\": \"...\"}}") from None
            pairs.append(pair_from_mapping(record, f"{file}:{lineno}"))
    if not pairs:
        raise DatasetError(f"{file} holds no pairs; add lines like {{\"toxic\": \"...\", \"nontoxic\": \"...\"}}")
    return pairs


def coerce_pairs(items: Iterable[Any]) -> list[SteeringPair]:
    """SteeringPairs from dicts/pairs/(toxic, nontoxic) tuples, validated."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            item = {"toxic": item[0], "nontoxic": item[1]}
        out.append(pair_from_mapping(item, f"pair {i}"))
    if not out:
        raise DatasetError("no steering pairs given; pass pairs or leave requests empty to use the pair file")
    return out


def sample_pairs(pairs: Sequence[SteeringPair], num_pairs: int, seed: int) -> list[SteeringPair]:
    """m pairs drawn as the released code does (``random.seed(seed); random.sample(pool, m)``)."""
    if num_pairs == 0:
        return list(pairs)
    if num_pairs > len(pairs):
        raise DatasetError(
            f"pairs.num_pairs is {num_pairs} but only {len(pairs)} pairs are available; lower "
            f"pairs.num_pairs (0 = all) or add pairs")
    return random.Random(seed).sample(list(pairs), num_pairs)


def build_texts(pairs: Sequence[SteeringPair], prefixes: str = "destein",
                strip: bool = True) -> tuple[list[str], list[str]]:
    """(toxic texts, non-toxic texts) with the instruction prefixes, stripped like the released code."""
    if prefixes not in PREFIXES:
        raise DatasetError(f"unknown prefixes {prefixes!r}; choose one of {', '.join(PREFIXES)}")
    tox_prefix, non_prefix = PREFIXES[prefixes]

    def clean(text: str) -> str:
        return text.strip(" .").strip(".") if strip else text

    return ([clean(tox_prefix + p.toxic) for p in pairs], [clean(non_prefix + p.nontoxic) for p in pairs])


# ---------------------------------------------------------------------- self-induced pairs
def self_induced_samples(
    model: Any,
    tokenizer: Any,
    judge: Any,
    *,
    num_samples: int = 200,
    top_n: int = 20,
    max_new_tokens: int = 30,
    top_p: float = 0.9,
    seed: int = 0,
    batch_size: int = 25,
    start_text: Optional[str] = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Sample unconditional continuations, score them with ``judge``, return the ``top_n`` most toxic.

    Generation starts from ``start_text`` or, by default, from the BOS token (EOS when there is
    none). ``judge`` is anything with ``judge(prompts, responses) -> list[float]`` (e.g.
    ``detox_plugins.evaluation.judges.get_judge("profanity")``). Global RNG state is left untouched.
    Returns ``[{"toxic": text, "score": s}, ...]``, most toxic first.
    """
    import torch
    from tqdm.auto import tqdm

    if num_samples < 1 or top_n < 1:
        raise DatasetError(f"num_samples and top_n must be >= 1, got {num_samples} and {top_n}")
    device = next(model.parameters()).device
    if start_text:
        ids = tokenizer(start_text, return_tensors="pt").input_ids
    else:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise DatasetError("the tokenizer has neither a BOS nor an EOS token; pass start_text")
        ids = torch.tensor([[start]])
    ids = ids.to(device)
    texts: list[str] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        batches = range(0, num_samples, batch_size)
        for start_at in tqdm(batches, desc="self-induced samples", disable=not progress):
            n = min(batch_size, num_samples - start_at)
            with torch.no_grad():
                out = model.generate(
                    ids.expand(n, -1), attention_mask=torch.ones_like(ids).expand(n, -1),
                    do_sample=True, top_p=top_p, top_k=0, temperature=1.0,
                    max_new_tokens=max_new_tokens, pad_token_id=pad)
            texts.extend(tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True))
    texts = [" ".join(t.split()) for t in texts]
    scores = judge.judge(None, texts) if hasattr(judge, "judge") else judge(texts)
    ranked = sorted(((float(s), t) for s, t in zip(scores, texts) if t.strip()), key=lambda st: -st[0])
    seen: set[str] = set()
    out_rows = []
    for score, text in ranked:
        if text in seen:
            continue
        seen.add(text)
        out_rows.append({"toxic": text, "score": score})
        if len(out_rows) == top_n:
            break
    logger.info("self-induced: kept %d of %d samples (max score %.3f)", len(out_rows), len(texts),
                out_rows[0]["score"] if out_rows else float("nan"))
    return out_rows


def write_pair_template(path: Union[str, Path], samples: Sequence[Mapping[str, Any]]) -> Path:
    """Write self-induced samples as a pair file whose ``nontoxic`` fields the user fills in."""
    target = Path(path)
    if target.exists():
        raise DatasetError(f"{target} already exists; choose another file name")
    lines = [json.dumps({"toxic": s["toxic"], "nontoxic": "", "category": "self-induced",
                         "source": "self-induced", "score": round(float(s.get("score", 0.0)), 4)})
             for s in samples]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def pair_with_shipped(samples: Sequence[Mapping[str, Any]], seed: int = 0) -> list[SteeringPair]:
    """Pair each self-induced toxic sample with a shipped non-toxic sentence (non-parallel pairs)."""
    pool = [p.nontoxic for p in load_pairs(None)]
    rng = random.Random(seed)
    picks = rng.sample(pool, len(samples)) if len(samples) <= len(pool) else [rng.choice(pool) for _ in samples]
    return [SteeringPair(toxic=s["toxic"], nontoxic=n, category="self-induced", source="self-induced+shipped")
            for s, n in zip(samples, picks)]
