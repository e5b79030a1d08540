"""SafeEdit cases as DINM reads them: from a SafeEdit JSON file or the shipped sample, one case as an
``EditRequest`` (its five evaluation inputs in EasyEdit's order)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from registry.errors import EditError
from registry.requests import EditRequest

from detox_plugins.evaluation.datasets import load_safeedit, load_safeedit_sample, parse_safeedit
from detox_plugins.evaluation.errors import DatasetError

DEFAULT_CASES = "safeedit-sample"

METRICS: tuple[str, ...] = ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ")
"""The SafeEdit metric of each evaluation input, in EasyEdit's order (DS input, then general_prompt)."""


def load_cases(source: Optional[str], *, case_id: Optional[str] = None, limit: Optional[int] = None) -> list[Any]:
    """SafeEdit cases from a file or the shipped sample, filtered by ``case_id`` and ``limit``."""
    source = source or DEFAULT_CASES
    if source in (DEFAULT_CASES, "safeedit_sample") and not Path(source).exists():
        cases = load_safeedit_sample()
    elif Path(source).expanduser().is_file():
        cases = load_safeedit(Path(source).expanduser())
    else:
        raise DatasetError(
            f"--cases {source!r} is neither a SafeEdit JSON file nor {DEFAULT_CASES!r}; pass a file such as "
            f"SafeEdit_test.json"
        )
    if case_id is not None:
        chosen = [c for c in cases if str(c.case_id) == str(case_id)]
        if not chosen:
            ids = ", ".join(str(c.case_id) for c in cases[:10])
            raise DatasetError(f"no case with id {case_id!r} in {source}; ids start with: {ids}")
        cases = chosen
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"--limit must be >= 1, got {limit}")
        cases = cases[:limit]
    return cases


def as_request(case: Any) -> EditRequest:
    """An EditRequest from an EditRequest, a SafeEditCase, a SafeEdit JSON record or a request dict."""
    if isinstance(case, EditRequest):
        return case
    if hasattr(case, "generalization") and hasattr(case, "locality_answer"):  # evaluation.datasets.SafeEditCase
        return EditRequest(
            prompt=case.prompt, target_new=case.target_new, ground_truth=case.ground_truth,
            locality_prompt=case.locality_prompt, locality_answer=case.locality_answer,
            generalization_prompts=[case.generalization[k] for k in METRICS[1:] if k in case.generalization],
            case_id=case.case_id, category=case.category,
        )
    if isinstance(case, Mapping) and "adversarial prompt" in case:  # a raw SafeEdit record
        return as_request(parse_safeedit([dict(case)], source="<case>")[0])
    if isinstance(case, Mapping):  # our layout or EasyEdit's request / SafetyDataset dict
        return EditRequest.from_any(case)
    raise EditError(f"cannot read an edit case from {type(case).__name__}; pass an EditRequest or a SafeEdit record")
