"""LoRA adapters attached in place to a plain Hugging Face model (peft's functional API).

The model object the host holds is mutated in place: ``attach`` injects LoRA layers into it,
``detach`` deletes one adapter and, when none is left, puts the original ``nn.Linear`` modules
back, so the model is exactly what it was (same module objects, same ``requires_grad`` flags, no
``peft_config`` attribute). Nothing here wraps the model in a ``PeftModel``, so no second object
has to be tracked; every helper also accepts a ``PeftModel`` (it walks ``named_modules``).

Freezing guards against peft's silent unfreezing: every peft call that can flip ``requires_grad``
(``set_adapter``, ``inject``/``add_adapter``, ``enable_adapter_layers``) is followed by
:func:`freeze`, and :func:`assert_frozen` checks the result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional, Sequence

from registry.edits import check_in_memory
from registry.errors import EditError, ManifestError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import LoraConfig

logger = logging.getLogger(__name__)

#: Key prefix of adapter tensors in a file written by ``PeftModel.save_pretrained``.
PEFT_FILE_PREFIX = "base_model.model."
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_LORA_PREFIX = "lora_"
_SAVED_FLAGS_ATTR = "_detox_sv_requires_grad"  # set with object.__setattr__; never a submodule


def tuner_layers(model: Any) -> Iterator[tuple[str, Any]]:
    """(module name, layer) for every peft tuner layer inside ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


def adapter_names(model: Any) -> list[str]:
    """Names of every adapter attached to ``model`` (sorted)."""
    names: set[str] = set()
    for _, layer in tuner_layers(model):
        for attr in layer.adapter_layer_names:
            names.update(getattr(layer, attr).keys())
    return sorted(names)


def active_adapters(model: Any) -> list[str]:
    """The adapters used in the forward pass (the union over layers)."""
    active: list[str] = []
    for _, layer in tuner_layers(model):
        if layer.disable_adapters:
            continue
        for name in layer.active_adapters:
            if name not in active:
                active.append(name)
    return active


def adapter_parameters(model: Any, adapter: str) -> dict[str, "torch.nn.Parameter"]:
    """Every parameter of ``adapter`` keyed by its full name (``...lora_A.<adapter>.weight``)."""
    params: dict[str, Any] = {}
    for module_name, layer in tuner_layers(model):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr)
            if adapter not in container:
                continue
            entry = container[adapter]
            prefix = f"{module_name}.{attr}.{adapter}" if module_name else f"{attr}.{adapter}"
            if hasattr(entry, "named_parameters"):
                for pname, param in entry.named_parameters():
                    params[f"{prefix}.{pname}"] = param
            else:  # a bare Parameter in a ParameterDict
                params[prefix] = entry
    return params


def adaptable_modules(model: Any) -> list[str]:
    """Names of the layers a LoRA can wrap: ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2's
    projections, which peft adapts with ``fan_in_fan_out``), adapters' own layers left out."""
    import torch

    def adaptable(module: Any) -> bool:
        return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"

    return sorted({base_name(name) for name, module in model.named_modules()
                   if adaptable(module) and ".lora_" not in name})


def matching_modules(model: Any, target_modules: Sequence[str]) -> list[str]:
    """The adaptable modules a LoRA with ``target_modules`` wraps (peft's suffix match)."""
    return [n for n in adaptable_modules(model) if any(n == t or n.endswith(f".{t}") for t in target_modules)]


def check_target_modules(model: Any, target_modules: Sequence[str], *, where: str) -> None:
    """Raise EditError before any change when a target module name matches nothing in ``model``."""
    linear_names = adaptable_modules(model)
    leaves = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
    missing = [t for t in target_modules
               if not any(name == t or name.endswith(f".{t}") for name in linear_names)]
    if not target_modules:
        raise EditError(f"{where}: target_modules is empty; list the linear layers to adapt, e.g. {leaves[:4]}")
    if missing:
        raise EditError(
            f"{where}: target module(s) {', '.join(map(repr, missing))} match no linear layer of this "
            f"{type(model).__name__}; choose from {', '.join(leaves)}"
        )


def _remember_requires_grad(model: Any) -> None:
    """Record every base parameter's requires_grad once, before the first adapter is injected."""
    if getattr(model, _SAVED_FLAGS_ATTR, None) is None:
        object.__setattr__(model, _SAVED_FLAGS_ATTR,
                           {name: p.requires_grad for name, p in model.named_parameters()})
        object.__setattr__(model, "_detox_sv_had_peft_config", hasattr(model, "peft_config"))


