"""Second-moment statistics of an MLP output matrix's inputs, computed offline from local text and written where
EasyEdit's ``layer_stats`` reads them, so ROME (``mom2_adjustment: true``) and MEMIT never download a corpus.

EasyEdit's layout: ``<stats_dir>/<model folder name>/<mom2_dataset>_stats/<module>_<mom2_dtype>_mom2_<mom2_n_samples>.npz``
holding, under the ``mom2.`` prefix of its combined statistic, ``mom2`` (the sum of x xᵀ over every token),
``count`` (tokens) and ``constructor``, and ``sample_size`` (texts). EasyEdit divides ``mom2`` by ``count``; it
reloads the file only when ``sample_size`` equals ``mom2_n_samples``.

The default text is the docstrings of this Python's standard library (read with ``ast``, nothing imported):
English prose that every installation has. Pass your own texts (a file, one per line or paragraph) for a
distribution closer to your use.
"""

from __future__ import annotations

import ast
import io
import logging
import sysconfig
from pathlib import Path
from typing import Any, Optional, Sequence

from registry import EditError
from registry.writer import write_file

from .hparams import KeyValueHyperParams

logger = logging.getLogger(__name__)

#: Tokens per text: each text is cut here (EasyEdit cuts at the model's context length).
TEXT_TOKENS = 128
MIN_WORDS = 8
#: Parts of the standard library that are not its prose (tests, demos) or differ per installation.
SKIPPED_FOLDERS = ("test", "idlelib", "turtledemo", "site-packages", "dist-packages", "lib2to3")
PREFIX = "mom2."  # EasyEdit keeps the second moment inside a combined statistic under this key prefix
STATS_COMMAND = "detox easyedit-stats --hparams <these {alg} hparams>"


class _StopForward(Exception):
    """Raised by the last hook: the layers above the deepest edited one are not needed."""


def model_folder_name(model: Any) -> str:
    """The folder name EasyEdit files a model's statistics under: the last part of ``_name_or_path``."""
    return str(getattr(model.config, "_name_or_path", "") or "").rsplit("/")[-1]


def stats_path(model: Any, hparams: KeyValueHyperParams, layer: int) -> Path:
    module = hparams.rewrite_module_tmp.format(layer)
    name = f"{module}_{hparams.mom2_dtype}_mom2_{hparams.mom2_n_samples}.npz"
    return hparams.resolved_stats_dir() / model_folder_name(model) / f"{hparams.mom2_dataset}_stats" / name


def stats_problem(path: Path, hparams: KeyValueHyperParams, width: int) -> Optional[str]:
    """Why EasyEdit would not use ``path`` (and would try to download ``mom2_dataset`` instead), or None."""
    import numpy

    if not path.is_file():
        return "is missing"
    try:
        with numpy.load(path) as data:
            samples, shape = int(data["sample_size"]), tuple(data[f"{PREFIX}mom2"].shape)
    except (OSError, ValueError, KeyError) as exc:
        return f"cannot be read ({' '.join(str(exc).split())[:120]})"
    if samples != hparams.mom2_n_samples:
        return f"covers {samples} texts, not mom2_n_samples {hparams.mom2_n_samples}"
    if shape != (width, width):
        return f"holds a {shape} matrix, but the module's input has width {width}"
    return None


def check_stats(model: Any, hparams: KeyValueHyperParams) -> None:
    """Refuse, naming the file and the command that writes it, unless every edited layer's statistics are usable."""
    for layer in hparams.layers:
        path = stats_path(model, hparams, layer)
        problem = stats_problem(path, hparams, edited_module(model, hparams, layer).in_features)
        if problem:
            raise EditError(f"{hparams.alg_name} needs the second-moment statistics {path}, which {problem}; "
                            f"write them with `{STATS_COMMAND.format(alg=hparams.alg_name)}` (offline, from local text)")


