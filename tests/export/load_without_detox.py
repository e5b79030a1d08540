"""Load an exported checkpoint the way other software does, in a process that cannot import detox-plugins.

    python load_without_detox.py FOLDER INPUT_IDS_JSON OUT_JSON [--peft-base BASE_FOLDER] [--new-tokens N]

Writes ``{"logits": [...], "greedy": [...], "modules": [...]}``: the float32 logits for the input ids, the
greedy continuation, and which of registry / detox_plugins were imported (must be none).
"""

from __future__ import annotations

import importlib.abc
import json
import sys


class _Blocked(importlib.abc.MetaPathFinder):
    """Make ``registry`` and ``detox_plugins`` unimportable, as if they were not installed."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - the finder protocol
        if name.split(".")[0] in ("registry", "detox_plugins", "ft_editor"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the export must load without it)")
        return None


def main(argv: list[str]) -> int:
    sys.meta_path.insert(0, _Blocked())
    folder, ids_file, out_file = argv[:3]
    base = argv[argv.index("--peft-base") + 1] if "--peft-base" in argv else None
    new_tokens = int(argv[argv.index("--new-tokens") + 1]) if "--new-tokens" in argv else 8
    import torch
    from transformers import AutoModelForCausalLM

    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    ids = torch.tensor(json.loads(open(ids_file).read()))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        greedy = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=model.config.eos_token_id)[0, ids.shape[1]:]
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("registry", "detox_plugins"))
    with open(out_file, "w") as handle:
        json.dump({"logits": logits.tolist(), "greedy": greedy.tolist(), "modules": loaded}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