def attach(model: Any, adapter: str, config: "LoraConfig",
           state_dict: Optional[Mapping[str, "torch.Tensor"]] = None, seed: Optional[int] = None) -> None:
    """Inject LoRA ``adapter`` into ``model`` in place, optionally loading its weights.

    The adapter is left **inactive and frozen**: callers activate what they need with
    :func:`activate`. Tensor names and shapes are checked; on any error the adapter is removed.
    ``seed`` (for a fresh adapter, without ``state_dict``) draws peft's random ``lora_A`` initialisation
    from that seed on a forked generator, so a training run starts from the same adapter whatever
    ran before it, and the caller's random state is left as it was. peft builds the LoRA layers on the
    CPU and moves them to the base layer's device afterwards, so only the CPU generator is seeded (and
    forked); a caller's CUDA generators are not touched.
    """
    import copy

    import torch

    from peft.functional import inject_adapter_in_model, set_peft_model_state_dict

    if adapter in adapter_names(model):
        raise EditError(f"the model already has an adapter named {adapter!r}; detach it first or pick another name")
    check_target_modules(model, sorted(config.target_modules or []), where=f"adapter {adapter!r}")
    wrapped = set(matching_modules(model, sorted(config.target_modules or [])))
    check_in_memory({f"{name}.weight": module.weight for name, module in model.named_modules()
                     if name in wrapped and getattr(module, "weight", None) is not None},
                    editor=f"the LoRA adapter {adapter!r}")
    _remember_requires_grad(model)
    before_active = active_adapters(model)
    frozen_before = frozen_adapters(model)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
            with torch.random.fork_rng(devices=[], enabled=seed is not None):
                if seed is not None:
                    torch.random.default_generator.manual_seed(seed)
                inject_adapter_in_model(copy.deepcopy(config), model, adapter_name=adapter)
        if state_dict is not None:
            expected = adapter_parameters(model, adapter)
            weights = {_strip_file_prefix(k): v for k, v in state_dict.items()}
            result = set_peft_model_state_dict(model, weights, adapter_name=adapter)
            unexpected = list(getattr(result, "unexpected_keys", []) or [])
            missing = [k for k in getattr(result, "missing_keys", []) or [] if f".{adapter}." in k]
            if unexpected or missing or len(weights) != len(expected):
                raise EditError(
                    f"adapter {adapter!r} does not fit this model (unexpected keys {unexpected[:3]}, missing "
                    f"{missing[:3]}); it was trained for another architecture"
                )
    except RuntimeError as exc:  # size mismatch from load_state_dict
        detach(model, adapter)
        raise EditError(f"adapter {adapter!r} does not fit this model (it was trained for another model; train "
                        f"it on this one): {' '.join(str(exc).split())[:300]}") from None
    except EditError:  # our own checks above (EditError is a ValueError: keep its message)
        detach(model, adapter)
        raise
    except (TypeError, ValueError) as exc:  # peft rejects a malformed config (e.g. r: "x") only here
        detach(model, adapter)
        raise EditError(f"adapter {adapter!r} cannot be attached, its LoRA config is invalid "
                        f"({' '.join(str(exc).split())[:200]}); fix the config or redo the edit") from None
    except BaseException:
        detach(model, adapter)
        raise
    match_training_mode(model)
    activate(model, before_active, frozen=[adapter, *frozen_before])


def match_training_mode(model: Any) -> None:
    """Give every adapter layer the train/eval mode of the layer it wraps. peft builds new modules in
    training mode, so a LoRA injected into a model in eval mode would otherwise apply its dropout at
    inference (outputs that change from one forward pass to the next)."""
    for _name, layer in tuner_layers(model):
        mode = layer.get_base_layer().training
        for module in layer.modules():
            module.training = mode


def frozen_adapters(model: Any) -> list[str]:
    """Adapters none of whose tensors require a gradient (kept frozen across re-activation)."""
    return [name for name in adapter_names(model)
            if not any(p.requires_grad for p in adapter_parameters(model, name).values())]


def activate(model: Any, adapters: Sequence[str], *, frozen: Iterable[str] = ()) -> None:
    """Make exactly ``adapters`` active, then re-freeze ``frozen`` (``set_adapter`` unfreezes all it activates)."""
    from peft.functional import set_adapter

    names = list(adapters)
    unknown = [a for a in names if a not in adapter_names(model)]
    if unknown:
        raise EditError(f"cannot activate unknown adapter(s) {unknown}; attached: {adapter_names(model)}")
    set_adapter(model, names)
    for name in frozen:
        freeze(model, name)


def freeze(model: Any, adapter: str) -> None:
    """``requires_grad=False`` on every tensor of ``adapter`` (peft's set_requires_grad + a name check)."""
    from peft.functional import set_requires_grad

    set_requires_grad(model, adapter, requires_grad=False)
    for param in adapter_parameters(model, adapter).values():  # defence in depth, any peft version
        param.requires_grad_(False)


def assert_frozen(model: Any, adapter: str) -> None:
    """Raise EditError if any tensor of ``adapter`` has requires_grad=True."""
    live = [name for name, p in adapter_parameters(model, adapter).items() if p.requires_grad]
    if live:
        raise EditError(
            f"security vector {adapter!r} is trainable ({len(live)} tensors, e.g. {live[0]}); it must stay "
            f"frozen: call adapters.freeze after every set_adapter/enable_adapter_layers"
        )


