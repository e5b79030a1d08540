"""benchmarks/gpu_check.py (written for a GPU machine) runs end to end on the CPU on a tiny model: every
editor edits, exports, and its export reloaded by transformers gives the same greedy answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from .security_vectors.tiny import harmful_rows
from .tiny import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_on_a_tiny_model_on_the_cpu(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    tiny_llama(layers=3).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    files = {
        "DINM": {"alg_name": "DINM", "layers": [1], "num_steps": 2, "lr": 1e-2, "max_output_length": 3},
        "DeStein": {"alg_name": "DeStein", "alpha": 1.0, "pairs": {"num_pairs": 10, "batch_size": 4},
                    "progress": False},
        "SecurityVectors": {"alg_name": "SecurityVectors", "max_length": 320, "max_target_tokens": 200,
                            "sv_lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                            "sv_epochs": 1, "sv_batch_size": 4, "sv_kl_weight": 0.0, "num_harmful": 4,
                            "user_lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                          "target_modules": ["q_proj", "v_proj"]}, "ft_batch_size": 4},
    }
    argv = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--model", str(folder), "--device", "cpu",
            "--dtype", "float32", "--max-new-tokens", "4", "--sv-steps", "1", "--out", str(tmp_path / "out"),
            "--json", str(tmp_path / "rows.json")]
    for alg, data in files.items():
        (tmp_path / f"{alg}.yaml").write_text(yaml.safe_dump(data))
        argv += ["--hparams", f"{alg}={tmp_path / f'{alg}.yaml'}"]
    data = tmp_path / "attack.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in harmful_rows()[4:10]))
    argv += ["--sv-data", str(data)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["editor"] for r in rows] == ["DINM", "DeStein", "SecurityVectors"]
    assert all(r["status"] == "ok" and r["transformers_equal"] is True and r["vllm_equal"] is None for r in rows), rows
