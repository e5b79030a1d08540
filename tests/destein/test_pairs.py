"""The shipped pairs, user pair files (clear errors), sampling, prefixes and the self-induced path."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from detox_plugins.destein.pairs import (
    DESTEIN_PREFIXES, SteeringPair, build_texts, coerce_pairs, load_pairs, pair_with_shipped,
    sample_pairs, self_induced_samples, write_pair_template)
from detox_plugins.evaluation.errors import DatasetError


def test_shipped_pairs_are_complete_and_parallel() -> None:
    pairs = load_pairs()
    assert len(pairs) >= 60
    assert {p.category for p in pairs} == {"insult", "threat", "profanity", "identity_attack"}
    assert len({p.toxic for p in pairs}) == len(pairs) and len({p.id for p in pairs}) == len(pairs)
    assert all(p.toxic.strip() and p.nontoxic.strip() and p.toxic != p.nontoxic for p in pairs)


def write(tmp_path: Path, text: str, name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text,match", [
    ('{"toxic": "a", "nontoxic": "b"}\n{"toxic": "c", nontoxic: "d"}\n', r"pairs.jsonl:2: not valid JSON"),
    ('{"toxic": "a"}\n', r":1: 'nontoxic' must be a string"),
    ('{"toxic": "a", "nontoxic": "  "}\n', r"'nontoxic' is empty"),
    ('{"toxic": "a", "nontoxic": "b", "label": 1}\n', r"unknown key\(s\) 'label'"),
    ('{"toxic": "same", "nontoxic": "same"}\n', "identical"),
    ('["a", "b"]\n', "expected a JSON object"),
    ('\n# only a comment\n', "holds no pairs"),
    ('{"toxic": 3, "nontoxic": "b"}\n', "'toxic' must be a string"),
])
def test_malformed_pair_files_raise_clear_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        load_pairs(write(tmp_path, text))


def test_missing_file_and_json_array(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")
    path = write(tmp_path, json.dumps([{"toxic": "a", "nontoxic": "b", "category": "insult"}]), "p.json")
    assert load_pairs(path) == [SteeringPair("a", "b", "insult")]


def test_sampling_matches_the_released_draw() -> None:
    pool = load_pairs()
    random.seed(42)
    expected = random.sample(pool, 20)
    assert sample_pairs(pool, 20, 42) == expected
    assert sample_pairs(pool, 0, 42) == pool
    with pytest.raises(DatasetError, match="num_pairs"):
        sample_pairs(pool[:3], 5, 0)


def test_prefixes_and_strip() -> None:
    tox, non = build_texts([SteeringPair("You suck. ", "You tried.")])
    assert tox == [DESTEIN_PREFIXES[0] + "You suck"]
    assert non == [DESTEIN_PREFIXES[1] + "You tried"]
    assert build_texts([SteeringPair("a.", "b")], "none", strip=False) == (["a."], ["b"])


def test_coerce_pairs_accepts_tuples_and_dicts() -> None:
    pairs = coerce_pairs([("x", "y"), {"toxic": "p", "nontoxic": "q"}])
    assert [p.toxic for p in pairs] == ["x", "p"]
    with pytest.raises(DatasetError, match="no steering pairs"):
        coerce_pairs([])


class FakeJudge:
    def judge(self, prompts: Any, responses: list[str]) -> list[float]:
        return [min(1.0, len(r) / 100) for r in responses]


def test_self_induced_path(llama: Any, tok: Any, tmp_path: Path) -> None:
    import torch

    state = torch.random.get_rng_state()
    samples = self_induced_samples(llama, tok, FakeJudge(), num_samples=6, top_n=3, max_new_tokens=8,
                                   batch_size=4, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert 1 <= len(samples) <= 3
    assert [s["score"] for s in samples] == sorted((s["score"] for s in samples), reverse=True)
    path = write_pair_template(tmp_path / "self.jsonl", samples)
    with pytest.raises(DatasetError, match="self-induced template"):
        load_pairs(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["nontoxic"] = "a respectful rewrite"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert len(load_pairs(path)) == len(samples)
    paired = pair_with_shipped(samples)
    assert all(p.source == "self-induced+shipped" and p.nontoxic for p in paired)