def disable_dropout(model: Any, adapter: str) -> None:
    """Replace ``adapter``'s LoRA dropout by Identity (a frozen vector must act deterministically)."""
    import torch

    for _, layer in tuner_layers(model):
        dropout = getattr(layer, "lora_dropout", None)
        if dropout is not None and adapter in dropout:
            dropout[adapter] = torch.nn.Identity()


def state_dict(model: Any, adapter: str, *, file_format: bool = True) -> dict[str, "torch.Tensor"]:
    """Detached CPU copies of ``adapter``'s tensors, keyed as in a peft adapter file."""
    from peft.functional import get_peft_model_state_dict

    if adapter not in adapter_names(model):
        raise EditError(f"the model has no adapter {adapter!r}; attached: {adapter_names(model)}")
    tensors = get_peft_model_state_dict(model, adapter_name=adapter, save_embedding_layers=False)
    prefix = PEFT_FILE_PREFIX if file_format else ""
    return {f"{prefix}{_strip_file_prefix(k)}": v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}


def lora_config(model: Any, adapter: str) -> "LoraConfig":
    config = getattr(model, "peft_config", {}).get(adapter)
    if config is None:
        raise EditError(f"the model has no config for adapter {adapter!r}")
    return config


def merged_deltas(model: Any, adapter: str) -> dict[str, "torch.Tensor"]:
    """``{base weight name: ΔW}`` of ``adapter`` (names as in the model without adapters)."""
    deltas = {}
    for module_name, layer in tuner_layers(model):
        if adapter in getattr(layer, "lora_A", {}) or adapter in getattr(layer, "lora_embedding_A", {}):
            base = layer.get_base_layer()
            delta = layer.get_delta_weight(adapter).detach().to(base.weight.dtype)
            deltas[f"{base_name(module_name)}.weight"] = delta.clone()
    return deltas


def base_name(name: str) -> str:
    """A parameter/module name as it reads once every adapter is removed."""
    return name.replace(".base_layer", "")


def detach(model: Any, adapter: str) -> None:
    """Delete ``adapter``; when it was the last, restore the original modules and flags exactly."""
    from peft.functional import delete_adapter

    if adapter in adapter_names(model):
        remaining_active = [a for a in active_adapters(model) if a != adapter]
        frozen = [a for a in frozen_adapters(model) if a != adapter]
        delete_adapter(model, adapter_name=adapter, prefix=_LORA_PREFIX)
        if adapter_names(model):
            activate(model, remaining_active, frozen=frozen)
    configs = getattr(model, "peft_config", None)
    if isinstance(configs, dict):
        configs.pop(adapter, None)
    if not adapter_names(model):
        _unwrap(model)


def _unwrap(model: Any) -> None:
    """Put every tuner layer's base layer back in its parent; restore flags and attributes."""
    layers = list(tuner_layers(model))
    for name, layer in layers:
        if getattr(layer, "merged", False):
            raise EditError(f"{name}: an adapter is still merged into the weights; unmerge before detaching")
    for name, layer in sorted(layers, key=lambda item: -item[0].count(".")):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    saved = getattr(model, _SAVED_FLAGS_ATTR, None)
    if saved is not None:
        for name, param in model.named_parameters():
            if name in saved:
                param.requires_grad_(saved[name])
        object.__delattr__(model, _SAVED_FLAGS_ATTR)
        had_config = model.__dict__.pop("_detox_sv_had_peft_config", False)
        if not had_config and "peft_config" in model.__dict__:
            del model.__dict__["peft_config"]


def _strip_file_prefix(key: str) -> str:
    return key[len(PEFT_FILE_PREFIX):] if key.startswith(PEFT_FILE_PREFIX) else key


# ---------------------------------------------------------------------- peft folders
def config_to_dict(config: "LoraConfig") -> dict[str, Any]:
    """A JSON-safe dict of a LoraConfig (as peft writes ``adapter_config.json``)."""
    data = config.to_dict()
    return json.loads(json.dumps(data, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))


def config_from_dict(data: Mapping[str, Any]) -> "LoraConfig":
    from peft import LoraConfig

    known = set(LoraConfig.__dataclass_fields__)
    kwargs = {k: v for k, v in data.items() if k in known and k not in ("peft_type", "auto_mapping")}
    try:
        return LoraConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"the saved LoRA config is invalid ({' '.join(str(exc).split())[:200]}); the "
                            f"save is damaged, redo the edit") from None


def write_peft_folder(directory: Path, config: "LoraConfig", tensors: Mapping[str, "torch.Tensor"],
                      *, base_model: Optional[str] = None) -> list[str]:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (loadable by ``PeftModel.from_pretrained``)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(config)
    data["inference_mode"] = True
    if base_model:
        data["base_model_name_or_path"] = base_model
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / ADAPTER_WEIGHTS_NAME),
              metadata={"format": "pt"})
    return [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
