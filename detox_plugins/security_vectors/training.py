"""Training on transformers' ``Trainer``: the vector (stage 1) and the user's fine-tune (stage 2).

Both stages hand an ordinary ``nn.Module`` to ``Trainer``, so accelerate, DeepSpeed and FSDP scale
them through ``TrainingArguments`` / ``accelerate launch``. Checkpoints are never written into a
user folder: every run uses a private temporary ``output_dir`` with ``save_strategy="no"`` (a
checkpoint would hold every adapter, the vector included).

The vector is protected by :class:`~detox_plugins.security_vectors.guard.SVGuard` (``guard.py``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from registry.errors import EditError

from . import adapters
from .data import CausalCollator, EncodedRow, pad_token_id

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .hparams import SecurityVectorHyperParams

logger = logging.getLogger(__name__)


def _trainer_classes() -> tuple[type, type, type]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    return Trainer, TrainerCallback, TrainingArguments


def make_guard(adapter: str) -> Any:
    """An :class:`~detox_plugins.security_vectors.guard.SVGuard` for ``adapter``."""
    from .guard import SVGuard

    return SVGuard(adapter)


# ---------------------------------------------------------------------- arguments and datasets
def training_arguments(hp: "SecurityVectorHyperParams", output_dir: str, *, stage: str, model: Any) -> Any:
    """TrainingArguments for one stage: no checkpoints, no reporting, no hub, seeded."""
    _, _, TrainingArguments = _trainer_classes()
    device = next(model.parameters()).device
    common: dict[str, Any] = dict(
        output_dir=output_dir,
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
        disable_tqdm=not hp.progress,
        seed=hp.seed,
        data_seed=hp.seed,
        use_cpu=device.type == "cpu",
        bf16=hp.bf16,
        max_grad_norm=1.0,
    )
    if stage == "vector":
        common.update(
            per_device_train_batch_size=hp.sv_batch_size,
            num_train_epochs=hp.sv_epochs,
            learning_rate=hp.sv_lr,
            weight_decay=hp.sv_weight_decay,
            lr_scheduler_type="constant",
            logging_steps=max(1, hp.ft_logging_steps),
        )
    else:
        common.update(
            per_device_train_batch_size=hp.ft_batch_size,
            gradient_accumulation_steps=hp.ft_gradient_accumulation_steps,
            num_train_epochs=hp.ft_epochs,
            max_steps=hp.ft_max_steps,
            learning_rate=hp.ft_lr,
            weight_decay=hp.ft_weight_decay,
            warmup_steps=hp.ft_warmup_ratio,
            lr_scheduler_type=hp.ft_lr_scheduler,
            optim=hp.ft_optim,
            logging_steps=hp.ft_logging_steps,
        )
        if hp.gradient_checkpointing:
            # transformers >= 5 renamed the option; older versions only know gradient_checkpointing.
            prefix = ("activation" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                      else "gradient")
            common[f"{prefix}_checkpointing"] = True
            common[f"{prefix}_checkpointing_kwargs"] = {"use_reentrant": False}
    return TrainingArguments(**common)


def as_features(encoded: Sequence[EncodedRow]) -> list[dict[str, Any]]:
    return [{"input_ids": row.input_ids, "labels": row.labels} for row in encoded]


@contextlib.contextmanager
def _training_session(model: Any, *, checkpointing: bool = False) -> Iterator[None]:
    """Restore the model's train/eval flag, checkpointing and accelerate's forward patching afterwards."""
    modes = [(m, m.training) for m in model.modules()]  # per module: a mixed model stays mixed
    was_prepared = "_is_accelerate_prepared" in model.__dict__
    try:
        yield
    finally:
        if not was_prepared:  # accelerate would skip preparing this model in the user's next run
            model.__dict__.pop("_is_accelerate_prepared", None)
        original = model.__dict__.pop("_original_forward", None)
        if original is not None and "forward" in model.__dict__:
            del model.__dict__["forward"]
        if checkpointing:
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()
        for module, mode in modes:
            module.training = mode


@dataclass
class TrainStats:
    """What one Trainer run reports (also stored in the edit's manifest)."""

    steps: int = 0
    seconds: float = 0.0
    train_loss: float = float("nan")
    losses: list[float] = field(default_factory=list)
    guard_steps_checked: int = 0
    final_kl: Optional[float] = None  # stage 1: mean KL over the last tenth of the steps

    def as_dict(self) -> dict[str, Any]:
        data = {"steps": self.steps, "seconds": round(self.seconds, 2), "train_loss": self.train_loss,
                "losses": [round(x, 5) for x in self.losses], "guard_steps_checked": self.guard_steps_checked}
        if self.final_kl is not None:
            data["final_kl"] = round(self.final_kl, 6)
        return data


def _quiet(trainer: Any, hp: "SecurityVectorHyperParams") -> Any:
    """Without progress bars Trainer prints every log line; send those to our logger instead."""
    from transformers.trainer_callback import PrinterCallback, TrainerCallback

    class LogToLogger(TrainerCallback):  # type: ignore[misc, valid-type]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            logger.info("step %d/%d: %s", state.global_step, state.max_steps, logs)

    if not hp.progress:
        trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogToLogger())
    return trainer


