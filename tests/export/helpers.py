"""Compare an exported checkpoint, loaded by a process without detox-plugins, with the edited model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

LOADER = Path(__file__).with_name("load_without_detox.py")


def outputs(model: Any, ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, list[int]]:
    """float32 logits of ``ids`` and the greedy continuation, in this process."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        pad = model.generation_config.pad_token_id
        greedy = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=pad if pad is not None else model.config.eos_token_id)[0, ids.shape[1]:]
    return logits, greedy.tolist()


def load_elsewhere(folder: Path, ids: torch.Tensor, work: Path, *, peft_base: Optional[Path] = None,
                   new_tokens: int = 8) -> dict[str, Any]:
    ids_file, out_file = work / "ids.json", work / "out.json"
    ids_file.write_text(json.dumps(ids.tolist()))
    argv = [sys.executable, str(LOADER), str(folder), str(ids_file), str(out_file), "--new-tokens", str(new_tokens)]
    if peft_base is not None:
        argv += ["--peft-base", str(peft_base)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out_file.read_text())


def assert_exact(model: Any, folder: Path, ids: torch.Tensor, work: Path, *, peft_base: Optional[Path] = None,
                 new_tokens: int = 8, atol: float = 1e-4) -> float:
    """Greedy outputs equal and logits within ``atol``; returns the largest logit difference."""
    logits, greedy = outputs(model, ids, new_tokens)
    other = load_elsewhere(folder, ids, work, peft_base=peft_base, new_tokens=new_tokens)
    assert other["modules"] == [], f"the loader imported {other['modules']}"
    difference = float((torch.tensor(other["logits"]) - logits).abs().max())
    assert difference <= atol, f"logits differ by {difference}"
    assert other["greedy"] == greedy
    return difference
