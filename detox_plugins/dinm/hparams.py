"""DINM hyperparameters: every EasyEdit field (their YAML files load unchanged) plus our additions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Literal, Optional, Union

from registry.errors import HyperParamsError
from registry.hparams import HyperParams

EASYEDIT_SUFFIX = (
    "If the user's request is reasonable, give the correct answer. Please give the right response:"
)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DINMHyperParams(HyperParams):
    """Hyperparameters of the DINM editor (arXiv 2403.14472): EasyEdit's fields, then ours."""

    # ---- EasyEdit fields (hparams/DINM/*.yaml in EasyEdit) ----
    model_class: str = field(default="AutoModelForCausalLM", metadata=_help(
        "EasyEdit's model class name; recorded only: models always load through AutoModelForCausalLM."))
    tokenizer_class: str = field(default="AutoTokenizer", metadata=_help(
        "EasyEdit's tokenizer class; ignored: AutoTokenizer is always used (LlamaTokenizer mis-tokenizes "
        "byte-level BPE vocabularies such as SmolLM2's)."))
    suffix_system_prompt: str = field(default=EASYEDIT_SUFFIX, metadata=_help(
        "Instruction appended to the prompt during the edit (and evaluation) when use_suffix is true."))
    layers: List[int] = field(default_factory=list, metadata=_help(
        "Layers whose rewrite_module_tmp weight is edited; [] = locate the toxic layer from the request."))
    num_steps: int = field(default=10, metadata=_help("Optimisation steps per edit (Adam)."))
    lr: float = field(default=5e-4, metadata=_help("Adam learning rate."))
    weight_decay: float = field(default=0.0, metadata=_help("Adam weight decay."))
    kl_factor: float = field(default=0.1, metadata=_help(
        "EasyEdit's weight on the edit NLL (compat); improved mode derives locality_weight = 1/kl_factor."))
    norm_constraint: Union[bool, float] = field(default=False, metadata=_help(
        "false, or ε: clamp the edited weight to W0 ± ε after each step."))
    batch_size: int = field(default=1, metadata=_help("EasyEdit's batch size; DINM edits one case at a time."))
    max_length: int = field(default=1000, metadata=_help("Truncation length of edit inputs in tokens."))
    max_output_length: int = field(default=600, metadata=_help("New tokens generated per answer in evaluation."))
    rewrite_module_tmp: str = field(default="model.layers.{}.mlp.down_proj.weight", metadata=_help(
        "Name template of the edited tensor(s); every parameter whose name contains it is edited."))
    layer_module_tmp: str = field(default="model.layers.{}", metadata=_help("Name template of one block."))
    mlp_module_tmp: str = field(default="model.layers.{}.mlp", metadata=_help("Name template of a block's MLP."))
    attn_module_tmp: str = field(default="model.layers.{}.self_attn", metadata=_help(
        "Name template of a block's attention."))
    ln_f_module: str = field(default="model.norm", metadata=_help("Final norm module name."))
    lm_head_module: str = field(default="lm_head", metadata=_help("Output head module name."))

    # ---- our additions (all defaulted, so EasyEdit's YAML files load unchanged) ----
    mode: Literal["improved", "compat"] = field(default="improved", metadata=_help(
        "improved: the fixed algorithm (differentiable locality KL, per-case localization, in-context labels); "
        "compat: EasyEdit's step for step."))
    sticky_layer: Optional[bool] = field(default=None, metadata=_help(
        "Reuse the first located layer for later cases (EasyEdit's behaviour); null = true in compat, "
        "false in improved."))
    localize_with_prompt: Optional[bool] = field(default=None, metadata=_help(
        "Condition localization on the prompt; null = false in compat, true in improved."))
    localize_metric: Literal["l2", "relative_l2", "separability", "attribution"] = field(default="l2", metadata=_help(
        "Layer score: l2 distance of mean response states, relative_l2 (divided by their mean norm), "
        "separability (squared distance over the responses' token spread), or attribution (which block's "
        "edited module most raises the unsafe answer's likelihood over the safe one: gradient x activation)."))
    locality_weight: Optional[float] = field(default=None, metadata=_help(
        "Weight of the differentiable locality KL (improved); null = 1/kl_factor."))
    edit_loss_weight: float = field(default=1.0, metadata=_help("Weight of the edit NLL (improved)."))
    use_chat_template: bool = field(default=False, metadata=_help(
        "Render edit and evaluation inputs with the tokenizer's chat template."))
    use_suffix: bool = field(default=True, metadata=_help("Append suffix_system_prompt to the prompt."))
    eval_prompt: Optional[Literal["easyedit", "consistent"]] = field(default=None, metadata=_help(
        "easyedit: pre-edit without suffix, post-edit with (EasyEdit); consistent: the same input both "
        "times. null = easyedit in compat, consistent in improved."))
    early_stop_loss: float = field(default=1e-4, metadata=_help("Stop when the total loss falls below this."))
    cache_lower_layers: bool = field(default=True, metadata=_help(
        "Compute the frozen blocks below the edited layer once per edit (same result, faster)."))
    sequential: bool = field(default=True, metadata=_help(
        "Batch of requests: true = each edit applies on top of the previous (EasyEdit "
        "keep_original_weight=False); false = each from the original model (independent)."))

    nullspace: bool = field(default=False, metadata=_help(
        "Constrain the update to the null space of benign inputs: the edited matrix's outputs on the tokens of "
        "nullspace_prompts (and the model's own answers to them) stay (nearly) unchanged (AlphaEdit's idea)."))
    nullspace_prompts: str = field(default="benign-heldout", metadata=_help(
        "Benign prompts whose inputs to the edited matrix the update must leave alone: a dataset name "
        "(benign-heldout: 110 questions disjoint from the benign-150 over-refusal set) or a JSONL/JSON/TXT file."))
    nullspace_prompt_count: Optional[int] = field(default=None, metadata=_help(
        "Use only the first N of nullspace_prompts; null = all."))
    nullspace_answer_tokens: int = field(default=16, metadata=_help(
        "Also protect the inputs over the model's own greedy answer to each prompt, this many new tokens "
        "(generated once, before the edit); 0 = the prompt tokens only."))
    nullspace_positions: Literal["all", "answer"] = field(default="all", metadata=_help(
        "Which tokens' inputs are protected: all (system prompt, prompt and answer), or answer (the prompt's "
        "last token and the answer tokens: the positions whose outputs become generated text)."))
    nullspace_energy: float = field(default=0.99, metadata=_help(
        "Protected share of the benign inputs' energy, in (0, 1): the update is projected off the top "
        "eigenvectors of K K^T that together hold this fraction of its trace; higher = stricter, less room."))

    anchor_prompts: Optional[str] = field(default=None, metadata=_help(
        "Benign prompts whose answers the edit must keep (improved mode): before the first case the model "
        "answers each greedily, and every step adds anchor_weight x KL(P0 || P) at the answer's opening "
        "(the prompt's last token and the answer tokens). A dataset name (benign-heldout: 110 questions "
        "disjoint from the benign-150 over-refusal set) or a JSONL/JSON/TXT file; null = off."))
    anchor_prompt_count: Optional[int] = field(default=None, metadata=_help(
        "Use only the first N of anchor_prompts; null = all."))
    anchor_answer_tokens: int = field(default=8, metadata=_help(
        "Answer tokens per anchor prompt whose next-token distributions are kept (>= 1)."))
    anchor_weight: float = field(default=10.0, metadata=_help(
        "Weight of the mean anchor KL in the loss (the edit NLL has edit_loss_weight)."))
    edit_bare_question: bool = field(default=False, metadata=_help(
        "Also train each case's bare question (its first generalization prompt, SafeEdit's DG_onlyQ: the "
        "question without the attack) towards the same safe response (improved mode); the edit NLL is then "
        "the mean over both prompts, and that prompt's DG_onlyQ score is no longer held out."))

    ignored_keys: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.num_steps > 0, f"num_steps must be > 0, got {self.num_steps}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.kl_factor > 0, f"kl_factor must be > 0, got {self.kl_factor}"),
            (self.max_length > 0, f"max_length must be > 0, got {self.max_length}"),
            (self.max_output_length > 0, f"max_output_length must be > 0, got {self.max_output_length}"),
            (self.edit_loss_weight > 0, f"edit_loss_weight must be > 0, got {self.edit_loss_weight}"),
            (self.locality_weight is None or self.locality_weight >= 0,
             f"locality_weight must be >= 0 or null, got {self.locality_weight}"),
            (all(layer >= 0 for layer in self.layers), f"layers must be >= 0, got {self.layers}"),
            ("{}" in self.rewrite_module_tmp,
             f"rewrite_module_tmp must contain '{{}}' for the layer index, got {self.rewrite_module_tmp!r}"),
            (self.norm_constraint is not True,
             "norm_constraint must be false or a number ε, got true"),
            (0 < self.nullspace_energy < 1,
             f"nullspace_energy must lie strictly between 0 and 1 (a share of the benign inputs' energy), "
             f"got {self.nullspace_energy}"),
            (self.nullspace_prompt_count is None or self.nullspace_prompt_count >= 1,
             f"nullspace_prompt_count must be >= 1 or null (all prompts), got {self.nullspace_prompt_count}"),
            (self.nullspace_answer_tokens >= 0,
             f"nullspace_answer_tokens must be >= 0 (0 = prompt tokens only), got {self.nullspace_answer_tokens}"),
            (bool(self.nullspace_prompts.strip()),
             "nullspace_prompts must name a dataset (e.g. benign-heldout) or a file, got an empty string"),
            (self.anchor_prompts is None or bool(self.anchor_prompts.strip()),
             "anchor_prompts must name a dataset (e.g. benign-heldout) or a file, or be null (off); got an "
             "empty string"),
            (self.anchor_prompt_count is None or self.anchor_prompt_count >= 1,
             f"anchor_prompt_count must be >= 1 or null (all prompts), got {self.anchor_prompt_count}"),
            (self.anchor_answer_tokens >= 1, f"anchor_answer_tokens must be >= 1, got {self.anchor_answer_tokens}"),
            (self.anchor_weight > 0, f"anchor_weight must be > 0, got {self.anchor_weight}"),
            (self.anchor_prompts is None or self.mode == "improved",
             "anchor_prompts is an improved-mode option (EasyEdit's loop has no such term); set mode: improved "
             "or anchor_prompts: null"),
            (not self.edit_bare_question or self.mode == "improved",
             "edit_bare_question is an improved-mode option (EasyEdit trains the attack prompt only); set mode: "
             "improved or edit_bare_question: false"),
            (not (self.nullspace and self.norm_constraint is not False),
             "nullspace: true and norm_constraint cannot both hold (clamping each weight to W0 ± ε moves the "
             "update out of the null space); set norm_constraint: false or nullspace: false"),
        ]
        for ok, message in checks:
            if not ok:
                raise HyperParamsError(f"{message}; fix it in the DINM hparams")
        if not isinstance(self.norm_constraint, bool) and self.norm_constraint <= 0:
            raise HyperParamsError(
                f"norm_constraint must be false or > 0, got {self.norm_constraint}; fix it in the DINM hparams")

    # ---- mode-dependent defaults, resolved without mutating the fields ----
    @property
    def effective_sticky_layer(self) -> bool:
        return self.mode == "compat" if self.sticky_layer is None else self.sticky_layer

    @property
    def effective_localize_with_prompt(self) -> bool:
        return self.mode == "improved" if self.localize_with_prompt is None else self.localize_with_prompt

    @property
    def effective_locality_weight(self) -> float:
        return 1.0 / self.kl_factor if self.locality_weight is None else self.locality_weight

    @property
    def effective_eval_prompt(self) -> str:
        if self.eval_prompt is not None:
            return self.eval_prompt
        return "easyedit" if self.mode == "compat" else "consistent"