def _collect(trainer: Any, guard: Any, started: float) -> TrainStats:
    history = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    final = next((e["train_loss"] for e in reversed(trainer.state.log_history) if "train_loss" in e), float("nan"))
    return TrainStats(steps=trainer.state.global_step, seconds=time.perf_counter() - started,
                      train_loss=float(final), losses=[float(x) for x in history],
                      guard_steps_checked=guard.steps_checked if guard is not None else 0)


# ---------------------------------------------------------------------- stage 1: the vector
@dataclass
class KLReference:
    """The frozen base model's next-token distribution on benign rows (top-k + a 'rest' bucket)."""

    rows: list[EncodedRow]
    positions: list["torch.Tensor"]  # per row: positions whose next token is a response token
    top_index: list["torch.Tensor"]  # per row: [P, k] token ids (k = vocab when top_k == 0)
    top_logp: list["torch.Tensor"]  # per row: [P, k] base log-probs
    rest_logp: list["torch.Tensor"]  # per row: [P] log of the mass outside the top k


def response_positions(labels: Sequence[int]) -> list[int]:
    """Positions t whose logits predict a response token (labels[t + 1] != -100)."""
    return [t for t in range(len(labels) - 1) if labels[t + 1] != -100]


def kl_reference(model: Any, encoded: Sequence[EncodedRow], *, top_k: int, batch_size: int,
                 pad_id: int) -> KLReference:
    """Run the unchanged model once over the benign rows (call this before attaching the vector)."""
    import torch

    collate = CausalCollator(pad_id)
    device = next(model.parameters()).device
    ref = KLReference(rows=list(encoded), positions=[], top_index=[], top_logp=[], rest_logp=[])
    modes = [(m, m.training) for m in model.modules()]  # per module: a mixed model stays mixed
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            batch = collate(as_features(chunk))
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits.float()
            for i, row in enumerate(chunk):
                pos = torch.tensor(response_positions(row.labels), dtype=torch.long)
                logp = torch.log_softmax(logits[i, pos.to(device)], dim=-1).cpu()
                k = logp.shape[-1] if top_k <= 0 else min(top_k, logp.shape[-1])
                values, index = logp.topk(k, dim=-1)
                rest = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-6))
                ref.positions.append(pos)
                ref.top_index.append(index)
                ref.top_logp.append(values)
                ref.rest_logp.append(rest)
    finally:
        for module, mode in modes:
            module.training = mode
    return ref


def coarse_kl(ref_logp: "torch.Tensor", ref_rest: "torch.Tensor", index: "torch.Tensor",
              logits: "torch.Tensor") -> "torch.Tensor":
    """KL(p_ref || q) over the reference's top-k tokens plus one bucket for the rest; mean over positions."""
    import torch

    q_logp = torch.log_softmax(logits.float(), dim=-1)
    q_top = q_logp.gather(-1, index)
    q_rest = torch.log1p(-q_top.exp().sum(-1).clamp(max=1 - 1e-6))
    p_top = ref_logp.exp()
    p_rest = ref_rest.exp()
    kl = (p_top * (ref_logp - q_top)).sum(-1) + p_rest * (ref_rest - q_rest)
    return kl.mean()


