"""The supported distributed route: the user's fine-tune with a frozen security vector under DDP through
the Hugging Face Trainer (two processes, gloo on the CPU). Each rank sees half the rows (half the steps),
the guard keeps the vector out of the optimizer on every rank, and the ranks end with the same adapter,
which they only can when DDP averaged their gradients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(tmp_path: Path, processes: int) -> list[dict]:
    out = tmp_path / f"n{processes}"
    out.mkdir()
    argv = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), str(WORKER), str(out)]
            if processes > 1 else [sys.executable, str(WORKER), str(out)])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(processes)]


def test_ddp_fine_tune_with_a_frozen_vector(tmp_path: Path) -> None:
    single, = _run(tmp_path, 1)
    ranks = _run(tmp_path, 2)
    assert [r["world"] for r in ranks] == [2, 2]
    assert all(r["steps"] * 2 == single["steps"] for r in ranks)  # the rows are split between the ranks
    names = sorted(ranks[0]["user"])
    assert names == sorted(ranks[1]["user"]) and names
    assert all(torch.equal(ranks[0]["user"][n], ranks[1]["user"][n]) for n in names)  # gradients were averaged
    assert any(not torch.equal(ranks[0]["user"][n], single["user"][n]) for n in names)  # not a rank-local run
