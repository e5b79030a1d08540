"""benchmarks/easyedit_dinm.py's own logic, without EasyEdit: the ΔW comparison on tiny tensors, the
alternating order, the medians and ratios, the table, the argument and environment checks. (The
EasyEdit side itself runs in tests/hosts.)"""

from __future__ import annotations

import statistics
from typing import Any

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_benchmark("easyedit_dinm")


NAME = "model.layers.2.mlp.down_proj.weight"
CONFIGS = ("easyedit", "compat", "improved")


def test_bit_equal_deltas_compare_equal(bench) -> None:
    delta = torch.randn(4, 3)
    result = bench.compare_deltas({NAME: delta.clone()}, {NAME: delta.clone()})
    assert result == bench.DeltaComparison(True, 0.0, True)


def test_one_ulp_is_not_bit_equal_and_its_size_is_reported(bench) -> None:
    delta = torch.randn(4, 3)
    other = delta.clone()
    other[1, 2] = torch.nextafter(other[1, 2], torch.tensor(float("inf")))
    result = bench.compare_deltas({NAME: delta}, {NAME: other})
    assert result.same_tensors and not result.bit_equal
    assert result.max_abs_difference == pytest.approx(float((other[1, 2] - delta[1, 2]).abs()))
    assert 0 < result.max_abs_difference < 1e-6


def test_other_tensors_or_shapes_are_not_compared(bench) -> None:
    delta = torch.zeros(2, 2)
    other_layer = bench.compare_deltas({NAME: delta}, {NAME.replace(".2.", ".3."): delta})
    other_shape = bench.compare_deltas({NAME: delta}, {NAME: torch.zeros(2, 3)})
    nothing = bench.compare_deltas({}, {})
    for result in (other_layer, other_shape, nothing):
        assert result == bench.DeltaComparison(False, None, False)


def test_nan_is_never_bit_equal(bench) -> None:
    delta = torch.tensor([[float("nan"), 1.0]])
    assert not bench.compare_deltas({NAME: delta}, {NAME: delta.clone()}).bit_equal


def test_the_largest_difference_is_over_every_tensor(bench) -> None:
    a = {"x": torch.zeros(2), "y": torch.zeros(3)}
    b = {"x": torch.tensor([0.0, 0.25]), "y": torch.tensor([0.0, 0.0, -0.5])}
    assert bench.compare_deltas(a, b).max_abs_difference == 0.5


def test_each_configuration_runs_in_every_position_equally_often(bench) -> None:
    orders = bench.case_orders(bench.CONFIGS, 6)
    assert orders[0] == list(bench.CONFIGS)
    for position in range(3):
        column = [order[position] for order in orders]
        assert sorted(column) == sorted(list(bench.CONFIGS) * 2)
    assert all(sorted(order) == sorted(bench.CONFIGS) for order in orders)


def _row(case: int, seconds: tuple[float, float, float], layers: tuple[int, int, int], equal: bool) -> dict[str, Any]:
    return {"case_id": str(case), "category": "c", "seconds": dict(zip(CONFIGS, seconds)),
            "layers": dict(zip(CONFIGS, layers)),
            "compat_vs_easyedit": {"same_tensors": layers[0] == layers[1], "bit_equal": equal,
                                   "max_abs_difference": 0.0 if equal else None}}


