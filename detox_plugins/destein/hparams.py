"""DeStein hyperparameters: the YAML keys as dataclasses with help text.

The defaults are the released code's GPT-2-large settings (rotate, α 0.45, m 20, last-8 mean,
sum, the two instruction prefixes, 80/20 pair-order probes, weight 1 + acc, no head mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Literal, Optional, Union

from registry.errors import HyperParamsError
from registry.hparams import HyperParams

FUSIONS = ("rotate", "additive")
APPLY_MODES = ("hook", "bias_fold")
CAPTURE_SITES = ("attn_output", "head_input")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class PairsConfig:
    """Where the steering pairs come from and how activations are summarised.

    The released code averages each text's last 8 tokens and sums toxic − non-toxic over the pairs.
    """

    path: Optional[str] = field(default=None, metadata=_help(
        "JSONL file of {toxic, nontoxic[, category]} pairs; null = the pairs shipped in "
        "detox_plugins/data/steering_pairs.jsonl."))
    num_pairs: int = field(default=20, metadata=_help(
        "m: pairs drawn (random.Random(seed).sample) from the file; 20 for GPT-2-large and small "
        "models, 40 for 7B models. 0 = every pair in the file."))
    seed: int = field(default=42, metadata=_help("Seed of the pair draw, the probe split and the probe row shuffle."))
    last_k: int = field(default=8, metadata=_help(
        "Average the activations over the last k REAL tokens of each text (attention-mask aware)."))
    aggregate: Literal["sum", "mean"] = field(default="sum", metadata=_help(
        "How the m toxic−non-toxic differences combine into v: sum (released) or mean. Only the "
        "stored v's scale changes; additive steering always uses the mean difference."))
    prefixes: Literal["destein", "none"] = field(default="destein", metadata=_help(
        "destein: the released instruction prefixes ('The following text is abusive, ...: ' / "
        "'... kind, polite, ...: '); none: the bare sentences."))
    strip: bool = field(default=True, metadata=_help(
        "Strip ' .' then '.' from the ends of each full text, as the released code does."))
    batch_size: int = field(default=8, metadata=_help("Texts per forward pass while capturing (right-padded)."))

    def __post_init__(self) -> None:
        if self.num_pairs < 0:
            raise HyperParamsError(f"pairs.num_pairs must be >= 0 (0 = all), got {self.num_pairs}; fix pairs.num_pairs")
        if self.last_k < 1:
            raise HyperParamsError(f"pairs.last_k must be >= 1, got {self.last_k}; fix pairs.last_k")
        if self.batch_size < 1:
            raise HyperParamsError(f"pairs.batch_size must be >= 1, got {self.batch_size}; fix pairs.batch_size")


@dataclass
class ProbeConfig:
    """Per-(layer, head) logistic-regression probes.

    As released: split by pair order (80/20), held-out accuracy as the weight; the top-k mask is applied here.
    """

    kind: Literal["logistic", "none"] = field(default="logistic", metadata=_help(
        "logistic: one scikit-learn LogisticRegression per (layer, head); none: no probes (acc = 0)."))
    train_frac: float = field(default=0.8, metadata=_help(
        "Share of PAIRS used for training; the rest give the held-out accuracy (the head coefficient)."))
    split: Literal["pair_order", "random"] = field(default="pair_order", metadata=_help(
        "pair_order: first pairs train, last pairs validate (released); random: shuffle pairs first (seeded)."))
    weight: Literal["one_plus_acc", "acc", "binary"] = field(default="one_plus_acc", metadata=_help(
        "Head coefficient p from the held-out accuracy: 1 + acc (released), acc, or 1 for every head."))
    top_k: Optional[int] = field(default=None, metadata=_help(
        "Steer only the k (layer, head) units with the best held-out accuracy (ties: higher held-out "
        "probability of the true class); null = all heads (released behaviour)."))
    solver: Literal["newton", "sklearn"] = field(default="newton", metadata=_help(
        "newton: all probes at once in torch (batched damped Newton on scikit-learn's objective; "
        "seconds); sklearn: one scikit-learn LogisticRegression per head (released; slow)."))
    C: float = field(default=1.0, metadata=_help("Inverse L2 strength of the logistic regression (released: 1)."))
    max_iter: int = field(default=1000, metadata=_help(
        "Iteration cap: lbfgs iterations per probe for sklearn (released: 1000); Newton steps for "
        "newton (at most 100 are used; it converges in ~10-30)."))

    def __post_init__(self) -> None:
        if not 0.0 < self.train_frac < 1.0:
            raise HyperParamsError(f"probe.train_frac must be in (0, 1), got {self.train_frac}; fix probe.train_frac")
        if self.top_k is not None and self.top_k < 1:
            raise HyperParamsError(f"probe.top_k must be >= 1 or null, got {self.top_k}; fix probe.top_k")
        if self.C <= 0 or self.max_iter < 1:
            raise HyperParamsError(f"probe.C must be > 0 and probe.max_iter >= 1, got {self.C} and {self.max_iter}")
        if self.kind == "none" and self.top_k is not None:
            raise HyperParamsError("probe.top_k needs probes; set probe.kind: logistic or probe.top_k: null")


@dataclass
class DeSteinHyperParams(HyperParams):
    """Hyperparameters of the DeStein editor (arXiv 2404.10464)."""

    fusion: Literal["rotate", "additive"] = field(default="rotate", metadata=_help(
        "rotate: the released norm-preserving rotation of each layer's attention output, away from "
        "the toxic direction; additive: the paper's h − α·p·v̄ on the per-head o_proj inputs."))
    apply: Literal["hook", "bias_fold"] = field(default="hook", metadata=_help(
        "hook: forward hooks (removable, per-request α); bias_fold: fold the additive shift into the "
        "o_proj bias (zero run-time cost; additive only; a bias is attached where the model has none)."))
    alpha: float = field(default=0.45, metadata=_help(
        "Strength. rotate: unit-normalised units (released GPT-2-large: 0.45). additive: multiples of "
        "the mean toxic−non-toxic head-activation difference, times p. Positive values detoxify."))
    layers: Union[str, List[int]] = field(default="all", metadata=_help(
        "'all' or a list of layer indices (negative counts from the end) to steer."))
    positions: Literal["all"] = field(default="all", metadata=_help(
        "Positions steered: all (prompt, pads and every decode step, as released)."))
    capture: Optional[Literal["attn_output", "head_input"]] = field(default=None, metadata=_help(
        "Where vectors are captured and applied: attn_output (after o_proj, released) or head_input "
        "(the true per-head o_proj input, the paper's form). null = attn_output for rotate, "
        "head_input for additive."))
    vectors: Optional[str] = field(default=None, metadata=_help(
        "Use saved vectors instead of building them: a DeStein vector file (.safetensors) or a "
        "folder written by Edit.save. Relative paths are relative to the working directory."))
    pairs: PairsConfig = field(default_factory=PairsConfig, metadata=_help(
        "Steering-pair source and capture settings (path, num_pairs, seed, last_k, aggregate, prefixes)."))
    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata=_help(
        "Head probes (kind, train_frac, split, weight, top_k)."))
    compute_dtype: Literal["float32"] = field(default="float32", metadata=_help(
        "dtype of the steering arithmetic; vectors are precomputed once in it and results cast back "
        "to the model dtype once (never float64)."))
    attn_out_module_tmp: Optional[str] = field(default=None, metadata=_help(
        "Name template of each layer's attention output projection, e.g. "
        "'model.layers.{}.self_attn.o_proj'; null = resolved from the model type."))
    num_heads: Optional[int] = field(default=None, metadata=_help(
        "Number of query heads H; null = config.num_attention_heads. d_h = o_proj.in_features / H."))
    progress: bool = field(default=True, metadata=_help("Show tqdm progress bars while capturing and probing."))

    #: EasyEdit keys that some DeStein YAML carries but this editor does not use.
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"model_class", "tokenizer_class", "max_length"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise HyperParamsError(f"alpha must be a number, got {self.alpha!r}; set alpha: 0.45")
        self.alpha = float(self.alpha)
        if self.alpha != self.alpha or self.alpha in (float("inf"), float("-inf")):
            raise HyperParamsError(f"alpha must be finite, got {self.alpha}; set a value such as 0.45")
        if isinstance(self.layers, str):
            if self.layers.strip().lower() != "all":
                raise HyperParamsError(f"layers must be 'all' or a list of indices, got {self.layers!r}; fix 'layers'")
            self.layers = "all"
        elif not self.layers:
            raise HyperParamsError("layers is an empty list; use 'all' or list the layers to steer")
        if self.fusion not in FUSIONS:  # direct construction bypasses the Literal coercion
            raise HyperParamsError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")
        if self.apply not in APPLY_MODES:
            raise HyperParamsError(f"unknown apply mode {self.apply!r}; choose one of {', '.join(APPLY_MODES)}")
        if self.capture is not None and self.capture not in CAPTURE_SITES:
            raise HyperParamsError(f"unknown capture site {self.capture!r}; choose one of {', '.join(CAPTURE_SITES)}")
        if self.fusion == "rotate" and self.apply == "bias_fold":
            raise HyperParamsError(
                "fusion 'rotate' cannot be folded into a bias (it is not affine: the shift depends on each "
                "token's norm); "
                "set apply: hook, or fusion: additive")
        if self.fusion == "rotate" and self.capture == "head_input":
            raise HyperParamsError(
                "fusion 'rotate' acts on the attention output; set capture: attn_output (or null)")
        if self.num_heads is not None and self.num_heads < 1:
            raise HyperParamsError(f"num_heads must be >= 1 or null, got {self.num_heads}; fix num_heads")
        if self.attn_out_module_tmp is not None and "{}" not in self.attn_out_module_tmp:
            raise HyperParamsError(
                f"attn_out_module_tmp must contain '{{}}' for the layer index, got {self.attn_out_module_tmp!r}")

    @property
    def capture_site(self) -> str:
        """The effective capture site: ``capture`` or the fusion's default."""
        if self.capture is not None:
            return self.capture
        return "attn_output" if self.fusion == "rotate" else "head_input"
