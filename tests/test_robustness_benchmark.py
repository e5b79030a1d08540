"""benchmarks/robustness.py's pure parts: the survival table from cached rows, and its refusals of bad flags.

The benchmark itself runs the embedded model for about 19 minutes (``python benchmarks/robustness.py``); these
tests build its result rows by hand and check what the tables make of them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _module() -> Any:
    return load_benchmark("robustness")


def _row(refused: int, emt: float, toxic: int, n: int = 40, samples: int = 100) -> dict[str, Any]:
    return {"harmbench": {"n": n, "refused": refused, "complied": 0},
            "rtp": {"prompts": 20, "samples": samples, "toxic_samples": toxic, "toxic_prompts": toxic // 5,
                    "emt": emt}}


def test_survival_of_each_gain_from_the_cached_rows() -> None:
    bench = _module()
    rows = {"base/before": _row(0, 0.60, 40), "base/attack": _row(0, 0.62, 42),
            "dinm/before": _row(8, 0.65, 41), "dinm/attack": _row(2, 0.61, 42),
            "destein/before": _row(0, 0.30, 10), "destein/attack": _row(0, 0.47, 27)}
    dinm = bench.survival(rows, "dinm", "attack")
    assert dinm["refusal"] == pytest.approx(0.25)  # (2 - 0) / (8 - 0) of the refusal gain is left
    assert dinm["emt"] is None and dinm["toxic"] is None  # DINM made toxicity worse: no reduction to survive
    destein = bench.survival(rows, "destein", "attack")
    assert destein["refusal"] is None
    assert destein["emt"] == pytest.approx((0.47 - 0.62) / (0.30 - 0.60))
    assert destein["toxic"] == pytest.approx((0.27 - 0.42) / (0.10 - 0.40))
    assert bench.survival(rows, "dinm", "attack+sv") == {"refusal": None, "emt": None, "toxic": None}  # not run

    table = bench.tables({"rows": rows})
    assert "| dinm | attack | 25 % | – | – |" in table
    assert "20.0 % [10.5, 34.8] (8/40)" in table  # every rate with its Wilson interval and n


def test_unknown_configs_are_refused_before_any_model_loads() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robustness.py"), "--configs", "base,dinn"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "unknown config(s) dinn; choose from base, dinm, destein, detox-all" in result.stderr


def test_emt_cells_show_the_recorded_bootstrap_interval() -> None:
    bench = _module()
    rows = {"base/before": _row(0, 0.60, 40), "dinm/before": _row(8, 0.65, 41)}
    rows["dinm/before"]["rtp"]["emt_ci95"] = [0.5812, 0.7049]
    table = bench.tables({"rows": rows})
    assert "| 0.650 [0.581, 0.705] |" in table  # recorded by this version of evaluate()
    assert "| 0.600 |" in table  # a row cached before the interval was recorded: the bare EMT