def test_summary_medians_ratios_and_agreement(bench) -> None:
    rows = [_row(0, (10.0, 5.0, 2.0), (28, 28, 29), True),
            _row(1, (20.0, 4.0, 4.0), (28, 28, 29), True),
            _row(2, (30.0, 9.0, 3.0), (12, 11, 12), False)]
    summary = bench.summarize(rows)
    assert summary["median_seconds"] == {"easyedit": 20.0, "compat": 5.0, "improved": 3.0}
    assert summary["ratios_of_medians"] == {"compat / easyedit": 0.25, "improved / easyedit": 0.15}
    assert summary["median_per_case_ratios"]["compat / easyedit"] == statistics.median([0.5, 0.2, 0.3])
    assert (summary["compat_layer_agrees"], summary["compat_delta_bit_equal"], summary["improved_layer_agrees"]) == (2, 2, 1)

    result = {"easyedit": "EasyEdit at X", "model_name": "m", "transformers": "5.5.4", "torch": "2", "torch_threads": 1,
              "rows": rows, "summary": summary}
    table = bench.markdown(result)
    assert "| 0 | c | 28 | 28 | 29 | yes | 0 | 10.00 | 5.00 | 2.00 |" in table
    assert "| 2 | c | 12 | 11 | 12 | no | other tensor |" in table
    assert "| median | | | | | 2/3 | | 20.00 | 5.00 | 3.00 |" in table
    assert "compat / easyedit (medians): 0.25×" in table


def test_model_flag_is_dropped_in_both_spellings(bench) -> None:
    assert bench.without_model(["--cases", "2", "--model", "/m", "--threads", "1"]) == ["--cases", "2", "--threads", "1"]
    assert bench.without_model(["--model=/m", "--cases", "2"]) == ["--cases", "2"]


def test_missing_hosts_environment_is_named_with_its_fix(bench, tmp_path) -> None:
    problem = bench.hosts_problem(tmp_path / "nope" / "bin" / "python")
    assert "scripts/setup_hosts.sh" in problem and "--hosts-python" in problem
    args = bench.argparse.Namespace(hosts_python=str(tmp_path / "nope"), model=None, threads=1)
    assert bench.relaunch_in_hosts(args, []) == 2  # refused before any model is converted or loaded


def test_a_tokenizer_that_does_not_give_text_back_is_refused(bench) -> None:
    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    bench.check_tokenizer(tok)  # the character tokenizer round-trips
    tok.backend_tokenizer.decoder = None  # like the 5.5.4 conversion: no decoder, tokens joined as they are
    with pytest.raises(SystemExit, match="does not round-trip"):
        bench.check_tokenizer(tok)


def test_run_all_skips_it_without_the_hosts_environment(monkeypatch, tmp_path) -> None:
    run_all = load_benchmark("run_all")
    monkeypatch.setenv("VENV_HOSTS", str(tmp_path / "missing-venv"))
    reason = run_all.missing_requirement("easyedit_dinm")
    assert "missing-venv" in reason and "scripts/setup_hosts.sh" in reason
    assert run_all.missing_requirement("dinm_speed") is None
    (tmp_path / "missing-venv" / "bin").mkdir(parents=True)
    (tmp_path / "missing-venv" / "bin" / "python").write_text("")
    assert run_all.missing_requirement("easyedit_dinm") is None


def test_readme_generator_renders_its_table_and_a_skipped_script(tmp_path) -> None:
    import json

    gen = load_benchmark("make_readme_results")
    (tmp_path / "easyedit_dinm.json").write_text(json.dumps({
        "command": "python benchmarks/easyedit_dinm.py --cases 2", "date": "2026-12-04T21:00:00+00:00",
        "commit": "abc1234", "machine": {"OMP_NUM_THREADS": "1", "cpus": 2}, "table": "| the table |\n"}))
    (tmp_path / "run_all.json").write_text(json.dumps({
        "mode": "quick", "limit": 2, "date": "2026-12-04T21:00:00+00:00", "commit": "abc1234",
        "machine": {"cpus": 2, "OMP_NUM_THREADS": "1"}, "command": "python benchmarks/run_all.py --limit 2",
        "total_s": 60.0, "scripts": [{"name": "easyedit_dinm", "command": "python benchmarks/easyedit_dinm.py --cases 2",
                                      "rc": None, "seconds": 0.0, "skipped": "needs .venv-hosts"}]}))
    section = gen.render(tmp_path)
    assert "python benchmarks/easyedit_dinm.py --cases 2   # skipped: needs .venv-hosts" in section
    assert "#### DINM beside EasyEdit's own DINM" in section and "| the table |" in section
    assert "`python benchmarks/easyedit_dinm.py --cases 2` (2026-12-04, commit abc1234" in section