def edited_module(model: Any, hparams: KeyValueHyperParams, layer: int) -> Any:
    name = hparams.rewrite_module_tmp.format(layer)
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise EditError(f"rewrite_module_tmp {hparams.rewrite_module_tmp!r} with layer {layer} names no module of "
                        f"this model ({name!r}); fix the template or layers") from None
    if not hasattr(module, "in_features"):
        raise EditError(f"{name!r} is a {type(module).__name__}, not a linear layer; point rewrite_module_tmp at "
                        f"the MLP's output projection")
    return module


def stdlib_texts() -> list[str]:
    """Paragraphs of the standard library's docstrings (at least MIN_WORDS words each), in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        parts = path.relative_to(root).parts
        if any(p.startswith(SKIPPED_FOLDERS) for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.extend(" ".join(p.split()) for p in doc.split("\n\n") if len(p.split()) >= MIN_WORDS)
    return texts


def read_texts(path: Path) -> list[str]:
    """One text per paragraph (blank-line separated) or, without blank lines, per line."""
    from registry.limits import read_text

    raw = read_text(path, kind="data", what="stats text file")
    parts = raw.split("\n\n") if "\n\n" in raw else raw.splitlines()
    return [" ".join(p.split()) for p in parts if p.strip()]


def write_stats(model: Any, tokenizer: Any, hparams: KeyValueHyperParams, texts: Optional[Sequence[str]] = None,
                *, overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Compute the second moment of every edited layer's module input over ``mom2_n_samples`` texts (one pass
    for all layers, stopping after the deepest) and write EasyEdit's file for each. Returns the paths."""
    import numpy
    import torch
    from tqdm.auto import tqdm

    texts = list(stdlib_texts() if texts is None else texts)
    wanted = hparams.mom2_n_samples
    if len(texts) < wanted:
        raise EditError(f"mom2_n_samples is {wanted} but only {len(texts)} texts were given; give more text "
                        f"or lower mom2_n_samples")
    layers = sorted(set(hparams.layers))
    modules = {layer: edited_module(model, hparams, layer) for layer in layers}
    paths = {layer: stats_path(model, hparams, layer) for layer in layers}
    for path in paths.values():
        if path.exists() and not overwrite:
            raise EditError(f"{path} exists; pass --overwrite (overwrite=True) to compute it again")
    sums = {layer: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for layer, m in modules.items()}
    tokens = 0
    mask: dict[str, Any] = {}

    def capture(layer: int) -> Any:
        def hook(_module: Any, args: tuple) -> None:
            x = args[0][mask["keep"]].to(torch.float64).cpu()
            sums[layer].addmm_(x.T, x)
            if layer == layers[-1]:
                raise _StopForward
        return hook

    handles = [modules[layer].register_forward_pre_hook(capture(layer)) for layer in layers]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for text in tqdm(texts[:wanted], desc="second moment", disable=not progress):
                ids = tokenizer(text, truncation=True, max_length=TEXT_TOKENS, return_tensors="pt")
                mask["keep"] = ids["attention_mask"].bool().to(device)
                tokens += int(mask["keep"].sum())
                try:
                    model(input_ids=ids["input_ids"].to(device), attention_mask=ids["attention_mask"].to(device))
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    written = []
    for layer in layers:
        buffer = io.BytesIO()
        numpy.savez(buffer, **{f"{PREFIX}constructor": numpy.array("easyeditor.util.runningstats.SecondMoment()"),
                               f"{PREFIX}count": numpy.array(tokens), "sample_size": numpy.array(wanted),
                               f"{PREFIX}mom2": sums[layer].to(getattr(torch, hparams.mom2_dtype)).numpy()})
        paths[layer].parent.mkdir(parents=True, exist_ok=True)
        written.append(write_file(paths[layer], buffer.getvalue(), overwrite=overwrite, what="stats file"))
        logger.info("wrote the second moment of %s over %d texts (%d tokens) to %s",
                    hparams.rewrite_module_tmp.format(layer), wanted, tokens, paths[layer])
    return [Path(p) for p in written]
