"""A rejected design for issue 15's one-edit target, measured: DINM's update confined to the input
directions that harmful prompts occupy more than benign ones.

The null space (``nullspace: true``) protects every high-energy benign direction of the edited matrix's
input, and removes the harmful gain with the over-refusal because harmful and benign inputs share those
directions (``dinm_nullspace_overlap.py``). This asks the opposite question: let the update act only
where harmful inputs *differ* from benign ones. ``Kh`` and ``Kb`` are the trace-normalised second
moments of the edited matrix's input at the first answer position (the chat prompt's last token) of
the shipped harmful training requests (``sv_harmful.jsonl``, 100) and of benign-heldout (110), both
disjoint from the evaluation sets. The top ``rank`` generalized eigenvectors of ``Kh v = λ (Kb + ρ·tr(Kb)/d·I) v``
span the harmful-dominant directions; the update is projected onto their span (``ΔW·QQᵀ``), through the
editor's own null-space projection hook (the builder is swapped for the run, then restored).

First, without editing, the script prints how selective the subspace is on the *evaluation* inputs (first
40 HarmBench prompts, benign-150): the share of the unconstrained edit's output change ``‖ΔW·P·k‖²`` kept
on each. Then, per ``--ranks`` × ``--lrs``, one edit of SafeEdit case 0 with the shipped hparams, judged
by the refusal protocol of ``dinm_targets.py`` (base measured in the same run).

    OMP_NUM_THREADS=1 python benchmarks/dinm_contrast_subspace.py --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from typing import Any, Iterator

logger = logging.getLogger("dinm_contrast_subspace")


def harmful_dominant_projector(harmful: "Any", benign: "Any", rank: int, regularization: float) -> "Any":
    """``QQᵀ`` (float32) for an orthonormal ``Q`` spanning the top ``rank`` generalized eigenvectors of
    ``harmful`` against ``benign + regularization·tr(benign)/d·I`` (both normalised to unit trace)."""
    import torch

    harmful, benign = harmful / torch.trace(harmful), benign / torch.trace(benign)
    dim = benign.shape[0]
    lower = torch.linalg.cholesky(benign + regularization / dim * torch.eye(dim, dtype=benign.dtype))
    inverse = torch.linalg.inv(lower)
    _, vectors = torch.linalg.eigh(inverse @ harmful @ inverse.T)  # ascending
    directions = (inverse.T @ vectors).flip(1)[:, :rank]
    basis, _ = torch.linalg.qr(directions)
    return (basis @ basis.T).float()


@contextlib.contextmanager
def confined_updates(projectors: dict[str, "Any"], record: dict[str, Any]) -> Iterator[None]:
    """While active, ``nullspace: true`` edits use ``projectors`` (tensor name -> ``QQᵀ``, recorded in the
    edit's metadata as ``record``) instead of the benign null space."""
    from detox_plugins.dinm import nullspace

    def build(model: Any, tokenizer: Any, names: list[str], texts: Any, settings: Any,
              progress: bool = False) -> dict[str, Any]:
        return {name: nullspace.UpdateProjector(projectors[name], nullspace.input_axis(
            model.get_submodule(name.rpartition(".")[0]), dict(model.named_parameters())[name]),
            dict(record)) for name in names}

    saved = nullspace.build_projectors, nullspace.benign_texts
    nullspace.build_projectors = build
    nullspace.benign_texts = lambda *args, **kwargs: []
    try:
        yield
    finally:
        nullspace.build_projectors, nullspace.benign_texts = saved


def main(argv: list[str] | None = None) -> int:
    from dinm_nullspace_overlap import first_answer_moment, output_energy
    from dinm_targets import markdown, verdict
    from refusal_protocol import RefusalProtocol, add_protocol_arguments, printable, write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.01])
    parser.add_argument("--regularization", type=float, default=0.1,
                        help="ρ: share of the benign trace added to its moment before the contrast")
    add_protocol_arguments(parser, "dinm_contrast_subspace")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from detox_plugins.dinm.benign import load_prompts
    from detox_plugins.dinm.cases import as_request, load_cases
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.security_vectors.data import load_rows
    from registry import from_hparams

    hparams = from_hparams("DINM/smollm2-135m")
    protocol = RefusalProtocol.load(hparams, args)
    model, tokenizer = protocol.model, protocol.tokenizer
    request = [as_request(load_cases("safeedit-sample", case_id="0")[0])]
    free = DINMEditor(hparams, progress=False).edit(model, tokenizer, request)
    name, delta = next(iter(free.deltas.items()))
    free.revert()
    protocol.check_restored("unconstrained")
    module = model.get_submodule(name.rpartition(".")[0])
    fit_harmful = first_answer_moment(model, tokenizer, module, [r.prompt for r in load_rows("sv_harmful.jsonl")])
    fit_benign = first_answer_moment(model, tokenizer, module, load_prompts("benign-heldout", None))
    eval_harmful = first_answer_moment(model, tokenizer, module, protocol.harmful)
    eval_benign = first_answer_moment(model, tokenizer, module, protocol.benign)
    change = delta.double()

    def kept(projector: Any, moment: Any) -> float:
        return output_energy(change @ projector.double(), moment) / output_energy(change, moment)

    projectors, selectivity = {}, []
    for rank in args.ranks:
        projectors[rank] = harmful_dominant_projector(fit_harmful, fit_benign, rank, args.regularization)
        shares = {"rank": rank, "harmful_kept": kept(projectors[rank], eval_harmful),
                  "benign_kept": kept(projectors[rank], eval_benign)}
        selectivity.append(shares)
        logger.info("offline: %s", json.dumps(shares))

    rows = [protocol.measure("base", {"setting": "base"})]
    print(printable(rows[0]), flush=True)
    for rank in args.ranks:
        for lr in args.lrs:
            variant = f"contrast r={rank} lr={lr:g}"
            started = time.perf_counter()
            with confined_updates({name: projectors[rank]}, {"contrast_rank": rank}):
                edit = DINMEditor(hparams.replace(nullspace=True, lr=lr), progress=False).edit(model, tokenizer,
                                                                                              request)
            seconds = round(time.perf_counter() - started, 1)
            try:
                record = edit.metadata["cases"][0]
                rows.append(protocol.measure(variant, {
                    "setting": "one edit", "overrides": {"contrast_rank": rank, "lr": lr},
                    "edit_seconds": seconds, "layers": record["layers"], "final_loss": record["losses"][-1]}))
            finally:
                edit.revert()
            protocol.check_restored(variant)
            print(printable(rows[-1]), flush=True)
    for row in rows[1:]:
        row["verdict"] = verdict(row, rows[0])
    write_results("dinm_contrast_subspace.py", argv if argv is not None else sys.argv[1:], args, rows, markdown,
                  case_id="0", edited=name, regularization=args.regularization, selectivity=selectivity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
