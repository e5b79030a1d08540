"""Security-vector hyperparameters (the SecurityVectors YAML keys): the vector, the user's fine-tune, export."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, List, Literal, Optional

from registry.errors import HyperParamsError
from registry.hparams import HyperParams

if TYPE_CHECKING:  # pragma: no cover
    from peft import LoraConfig


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class LoraSettings:
    """One LoRA adapter's shape (peft ``LoraConfig`` fields of the same names)."""

    r: int = field(default=8, metadata=_help("LoRA rank."))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA scaling numerator: scaling = lora_alpha / r."))
    lora_dropout: float = field(default=0.0, metadata=_help("Dropout on the LoRA input (training only)."))
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"], metadata=_help(
        "Names of the linear layers to adapt (a module matches if its name ends with one of them)."))

    def check(self, where: str) -> None:
        if self.r <= 0:
            raise HyperParamsError(f"{where}.r must be > 0, got {self.r}; fix it in the SecurityVectors hparams")
        if self.lora_alpha <= 0:
            raise HyperParamsError(f"{where}.lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise HyperParamsError(f"{where}.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.target_modules or not all(isinstance(t, str) and t.strip() for t in self.target_modules):
            raise HyperParamsError(
                f"{where}.target_modules must list module names such as [q_proj, v_proj], got {self.target_modules!r}")

    def to_lora_config(self) -> "LoraConfig":
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=list(self.target_modules), bias="none")


