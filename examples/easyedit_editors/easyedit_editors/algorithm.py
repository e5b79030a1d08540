"""``EasyEditAlgorithm``: one of EasyEdit's own algorithms, run unchanged, turned into our revertible ``ParameterEdit``.

The edit calls EasyEdit's ``apply_<alg>_to_model`` on the live model (``copy=False``,
``return_orig_weights=True``), takes the delta of every tensor EasyEdit changed, puts the original
weights back and applies the deltas as ``W0 + Δ``: the ``Edit`` owns the change, so revert, save, load,
apply, export and pipelines come from the host. Any failure (EasyEdit's or ours) leaves the model exactly
as it was, and a change EasyEdit made to a tensor it did not report is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from typing import Any, ClassVar, Mapping, Sequence

from tqdm.auto import tqdm

from registry import EditError, Editor, EditRequest, Footprint, ParameterEdit, model_fingerprint, normalise_requests

from .hparams import EasyEditHyperParams

logger = logging.getLogger(__name__)


class EasyEditAlgorithm(Editor):
    """Base of the bridged editors. A subclass names EasyEdit's module, apply function and hparams class."""

    kind = "weights"
    hparams_package = "easyedit_editors.hparams_files"
    hparams: EasyEditHyperParams
    #: The EasyEdit module holding the apply function and the hparams class (e.g. easyeditor.models.rome).
    host_module: ClassVar[str]
    host_apply: ClassVar[str]
    host_hparams_class: ClassVar[str]
    #: Requests per call of the apply function (ROME reads only the first request it is given).
    requests_per_call: ClassVar[int] = 0  # 0: all at once
    #: The algorithm locates the fact by its subject (ROME, MEMIT): every request needs ``subject`` in its prompt.
    needs_subject: ClassVar[bool] = False
    #: Module-level caches of EasyEdit's (``module: {attribute: empty value}``) that hold one model's results
    #: per process, keyed by the model's name only; emptied before each edit so another model's never leak in.
    host_caches: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    # ------------------------------------------------------------------ what EasyEdit is given
    def host_hparams(self, model: Any) -> Any:
        """EasyEdit's own hparams object from these fields, ``device`` set to where ``model`` is."""
        host_class = getattr(importlib.import_module(self.host_module), self.host_hparams_class)
        values = self.hparams.host_values(host_class)
        values["device"] = str(next(model.parameters()).device)
        return host_class(**values)

    def host_requests(self, requests: Any) -> list[dict[str, Any]]:
        """EasyEdit request dicts, validated: prompt and target_new, and a subject found in the prompt where needed."""
        items = [request.validate() for request in normalise_requests(requests)]
        if self.needs_subject:
            for item in items:
                self.check_subject(item)
        return [item.to_easyedit() for item in items]

    def check_subject(self, item: EditRequest) -> None:
        where = f"request {item.case_id!r}" if item.case_id is not None else "request"
        if not item.subject or not item.subject.strip():
            raise EditError(f"{where}: {self.name} needs 'subject' (the entity the fact is about, e.g. "
                            f"'Zarkovia' in 'The capital of Zarkovia is'); add it to the request")
        if "{}" not in item.prompt and item.subject not in item.prompt:
            raise EditError(f"{where}: subject {item.subject!r} does not occur in prompt {item.prompt!r}; "
                            f"give the subject exactly as the prompt spells it (or write '{{}}' where it goes)")

    def check_ready(self, model: Any) -> None:
        """Refuse before anything changes if EasyEdit would need something it cannot have here."""

    # ------------------------------------------------------------------ what it changes
    def target_weights(self, model: Any) -> dict[str, Any]:
        """The tensors EasyEdit's algorithm writes, by name (each subclass states EasyEdit's rule)."""
        raise NotImplementedError

    def planned_footprint(self, model: Any, inputs: Any = None) -> Footprint:
        return Footprint.of(writes=self.target_weights(model), additive=True)

    # ------------------------------------------------------------------ the edit
    def edit(self, model: Any, tokenizer: Any, requests: Sequence[Any]) -> ParameterEdit:
        import torch

        host_requests = self.host_requests(requests)
        targets = self.target_weights(model)
        self.check_ready(model)
        apply = getattr(importlib.import_module(self.host_module), self.host_apply)
        host_hparams = self.host_hparams(model)
        metadata = self.base_metadata(model, tensors=sorted(targets), requests=host_requests)
        originals = {name: w.detach().clone() for name, w in targets.items()}
        flags = {name: p.requires_grad for name, p in model.named_parameters()}  # EasyEdit's FT leaves them changed
        modes = [m.training for m in model.modules()]
        size = self.requests_per_call or len(host_requests)
        printed = io.StringIO()
        try:
            with torch.random.fork_rng(devices=[]), torch.enable_grad(), contextlib.redirect_stdout(printed):
                torch.manual_seed(self.hparams.seed)  # EasyEdit samples its context templates
                self.clear_host_caches()
                for start in tqdm(range(0, len(host_requests), size), desc=f"{self.name} (EasyEdit)",
                                  disable=len(host_requests) <= size):
                    _, weights_copy = apply(model, tokenizer, host_requests[start:start + size], host_hparams,
                                            copy=False, return_orig_weights=True, keep_original_weight=True)
                    unplanned = sorted(set(weights_copy) - set(originals))
                    if unplanned:
                        self.restore(model, {name: weights_copy[name] for name in unplanned})
                        raise EditError(f"EasyEdit's {self.name} changed {', '.join(unplanned)}, which its "
                                        f"hparams do not name; this bridge cannot own that change")
            params = dict(model.named_parameters())
            with torch.no_grad():
                deltas = {name: params[name].detach() - w0 for name, w0 in originals.items()}
        finally:  # success or failure: W0, the gradient flags and the modes come back; then W0 + delta
            self.restore(model, originals)
            for name, p in model.named_parameters():
                p.requires_grad_(flags[name])
            for module, training in zip(model.modules(), modes):
                module.training = training
            for line in printed.getvalue().splitlines():
                logger.debug("EasyEdit: %s", line)
        if model_fingerprint(model) != metadata["model"]["fingerprint"]:
            raise EditError(f"EasyEdit's {self.name} changed tensors other than {', '.join(sorted(originals))} "
                            f"and did not report them; the model could not be restored, reload it")
        changed = {name: d for name, d in deltas.items() if bool(d.any())}
        if not changed:
            raise EditError(f"EasyEdit's {self.name} changed no weight for these requests; check the layers "
                            f"and the requests")
        logger.info("%s (EasyEdit): changed %s", self.name, ", ".join(sorted(changed)))
        return ParameterEdit.apply_deltas(model, changed, metadata)

    def clear_host_caches(self) -> None:
        for module_name, attributes in self.host_caches.items():
            module = importlib.import_module(module_name)
            for attribute, empty in attributes.items():
                setattr(module, attribute, type(empty)() if isinstance(empty, dict) else empty)

    @staticmethod
    def restore(model: Any, originals: Mapping[str, Any]) -> None:
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, w0 in originals.items():
                params[name].copy_(w0)
