"""``DINMEditor``: detoxify a model by editing one MLP weight per unsafe instance (arXiv 2403.14472).

``edit`` validates and tokenizes every request first, records the pre-edit fingerprint, runs the
optimisation on the live parameters, puts every touched tensor back to W0 and finishes through
``ParameterEdit.apply_deltas`` (so the model ends at exactly ``W0 + Δ``). Any exception or
interrupt in between restores W0 bit-for-bit, the training flag and every ``requires_grad``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

from registry.editor import Editor
from registry.edits import ParameterEdit, check_in_memory
from registry.errors import EditError, HyperParamsError
from registry.footprint import Footprint
from registry.inputs import REQUESTS_INPUT, InputField
from registry.requests import EditRequest, normalise_requests, read_requests

from .cases import as_request, load_cases
from .hparams import DINMHyperParams

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .anchors import AnchorSettings
    from .inputs import ScoredSequence
    from .benign import BenignText
    from .nullspace import NullSpaceSettings, UpdateProjector
    from .protocol import ProtocolReport

logger = logging.getLogger(__name__)


@dataclass
class CasePlan:
    """Everything one case needs, built before the model is touched."""

    request: EditRequest
    prompt_text: str
    edit: "ScoredSequence"
    locality: Optional["ScoredSequence"]
    locate: bool  # whether this case runs localization
    safe: Optional["ScoredSequence"] = None  # improved localization inputs
    unsafe: Optional["ScoredSequence"] = None
    extra_edits: list["ScoredSequence"] = field(default_factory=list)  # more prompts, same safe response


@dataclass
class EditPlan:
    cases: list[CasePlan]
    stack: Any  # runner.Stack or None
    num_layers: int
    fixed_layers: Optional[list[int]]  # from hparams.layers or the sticky layer
    metadata: dict[str, Any] = field(default_factory=dict)
    nullspace: Optional["NullSpaceSettings"] = None  # set when the update is confined to a null space
    anchors: Optional["AnchorSettings"] = None  # set when benign anchors join the loss


def template_matches(template: str, layer: int, names: Iterable[str]) -> list[str]:
    """Parameter names containing ``template.format(layer)`` at dot boundaries (EasyEdit's ``in``
    test, minus its ``layers.1`` ⊂ ``layers.10`` accident)."""
    key = template.format(layer)
    found = []
    for name in names:
        position = name.find(key)
        while position != -1:
            end = position + len(key)
            if (position == 0 or name[position - 1] == ".") and (end == len(name) or name[end] == "."):
                found.append(name)
                break
            position = name.find(key, position + 1)
    return found


def position_limit(model: "nn.Module") -> Optional[int]:
    """How many positions a model with a learned position table has (``n_positions`` /
    ``max_position_embeddings``); None for rotary or ALiBi positions, which have no table to overrun."""
    config = getattr(model, "config", None)
    relative = any(getattr(config, key, None) for key in ("rope_theta", "rope_parameters", "rope_scaling", "alibi"))
    if relative:
        return None
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_positions(model: "nn.Module", request: EditRequest, sequences: Sequence[Any]) -> None:
    """Refuse a request whose tokenized sequences exceed the model's positions (learned position
    tables, as in GPT-2 and OPT, would fail with an index error deep inside the forward pass)."""
    limit = position_limit(model)
    longest = max((s.length for s in sequences if s is not None), default=0)
    if limit is not None and longest > limit:
        raise EditError(
            f"request {request.case_id!r}: a DINM sequence is {longest} tokens, over this model's {limit} positions; "
            f"shorten the prompt or target_new, lower max_length, or set use_suffix: false")


class DINMEditor(Editor):
    """Detoxifying with Intraoperative Neural Monitoring: a few Adam steps on one located MLP matrix."""

    name = "DINM"
    kind = "weights"
    hparams_class = DINMHyperParams
    hparams_package = "detox_plugins.hparams"
    #: One edit's inputs: SafeEdit cases or EasyEdit request dicts.
    inputs = (
        InputField("cases", "SafeEdit JSON file or 'safeedit-sample' (the shipped cases).", path=True,
                   metavar="FILE"),
        InputField("case_id", "Only the case with this id (with cases).", metavar="ID"),
        InputField("limit", "At most this many cases (with cases or requests).", type=int, metavar="N"),
        REQUESTS_INPUT,
    )
    #: EasyEdit's SafetyEditor appends suffix_system_prompt to the prompts before calling
    #: apply_dinm_to_model, so the EasyEdit bridge uses the prompts as given.
    easyedit_overrides = {"use_suffix": False}

    def __init__(self, hparams: Union[DINMHyperParams, Mapping[str, Any], str, None] = None, *,
                 progress: bool = True) -> None:
        super().__init__(hparams)
        self.hparams: DINMHyperParams
        self.progress = progress
        #: The first located layer(s), reused for later cases when sticky_layer holds (EasyEdit keeps the
        #: first located layer for every later case). Editor state: the hparams are never mutated.
        self.sticky_layers: Optional[list[int]] = None
        hp = self.hparams
        if hp.mode == "compat" and hp.use_chat_template:
            raise HyperParamsError(
                "use_chat_template: true is an improved-mode option (EasyEdit uses no chat template); "
                "set mode: improved or use_chat_template: false")

    # ------------------------------------------------------------------ public API
    def edit(self, model: "nn.Module", tokenizer: Any,
             requests: Union[EditRequest, Mapping[str, Any], Sequence[Union[EditRequest, Mapping[str, Any]]]]
             ) -> ParameterEdit:
        """Edit ``model`` in place with every request; return the revertible, savable edit."""
        started = time.perf_counter()
        items = normalise_requests(requests)
        plan = self.plan(model, tokenizer, items)
        metadata = self.base_metadata(
            model,
            mode=self.hparams.mode,
            sequential=self.hparams.sequential,
            num_requests=len(items),
        )
        deltas, cases, sticky = self._run(model, tokenizer, plan)
        if sticky is not None:
            self.sticky_layers = sticky
        total = time.perf_counter() - started
        metadata.update(
            layers=sorted({layer for case in cases for layer in case["layers"]}),
            edited_tensors=sorted(deltas),
            cases=cases,
            edit_seconds=round(total, 4),
            timings={"total_seconds": round(total, 4),
                     "optimise_seconds": round(sum(c["optimise_seconds"] for c in cases), 4),
                     "locate_seconds": round(sum(c.get("locate_seconds", 0.0) for c in cases), 4)},
            losses=[c["losses"] for c in cases],
        )
        return ParameterEdit.apply_deltas(model, deltas, metadata, stackable=True)

    def compute_deltas(self, model: "nn.Module", tokenizer: Any, requests: Any
                       ) -> tuple[dict[str, "torch.Tensor"], list[dict[str, Any]]]:
        """The deltas ``edit`` would apply, with the model left exactly as it was (EasyEdit's
        ``execute_dinm``); also returns the per-case records."""
        items = normalise_requests(requests)
        plan = self.plan(model, tokenizer, items)
        deltas, cases, sticky = self._run(model, tokenizer, plan)
        if sticky is not None:
            self.sticky_layers = sticky
        return deltas, cases

    def safeedit_protocol(self, model: "nn.Module", tokenizer: Any, cases: Sequence[Any], **kwargs: Any
                          ) -> "ProtocolReport":
        """SafeEdit's per-case loop: pre-edit answers, edit, post-edit answers, revert, next case.

        Keyword arguments go to ``protocol.run_safeedit`` (judge, max_new_tokens, batch_size, ...).
        """
        from .protocol import run_safeedit

        return run_safeedit(self, model, tokenizer, cases, **kwargs)

    # ------------------------------------------------------------------ pipeline hooks (registry.pipeline)
    def read_inputs(self, values: Mapping[str, Any]) -> list[EditRequest]:
        """The cases (``cases`` + ``case_id``/``limit``) or ``requests``, validated."""
        cases, requests, limit = values.get("cases"), values.get("requests"), values.get("limit")
        if cases is not None and requests is not None:
            raise EditError("DINM takes either 'cases' or 'requests', not both")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise EditError(f"'limit' must be an integer >= 1, got {limit!r}")
        if requests is not None:
            if values.get("case_id") is not None:
                raise EditError("'case_id' picks one of 'cases'; with 'requests' list only the requests you want")
            if not isinstance(requests, (str, list, tuple, Mapping)):
                raise EditError(f"'requests' must be a list of request dicts or a file, got {type(requests).__name__}")
            items = read_requests(requests) if isinstance(requests, str) else (
                [requests] if isinstance(requests, Mapping) else list(requests))
            return normalise_requests([as_request(r) for r in items][:limit])
        if cases is None:
            raise EditError("DINM needs 'cases' (a SafeEdit JSON file or safeedit-sample, with 'case_id' to pick "
                            "one; --cases/--case-id on the command line) or 'requests' (EasyEdit request dicts)")
        if not isinstance(cases, str):
            raise EditError(f"'cases' must be a SafeEdit JSON file or 'safeedit-sample', got {cases!r}")
        case_id = values.get("case_id")
        chosen = load_cases(cases, case_id=None if case_id is None else str(case_id), limit=limit)
        return normalise_requests([as_request(c) for c in chosen])

    def planned_footprint(self, model: "nn.Module", inputs: Any = None) -> Footprint:
        """The tensors ``rewrite_module_tmp`` names in ``layers`` (every layer before localization);
        stackable, since sequential DINM edits of one matrix are the paper's setting (W0 + Δ1 + Δ2,
        each Δ computed on the weights the previous edit left)."""
        from .runner import find_stack

        hp = self.hparams
        stack = find_stack(model)
        num_layers = stack.num_layers if stack is not None else int(getattr(model.config, "num_hidden_layers", 0))
        names = [name for name, _ in model.named_parameters()]
        fixed = list(hp.layers) or (list(self.sticky_layers) if hp.effective_sticky_layer and self.sticky_layers
                                    else None)
        self._check_template(names, fixed, num_layers)
        layers = fixed if fixed is not None else list(range(num_layers))
        targets = {n for layer in layers for n in template_matches(hp.rewrite_module_tmp, layer, names)}
        return Footprint.of(writes=targets, additive=True, stackable=True, exact=fixed is not None)

    # ------------------------------------------------------------------ planning (no model change)
    def plan(self, model: "nn.Module", tokenizer: Any, items: list[EditRequest]) -> EditPlan:
        """Validate every request and the module template against ``model``; tokenize everything."""
        from .inputs import compat_edit_sequence, compat_locality_sequence, in_context_sequence, with_suffix
        from .runner import find_stack

        hp = self.hparams
        if tokenizer is None:
            raise EditError("DINM needs the model's tokenizer; pass it to edit(model, tokenizer, requests)")
        stack = find_stack(model)
        num_layers = stack.num_layers if stack is not None else int(getattr(model.config, "num_hidden_layers", 0))
        names = [name for name, _ in model.named_parameters()]
        if hp.layers:
            fixed: Optional[list[int]] = list(hp.layers)
        elif hp.effective_sticky_layer and self.sticky_layers is not None:
            fixed = list(self.sticky_layers)
        else:
            fixed = None
        self._check_template(names, fixed, num_layers)
        if fixed is not None:  # known now: an offloaded target is refused before any work
            params = dict(model.named_parameters())
            check_in_memory({n: params[n] for layer in fixed for n in template_matches(hp.rewrite_module_tmp, layer,
                                                                                        names)}, editor="DINM")
        compat_locate = self._uses_easyedit_localization()
        cases = []
        for index, request in enumerate(items):
            locate = fixed is None and (index == 0 or not hp.effective_sticky_layer)
            request.validate(need_ground_truth=locate)
            prompt_text = with_suffix(request.prompt, hp.suffix_system_prompt, hp.use_suffix)
            locality_prompt = None
            extra: list["ScoredSequence"] = []  # edit_bare_question's sequence
            if request.locality_prompt and request.locality_answer:
                locality_prompt = with_suffix(request.locality_prompt, hp.suffix_system_prompt, hp.use_suffix)
            elif request.locality_prompt or request.locality_answer:
                request.validate(need_locality=True)  # raises, naming the missing half
            if hp.mode == "compat":
                edit_seq = compat_edit_sequence(tokenizer, prompt_text, request.target_new)
                loc_seq = (compat_locality_sequence(tokenizer, locality_prompt, request.locality_answer)
                           if locality_prompt else None)
            else:
                build = dict(chat_template=hp.use_chat_template, max_length=hp.max_length)
                edit_seq = in_context_sequence(tokenizer, prompt_text, request.target_new, **build)
                loc_seq = None
                if locality_prompt and hp.effective_locality_weight > 0:
                    loc_seq = in_context_sequence(tokenizer, locality_prompt, request.locality_answer, **build)
                if hp.edit_bare_question:
                    extra = [in_context_sequence(tokenizer, self._bare_question(request), request.target_new, **build)]
            if loc_seq is None and locality_prompt is None and hp.mode == "improved" and hp.effective_locality_weight > 0:
                logger.info("request %r has no knowledge-constraint pair; its edit runs without the locality KL",
                            request.case_id)
            case = CasePlan(request, prompt_text, edit_seq, loc_seq, locate, extra_edits=extra)
            if locate and not compat_locate:
                context = prompt_text if hp.effective_localize_with_prompt else None
                case.safe = self._localization_sequence(tokenizer, context, request.target_new)
                case.unsafe = self._localization_sequence(tokenizer, context, request.ground_truth or "")
            _check_positions(model, request, [case.edit, case.locality, case.safe, case.unsafe, *case.extra_edits])
            cases.append(case)
        if not compat_locate and any(c.locate for c in cases) and stack is None:
            raise EditError(
                f"cannot find the block stack of {type(model).__name__} to locate the toxic layer; "
                f"set 'layers' in the hparams to the layer to edit")
        return EditPlan(cases=cases, stack=stack, num_layers=num_layers, fixed_layers=fixed,
                        nullspace=self._nullspace_settings(tokenizer), anchors=self._anchor_settings(tokenizer))

    def _bare_question(self, request: EditRequest) -> str:
        """The case's question without the attack (its first generalization prompt), suffixed like the prompt."""
        from .inputs import with_suffix

        if not request.generalization_prompts or not request.generalization_prompts[0].strip():
            raise EditError(f"edit_bare_question: true needs each case's bare question (its first generalization "
                            f"prompt, SafeEdit's DG_onlyQ), and case {request.case_id!r} has none; give the cases "
                            f"generalization prompts or set edit_bare_question: false")
        hp = self.hparams
        return with_suffix(request.generalization_prompts[0], hp.suffix_system_prompt, hp.use_suffix)

    def _benign_prompts(self, tokenizer: Any, source: str, count: Optional[int], field: str) -> list[str]:
        """The benign prompts of hparams ``field`` (read at plan time: a bad source, or a chat template the
        tokenizer lacks, fails before the model changes)."""
        from detox_plugins.evaluation.generate import uses_chat_template

        from .benign import load_prompts

        if self.hparams.use_chat_template:
            uses_chat_template(tokenizer, True)  # raises when the tokenizer has none
        return load_prompts(source, count, field)

    def _anchor_settings(self, tokenizer: Any) -> Optional["AnchorSettings"]:
        """The benign anchor prompts and settings, or None when anchors are off."""
        hp = self.hparams
        if hp.anchor_prompts is None:
            return None
        from .anchors import AnchorSettings

        return AnchorSettings(prompts=self._benign_prompts(tokenizer, hp.anchor_prompts, hp.anchor_prompt_count,
                                                           "anchor_prompts"),
                              answer_tokens=hp.anchor_answer_tokens, weight=hp.anchor_weight,
                              chat_template=hp.use_chat_template, max_length=hp.max_length)

    def _nullspace_settings(self, tokenizer: Any) -> Optional["NullSpaceSettings"]:
        """The benign prompts and settings of the null-space projection, or None when it is off."""
        hp = self.hparams
        if not hp.nullspace:
            return None
        from .nullspace import NullSpaceSettings

        return NullSpaceSettings(prompts=self._benign_prompts(tokenizer, hp.nullspace_prompts,
                                                              hp.nullspace_prompt_count, "nullspace_prompts"),
                                 energy=hp.nullspace_energy, answer_tokens=hp.nullspace_answer_tokens,
                                 chat_template=hp.use_chat_template, max_length=hp.max_length,
                                 positions=hp.nullspace_positions)

    def _localization_sequence(self, tokenizer: Any, prompt: Optional[str], response: str) -> "ScoredSequence":
        import torch

        from .inputs import ScoredSequence, in_context_sequence

        hp = self.hparams
        if prompt is not None:
            return in_context_sequence(tokenizer, prompt, response, chat_template=hp.use_chat_template,
                                       max_length=hp.max_length)
        ids = list(tokenizer(response)["input_ids"])[: hp.max_length]
        n = len(ids)
        # Score every token: positions n-1 .. predict nothing; response_mask() then covers tokens 0..n-1.
        return ScoredSequence(torch.tensor([ids]), torch.arange(-1, n - 1), torch.zeros(n, dtype=torch.long),
                              torch.ones(n), response)

    def _trained_modules(self, model: "nn.Module", stack: Any, names: list[str]) -> dict[int, "nn.Module"]:
        """Per block, the MLP module the template trains (what the sub-block edit path records)."""
        from .runner import trained_module

        found = {}
        for layer in range(stack.num_layers if stack is not None else 0):
            module = trained_module(model, stack, layer, template_matches(self.hparams.rewrite_module_tmp, layer, names))
            if module is not None:
                found[layer] = module
        return found

    def _uses_easyedit_localization(self) -> bool:
        hp = self.hparams
        return hp.mode == "compat" and not hp.effective_localize_with_prompt and hp.localize_metric == "l2"

    def _check_template(self, names: list[str], fixed: Optional[list[int]], num_layers: int) -> None:
        hp = self.hparams
        template = hp.rewrite_module_tmp
        layers = fixed if fixed is not None else list(range(num_layers))
        if not layers:
            raise EditError(f"the model has no layers to edit (num_hidden_layers = {num_layers})")
        too_high = [layer for layer in layers if layer >= num_layers]
        if too_high:
            raise EditError(
                f"layers {too_high} do not exist: the model has {num_layers} layers (0..{num_layers - 1}); "
                f"fix 'layers' in the hparams")
        missing = [layer for layer in layers if not template_matches(template, layer, names)]
        if missing:
            examples = ", ".join(repr(n) for n in _example_names(names))
            which = "any layer" if len(missing) == len(layers) else f"layers {missing}"
            raise EditError(
                f"rewrite_module_tmp {template!r} matches no parameter of this model for {which} "
                f"(e.g. {template.format(missing[0])!r}); templates of real parameters: {examples}; "
                f"fix rewrite_module_tmp in the hparams")

    # ------------------------------------------------------------------ running (restores on failure)
    def _run(self, model: "nn.Module", tokenizer: Any, plan: EditPlan
             ) -> tuple[dict[str, "torch.Tensor"], list[dict[str, Any]], Optional[list[int]]]:
        import torch

        from .locate import locate_blocks, locate_by_attribution, locate_easyedit
        from .optimize import optimise_case, settings_from

        hp = self.hparams
        settings = settings_from(hp)
        params = dict(model.named_parameters())
        names = list(params)
        flags = {name: p.requires_grad for name, p in params.items()}
        modes = [(m, m.training) for m in model.modules()]  # per module: a mixed model stays mixed
        originals: dict[str, torch.Tensor] = {}
        independent: dict[str, torch.Tensor] = {}
        records: list[dict[str, Any]] = []
        sticky: Optional[list[int]] = None
        fixed = plan.fixed_layers
        iterator: Iterable[CasePlan] = plan.cases
        bar = None
        if self.progress:  # one bar over every step of every case: it moves per step, not per case
            from tqdm.auto import tqdm

            bar = tqdm(total=settings.num_steps * len(plan.cases), desc="DINM steps", unit="step")

        def on_step(step: int, loss: float) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(case=str(current[0]), loss=f"{loss:.3g}", refresh=False)

        current: list[Any] = [None]
        null_space = _NullSpaceCache(plan.nullspace, plan.stack, self.progress)
        anchors = None
        try:
            model.eval()
            for p in params.values():
                p.requires_grad_(False)
            if plan.anchors is not None:  # answered and scored by the model as the call found it
                from .anchors import build_anchors

                anchors = build_anchors(model, tokenizer, plan.anchors, progress=self.progress)
            for index, case in enumerate(iterator):
                current[0] = case.request.case_id
                if bar is not None:  # a case that stopped early: its remaining steps count as done
                    bar.n = index * settings.num_steps
                    bar.refresh()
                record: dict[str, Any] = {"case_id": case.request.case_id}
                block_inputs = None
                if case.locate:
                    t0 = time.perf_counter()
                    if case.safe is None:
                        found = locate_easyedit(model, tokenizer, case.request.target_new,
                                                case.request.ground_truth or "")
                    elif hp.localize_metric == "attribution":
                        found = locate_by_attribution(model, plan.stack, case.safe, case.unsafe,
                                                      modules=self._trained_modules(model, plan.stack, names))
                    else:
                        # The safe localization sequence is the edit input when both use the prompt:
                        # keep its block inputs so the edit needs no separate cache pass.
                        reuse = hp.cache_lower_layers and torch.equal(case.safe.input_ids, case.edit.input_ids)
                        found = locate_blocks(model, plan.stack, tokenizer, case.safe, case.unsafe,
                                              metric=hp.localize_metric, capture_inputs=reuse,
                                              trained_modules=self._trained_modules(model, plan.stack, names))
                        block_inputs = found.block_inputs
                    record["locate_seconds"] = round(time.perf_counter() - t0, 4)
                    record["localization"] = found.to_dict()
                    layers = [found.layer]
                    if hp.effective_sticky_layer and fixed is None:
                        fixed = sticky = layers
                else:
                    assert fixed is not None
                    layers = list(fixed)
                targets = sorted({n for layer in layers for n in template_matches(hp.rewrite_module_tmp, layer, names)})
                if not targets:
                    raise EditError(f"rewrite_module_tmp {hp.rewrite_module_tmp!r} matches nothing for layer "
                                    f"{layers}; fix rewrite_module_tmp")
                check_in_memory({name: params[name] for name in targets}, editor="DINM")
                for name in targets:
                    if name not in originals:
                        originals[name] = params[name].detach().clone()
                projectors = None
                if plan.nullspace is not None:
                    projectors = null_space.projectors(model, tokenizer, targets)
                    record["nullspace"] = {name: p.record for name, p in projectors.items()}
                outcome = optimise_case(model, plan.stack, targets, settings, case.edit, case.locality,
                                        block_inputs=block_inputs, on_step=on_step, projectors=projectors,
                                        anchors=anchors, extra_edits=case.extra_edits)
                if anchors is not None:
                    record["anchors"] = anchors.record
                block_inputs = found = None  # free the captured activations
                with torch.no_grad():
                    for name, delta in outcome.deltas.items():
                        if hp.sequential:
                            params[name].add_(delta)  # the next case edits on top of this one
                            null_space.changed(name)
                            if anchors is not None:
                                anchors.changed(name, plan.stack)
                        else:
                            independent[name] = independent.get(name, torch.zeros_like(delta)) + delta
                record.update(
                    layers=layers,
                    tensors=targets,
                    steps=outcome.steps,
                    stopped_early=outcome.stopped_early,
                    optimise_seconds=round(outcome.seconds, 4),
                    upper_fraction=round(outcome.cached_fraction, 4),
                    losses=[{k: (round(v, 6) if k != "step" else int(v)) for k, v in r.items()} for r in outcome.losses],
                    delta_norm={n: float(d.float().norm()) for n, d in outcome.deltas.items()},
                )
                records.append(record)
                logger.info("DINM case %r: layer %s, %d steps, loss %.4g -> %.4g", case.request.case_id, layers,
                            outcome.steps, outcome.losses[0]["loss"] if outcome.losses else float("nan"),
                            outcome.losses[-1]["loss"] if outcome.losses else float("nan"))
            with torch.no_grad():
                if hp.sequential:
                    deltas = {name: params[name].detach() - w0 for name, w0 in originals.items()}
                else:
                    deltas = independent
        finally:
            anchors = None  # free the reference log-probabilities
            if bar is not None:
                bar.close()
            with torch.no_grad():
                for name, w0 in originals.items():
                    params[name].copy_(w0)
            for name, p in params.items():
                p.requires_grad_(flags[name])
            for module, mode in modes:
                module.training = mode
        return deltas, records, sticky


