"""Training step time with vs without an active security vector (target: ratio <= 1.15x).

Setting A on the embedded SmolLM2-135M-Instruct: the user's LoRA is trained on sv_attack.jsonl
through ``transformers.Trainer`` (the editor's own path, SVGuard included when the vector is on).
Blocks of steps alternate between the two configurations so that load from other processes hits
both alike; the first step of every block is a warm-up and is not timed. Prints a markdown table
and writes JSON.

    python benchmarks/sv_speed.py --steps 4 --rounds 3 --json /tmp/sv_speed.json
    python benchmarks/sv_speed.py --vector /tmp/sv/sv_base   # a trained vector (else random)
"""

from __future__ import annotations

from registry import from_hparams
import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from registry.writer import write_file


def _timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def _vector(model: Any, hp: Any, folder: Optional[str]) -> Any:
    """A saved vector, or a random one of the hparams' shape (step time does not depend on values)."""
    import torch

    from detox_plugins.security_vectors import adapters
    from detox_plugins.security_vectors.editor import SecurityVector

    if folder:
        return SecurityVector.from_any(folder)
    config = hp.sv_lora.to_lora_config()
    adapters.attach(model, "probe", config)
    generator = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(v.shape, generator=generator) * 0.01
               for k, v in adapters.state_dict(model, "probe").items()}
    adapters.detach(model, "probe")
    return SecurityVector(config=config, tensors=tensors, fingerprint=None, source="random")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", default="hparams/SecurityVectors/smollm2-135m.yaml")
    parser.add_argument("--vector", help="saved security-vector folder (default: random weights)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per block (plus one warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating blocks per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    from detox_plugins.security_vectors import adapters
    from detox_plugins.security_vectors.data import encode_rows, load_rows
    from detox_plugins.security_vectors.training import train_user
    from registry.models import load_model

    torch.set_num_threads(args.threads)
    hp = from_hparams(args.hparams)
    hp = hp.replace(progress=False, ft_max_steps=args.steps + 1, ft_logging_steps=1000)
    model, tokenizer = load_model(hp.model_name)
    rows = encode_rows(load_rows("sv_attack.jsonl"), tokenizer, max_length=hp.max_length,
                       use_chat_template=hp.use_chat_template, system_prompt=hp.system_prompt)
    vector = _vector(model, hp, args.vector)
    times: dict[str, list[float]] = {"without vector": [], "with vector": []}
    for _ in range(args.rounds):
        for label in times:
            on = label == "with vector"
            if on:
                adapters.attach(model, hp.sv_adapter_name, vector.config, vector.tensors)
                adapters.disable_dropout(model, hp.sv_adapter_name)
            adapters.attach(model, hp.user_adapter_name, hp.user_lora.to_lora_config())
            active = [hp.sv_adapter_name, hp.user_adapter_name] if on else [hp.user_adapter_name]
            adapters.activate(model, active, frozen=[hp.sv_adapter_name] if on else [])
            timer = _timer()
            train_user(model, tokenizer, rows, hp, guard_adapter=hp.sv_adapter_name if on else None,
                       callbacks=[timer])
            times[label].extend(timer.times[1:])  # drop the warm-up step
            adapters.detach(model, hp.user_adapter_name)
            adapters.detach(model, hp.sv_adapter_name)
    medians = {label: statistics.median(values) for label, values in times.items()}
    ratio = medians["with vector"] / medians["without vector"]
    result = {
        "model": hp.model_name, "setting": "A (user LoRA)", "batch_size": hp.ft_batch_size,
        "threads": args.threads, "steps_per_config": len(times["with vector"]),
        "median_step_s": {k: round(v, 4) for k, v in medians.items()},
        "all_step_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "ratio": round(ratio, 4), "target": 1.15, "vector": args.vector or "random",
    }
    print("| configuration | median step (s) | steps |")
    print("|---|---|---|")
    for label, value in medians.items():
        print(f"| {label} | {value:.3f} | {len(times[label])} |")
    print(f"\nratio with/without: {ratio:.3f}x (target <= 1.15x)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_file(args.json, json.dumps(result, indent=2), overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
