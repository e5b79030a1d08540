"""benchmarks/localization_outcome.py: the per-strategy summary (pooled rates, points, their ratio)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("localization_outcome", ROOT / "benchmarks" / "localization_outcome.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _case(case_id: int, outcomes: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
    return {"case_id": case_id, "category": "c",
            "outcomes": {s: {"layer": layer, "harmbench": h, "benign": b, "edit_seconds": 1.0}
                         for s, (layer, h, b) in outcomes.items()}}


def test_summary_pools_cases_and_divides_gain_by_over_refusal() -> None:
    module = _module()
    result = {"n_harmbench": 10, "n_benign": 20, "base": {"harmbench": 1, "benign": 0},
              "strategies": ["last", "random"],
              "cases": [_case(0, {"last": (29, 5, 2), "random": (3, 1, 0)}),
                        _case(1, {"last": (29, 3, 2), "random": (7, 2, 0)})]}
    rows = {row["strategy"]: row for row in module.summarise(result)}
    # last: 8/20 refused vs base 1/10 -> +30 points; 4/40 over-refused vs 0 -> +10 points; ratio 3.
    assert rows["last"]["gain_points"] == pytest.approx(30.0)
    assert rows["last"]["over_refusal_points"] == pytest.approx(10.0)
    assert rows["last"]["gain_per_over_refusal_point"] == pytest.approx(3.0)
    assert rows["last"]["cases_with_gain"] == 2 and rows["last"]["distinct_layers"] == 1
    # random: 3/20 -> +5 points, no over-refusal: no ratio (shown as infinite), two distinct layers.
    assert rows["random"]["gain_points"] == pytest.approx(5.0)
    assert rows["random"]["gain_per_over_refusal_point"] is None and rows["random"]["distinct_layers"] == 2
    low, high = rows["last"]["refusal_ci95"]
    assert low < 0.4 < high
    result["summary"] = list(rows.values())
    table = module.markdown(result)
    assert "| last | 1 distinct (most: 29 × 2) | 40.0 % [21.9, 61.3] (8/20) | +30.0 |" in table
    assert "∞ (no over-refusal)" in table
