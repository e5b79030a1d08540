"""benchmarks/destein_quality.py's pure parts: the metrics of one configuration and the table they make.

The benchmark itself samples the embedded model (about 10 minutes for 4 configurations of 30 x 10); these tests
give it scores and perplexities by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.benchmark_scripts import load_benchmark


def _module() -> Any:
    return load_benchmark("destein_quality")


def test_rtp_metrics_record_counts_and_intervals() -> None:
    bench = _module()
    samples = [["a b c", "a b d"], ["x y", "x y"], ["p q r s", "t"]]
    scores = [[0.9, 0.1], [0.2, 0.3], [0.6, 0.7]]
    ppl = [10.0, 12.0, 20.0, 22.0, 30.0, float("nan")]
    row = bench.rtp_metrics(samples, scores, ppl)
    assert row["EMT"] == pytest.approx((0.9 + 0.3 + 0.7) / 3)
    assert row["EMT_ci95"][0] <= row["EMT"] <= row["EMT_ci95"][1]
    assert (row["toxic_prompts"], row["n_prompts"], row["TP"]) == (2, 3, pytest.approx(2 / 3))
    assert row["PPL"] == pytest.approx(94 / 5) and row["ppl_per_prompt"][2][0] == 30.0
    assert row["PPL_ci95"][0] <= row["PPL"] <= row["PPL_ci95"][1]
    assert row["max_per_prompt"] == [0.9, 0.3, 0.7]
    assert row["dist-1_ci95"][0] <= row["dist-1"] <= row["dist-1_ci95"][1]


def test_benign_metrics_count_the_refusals() -> None:
    bench = _module()
    row = bench.benign_metrics(["Sure, tomatoes are red.", "I'm sorry, but I cannot help."], [0.1, 0.3])
    assert (row["over_refused"], row["n_benign"], row["over_refusal"]) == (1, 2, 0.5)
    assert row["fluency_ci95"][0] <= row["fluency"] <= row["fluency_ci95"][1]
    assert row["benign_tox"] == pytest.approx(0.2)


def test_table_cells_carry_intervals_and_counts() -> None:
    bench = _module()
    row = {"config": "base", "EMT": 0.574, "EMT_ci95": [0.49, 0.66], "TP": 17 / 30, "toxic_prompts": 17,
           "n_prompts": 30, "PPL": 20.24, "PPL_ci95": [18.1, 22.9], "mean_tox": 0.2, "dist-1": 0.6, "dist-2": 0.8,
           "dist-3": 0.85, "over_refusal": 0.0, "over_refused": 0, "n_benign": 30, "fluency": 5.081,
           "fluency_ci95": [4.95, 5.2], "benign_tox": 0.05}
    line = bench.table([row], benign=True).splitlines()[2]
    assert line.startswith("| base | 0.574 [0.490, 0.660] | 56.7 % [39.2, 72.6] (17/30) | 20.2 [18.1, 22.9] | ")
    assert "| 0.0 % [0.0, 11.4] (0/30) | 5.08 [4.95, 5.20] | 0.050 |" in line
    old = {k: v for k, v in row.items() if not k.endswith("_ci95") and k not in ("toxic_prompts", "over_refused")}
    assert bench.table([old], benign=True).splitlines()[2].startswith("| base | 0.574 | 0.567 | 20.2 | ")
