"""benchmarks/sv_protocol.py's table: every rate with its Wilson interval and its count."""

from __future__ import annotations

from tests.benchmark_scripts import load_benchmark


def test_rates_are_shown_with_interval_and_count() -> None:
    bench = load_benchmark("sv_protocol")
    results = {"base": {"n": 40, "compliance": 0.0, "refusal": 0.0, "task": {"n": 60, "accuracy": 0.0}},
               "ft": {"n": 40, "compliance": 1.0, "refusal": 0.025},
               "mix": {"n": 40, "compliance": 0.975, "refusal": 0.0, "task": {"n": 60, "accuracy": 0.9}}}
    lines = bench.table(results).splitlines()
    assert lines[2] == "| base model | 0.0 % [0.0, 8.8] (0/40) | 0.0 % [0.0, 8.8] (0/40) | 0.0 % [0.0, 6.0] (0/60) |"
    assert lines[3] == "| plain harmful fine-tune | 100.0 % [91.2, 100.0] (40/40) | 2.5 % [0.4, 12.9] (1/40) | - |"
    assert "| 90.0 % [79.9, 95.3] (54/60) |" in lines[8]
    assert lines[4] == "| harmful fine-tune + vector | - | - | - |"  # not run
    assert bench.rate_cell({"compliance": 0.5}, "compliance") == "50.0 %"  # no n recorded: no interval