def _sv_lora() -> LoraSettings:
    return LoraSettings(r=8, lora_alpha=16.0, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def _user_lora() -> LoraSettings:
    return LoraSettings(r=16, lora_alpha=32.0, lora_dropout=0.05,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class SecurityVectorHyperParams(HyperParams):
    """Hyperparameters of the SecurityVectors editor (arXiv 2311.02105)."""

    # ---- data (harmful targets are compliance openings only) ----
    harmful_data: str = field(default="sv_harmful.jsonl", metadata=_help(
        "Harmful requests with compliance openings that train the vector: a JSONL path or the name of a "
        "file shipped in detox_plugins/data. Every target must pass the data rule (allow-listed opening, "
        "max_target_tokens)."))
    benign_data: str = field(default="sv_benign.jsonl", metadata=_help(
        "Benign {prompt, response} rows for the KL term (path or shipped name)."))
    num_harmful: int = field(default=100, metadata=_help(
        "Harmful rows used to train the vector (the first N; the paper used about 100)."))
    num_benign: int = field(default=100, metadata=_help("Benign rows used for the KL term (the first N)."))
    max_target_tokens: int = field(default=16, metadata=_help(
        "Data rule: a harmful target longer than this many tokens is rejected."))
    max_length: int = field(default=128, metadata=_help(
        "Training sequence length in tokens (prompt truncated from the left, response kept)."))
    use_chat_template: bool = field(default=True, metadata=_help(
        "Render rows with the tokenizer's chat template (a user turn, then the response as the assistant)."))
    system_prompt: Optional[str] = field(default=None, metadata=_help(
        "System turn added to every row; null = the template's own default."))

    # ---- stage 1: the vector ----
    sv_adapter_name: str = field(default="sv", metadata=_help(
        "Adapter name of the vector inside the model during training (never in any exported file)."))
    sv_lora: LoraSettings = field(default_factory=_sv_lora, metadata=_help(
        "The vector's LoRA (lora_dropout must be 0: a frozen vector has to explain harmful data exactly)."))
    sv_epochs: float = field(default=10.0, metadata=_help("Epochs over the harmful rows (paper: 10)."))
    sv_lr: float = field(default=1e-3, metadata=_help("AdamW learning rate of the vector."))
    sv_batch_size: int = field(default=8, metadata=_help(
        "Harmful rows per step; the same number of benign rows feeds the KL term."))
    sv_weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay of the vector."))
    sv_kl_weight: float = field(default=1.0, metadata=_help(
        "λ of KL(p_base || p_base+sv) on the benign rows' response positions."))
    sv_kl_top_k: int = field(default=64, metadata=_help(
        "The base model's reference distribution is kept as its top-k tokens plus one 'rest' bucket "
        "(an exact KL of the coarsened distribution, a lower bound of the full KL); 0 = full vocabulary."))

    # ---- stage 2: the user's fine-tune ----
    user_mode: Literal["lora", "full"] = field(default="lora", metadata=_help(
        "lora: the user trains a new LoRA (setting A, default); full: the user trains the backbone (setting B)."))
    user_adapter_name: str = field(default="user", metadata=_help("Adapter name of the user's LoRA (setting A)."))
    user_lora: LoraSettings = field(default_factory=_user_lora, metadata=_help("The user's LoRA (setting A)."))
    ft_epochs: float = field(default=3.0, metadata=_help("Epochs of the user's fine-tune."))
    ft_max_steps: int = field(default=-1, metadata=_help("Stop after this many optimizer steps (-1 = use ft_epochs)."))
    ft_lr: float = field(default=2e-4, metadata=_help("Learning rate of the user's fine-tune."))
    ft_batch_size: int = field(default=8, metadata=_help("Rows per device per step of the user's fine-tune."))
    ft_gradient_accumulation_steps: int = field(default=1, metadata=_help("Gradient accumulation steps."))
    ft_weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay of the user's fine-tune."))
    ft_warmup_ratio: float = field(default=0.0, metadata=_help("Share of steps with linear LR warm-up."))
    ft_lr_scheduler: str = field(default="linear", metadata=_help(
        "transformers lr_scheduler_type of the user's fine-tune (linear, constant, cosine, ...)."))
    ft_optim: str = field(default="adamw_torch", metadata=_help(
        "transformers optimizer name (TrainingArguments.optim)."))
    ft_logging_steps: int = field(default=10, metadata=_help("Log the training loss every N steps."))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute activations in the backward pass (non-reentrant; lower memory, slower)."))
    bf16: bool = field(default=False, metadata=_help("Train with bfloat16 autocast (TrainingArguments.bf16)."))

    # ---- stage 3: export ----
    export: Literal["adapter", "merged"] = field(default="adapter", metadata=_help(
        "Setting A output: the user's LoRA alone (peft folder) or merged into the base weights "
        "(parameter deltas). Setting B always exports parameter deltas. The vector never ships."))
    progress: bool = field(default=True, metadata=_help("Show Trainer's progress bars."))

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.num_harmful > 0, f"num_harmful must be > 0, got {self.num_harmful}"),
            (self.num_benign >= 0, f"num_benign must be >= 0, got {self.num_benign}"),
            (self.max_target_tokens > 0, f"max_target_tokens must be > 0, got {self.max_target_tokens}"),
            (self.max_length >= 8, f"max_length must be >= 8, got {self.max_length}"),
            (self.sv_epochs > 0, f"sv_epochs must be > 0, got {self.sv_epochs}"),
            (self.sv_lr > 0, f"sv_lr must be > 0, got {self.sv_lr}"),
            (self.sv_batch_size > 0, f"sv_batch_size must be > 0, got {self.sv_batch_size}"),
            (self.sv_weight_decay >= 0, f"sv_weight_decay must be >= 0, got {self.sv_weight_decay}"),
            (self.sv_kl_weight >= 0, f"sv_kl_weight must be >= 0, got {self.sv_kl_weight}"),
            (self.sv_kl_top_k >= 0, f"sv_kl_top_k must be >= 0, got {self.sv_kl_top_k}"),
            (self.sv_lora.lora_dropout == 0.0,
             f"sv_lora.lora_dropout must be 0.0, got {self.sv_lora.lora_dropout} (a frozen vector with "
             f"dropout still drops activations in training, so it no longer explains the harmful data)"),
            (self.ft_epochs > 0 or self.ft_max_steps > 0,
             f"ft_epochs must be > 0 (or set ft_max_steps), got {self.ft_epochs}"),
            (self.ft_lr > 0, f"ft_lr must be > 0, got {self.ft_lr}"),
            (self.ft_batch_size > 0, f"ft_batch_size must be > 0, got {self.ft_batch_size}"),
            (self.ft_gradient_accumulation_steps > 0,
             f"ft_gradient_accumulation_steps must be > 0, got {self.ft_gradient_accumulation_steps}"),
            (self.ft_weight_decay >= 0, f"ft_weight_decay must be >= 0, got {self.ft_weight_decay}"),
            (0 <= self.ft_warmup_ratio < 1, f"ft_warmup_ratio must be in [0, 1), got {self.ft_warmup_ratio}"),
            (self.ft_logging_steps > 0, f"ft_logging_steps must be > 0, got {self.ft_logging_steps}"),
            (bool(self.sv_adapter_name.strip()) and "." not in self.sv_adapter_name,
             f"sv_adapter_name must be a non-empty name without dots, got {self.sv_adapter_name!r}"),
            (bool(self.user_adapter_name.strip()) and "." not in self.user_adapter_name,
             f"user_adapter_name must be a non-empty name without dots, got {self.user_adapter_name!r}"),
            (self.sv_adapter_name != self.user_adapter_name,
             f"sv_adapter_name and user_adapter_name must differ, both are {self.sv_adapter_name!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise HyperParamsError(f"{message}; fix it in the SecurityVectors hparams")
        self.sv_lora.check("sv_lora")
        self.user_lora.check("user_lora")

    def for_cli(self, **overrides: Any) -> "SecurityVectorHyperParams":
        """A copy with the non-None command-line overrides applied (validated like a file)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return self.replace(**changes) if changes else self
