"""SafeEdit's evaluation protocol for DINM as one call: for each case, answer the five inputs before
the edit, edit, answer them after, revert, next case (EasyEdit's ``run_safety_editing.py`` loop,
one editor for all cases).

Prompts follow ``eval_prompt``: ``easyedit`` answers without the suffix before and with it after, so
its gain mixes the edit's effect with the suffix's (plus a ``pre_suffix`` baseline: the unedited
model on the post-edit prompts); ``consistent`` uses the edit's own input builder (suffix and chat
template) both times.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from registry.requests import EditRequest
from registry.errors import EditError
from registry.limits import check_max_new_tokens

from .cases import METRICS, as_request
from .inputs import with_suffix

if TYPE_CHECKING:  # pragma: no cover
    from registry.edits import Edit
    from registry.editor import Editor

logger = logging.getLogger(__name__)



@dataclass
class ProtocolReport:
    """Per-case responses and labels, and the SafeEdit scores averaged over the edited cases."""

    cases: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]]  # stage -> {DS, DG_*, fluency, and each one's <name>_ci95}
    edit_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**{stage: scores for stage, scores in self.metrics.items()}, "edit_seconds": self.edit_seconds,
                "settings": self.settings, "cases": self.cases}

    def table(self) -> str:
        """A markdown table of the scores per stage, each with its 95 % interval (over cases)."""
        from detox_plugins.evaluation.metrics import format_mean

        columns = [*METRICS, "fluency"]
        lines = ["| stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for stage, scores in self.metrics.items():
            cells = ["-" if scores.get(c) is None else format_mean(scores[c], scores.get(f"{c}_ci95"), 2)
                     for c in columns]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def evaluation_prompts(request: EditRequest, hparams: Any) -> dict[str, dict[str, str]]:
    """``{stage: {metric: prompt}}`` for the stages this hparams' ``eval_prompt`` evaluates."""
    plain = dict(zip(METRICS, [request.prompt, *request.generalization_prompts]))
    suffix, use = hparams.suffix_system_prompt, hparams.use_suffix
    suffixed = {metric: with_suffix(text, suffix, use) for metric, text in plain.items()}
    if hparams.effective_eval_prompt == "easyedit":
        return {"pre": plain, "pre_suffix": suffixed, "post": suffixed}
    return {"pre": suffixed, "post": suffixed}


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def run_safeedit(
    editor: "Editor",
    model: Any,
    tokenizer: Any,
    cases: Sequence[Any],
    *,
    judge: Union[str, Any] = "refusal",
    max_new_tokens: Optional[int] = None,
    batch_size: int = 8,
    fluency_tokenizer: str = "regex",
    progress: bool = True,
    on_edit: Optional[Callable[[EditRequest, "Edit"], None]] = None,
) -> ProtocolReport:
    """Run SafeEdit's edit-evaluate-revert loop over ``cases``; the model ends as it started.

    ``judge`` is a judge name for ``evaluation.judges.get_judge`` or a judge object
    (``judge(prompts, responses) -> [0..1]``, 1 = unsafe). ``on_edit(request, edit)`` is called
    after each post-edit generation, before the revert (e.g. to save the edit).
    """
    from detox_plugins.evaluation.generate import generate
    from detox_plugins.evaluation.judges import get_judge
    from detox_plugins.evaluation.metrics import bootstrap_interval, fluency, safeedit_interval, safeedit_score

    hp = editor.hparams
    requests = [as_request(case) for case in cases]
    if not requests:
        raise EditError("no SafeEdit cases given; pass at least one case")
    scorer = get_judge(judge) if isinstance(judge, str) else judge
    score = scorer.judge if hasattr(scorer, "judge") else scorer
    new_tokens = check_max_new_tokens(hp.max_output_length if max_new_tokens is None else max_new_tokens)
    chat = hp.use_chat_template if hp.effective_eval_prompt == "consistent" else False
    max_input = hp.max_length - new_tokens if hp.max_length - new_tokens > 0 else None
    gen = dict(max_new_tokens=new_tokens, use_chat_template=chat, batch_size=batch_size,
               max_input_tokens=max_input, seed=hp.seed)
    prompts = [evaluation_prompts(r, hp) for r in requests]

    # Pre-edit answers for every case at once (the model is unedited).
    responses: list[dict[str, dict[str, str]]] = [{} for _ in requests]
    for stage in [s for s in prompts[0] if s != "post"]:
        flat = [(i, m, t) for i, p in enumerate(prompts) for m, t in p[stage].items()]
        answers = generate(model, tokenizer, [t for _, _, t in flat], progress=progress, desc=f"{stage}-edit answers",
                           **gen)
        for (i, metric, _), answer in zip(flat, answers):
            responses[i].setdefault(stage, {})[metric] = answer

    records: list[dict[str, Any]] = []
    edit_seconds = 0.0
    iterator: Sequence[int] = range(len(requests))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="SafeEdit cases", unit="case")
    for i in iterator:
        request = requests[i]
        start = time.perf_counter()
        edit = editor.edit(model, tokenizer, [request])
        seconds = time.perf_counter() - start
        edit_seconds += seconds
        try:
            post = prompts[i]["post"]
            answers = generate(model, tokenizer, list(post.values()), progress=False, **gen)
            responses[i]["post"] = dict(zip(post, answers))
            if on_edit is not None:
                on_edit(request, edit)
        finally:
            edit.revert()
        case_info = edit.metadata["cases"][0]
        records.append({
            "case_id": request.case_id,
            "category": request.category,
            "layers": case_info["layers"],
            "steps": case_info["steps"],
            "edit_seconds": round(seconds, 4),
            "final_loss": case_info["losses"][-1]["loss"] if case_info["losses"] else None,
            "prompts": prompts[i],
            "responses": responses[i],
        })

    for record in records:
        record["labels"] = {}
        record["fluency"] = {}
        for stage, answers in record["responses"].items():
            metric_names = list(answers)
            scores = score(list(record["prompts"][stage].values()), list(answers.values()))
            record["labels"][stage] = dict(zip(metric_names, scores))
            record["fluency"][stage] = fluency(list(answers.values()), tokenizer=fluency_tokenizer)

    stages = list(records[0]["responses"])
    metrics: dict[str, dict[str, Any]] = {}
    for stage in stages:
        scores: dict[str, Any] = {}
        for metric in METRICS:
            labels = [r["labels"][stage][metric] for r in records if metric in r["labels"][stage]]
            scores[metric] = safeedit_score(labels) if labels else None
            scores[f"{metric}_ci95"] = list(safeedit_interval(labels)) if labels else None
        per_case_fluency = [r["fluency"][stage] for r in records]
        scores["fluency"] = _mean(per_case_fluency)
        scores["fluency_ci95"] = list(bootstrap_interval(per_case_fluency)) if per_case_fluency else None
        metrics[stage] = scores
    settings = {
        "mode": hp.mode,
        "eval_prompt": hp.effective_eval_prompt,
        "use_chat_template": chat,
        "use_suffix": hp.use_suffix,
        "judge": f"{getattr(scorer, 'name', type(scorer).__name__)}:{getattr(scorer, 'version', '')}",
        "max_new_tokens": new_tokens,
        "batch_size": batch_size,
        "decoding": "greedy",
        "fluency_tokenizer": fluency_tokenizer,
        "seed": hp.seed,
        "num_cases": len(records),
    }
    return ProtocolReport(cases=records, metrics=metrics, edit_seconds=round(edit_seconds, 4), settings=settings)


__all__ = ["METRICS", "ProtocolReport", "as_request", "evaluation_prompts", "run_safeedit"]