class _NullSpaceCache:
    """The null-space projectors of one ``edit`` call, built when a case first needs them.

    The benign answers are generated once, from the model before any case's delta lands. A tensor's
    projector depends only on the blocks below its module, so it is reused by later cases until a
    sequential delta changes a lower block (or another module of its own block)."""

    def __init__(self, settings: Optional["NullSpaceSettings"], stack: Any, progress: bool) -> None:
        self.settings = settings
        self.stack = stack
        self.progress = progress
        self.texts: Optional[list["BenignText"]] = None
        self.built: dict[str, "UpdateProjector"] = {}

    def projectors(self, model: "nn.Module", tokenizer: Any, names: list[str]) -> dict[str, "UpdateProjector"]:
        from .nullspace import benign_texts, build_projectors

        assert self.settings is not None
        if self.texts is None:
            self.texts = benign_texts(model, tokenizer, self.settings, progress=self.progress)
        missing = [name for name in names if name not in self.built]
        if missing:
            self.built.update(build_projectors(model, tokenizer, missing, self.texts, self.settings, self.progress))
        return {name: self.built[name] for name in names}

    def changed(self, name: str) -> None:
        """``name`` moved: forget the projectors whose inputs it can change."""
        from .runner import depends_on

        for kept in [k for k in self.built if depends_on(self.stack, k, name)]:
            del self.built[kept]


def _example_names(names: list[str], count: int = 4) -> list[str]:
    """A few real parameter names as templates (MLP tensors of one block first), e.g.
    ``model.layers.{}.mlp.down_proj.weight``."""
    import re

    templates: list[str] = []
    for name in sorted(names, key=lambda n: ("mlp" not in n and "fc" not in n, n)):
        template = re.sub(r"\.\d+\.", ".{}.", name, count=1)
        if template != name and template not in templates:
            templates.append(template)
        if len(templates) >= count:
            break
    return templates or names[:count]
