"""Why DINM's null-space projection costs harmful gain: how much of the unconstrained edit's effect on
HarmBench and on benign-150 inputs survives the projection, per setting.

One unconstrained DINM edit (case 0, shipped hparams) gives ΔW; the benign-heldout inputs (with 16-token
greedy answers) give K Kᵀ; per setting, ``‖ΔW·P·k‖² / ‖ΔW·k‖²`` summed over the edited matrix's input at
the first answer position (the prompt's last token) of the first 40 HarmBench prompts and of benign-150.
Equal shares mean the projection cannot tell the two apart. Prints one line per setting.

    OMP_NUM_THREADS=1 python benchmarks/dinm_nullspace_overlap.py
"""

from __future__ import annotations

from typing import Any


def first_answer_moment(model: Any, tokenizer: Any, module: Any, prompts: list[str]) -> Any:
    """``K Kᵀ`` (float64) of ``module``'s input at the first answer position (the chat-formatted prompt's
    last token) over ``prompts``."""
    from detox_plugins.dinm.benign import BenignText
    from detox_plugins.dinm.nullspace import NullSpaceSettings, input_second_moment
    from detox_plugins.evaluation.generate import format_prompts

    settings = NullSpaceSettings(prompts, 0.9, 0, True, 1024, "answer")
    formatted = [BenignText(p) for p in format_prompts(tokenizer, prompts, use_chat_template=True)]
    return input_second_moment(model, tokenizer, module, formatted, settings)[0]


def output_energy(update: Any, moment: Any) -> float:
    """``Σ‖update·k‖²`` over the inputs ``k`` whose second moment is ``moment`` (= trace(U K Kᵀ Uᵀ))."""
    import torch

    return float(torch.trace(update @ moment @ update.T))


def main() -> int:
    import torch

    from detox_plugins.dinm.cases import as_request, load_cases
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.dinm.benign import load_prompts
    from detox_plugins.dinm.nullspace import NullSpaceSettings, benign_texts, input_second_moment, null_space_projector
    from detox_plugins.evaluation.datasets import load_dataset
    from registry import from_hparams
    from registry.models import load_model

    torch.set_num_threads(1)
    hp = from_hparams("DINM/smollm2-135m")
    model, tok = load_model(hp)
    request = as_request(load_cases("safeedit-sample", case_id="0")[0])
    edit = DINMEditor(hp, progress=False).edit(model, tok, [request])
    name, delta = next(iter(edit.deltas.items()))
    edit.revert()
    module = model.get_submodule(name.rsplit(".", 1)[0])
    every = NullSpaceSettings(load_prompts("benign-heldout", None), 0.9, 16, True, 1024, "all")
    texts = benign_texts(model, tok, every)
    moments = {where: input_second_moment(model, tok, module, texts,
                                          NullSpaceSettings(every.prompts, 0.9, 16, True, 1024, where))[0]
               for where in ("all", "answer")}

    harmful = first_answer_moment(model, tok, module, [r["prompt"] for r in load_dataset("harmbench", limit=40)])
    benign = first_answer_moment(model, tok, module, [r["prompt"] for r in load_dataset("benign-150")])
    d = delta.double()

    print(f"unconstrained: harmful {output_energy(d, harmful):.4g}, benign {output_energy(d, benign):.4g}")
    for where in ("all", "answer"):
        for share in (0.2, 0.4, 0.6, 0.8, 0.9, 0.95):
            projector, rank, _ = null_space_projector(moments[where], share)
            projected = d @ projector.double()
            print(f"positions {where} energy {share}: rank {rank}, harmful kept "
                  f"{output_energy(projected, harmful) / output_energy(d, harmful):.3f}, benign kept "
                  f"{output_energy(projected, benign) / output_energy(d, benign):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