def _vector_trainer_class() -> type:
    Trainer, _, _ = _trainer_classes()

    class VectorTrainer(Trainer):  # type: ignore[misc, valid-type]
        """CE on harmful openings + λ·KL(base || base+vector) on a benign batch of the same size."""

        loss_is_scaled_for_ga = False

        def __init__(self, *args: Any, kl_reference: Optional[KLReference] = None, kl_weight: float = 0.0,
                     pad_id: int = 0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.kl_ref = kl_reference
            self.kl_weight = kl_weight
            self.pad_id = pad_id
            self.kl_history: list[float] = []

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            import torch

            benign_index = inputs.pop("benign_index", None)
            outputs = model(**inputs)
            loss = outputs.loss
            if self.kl_ref is not None and self.kl_weight > 0 and benign_index is not None:
                rows = [int(i) for i in benign_index.tolist()]
                batch = CausalCollator(self.pad_id)(as_features([self.kl_ref.rows[i] for i in rows]))
                device = inputs["input_ids"].device
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits
                picked, ref_logp, ref_rest, index = [], [], [], []
                for j, i in enumerate(rows):
                    picked.append(logits[j, self.kl_ref.positions[i].to(device)])
                    ref_logp.append(self.kl_ref.top_logp[i])
                    ref_rest.append(self.kl_ref.rest_logp[i])
                    index.append(self.kl_ref.top_index[i])
                kl = coarse_kl(torch.cat(ref_logp).to(device), torch.cat(ref_rest).to(device),
                               torch.cat(index).to(device), torch.cat(picked))
                self.kl_history.append(float(kl.detach()))
                loss = loss + self.kl_weight * kl
            return (loss, outputs) if return_outputs else loss

    return VectorTrainer


def train_vector(model: Any, tokenizer: Any, harmful: Sequence[EncodedRow], reference: Optional[KLReference],
                 hp: "SecurityVectorHyperParams") -> TrainStats:
    """Train the (already attached and active) vector; everything else must be frozen."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    expected = set(adapters.adapter_parameters(model, hp.sv_adapter_name))
    if not trainable or set(trainable) - expected:
        raise EditError(f"stage 1 must train only the vector; trainable: {sorted(set(trainable) - expected)[:3]}")
    features = as_features(harmful)
    if reference is not None and reference.rows:
        for i, feature in enumerate(features):
            feature["benign_index"] = i % len(reference.rows)
    pad = pad_token_id(tokenizer)
    with tempfile.TemporaryDirectory(prefix="sv-stage1-") as tmp, _training_session(model):
        args = training_arguments(hp, tmp, stage="vector", model=model)
        trainer = _vector_trainer_class()(
            model=model, args=args, train_dataset=features, data_collator=CausalCollator(pad),
            kl_reference=reference, kl_weight=hp.sv_kl_weight, pad_id=pad,
        )
        _quiet(trainer, hp)
        started = time.perf_counter()
        trainer.train()
        stats = _collect(trainer, None, started)
        if trainer.kl_history:
            tail = trainer.kl_history[-max(1, len(trainer.kl_history) // 10):]
            stats.final_kl = sum(tail) / len(tail)
    return stats


# ---------------------------------------------------------------------- stage 2: the user's fine-tune
def train_user(model: Any, tokenizer: Any, rows: Sequence[EncodedRow], hp: "SecurityVectorHyperParams",
               *, guard_adapter: Optional[str], callbacks: Sequence[Any] = ()) -> TrainStats:
    """Run the user's fine-tune on ``Trainer``; ``guard_adapter`` names the frozen vector, if any.

    Extra ``callbacks`` run before the guard, so the guard always has the last word on a step.
    """
    Trainer, _, _ = _trainer_classes()
    if not any(p.requires_grad for p in model.parameters()):
        raise EditError("nothing to train: no parameter requires a gradient")
    if guard_adapter is not None:
        adapters.freeze(model, guard_adapter)
        adapters.assert_frozen(model, guard_adapter)
    guard = make_guard(guard_adapter) if guard_adapter is not None else None
    with tempfile.TemporaryDirectory(prefix="sv-finetune-") as tmp, \
            _training_session(model, checkpointing=hp.gradient_checkpointing):
        args = training_arguments(hp, tmp, stage="user", model=model)
        trainer = Trainer(model=model, args=args, train_dataset=as_features(rows),
                          data_collator=CausalCollator(pad_token_id(tokenizer)),
                          callbacks=[*callbacks, *([guard] if guard is not None else [])] or None)
        _quiet(trainer, hp)
        started = time.perf_counter()
        trainer.train()  # the optimizer is built here, after the final freeze, so it never holds the vector
        stats = _collect(trainer, guard, started)
    return stats


# ---------------------------------------------------------------------- diagnostics
def response_loss(model: Any, tokenizer: Any, rows: Sequence[EncodedRow], *, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over response tokens (no gradient)."""
    import torch

    collate = CausalCollator(pad_token_id(tokenizer))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    modes = [(m, m.training) for m in model.modules()]  # per module: a mixed model stays mixed
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate(as_features(rows[start:start + batch_size]))
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits.float()
            labels = batch["labels"].to(device)
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            mask = shift_labels.ne(-100)
            losses = torch.nn.functional.cross_entropy(
                shift_logits[mask], shift_labels[mask], reduction="sum")
            total += float(losses)
            count += int(mask.sum())
    finally:
        for module, mode in modes:
            module.training = mode
    return total / max(count, 1) if count else math.nan
